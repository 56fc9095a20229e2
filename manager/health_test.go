package manager_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
)

// newManagerWith is newManager with a config hook and a captured log.
func newManagerWith(t *testing.T, tweak func(*manager.Config)) (*manager.Manager, *testbin.Buffer) {
	t.Helper()
	logs := &testbin.Buffer{}
	cfg := manager.Config{PluginDir: pluginDir, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	if tweak != nil {
		tweak(&cfg)
	}
	m, err := manager.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	noRefusedTransitions(t, m)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = m.Close(ctx)
	})
	return m, logs
}

func health(t *testing.T, m *manager.Manager, name string) manager.Health {
	t.Helper()
	hs, _, err := m.Health([]string{name})
	if err != nil || len(hs) != 1 {
		t.Fatalf("Health(%s): %v %v", name, hs, err)
	}
	return hs[0]
}

// waitHealth follows name's health (a Watch: its snapshot, then every
// change) until ok accepts a record, and returns it; after d it fails the
// test with what describes the wait and the last record seen.
func waitHealth(t *testing.T, m *manager.Manager, name string, d time.Duration, what string, ok func(manager.Health) bool) manager.Health {
	t.Helper()
	h, err := watchUntil(m, name, d, ok)
	if err != nil {
		t.Fatalf("%s: %s: %v; last seen %+v", name, what, err, h)
	}
	return h
}

// watchUntil is Manager.WaitHealth bounded by d.
func watchUntil(m *manager.Manager, name string, d time.Duration, ok func(manager.Health) bool) (manager.Health, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return m.WaitHealth(ctx, name, ok)
}

// waitState waits until name is in state st (or fails after d).
func waitState(t *testing.T, m *manager.Manager, name string, st manager.State, d time.Duration) manager.Health {
	t.Helper()
	return waitHealth(t, m, name, d, "want state "+st.String(), func(h manager.Health) bool { return h.State == st })
}

// waitServing waits until name serves generation gen or a later one.
func waitServing(t *testing.T, m *manager.Manager, name string, gen uint64, d time.Duration) manager.Health {
	t.Helper()
	return waitHealth(t, m, name, d, fmt.Sprintf("want generation %d serving", gen), func(h manager.Health) bool {
		return h.Generation >= gen && h.State == manager.StateServing
	})
}

// transitions replays the history after rev and returns the states name
// entered, in order (consecutive duplicates collapsed).
func transitions(t *testing.T, m *manager.Manager, name string, since uint64) []manager.State {
	t.Helper()
	w, err := m.Watch([]string{name}, since)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	evs, _ := w.Poll()
	var out []manager.State
	for _, e := range evs {
		if e.Type == manager.EventSynced {
			break
		}
		if e.Type == manager.EventSnapshot {
			t.Fatalf("history compacted; got a snapshot instead of a replay")
		}
		if len(out) == 0 || out[len(out)-1] != e.Health.State {
			out = append(out, e.Health.State)
		}
	}
	return out
}

