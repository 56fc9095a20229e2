package manager_test

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
)

// TestFreezeHandoverThaw: a frozen manager refuses new plugins, still
// serves calls, reacts to nothing (a crash waits), and describes what it
// would hand over; thawed, it goes on, and handles the crash it held back.
func TestFreezeHandoverThaw(t *testing.T) {
	m, _ := newManager(t, "")
	ctx := context.Background()
	st := loadEcho(t, m, "echo")
	rev := m.Revision()
	if err := m.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Load(ctx, manager.Spec{Name: "other", Binary: "echo"}); !errors.Is(err, manager.ErrFrozen) {
		t.Fatalf("Load while frozen: %v", err)
	}
	if res, err := m.Invoke(ctx, "echo", "echo", []byte("x")); err != nil || string(res.Payload) != "x" {
		t.Fatalf("Invoke while frozen: %v", err)
	}
	h, err := m.Handover()
	if err != nil {
		t.Fatal(err)
	}
	p := h.Plugins["echo"]
	switch {
	case p == nil || !p.Full || p.Active == nil:
		t.Fatalf("handover of echo: %+v", p)
	case p.Active.PID != st.PID || p.Active.Generation != 1 || p.Generation != 1 || p.State != manager.StateServing:
		t.Fatalf("handover of echo: pid %d gen %d/%d state %v; status %+v", p.Active.PID, p.Active.Generation, p.Generation, p.State, st)
	case p.Active.StartTicks == 0 || p.Active.Network != "unix" || p.Active.Address == "" || p.Active.ProtocolVersion == 0:
		t.Fatalf("handover of echo cannot reach it: %+v", p.Active)
	case p.Active.StdoutFD <= 2 || p.Active.StderrFD <= 2:
		t.Fatalf("handover of echo: stdio descriptors %d %d", p.Active.StdoutFD, p.Active.StderrFD)
	case h.Hub == nil || h.Hub.Revision != rev || len(h.Hub.Latest) != 1:
		t.Fatalf("hub handover: %+v (revision %d)", h.Hub, rev)
	}
	// A crash while frozen: nothing acts on it until the manager thaws.
	_ = syscall.Kill(st.PID, syscall.SIGKILL)
	if !testbin.WaitGone(st.PID, 5*time.Second) {
		t.Fatal("echo did not die")
	}
	time.Sleep(100 * time.Millisecond) // time is what is tested: within it, a frozen manager does nothing
	if got, _ := m.Get("echo"); got.Generation != 1 || got.State != manager.StateServing || m.Revision() != rev {
		t.Fatalf("a frozen manager acted on a crash: %+v, revision %d (was %d)", got, m.Revision(), rev)
	}
	m.Thaw()
	waitState(t, m, "echo", manager.StateServing, 10*time.Second)
	if !waitGeneration(m, "echo", 2, 10*time.Second) {
		got, _ := m.Get("echo")
		t.Fatalf("the crash held back was not handled after Thaw: %+v", got)
	}
	loadEcho(t, m, "other")
}

// TestFreezeWaitsForOperations: Freeze waits for a mutation in flight and
// gives up, changing nothing, when its context ends first.
func TestFreezeWaitsForOperations(t *testing.T) {
	m, _ := newManager(t, "")
	st := loadEcho(t, m, "echo")
	ctx := context.Background()
	// A reload whose candidate never becomes ready (slowready blocks in
	// Ready until the ready timeout).
	done := make(chan error, 1)
	go func() {
		_, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo", Spec: &manager.Spec{Name: "echo", Binary: "slowready", ReadyTimeout: 2 * time.Second}})
		done <- err
	}()
	// The candidate runs: the reload holds echo's operation lock.
	waitUntil(t, 5*time.Second, func() bool { return len(testbin.ProcessesIn(pluginDir)) >= 2 })
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := m.Freeze(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Freeze with a reload in flight: %v", err)
	}
	// Nothing is frozen: a new plugin loads.
	loadEcho(t, m, "other")
	if err := <-done; err == nil {
		t.Fatal("the reload to slowready passed")
	}
	if got, _ := m.Get("echo"); got.PID != st.PID || got.Generation != 1 {
		t.Fatalf("echo after the failed reload: %+v", got)
	}
	// With the reload done, Freeze goes through.
	if err := m.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	m.Thaw()
}

func waitGeneration(m *manager.Manager, name string, gen uint64, d time.Duration) bool {
	_, err := watchUntil(m, name, d, func(h manager.Health) bool {
		return h.Generation >= gen && h.State == manager.StateServing
	})
	return err == nil
}
