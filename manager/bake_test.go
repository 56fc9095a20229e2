package manager_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
)

// waitBake waits until name's bake of generation gen has ended and
// returns the health record that says so.
func waitBake(t *testing.T, m *manager.Manager, name string, gen uint64, d time.Duration) manager.Health {
	t.Helper()
	return waitHealth(t, m, name, d, fmt.Sprintf("want the bake of generation %d ended", gen), func(h manager.Health) bool {
		b := h.Bake
		return b != nil && b.Generation == gen && b.Result != manager.BakeBaking
	})
}

// lastAudit returns the newest audit record of name.
func lastAudit(t *testing.T, m *manager.Manager, name string) manager.AuditRecord {
	t.Helper()
	page, err := m.Audit(name, 0, 1)
	if err != nil || len(page.Records) != 1 {
		t.Fatalf("audit: %v %v", page, err)
	}
	return page.Records[0]
}

// A new generation that panics on 2 calls during its bake is reverted to
// the old process (the same pid) by the manager itself, within a second of
// the threshold, while 4 callers calling echo see no failure.
func TestBakeRevertsAPanickingGeneration(t *testing.T) {
	m, _ := newManagerWith(t, nil)
	ctx := context.Background()
	res, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	oldPID := res.Status.PID
	var echoes atomic.Int64
	loop := testbin.StartLoop(4, func() error {
		_, err := m.Invoke(ctx, "echo", "echo", []byte("x"))
		echoes.Add(1)
		return err
	})
	strict := manager.Spec{Name: "echo", Binary: "echo", Policy: manager.HealthPolicy{PanicThreshold: 2}}
	rr, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo", Spec: &strict, Bake: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	newPID := rr.Status.PID
	if h := health(t, m, "echo"); h.Bake == nil || h.Bake.Result != manager.BakeBaking || h.Bake.Generation != 2 || h.Bake.PreviousGeneration != 1 {
		t.Fatalf("bake after the reload: %+v", h.Bake)
	}
	if !testbin.Alive(oldPID) {
		t.Fatal("the previous process is not kept warm")
	}
	for _, p := range []string{"one", "two"} {
		if _, err := m.Invoke(ctx, "echo", "panic", []byte(p)); err == nil {
			t.Fatal("panic call succeeded")
		}
	}
	threshold := time.Now()
	h := waitBake(t, m, "echo", 2, 5*time.Second)
	took := time.Since(threshold)
	calls, failed, first := loop.Stop()
	if h.Bake.Result != manager.BakeReverted || h.Bake.RevertedTo != 3 || !strings.Contains(h.Bake.Reason, "2 panics") {
		t.Fatalf("bake: %+v", h.Bake)
	}
	t.Logf("threshold to revert: %v; %d echo calls meanwhile", took, echoes.Load())
	if took > time.Second {
		t.Fatalf("reverted %v after the threshold, want within 1s", took)
	}
	st, _ := m.Get("echo")
	if st.PID != oldPID || st.Generation != 3 || st.State != manager.StateServing || st.Spec.Policy.PanicThreshold != 0 {
		t.Fatalf("after the revert: pid %d (old %d, new %d), %+v", st.PID, oldPID, newPID, st)
	}
	if !strings.Contains(st.LastError, "reverted") {
		t.Fatalf("last_error %q does not say it reverted", st.LastError)
	}
	if failed != 0 || calls == 0 {
		t.Fatalf("%d of %d echo calls failed: %v", failed, calls, first)
	}
	if !testbin.WaitGone(newPID, 5*time.Second) {
		t.Fatal("the failed generation's process still runs")
	}
	if a := lastAudit(t, m, "echo"); a.Action != "revert" || a.OldGeneration != 2 || a.NewGeneration != 3 || a.Outcome != "ok" {
		t.Fatalf("audit: %+v", a)
	}
	if r, err := m.Invoke(ctx, "echo", "echo", []byte("back")); err != nil || r.Generation != 3 {
		t.Fatalf("invoke after the revert: %v %+v", err, r)
	}
}

// A new generation that crashes during its bake is reverted too.
func TestBakeRevertsACrashingGeneration(t *testing.T) {
	m, _ := newManagerWith(t, nil)
	ctx := context.Background()
	res, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	crashing := manager.Spec{Name: "echo", Binary: "echo", Config: []byte("crash_after=200ms")}
	rr, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo", Spec: &crashing, Bake: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	h := waitBake(t, m, "echo", 2, 5*time.Second)
	if h.Bake.Result != manager.BakeReverted || !strings.Contains(h.Bake.Reason, "crashed") || h.State != manager.StateServing {
		t.Fatalf("after the crash: state %s, bake %+v", h.State, h.Bake)
	}
	st, _ := m.Get("echo")
	if st.PID != res.Status.PID || st.Generation != 3 || len(st.Spec.Config) != 0 || h.Restarts != 0 {
		t.Fatalf("after the revert: %+v (restarts %d)", st, h.Restarts)
	}
	if !testbin.WaitGone(rr.Status.PID, 5*time.Second) {
		t.Fatal("the crashed generation's process still runs")
	}
}