func TestPanicsDegradeThenUnhealthyOnce(t *testing.T) {
	m, logs := newManagerWith(t, nil)
	ctx := context.Background()
	if _, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo", Policy: manager.HealthPolicy{PanicThreshold: 3, PanicWindow: time.Minute}}); err != nil {
		t.Fatal(err)
	}
	_, rev0, _ := m.Health(nil)
	if _, err := m.Invoke(ctx, "echo", "panic", []byte("one")); err == nil {
		t.Fatal("panic call succeeded")
	}
	if h := health(t, m, "echo"); h.State != manager.StateDegraded || h.PanicsInWindow != 1 || h.LastPanic == nil || h.LastPanic.Message != "one" || h.LastPanic.Fingerprint == "" {
		t.Fatalf("after one panic: %+v", h)
	}
	_, _ = m.Invoke(ctx, "echo", "panic", []byte("two"))
	if h := health(t, m, "echo"); h.State != manager.StateDegraded {
		t.Fatalf("after two panics: %s", h.State)
	}
	// Many concurrent panics: the third crosses the threshold; exactly one
	// transition to UNHEALTHY, one log line.
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = m.Invoke(ctx, "echo", "panic", []byte("many"))
		}()
	}
	wg.Wait()
	h := health(t, m, "echo")
	if h.State != manager.StateUnhealthy || h.LifetimePanics != 22 || h.PanicsInWindow != 22 {
		t.Fatalf("after 22 panics: %+v", h)
	}
	got := transitions(t, m, "echo", rev0)
	want := []manager.State{manager.StateDegraded, manager.StateUnhealthy}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("transitions = %v, want %v", got, want)
	}
	if n := strings.Count(logs.String(), `msg="plugin unhealthy"`); n != 1 {
		t.Fatalf("%d 'plugin unhealthy' log lines, want 1", n)
	}
	// The process survived every panic and still serves.
	if res, err := m.Invoke(ctx, "echo", "echo", []byte("ok")); err != nil || string(res.Payload) != "ok" {
		t.Fatalf("invoke while UNHEALTHY: %v", err)
	}
	// A Reload starts a fresh window; lifetime counts stay.
	if _, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo"}); err != nil {
		t.Fatal(err)
	}
	h = health(t, m, "echo")
	if h.State != manager.StateServing || h.PanicsInWindow != 0 || h.LifetimePanics != 22 || h.Generation != 2 {
		t.Fatalf("after reload: %+v", h)
	}
}

func TestPanicsWiderThanWindowNeverUnhealthy(t *testing.T) {
	m, _ := newManagerWith(t, nil)
	ctx := context.Background()
	window := 300 * time.Millisecond
	if _, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo", Policy: manager.HealthPolicy{PanicThreshold: 2, PanicWindow: window}}); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		_, _ = m.Invoke(ctx, "echo", "panic", []byte("spread"))
		if h := health(t, m, "echo"); h.State != manager.StateDegraded {
			t.Fatalf("panic %d: state %s, want DEGRADED", i, h.State)
		}
		// The window empties: back to SERVING.
		waitState(t, m, "echo", manager.StateServing, 3*window)
	}
	if h := health(t, m, "echo"); h.LifetimePanics != 4 || h.State != manager.StateServing {
		t.Fatalf("end: %+v", h)
	}
}

