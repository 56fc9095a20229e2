package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fastRestarts is a health policy whose supervisor restarts quickly.
var fastRestarts = manager.HealthPolicy{BackoffInitial: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond}

// callCode is the gRPC code of a failed Invoke as the server would map it:
// a plugin's status for a CallError, Unavailable for ErrUnavailable.
func callCode(err error) codes.Code {
	var ce *manager.CallError
	switch {
	case errors.As(err, &ce):
		return status.Code(ce.Err)
	case errors.Is(err, manager.ErrUnavailable):
		return codes.Unavailable
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	default:
		return codes.Unknown
	}
}

// codeCounts counts failures by code.
func codeCounts(errs []error) map[codes.Code]int {
	out := map[codes.Code]int{}
	for _, err := range errs {
		out[callCode(err)]++
	}
	return out
}

// TestSigkillPluginUnderLoad: a plugin SIGKILLed while 4 callers keep
// invoking it is noticed as a crash and restarted by the supervisor (a new
// generation, SERVING); calls fail only while no generation runs, and only
// with Unavailable.
func TestSigkillPluginUnderLoad(t *testing.T) {
	m, sock := newManager(t, manager.Config{})
	st := load(t, m, manager.Spec{Name: "echo", Binary: "echo", Policy: fastRestarts})
	l := invokeLoad(t, m, "echo", "sleep", "1ms", 4, 5*time.Second)
	killed := time.Now()
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		l.stop()
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err := m.WaitHealth(ctx, "echo", serving(2))
	cancel()
	now, _ := m.Get("echo")
	if err != nil {
		l.stop()
		t.Fatalf("not restarted 10s after SIGKILL: %+v", now)
	}
	recovered := time.Since(killed)
	if !l.until(func(s loadStats) bool { return s.gens[2] >= 10 }) {
		t.Errorf("generation 2 served fewer than 10 calls within 10s")
	}
	s := l.stop()
	t.Logf("SIGKILL under load: %d calls, %d failed %v, per generation %v; SERVING again after %v", s.calls, s.failures, codeCounts(s.errs), s.gens, recovered)
	gone(t, "SIGKILLed generation", st.PID)
	if now.PID == st.PID || now.Restarts != 1 {
		t.Fatalf("after restart: %+v", now)
	}
	for _, err := range s.errs {
		if c := callCode(err); c != codes.Unavailable {
			t.Errorf("call failed with %v (%v), want only Unavailable while the plugin is down", c, err)
		}
	}
	if s.gens[1] == 0 || s.gens[2] == 0 {
		t.Fatalf("calls per generation %v: want calls served by both", s.gens)
	}
	hs, _, err := m.Health([]string{"echo"})
	if err != nil || len(hs) != 1 || hs[0].Crashes != 1 {
		t.Fatalf("health after a crash: %+v %v", hs, err)
	}
	serves(t, m, "echo", 2, now.PID)
	if d := sockDirs(sock); len(d) != 1 {
		t.Fatalf("socket directories %v: want only the new generation's (go-plugin leaves the crashed one's socket)", d)
	}
	onlyProcesses(t, pluginDir, []int{now.PID})
}