// A clean bake stops the previous process when it ends; a Reload during a
// bake ends it at once.
func TestBakeKeptAndCancelled(t *testing.T) {
	m, _ := newManagerWith(t, nil)
	ctx := context.Background()
	res, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo", Bake: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if !testbin.Alive(res.Status.PID) {
		t.Fatal("previous process stopped during the bake")
	}
	h := waitBake(t, m, "echo", 2, 5*time.Second)
	if h.Bake.Result != manager.BakeKept || h.Generation != 2 {
		t.Fatalf("after the bake: %+v", h)
	}
	if !testbin.WaitGone(res.Status.PID, 5*time.Second) {
		t.Fatal("the previous process still runs after a clean bake")
	}

	st, _ := m.Get("echo")
	if _, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo", Bake: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo", Bake: manager.NoBake}); err != nil {
		t.Fatal(err)
	}
	h = health(t, m, "echo")
	if h.Bake == nil || h.Bake.Generation != 3 || h.Bake.Result != manager.BakeCancelled || !strings.Contains(h.Bake.Reason, "superseded") {
		t.Fatalf("bake after a reload during it: %+v", h.Bake)
	}
	if !testbin.WaitGone(st.PID, 5*time.Second) {
		t.Fatal("the warm process of a cancelled bake still runs")
	}
}

// A plugin stopped with SIGSTOP fails its liveness probes (300ms, 2 in a
// row): a hang failure makes it UNHEALTHY and the restart action replaces
// it within 2s; the stopped process is gone.
func TestLivenessReplacesAHungPlugin(t *testing.T) {
	m, _ := newManagerWith(t, nil)
	ctx := context.Background()
	res, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo", Policy: manager.HealthPolicy{
		LivenessInterval: 300 * time.Millisecond, LivenessFailures: 2, OnUnhealthy: manager.ActionRestart,
	}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond) // probes pass meanwhile
	if h := health(t, m, "echo"); h.State != manager.StateServing || h.Failures[2].Lifetime != 0 {
		t.Fatalf("a live plugin: %+v", h)
	}
	pid := res.Status.PID
	stopped := time.Now()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitServing(t, m, "echo", 2, 2*time.Second)
	if st, _ := m.Get("echo"); st.Generation != 2 || st.PID == pid {
		t.Fatalf("hung plugin not replaced: %+v", st)
	}
	t.Logf("SIGSTOP to a serving replacement: %v", time.Since(stopped))
	if !testbin.WaitGone(pid, 2*time.Second) {
		t.Fatal("the hung process still exists")
	}
	h := health(t, m, "echo")
	if h.Failures[2].Class != manager.FailureHang || h.Failures[2].Lifetime != 1 {
		t.Fatalf("hang not counted: %+v", h.Failures)
	}
	if r, err := m.Invoke(ctx, "echo", "echo", []byte("ok")); err != nil || r.Generation != 2 {
		t.Fatalf("invoke after the replacement: %v", err)
	}
}

// Liveness probing is mostly a read of the process's state, which a
// deadlocked handler passes; the full probe (Ready) every fullProbeEvery
// intervals finds it, and the probes after a failed full one are full too,
// so the hang is declared LivenessFailures intervals later.
func TestLivenessFindsADeadlockedHandler(t *testing.T) {
	m, _ := newManagerWith(t, nil)
	ctx := context.Background()
	const interval = 50 * time.Millisecond
	res, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo", Config: []byte("deadlock_after=300ms"), Policy: manager.HealthPolicy{
		LivenessInterval: interval, LivenessFailures: 2, OnUnhealthy: manager.ActionRestart,
	}})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitServing(t, m, "echo", 2, 5*time.Second)
	took := time.Since(start)
	st, _ := m.Get("echo")
	h := health(t, m, "echo")
	if st.PID == res.Status.PID || h.Failures[2].Class != manager.FailureHang || h.Failures[2].Lifetime != 1 {
		t.Fatalf("deadlocked plugin not replaced for a hang: %+v %+v", st, h.Failures)
	}
	// 300ms until the deadlock, then at most 10 intervals to the next full
	// probe and 2 full probes that time out.
	t.Logf("deadlocked at 300ms, replaced after %v (interval %v)", took, interval)
}

// Calls that time out inside the plugin are their own failure class, with
// their own threshold.
func TestTimeoutsAreAFailureClass(t *testing.T) {
	m, _ := newManagerWith(t, nil)
	ctx := context.Background()
	if _, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo", Policy: manager.HealthPolicy{
		Timeouts: manager.FailureLimit{Threshold: 2, Window: time.Minute},
	}}); err != nil {
		t.Fatal(err)
	}
	timeout := func() {
		cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if _, err := m.Invoke(cctx, "echo", "sleep", []byte("2s")); err == nil {
			t.Fatal("a 2s sleep with a 50ms deadline succeeded")
		}
	}
	timeout()
	h := health(t, m, "echo")
	if h.State != manager.StateDegraded || h.Failures[3].Class != manager.FailureTimeout || h.Failures[3].InWindow != 1 || h.PanicsInWindow != 0 {
		t.Fatalf("after one timeout: %+v", h)
	}
	timeout()
	h = health(t, m, "echo")
	if h.State != manager.StateUnhealthy || h.Failures[3].Lifetime != 2 || !strings.Contains(h.Reason, "timeout") {
		t.Fatalf("after two timeouts: %+v", h)
	}
}