func TestCrashIsRestartedThroughThePipeline(t *testing.T) {
	m, _ := newManagerWith(t, nil)
	ctx := context.Background()
	res, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo", Policy: manager.HealthPolicy{BackoffInitial: 10 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	pid := res.Status.PID
	w, err := m.Watch([]string{"echo"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if evs, _ := w.Next(ctx); evs[len(evs)-1].Type != manager.EventSynced {
		t.Fatalf("no SYNCED: %+v", evs)
	}
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var crashSeen time.Duration
	for crashSeen == 0 {
		evs, err := w.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Health.Crashes == 1 && crashSeen == 0 {
				crashSeen = time.Since(killed)
				if !strings.Contains(e.Health.Reason, "SIGKILL") {
					t.Fatalf("crash reason %q lacks the signal", e.Health.Reason)
				}
			}
		}
	}
	t.Logf("SIGKILL to crash event at a watcher: %v", crashSeen)
	h := waitServing(t, m, "echo", 2, 5*time.Second)
	if h.Generation != 2 || h.State != manager.StateServing || h.Restarts != 1 || h.Crashes != 1 {
		t.Fatalf("after restart: %+v", h)
	}
	st, _ := m.Get("echo")
	if st.PID == pid || !testbin.Alive(st.PID) {
		t.Fatalf("restarted pid %d (old %d)", st.PID, pid)
	}
	if r, err := m.Invoke(ctx, "echo", "echo", []byte("back")); err != nil || r.Generation != 2 {
		t.Fatalf("invoke after restart: %v", err)
	}
}

func TestCrashLoopHitsRestartLimit(t *testing.T) {
	m, _ := newManagerWith(t, nil)
	ctx := context.Background()
	spec := manager.Spec{Name: "crasher", Binary: "crasher", Config: []byte("crash_after=50ms"), Policy: manager.HealthPolicy{
		RestartLimit: 3, RestartPeriod: time.Minute, BackoffInitial: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond,
	}}
	if _, err := m.Load(ctx, spec); err != nil {
		t.Fatal(err)
	}
	h := waitState(t, m, "crasher", manager.StateUnhealthy, 10*time.Second)
	if !strings.Contains(h.Reason, "restart limit reached") || h.Restarts != 3 || h.Crashes != 4 {
		t.Fatalf("at the limit: %+v", h)
	}
	// The crash carries the panic message from stderr.
	if h.LastPanic == nil || h.LastPanic.Message != "crasher: background worker lost its connection" || h.LastPanic.Fingerprint == "" {
		t.Fatalf("last panic: %+v", h.LastPanic)
	}
	if !strings.Contains(h.Reason, "panic: crasher: background worker lost its connection") {
		t.Fatalf("reason lacks the panic: %q", h.Reason)
	}
	// Invoke fails fast while nothing serves.
	start := time.Now()
	if _, err := m.Invoke(ctx, "crasher", "echo", nil); !errors.Is(err, manager.ErrUnavailable) || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("invoke on unhealthy crasher: %v after %v", err, time.Since(start))
	}
	// No further processes are started (check the OS).
	time.Sleep(300 * time.Millisecond) // time is what is tested: nothing starts within it
	if left := testbin.ProcessesIn(pluginDir); len(left) != 0 {
		t.Fatalf("processes running after the restart limit: %v", left)
	}
	if h2 := health(t, m, "crasher"); h2.Crashes != 4 || h2.State != manager.StateUnhealthy {
		t.Fatalf("restarted past the limit: %+v", h2)
	}
	// An operator reload brings it back (until it crashes again).
	if _, err := m.Reload(ctx, manager.ReloadRequest{Name: "crasher", Spec: &manager.Spec{Name: "crasher", Binary: "crasher", Config: []byte("crash_after=1h")}}); err != nil {
		t.Fatalf("operator reload: %v", err)
	}
	if h3 := health(t, m, "crasher"); h3.State != manager.StateServing || h3.Generation != 5 {
		t.Fatalf("after operator reload: %+v", h3)
	}
}

func TestUnhealthyActionStop(t *testing.T) {
	m, _ := newManagerWith(t, nil)
	ctx := context.Background()
	res, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo", Policy: manager.HealthPolicy{PanicThreshold: 1, OnUnhealthy: manager.ActionStop}})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = m.Invoke(ctx, "echo", "panic", []byte("x"))
	waitState(t, m, "echo", manager.StateStopped, 5*time.Second)
	if !testbin.WaitGone(res.Status.PID, 5*time.Second) {
		t.Fatalf("pid %d still running after action stop", res.Status.PID)
	}
}

func TestUnhealthyActionRestart(t *testing.T) {
	m, _ := newManagerWith(t, nil)
	ctx := context.Background()
	if _, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo", Policy: manager.HealthPolicy{PanicThreshold: 1, OnUnhealthy: manager.ActionRestart}}); err != nil {
		t.Fatal(err)
	}
	_, _ = m.Invoke(ctx, "echo", "panic", []byte("x"))
	if h := waitServing(t, m, "echo", 2, 5*time.Second); h.Generation != 2 {
		t.Fatalf("restarted past generation 2: %+v", h)
	}
}

func TestRecoverHelper(t *testing.T) {
	m, _ := newManagerWith(t, nil)
	loadEcho(t, m, "echo")
	func() {
		defer m.Recover("echo", "sync-job")
		panic("embedder bug")
	}()
	h := health(t, m, "echo")
	if h.State != manager.StateDegraded || h.LifetimePanics != 1 || h.LastPanic == nil || h.LastPanic.Message != "sync-job: embedder bug" {
		t.Fatalf("after Recover: %+v", h)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		defer m.Recover("echo", "sync-job")
	})
	if allocs != 0 {
		t.Fatalf("Recover without a panic allocates %v times per call", allocs)
	}
}

