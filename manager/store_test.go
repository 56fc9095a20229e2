package manager_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
)

// flakyStore is a manager.Store in memory whose commits fail while fail is
// set, with ENOSPC: a disk that filled up. It counts what it committed.
type flakyStore struct {
	mu      sync.Mutex
	fail    bool
	plugins map[string]manager.PluginRecord
	audit   []manager.AuditRecord
	refused int
}

func newFlakyStore() *flakyStore { return &flakyStore{plugins: map[string]manager.PluginRecord{}} }

func (s *flakyStore) setFail(v bool) {
	s.mu.Lock()
	s.fail = v
	s.mu.Unlock()
}

func (s *flakyStore) Commit(c manager.Change) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		s.refused++
		return fmt.Errorf("write plugind.db: %w", syscall.ENOSPC)
	}
	if c.Put != nil {
		s.plugins[c.Put.Spec.Name] = *c.Put
	}
	if c.Delete != "" {
		delete(s.plugins, c.Delete)
	}
	c.Audit.Sequence = uint64(len(s.audit) + 1)
	s.audit = append(s.audit, *c.Audit)
	return nil
}

func (s *flakyStore) Plugins() ([]manager.PluginRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []manager.PluginRecord
	for _, r := range s.plugins {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *flakyStore) ReserveRevisions(upTo uint64) (uint64, error) { return 0, nil }

func (s *flakyStore) Audit(q manager.AuditQuery) (manager.AuditPage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var p manager.AuditPage
	for i := len(s.audit) - 1; i >= 0 && len(p.Records) < q.Limit; i-- {
		if q.Plugin == "" || s.audit[i].Plugin == q.Plugin {
			p.Records = append(p.Records, s.audit[i])
		}
	}
	return p, nil
}

// record returns the stored record of name and whether there is one.
func (s *flakyStore) record(name string) (manager.PluginRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.plugins[name]
	return r, ok
}

func newFlakyManager(t *testing.T, st *flakyStore) *manager.Manager {
	t.Helper()
	m, err := manager.New(manager.Config{PluginDir: pluginDir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Store: st})
	if err != nil {
		t.Fatal(err)
	}
	noRefusedTransitions(t, m)
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

// isFull reports whether err is the manager's "could not be recorded: disk
// full" error.
func isFull(err error) bool {
	var se *manager.StoreError
	return errors.As(err, &se) && se.ResourceExhausted()
}

// onlyPIDs fails unless exactly pids of the example plugins run.
func onlyPIDs(t *testing.T, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := testbin.ProcessesIn(pluginDir)
		sort.Ints(left)
		sort.Ints(pids)
		if fmt.Sprint(left) == fmt.Sprint(pids) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("plugin processes %v, want %v", left, pids)
		}
		time.Sleep(10 * time.Millisecond) // polls /proc: a process's start or exit has no event here
	}
}

// When the store cannot record a change, the change is not made, whatever
// it is: no process is left, and what runs matches what is stored.
func TestNothingHalfAppliedWhenTheStoreFails(t *testing.T) {
	ctx := context.Background()
	st := newFlakyStore()
	m := newFlakyManager(t, st)

	// Load.
	st.setFail(true)
	if _, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo"}); !isFull(err) {
		t.Fatalf("Load on a full disk: %v", err)
	}
	if _, err := m.Get("echo"); !errors.Is(err, manager.ErrNotFound) {
		t.Fatalf("the plugin of a Load not recorded is listed: %v", err)
	}
	onlyPIDs(t)
	st.setFail(false)
	res, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	pid := res.Status.PID

	// Reload and dry run.
	st.setFail(true)
	if _, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo", Spec: &manager.Spec{Name: "echo", Binary: "echo", Args: []string{"new"}}}); !isFull(err) {
		t.Fatalf("Reload on a full disk: %v", err)
	}
	if _, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo", ValidateOnly: true}); !isFull(err) {
		t.Fatalf("a dry run that cannot be audited: %v", err)
	}
	if s, _ := m.Get("echo"); s.Generation != 1 || s.PID != pid || len(s.Spec.Args) != 0 {
		t.Fatalf("after a Reload not recorded: %+v", s)
	}
	if r, _ := st.record("echo"); r.Generation != 1 || len(r.Spec.Args) != 0 {
		t.Fatalf("stored after a Reload not recorded: %+v", r)
	}
	onlyPIDs(t, pid)

	// Unload.
	if _, err := m.Unload(ctx, "echo", 0); !isFull(err) {
		t.Fatalf("Unload on a full disk: %v", err)
	}
	if s, _ := m.Get("echo"); s.State != manager.StateServing || s.PID != pid {
		t.Fatalf("after an Unload not recorded: %+v", s)
	}
	if _, ok := st.record("echo"); !ok {
		t.Fatal("record gone after an Unload not recorded")
	}
	onlyPIDs(t, pid)
	if r, err := m.Invoke(ctx, "echo", "echo", []byte("x")); err != nil || r.Generation != 1 {
		t.Fatalf("still serving: %v", err)
	}
	st.setFail(false)
	if _, err := m.Unload(ctx, "echo", 0); err != nil {
		t.Fatal(err)
	}
	onlyPIDs(t)
	if _, ok := st.record("echo"); ok {
		t.Fatal("record left after Unload")
	}
	if st.refused == 0 {
		t.Fatal("the store refused nothing: the test proves nothing")
	}
}

