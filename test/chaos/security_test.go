package chaos_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// replaceFile swaps the file at path for content atomically (rename), as an
// attacker or a careless deploy would: writing over a running executable
// fails with ETXTBSY.
func replaceFile(t *testing.T, path string, content []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, content, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestTamperedBinary: a pinned binary swapped on disk after Load is caught
// by go-plugin's SecureConfig at the next start, before anything runs: a
// Reload (and a validate_only Reload) fails at the checksum stage and the
// old generation keeps serving; after a SIGKILL, every supervisor restart
// fails at the checksum stage until the restart limit leaves the plugin
// UNHEALTHY. The tampered file (a script that leaves a marker when run) is
// never executed. Putting the right binary back and reloading recovers.
func TestTamperedBinary(t *testing.T) {
	dir := t.TempDir()
	good, err := os.ReadFile(filepath.Join(pluginDir, "echo"))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "tp")
	replaceFile(t, bin, good)
	sum := sha256File(t, bin)
	marker := filepath.Join(t.TempDir(), "ran")
	tampered := []byte("#!/bin/sh\necho ran >> " + marker + "\nexit 1\n")

	m, sock := newManager(t, manager.Config{PluginDir: dir})
	ctx := context.Background()
	policy := manager.HealthPolicy{RestartLimit: 2, RestartPeriod: time.Minute, BackoffInitial: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond}
	st := load(t, m, manager.Spec{Name: "tp", Binary: "tp", SHA256: sum, Policy: policy})
	if st.SHA256 != sum {
		t.Fatalf("status sha256 %q, want the pin %q", st.SHA256, sum)
	}
	rr, err := m.Reload(ctx, manager.ReloadRequest{Name: "tp"})
	if err != nil {
		t.Fatalf("Reload of the untouched pinned binary: %v", err)
	}
	var checksum bool
	for _, s := range rr.Report.Stages {
		checksum = checksum || s.Stage == manager.StageChecksum
	}
	if !checksum {
		t.Fatalf("Reload of a pinned binary reports no checksum stage: %+v", rr.Report.Stages)
	}
	pid := rr.Status.PID

	replaceFile(t, bin, tampered)
	for _, validate := range []bool{false, true} {
		_, err = m.Reload(ctx, manager.ReloadRequest{Name: "tp", ValidateOnly: validate})
		var ce *manager.CandidateError
		if !errors.As(err, &ce) || ce.Stage != manager.StageChecksum || !strings.Contains(err.Error(), "does not match the sha256 pin") {
			t.Fatalf("Reload (validate_only %v) of a tampered binary: %v, want a checksum stage failure", validate, err)
		}
		if ce.Report.CandidatePID != 0 {
			t.Fatalf("a process (pid %d) was started from the tampered binary", ce.Report.CandidatePID)
		}
		serves(t, m, "tp", 2, pid)
	}
	// A new Load of the same file with its old pin fails the same way.
	if _, err := m.Load(ctx, manager.Spec{Name: "tp2", Binary: "tp", SHA256: sum}); !isStage(err, manager.StageChecksum) {
		t.Fatalf("Load of the tampered binary with the old pin: %v", err)
	}

	// The supervisor's restarts check the pin too.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, m, "tp", 10*time.Second, "UNHEALTHY after the restart limit", func(h manager.Health) bool { return h.State == manager.StateUnhealthy })
	now, _ := m.Get("tp")
	if !strings.Contains(now.LastError, "stage checksum") || !strings.Contains(now.LastError, "restart limit reached") || now.Restarts != 0 {
		t.Fatalf("after failed restarts: %+v", now)
	}
	if _, err := m.Invoke(ctx, "tp", "echo", nil); !errors.Is(err, manager.ErrUnavailable) {
		t.Fatalf("Invoke of an UNHEALTHY plugin without a generation: %v", err)
	}
	page, _ := m.Audit("tp", 0, 100)
	restarts := 0
	for _, r := range page.Records {
		if r.Action == "restart" && r.Outcome == "failed" && strings.Contains(r.Error, "checksum") {
			restarts++
		}
	}
	if restarts != 2 {
		t.Fatalf("audit has %d failed restarts at the checksum stage, want 2: %+v", restarts, page.Records)
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the tampered binary was executed")
	}
	onlyProcesses(t, dir, nil)
	if d := sockDirs(sock); len(d) != 0 {
		t.Fatalf("socket directories %v", d)
	}

	// The operator puts the right binary back and reloads.
	replaceFile(t, bin, good)
	rr, err = m.Reload(ctx, manager.ReloadRequest{Name: "tp"})
	if err != nil {
		t.Fatalf("Reload after restoring the binary: %v", err)
	}
	serves(t, m, "tp", 3, rr.Status.PID)
}

func isStage(err error, s manager.Stage) bool {
	var ce *manager.CandidateError
	return errors.As(err, &ce) && ce.Stage == s
}

