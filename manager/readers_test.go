package manager_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/manager"
)

// heldStore is a Store whose writes (Commit, ReserveRevisions) block while
// held: a disk stuck in fsync.
type heldStore struct {
	*flakyStore
	mu      sync.Mutex
	held    chan struct{} // closed to release; nil: not held
	blocked chan struct{} // closed once a write is blocked
	once    sync.Once
}

func (s *heldStore) hold() {
	s.mu.Lock()
	s.held, s.blocked = make(chan struct{}), make(chan struct{})
	s.once = sync.Once{}
	s.mu.Unlock()
}

func (s *heldStore) release() {
	s.mu.Lock()
	if s.held != nil {
		close(s.held)
		s.held = nil
	}
	s.mu.Unlock()
}

func (s *heldStore) wait() {
	s.mu.Lock()
	held, blocked := s.held, s.blocked
	s.mu.Unlock()
	if held != nil {
		s.once.Do(func() { close(blocked) })
		<-held
	}
}

func (s *heldStore) Commit(c manager.Change) error {
	s.wait()
	return s.flakyStore.Commit(c)
}

func (s *heldStore) ReserveRevisions(upTo uint64) (uint64, error) {
	s.wait()
	return s.flakyStore.ReserveRevisions(upTo)
}

// TestReadersNeverWaitForTheStore: with the store stuck in a write (a
// Load's commit, the revision mark), List, Health and Watch still answer
// at once: no disk I/O happens under a lock they take.
func TestReadersNeverWaitForTheStore(t *testing.T) {
	st := &heldStore{flakyStore: newFlakyStore()}
	sock, err := os.MkdirTemp("", "pc-sock-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sock)
	m, err := manager.New(manager.Config{PluginDir: pluginDir, SocketDir: sock, Store: st, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		st.release()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = m.Close(ctx)
	}()
	// Held from the first write after New: the revision mark reserved
	// under the hub's lock at the first event would have blocked here.
	st.hold()
	loaded := make(chan error, 1)
	go func() {
		_, err := m.Load(context.Background(), manager.Spec{Name: "other", Binary: "echo"})
		loaded <- err
	}()
	select {
	case <-st.blocked:
	case err := <-loaded:
		t.Fatalf("the load did not wait for the held store: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the load never reached the store")
	}
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		if l := m.List(); len(l) != 1 || l[0].State != manager.StateStarting {
			t.Errorf("List: %+v, want other STARTING", l)
		}
		if _, _, err := m.Health(nil); err != nil {
			t.Errorf("Health: %v", err)
		}
		w, err := m.Watch(nil, 0)
		if err != nil {
			t.Errorf("Watch: %v", err)
			return
		}
		defer w.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if evs, err := w.Next(ctx); err != nil || len(evs) == 0 {
			t.Errorf("Watch's snapshot: %v %v", evs, err)
		}
	}()
	select {
	case <-answered:
	case <-time.After(5 * time.Second):
		t.Fatal("List, Health or Watch waited for the store")
	}
	st.release()
	if err := <-loaded; err != nil {
		t.Fatalf("the load after the store came back: %v", err)
	}
}