// A supervisor restart that cannot be recorded is not done: the candidate
// goes, the supervisor tries again, and once the store takes writes again a
// restart succeeds (recorded). A revert that cannot be recorded is not done
// either: the bake is cancelled, the failing generation stays.
func TestSupervisorActionsWhenTheStoreFails(t *testing.T) {
	ctx := context.Background()
	st := newFlakyStore()
	m := newFlakyManager(t, st)
	res, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo", Policy: manager.HealthPolicy{
		BackoffInitial: 50 * time.Millisecond, BackoffMax: 50 * time.Millisecond, RestartLimit: 100}})
	if err != nil {
		t.Fatal(err)
	}
	st.setFail(true)
	if err := syscall.Kill(res.Status.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // time is what is tested: ~10 restart attempts (50ms backoff) fail to record within it
	s, _ := m.Get("echo")
	if s.State != manager.StateStarting || s.Generation != 1 || !strings.Contains(s.LastError, "restart not recorded") {
		t.Fatalf("restarts while the store fails: %+v", s)
	}
	onlyPIDs(t) // every unrecorded candidate is gone
	st.setFail(false)
	waitState(t, m, "echo", manager.StateServing, 5*time.Second)
	s, _ = m.Get("echo")
	if r, _ := st.record("echo"); r.Generation != s.Generation || s.Generation != 2 {
		t.Fatalf("restarted generation %d, recorded %d", s.Generation, r.Generation)
	}
	onlyPIDs(t, s.PID)

	// Revert.
	strict := manager.Spec{Name: "echo", Binary: "echo", Policy: manager.HealthPolicy{PanicThreshold: 1}}
	rr, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo", Spec: &strict, Bake: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	st.setFail(true)
	if _, err := m.Invoke(ctx, "echo", "panic", []byte("x")); err == nil {
		t.Fatal("panic call succeeded")
	}
	h := waitBake(t, m, "echo", 3, 5*time.Second)
	if h.Bake.Result != manager.BakeCancelled || !strings.Contains(h.Bake.Reason, "recording") || h.Generation != 3 || h.State != manager.StateUnhealthy {
		t.Fatalf("a revert that cannot be recorded: %+v %+v", h, h.Bake)
	}
	if r, _ := st.record("echo"); r.Generation != 3 {
		t.Fatalf("stored generation %d after the revert was refused, want 3", r.Generation)
	}
	onlyPIDs(t, rr.Status.PID)
	st.setFail(false)
}

// A plugin whose stored record cannot be read is listed UNHEALTHY with the
// reason, the others are restored; the operator can Load over it or Unload
// it.
func TestRestoreKeepsUnreadableRecords(t *testing.T) {
	ctx := context.Background()
	st := newFlakyStore()
	for _, n := range []string{"a", "c"} {
		st.plugins[n] = manager.PluginRecord{Name: n, Spec: manager.Spec{Name: n, Binary: "echo"}, Generation: 4, PluginName: "echo"}
	}
	st.plugins["b"] = manager.PluginRecord{Name: "b", Unreadable: "proto: cannot parse invalid wire-format data"}
	st.plugins["d"] = manager.PluginRecord{Name: "d", Unreadable: "proto: cannot parse invalid wire-format data"}
	m := newFlakyManager(t, st)
	if err := m.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "c"} {
		if s, _ := m.Get(n); s.State != manager.StateServing || s.Generation != 5 {
			t.Fatalf("%s: %+v", n, s)
		}
	}
	b, _ := m.Get("b")
	if b.State != manager.StateUnhealthy || !strings.Contains(b.LastError, "stored record unreadable: proto") {
		t.Fatalf("b: %+v", b)
	}
	if h := health(t, m, "b"); !strings.Contains(h.Reason, "stored record unreadable") {
		t.Fatalf("b's health: %+v", h)
	}
	if _, err := m.Reload(ctx, manager.ReloadRequest{Name: "b"}); !errors.Is(err, manager.ErrUnreadable) {
		t.Fatalf("Reload of an unreadable record: %v", err)
	}
	// Load over it.
	if _, err := m.Load(ctx, manager.Spec{Name: "b", Binary: "echo"}); err != nil {
		t.Fatalf("Load over an unreadable record: %v", err)
	}
	if r, _ := st.record("b"); r.Unreadable != "" || r.Spec.Binary != "echo" {
		t.Fatalf("stored after the Load over it: %+v", r)
	}
	// Unload it.
	if _, err := m.Unload(ctx, "d", 0); err != nil {
		t.Fatalf("Unload of an unreadable record: %v", err)
	}
	if _, ok := st.record("d"); ok {
		t.Fatal("the unreadable record stays after Unload")
	}
	page, _ := m.Audit("d", 0, 10)
	if len(page.Records) != 2 || page.Records[1].Action != "restore" || page.Records[1].Outcome != "failed" || page.Records[0].Action != "unload" {
		t.Fatalf("audit of d: %+v", page.Records)
	}
}