// TestRequirePin: with Config.RequirePin every spec must pin its binary, at
// Load and at Reload with a spec; a wrong pin is a checksum stage failure
// (FailedPrecondition with CandidateFailure stage CHECKSUM) and leaves
// nothing behind.
func TestRequirePin(t *testing.T) {
	f := startServer(t, manager.Config{RequirePin: true})
	ctx := context.Background()
	sum := sha256File(t, filepath.Join(pluginDir, "echo"))

	_, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "echo", Binary: "echo"}})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || badField(st) != "sha256" {
		t.Fatalf("unpinned Load: %v, want InvalidArgument on sha256", st)
	}
	_, err = f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "echo", Binary: "echo", Sha256: strings.Repeat("0", 64)}})
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition || candidateStage(st) != pb.CandidateStage_CANDIDATE_STAGE_CHECKSUM {
		t.Fatalf("Load with a wrong pin: %v, want FailedPrecondition at stage CHECKSUM", st)
	}
	if l := f.m.List(); len(l) != 0 || len(sockDirs(f.sock)) != 0 {
		t.Fatalf("refused Loads left %+v, socket directories %v", l, sockDirs(f.sock))
	}
	res, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "echo", Binary: "echo", Sha256: sum}})
	if err != nil {
		t.Fatalf("pinned Load: %v", err)
	}
	pid := int(res.GetPlugin().GetPid())
	_, err = f.ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo", Spec: &pb.PluginSpec{Name: "echo", Binary: "echo"}})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || badField(st) != "sha256" {
		t.Fatalf("unpinned Reload spec: %v, want InvalidArgument on sha256", st)
	}
	f.serves(t, "echo", 1, pid)
	// Upper-case hex is the same pin; a Reload without a spec keeps it.
	rr, err := f.ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo", Spec: &pb.PluginSpec{Name: "echo", Binary: "echo", Sha256: strings.ToUpper(sum)}})
	if err != nil || rr.GetPlugin().GetSha256() != sum {
		t.Fatalf("Reload with the upper-case pin: %v %v", err, rr.GetPlugin())
	}
	rr, err = f.ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo"})
	if err != nil {
		t.Fatalf("Reload keeping the pin: %v", err)
	}
	f.serves(t, "echo", 3, int(rr.GetPlugin().GetPid()))
}

func candidateStage(st *status.Status) pb.CandidateStage {
	for _, d := range st.Details() {
		if cf, ok := d.(*pb.CandidateFailure); ok {
			return cf.GetStage()
		}
	}
	return pb.CandidateStage_CANDIDATE_STAGE_UNSPECIFIED
}

// TestPluginEnvironmentIsExplicit: a plugin sees the variables of its spec
// and go-plugin's handshake variables, and nothing of the daemon's own
// environment (secrets, PATH, HOME), at Load and again after a Reload that
// changes the spec's environment.
func TestPluginEnvironmentIsExplicit(t *testing.T) {
	t.Setenv("PLUGIND_TEST_SECRET", "hunter2")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "also-secret")
	m, _ := newManager(t, manager.Config{})
	ctx := context.Background()
	getenv := func(name string) string {
		t.Helper()
		res, err := m.Invoke(ctx, "env", "getenv", []byte(name))
		if err != nil {
			t.Fatalf("getenv %s: %v", name, err)
		}
		return string(res.Payload)
	}
	environ := func() []string {
		t.Helper()
		res, err := m.Invoke(ctx, "env", "environ", nil)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Split(string(res.Payload), "\n")
	}
	check := func(env map[string]string) {
		t.Helper()
		for _, k := range []string{"PLUGIND_TEST_SECRET", "AWS_SECRET_ACCESS_KEY", "PATH", "HOME", "USER"} {
			if os.Getenv(k) == "" {
				continue
			}
			if v := getenv(k); v != "" && env[k] == "" {
				t.Errorf("plugin sees the daemon's %s=%q", k, v)
			}
		}
		for k, v := range env {
			if got := getenv(k); got != v {
				t.Errorf("plugin sees %s=%q, want %q from the spec", k, got, v)
			}
		}
		names := environ()
		for _, k := range names {
			if _, ok := env[k]; !ok && !strings.HasPrefix(k, "PLUGIN") {
				t.Errorf("plugin environment has %s, which is neither in the spec nor go-plugin's", k)
			}
		}
		t.Logf("plugin environment: %v", names)
	}
	env := map[string]string{"GREETING": "hello", "PLUGIND_VISIBLE": "yes"}
	load(t, m, manager.Spec{Name: "env", Binary: "envprobe", Env: env})
	check(env)
	env = map[string]string{"GREETING": "bonjour"}
	if _, err := m.Reload(ctx, manager.ReloadRequest{Name: "env", Spec: &manager.Spec{Name: "env", Binary: "envprobe", Env: env}}); err != nil {
		t.Fatal(err)
	}
	check(env)
	if v := getenv("PLUGIND_VISIBLE"); v != "" {
		t.Errorf("a variable of the previous spec survived the Reload: %q", v)
	}
}