// TestSigstopPluginUnderLoad: a SIGSTOPped plugin does not exit, so nothing
// notices it but its callers: calls hit their deadlines. A Reload replaces
// the stopped generation (the candidate does not depend on it), drains the
// stuck calls (bounded by their deadlines) and kills the stopped process.
func TestSigstopPluginUnderLoad(t *testing.T) {
	m, sock := newManager(t, manager.Config{DrainTimeout: 2 * time.Second})
	st := load(t, m, manager.Spec{Name: "echo", Binary: "echo"})
	const perCall = 200 * time.Millisecond
	l := invokeLoad(t, m, "echo", "sleep", "1ms", 4, perCall)
	if err := syscall.Kill(st.PID, syscall.SIGSTOP); err != nil {
		l.stop()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(st.PID, syscall.SIGCONT) })
	// Every caller's call meets its deadline on the stopped process.
	l.until(func(s loadStats) bool { return s.failures >= 8 })
	stopped := l.stop()
	t.Logf("SIGSTOP: %d calls, %d failed %v", stopped.calls, stopped.failures, codeCounts(stopped.errs))
	if stopped.failures == 0 {
		t.Fatalf("no call failed while the plugin was stopped")
	}
	for _, err := range stopped.errs {
		if c := callCode(err); c != codes.DeadlineExceeded {
			t.Errorf("call to a stopped plugin failed with %v (%v), want DeadlineExceeded", c, err)
		}
	}
	// Liveness probing is off by default and timeouts are counted, not
	// judged: the stopped generation still counts as SERVING.
	if now, _ := m.Get("echo"); now.State != manager.StateServing || now.PID != st.PID {
		t.Fatalf("stopped plugin: %+v", now)
	}

	// Reload while callers are still stuck on the stopped generation.
	l = invokeLoad(t, m, "echo", "sleep", "1ms", 4, perCall) // returns after a round of calls timed out: the next round is stuck
	start := time.Now()
	rr, err := m.Reload(context.Background(), manager.ReloadRequest{Name: "echo"})
	took := time.Since(start)
	if err != nil {
		l.stop()
		t.Fatalf("Reload of a stopped generation: %v", err)
	}
	l.until(func(s loadStats) bool { return s.gens[2] >= 10 })
	after := l.stop()
	t.Logf("Reload replacing the stopped generation took %v (drained %d calls, timed out %v); callers: %d calls, %d failed %v, per generation %v",
		took, rr.Report.DrainedCalls, rr.Report.DrainTimedOut, after.calls, after.failures, codeCounts(after.errs), after.gens)
	if took > 5*time.Second {
		t.Errorf("Reload took %v", took)
	}
	gone(t, "stopped generation after Reload", st.PID)
	if after.gens[2] == 0 {
		t.Fatalf("no call served by the new generation: %v", after.gens)
	}
	for _, err := range after.errs {
		if c := callCode(err); c != codes.DeadlineExceeded {
			t.Errorf("call failed with %v (%v), want only deadlines of calls stuck on the stopped generation", c, err)
		}
	}
	serves(t, m, "echo", 2, rr.Status.PID)
	if d := sockDirs(sock); len(d) != 1 {
		t.Fatalf("socket directories %v, want 1", d)
	}
	onlyProcesses(t, pluginDir, []int{rr.Status.PID})
}

// TestSigkillPluginWhoseChildHoldsStderr: a plugin whose child inherited its
// stderr (a shell-out with cmd.Stderr = os.Stderr) is SIGKILLed alone. The
// child keeps go-plugin's stderr pipe open, and go-plugin only reports the
// exit after both pipes hit EOF, so the crash must still be noticed (and
// the child killed) for the supervisor to restart it: with the child in
// the plugin's process group (-inherit) and out of it (-escape: setsid).
func TestSigkillPluginWhoseChildHoldsStderr(t *testing.T) {
	for _, mode := range []string{"-inherit", "-escape"} {
		t.Run(mode, func(t *testing.T) { sigkillWithChild(t, mode) })
	}
}

func sigkillWithChild(t *testing.T, mode string) {
	m, _ := newManager(t, manager.Config{})
	st := load(t, m, manager.Spec{Name: "fk", Binary: "forker", Args: []string{mode}, Policy: fastRestarts})
	child := childPID(t, m, "fk")
	t.Cleanup(func() { killOurs(child) })
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	gone(t, "SIGKILLed plugin", st.PID)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	h, err := m.WaitHealth(ctx, "fk", serving(2))
	cancel()
	if err != nil {
		t.Errorf("crash of pid %d not noticed 5s after SIGKILL (its child %d, alive %v, holds the stderr pipe): %+v",
			st.PID, child, testbin.Alive(child), h)
		// Unblock go-plugin so Close can finish.
		_ = syscall.Kill(child, syscall.SIGKILL)
		return
	}
	gone(t, "child of the crashed plugin", child)
	now, _ := m.Get("fk")
	onlyProcesses(t, pluginDir, []int{now.PID, childPID(t, m, "fk")})
}

// childPID asks a forker plugin for its child's pid.
func childPID(t *testing.T, m *manager.Manager, name string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := m.Invoke(ctx, name, "child", nil)
	if err != nil {
		t.Fatalf("%s child: %v", name, err)
	}
	var pid int
	if _, err := fmt.Sscan(string(res.Payload), &pid); err != nil || !testbin.Alive(pid) {
		t.Fatalf("%s child pid %q: %v (alive %v)", name, res.Payload, err, testbin.Alive(pid))
	}
	return pid
}