func TestWatchSnapshotReplayAndReset(t *testing.T) {
	m, _ := newManagerWith(t, func(c *manager.Config) { c.HealthHistory = 16 })
	loadEcho(t, m, "a")
	loadEcho(t, m, "b")
	w, err := m.Watch(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	evs, _ := w.Poll()
	w.Close()
	if len(evs) != 3 || evs[0].Type != manager.EventSnapshot || evs[0].Health.Name != "a" || evs[1].Health.Name != "b" || evs[2].Type != manager.EventSynced {
		t.Fatalf("snapshot: %+v", evs)
	}
	synced := evs[2].Revision

	// Changes while nobody watches, then resume: exactly the missed ones.
	for range 3 {
		func() {
			defer m.Recover("a", "op")
			panic("x")
		}()
	}
	w, _ = m.Watch(nil, synced)
	evs, _ = w.Poll()
	w.Close()
	if len(evs) != 4 || evs[3].Type != manager.EventSynced {
		t.Fatalf("replay: %+v", evs)
	}
	for i, e := range evs[:3] {
		if e.Type != manager.EventChanged || e.Revision != synced+uint64(i)+1 || e.Health.LifetimePanics != uint64(i+1) {
			t.Fatalf("replay event %d: %+v", i, e)
		}
	}
	// Compact the history past synced: a reset snapshot.
	for range 40 {
		func() {
			defer m.Recover("b", "op")
			panic("y")
		}()
	}
	w, _ = m.Watch([]string{"b"}, synced)
	evs, _ = w.Poll()
	w.Close()
	if len(evs) != 2 || evs[0].Type != manager.EventSnapshot || !evs[0].Reset || evs[0].Health.LifetimePanics != 40 || evs[1].Type != manager.EventSynced {
		t.Fatalf("reset: %+v", evs)
	}
}

func TestStalledWatcherBlocksNobody(t *testing.T) {
	m, _ := newManagerWith(t, func(c *manager.Config) { c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil)) })
	loadEcho(t, m, "echo")
	stalled, err := m.Watch(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	live, err := m.Watch(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()

	var liveLast atomic.Uint64
	var liveCount int
	liveErr := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		var last uint64
		for {
			evs, err := live.Next(ctx)
			if err != nil {
				liveErr <- nil
				return
			}
			for _, e := range evs {
				if e.Revision < last || (e.Revision == last && e.Type != manager.EventSynced) {
					liveErr <- fmt.Errorf("revision %d after %d: not strictly increasing", e.Revision, last)
					return
				}
				last = e.Revision
				liveCount++
			}
			liveLast.Store(last)
		}
	}()
	const changes = 100_000
	start := time.Now()
	for range changes {
		func() {
			defer m.Recover("echo", "op")
			panic("x")
		}()
	}
	took := time.Since(start)
	_, rev, _ := m.Health(nil)
	waitUntil(t, 10*time.Second, func() bool { return liveLast.Load() == rev })
	cancel()
	if err := <-liveErr; err != nil {
		t.Fatal(err)
	}
	// The stalled watcher resumes and sees the latest state: its pending
	// updates were coalesced to one per plugin.
	var evs []manager.Event
	for {
		batch, _ := stalled.Poll()
		if len(batch) == 0 {
			break
		}
		evs = append(evs, batch...)
	}
	last := evs[len(evs)-1]
	if last.Health.LifetimePanics != changes || last.Revision != rev {
		t.Fatalf("stalled watcher's last event: %+v (rev %d)", last, rev)
	}
	if len(evs) > 3 {
		t.Fatalf("stalled watcher holds %d events; pending updates should coalesce per plugin", len(evs))
	}
	t.Logf("%d changes in %v with a stalled watcher; the live watcher got %d events, the stalled one %d", changes, took, liveCount, len(evs))
}

func waitUntil(t *testing.T, d time.Duration, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(5 * time.Millisecond) // polls what has no event: processes in /proc, a counter another goroutine keeps
	}
}