// TestPluginChildrenDieWithIt: a plugin's own children (forker re-executes
// itself as a child in the plugin's process group) die with the plugin's
// generation: at Reload, at a crash (SIGKILL of the plugin alone, then a
// supervisor restart), at Unload, and at Close.
func TestPluginChildrenDieWithIt(t *testing.T) {
	m, _ := newManager(t, manager.Config{})
	ctx := context.Background()
	st := load(t, m, manager.Spec{Name: "fk", Binary: "forker", Policy: fastRestarts})
	child := childPID(t, m, "fk")
	if _, pg := procStat(child); pg != st.PID {
		t.Fatalf("child %d is in process group %d, want the plugin's (%d)", child, pg, st.PID)
	}

	rr, err := m.Reload(ctx, manager.ReloadRequest{Name: "fk"})
	if err != nil {
		t.Fatal(err)
	}
	gone(t, "plugin replaced by Reload", st.PID)
	gone(t, "child of the plugin replaced by Reload", child)
	child = childPID(t, m, "fk")

	if err := syscall.Kill(rr.Status.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, m, "fk", 10*time.Second, "the supervisor's restart", serving(3))
	gone(t, "child of the crashed plugin", child)
	child = childPID(t, m, "fk")
	now, _ := m.Get("fk")
	onlyProcesses(t, pluginDir, []int{now.PID, child})

	if _, err := m.Unload(ctx, "fk", 0); err != nil {
		t.Fatal(err)
	}
	gone(t, "unloaded plugin", now.PID)
	gone(t, "child of the unloaded plugin", child)

	load(t, m, manager.Spec{Name: "fk", Binary: "forker"})
	child = childPID(t, m, "fk")
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := m.Close(cctx); err != nil {
		t.Fatal(err)
	}
	gone(t, "child after Close", child)
	onlyProcesses(t, pluginDir, nil)
}

// procStat returns the parent pid and the process group of pid (zeros if
// unknown), from /proc/PID/stat.
func procStat(pid int) (ppid, pgid int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0
	}
	var state string
	fmt.Sscan(s[i+1:], &state, &ppid, &pgid)
	return ppid, pgid
}

// TestUnpinnedSwapIsReported: without a pin, a binary swapped on disk is
// run at the next Reload (nothing forbids it), but the status and the audit
// record report the new file's sha256, not a cached digest of the old one.
func TestUnpinnedSwapIsReported(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "up")
	echoBin, err := os.ReadFile(filepath.Join(pluginDir, "echo"))
	if err != nil {
		t.Fatal(err)
	}
	// flood describes itself as echo, so the Reload is allowed.
	floodBin, err := os.ReadFile(filepath.Join(pluginDir, "flood"))
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, bin, echoBin)
	echoSum := sha256File(t, bin)
	m, _ := newManager(t, manager.Config{PluginDir: dir})
	st := load(t, m, manager.Spec{Name: "up", Binary: "up"})
	if st.SHA256 != echoSum {
		t.Fatalf("status sha256 %s, want %s", st.SHA256, echoSum)
	}
	replaceFile(t, bin, floodBin)
	floodSum := sha256File(t, bin)
	rr, err := m.Reload(context.Background(), manager.ReloadRequest{Name: "up"})
	if err != nil {
		t.Fatal(err)
	}
	if rr.Status.SHA256 != floodSum {
		t.Fatalf("after the swap, status sha256 %s, want the new file's %s (old %s)", rr.Status.SHA256, floodSum, echoSum)
	}
	page, _ := m.Audit("up", 0, 1)
	audit := page.Records
	if len(audit) != 1 || audit[0].Action != "reload" || audit[0].BinarySHA256 != floodSum {
		t.Fatalf("audit of the reload: %+v, want the new sha256", audit)
	}
	serves(t, m, "up", 2, rr.Status.PID)
}

// TestUnloadWithEscapedChild: a plugin whose child left its process group
// (setsid) while holding the plugin's stderr. go-plugin's Kill returns only
// once that pipe reaches EOF, and the group kill cannot reach the child:
// Unload must still return (not wedge the plugin, and Close and shutdown
// behind it), with the plugin and the child that held its pipe gone.
func TestUnloadWithEscapedChild(t *testing.T) {
	m, sock := newManager(t, manager.Config{})
	st := load(t, m, manager.Spec{Name: "fk", Binary: "forker", Args: []string{"-escape"}})
	child := childPID(t, m, "fk")
	t.Cleanup(func() { killOurs(child) })
	if _, pg := procStat(child); pg == st.PID {
		t.Fatalf("child %d did not leave the plugin's group", child)
	}
	done := make(chan error, 1)
	go func() {
		_, err := m.Unload(context.Background(), "fk", 0)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("Unload did not return 10s after it started: go-plugin's Kill waits for the plugin's stderr, held open by its escaped child %d (plugin pid %d alive %v)",
			child, st.PID, testbin.Alive(st.PID))
		_ = syscall.Kill(child, syscall.SIGKILL)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	gone(t, "unloaded plugin", st.PID)
	if d := sockDirs(sock); len(d) != 0 {
		t.Fatalf("socket directories %v", d)
	}
	if !testbin.WaitGone(child, 5*time.Second) {
		t.Errorf("escaped child %d holding the plugin's stderr outlived Unload", child)
	}
}
