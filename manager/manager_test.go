package manager_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// newManager returns a Manager over dir (the built plugins when empty) that
// is closed when the test ends, and its socket directory.
// noRefusedTransitions fails t when m refused a lifecycle event (a bug in
// the manager) during the test.
func noRefusedTransitions(t *testing.T, m *manager.Manager) {
	t.Cleanup(func() {
		if n := m.RefusedTransitions(); n != 0 {
			t.Errorf("the manager refused %d lifecycle transitions (see the log)", n)
		}
	})
}

func newManager(t *testing.T, dir string) (*manager.Manager, string) {
	t.Helper()
	if dir == "" {
		dir = pluginDir
	}
	sock, err := os.MkdirTemp("", "pc-sock-")
	if err != nil {
		t.Fatal(err)
	}
	m, err := manager.New(manager.Config{
		PluginDir: dir,
		SocketDir: sock,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	noRefusedTransitions(t, m)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		if ents, _ := os.ReadDir(sock); len(ents) > 0 {
			t.Errorf("socket directories left after Close: %d", len(ents))
		}
		os.RemoveAll(sock)
	})
	return m, sock
}

func loadEcho(t *testing.T, m *manager.Manager, name string) manager.Status {
	t.Helper()
	res, err := m.Load(context.Background(), manager.Spec{Name: name, Binary: "echo"})
	if err != nil {
		t.Fatalf("Load %s: %v", name, err)
	}
	return res.Status
}

func TestLoadInvokeReload(t *testing.T) {
	m, _ := newManager(t, "")
	ctx := context.Background()
	st := loadEcho(t, m, "echo")
	if st.Generation != 1 || st.State != manager.StateServing || st.PID == 0 || st.Version != "1.0.0" || len(st.SHA256) != 64 {
		t.Fatalf("status after Load: %+v", st)
	}
	res, err := m.Invoke(ctx, "echo", "echo", []byte("hi"))
	if err != nil || string(res.Payload) != "hi" || res.Generation != 1 {
		t.Fatalf("Invoke: %v %+v", err, res)
	}
	rr, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo"})
	if err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if rr.Status.Generation != 2 || rr.PreviousGeneration != 1 || rr.Status.PID == st.PID || rr.Status.PID == 0 {
		t.Fatalf("after Reload: %+v (old pid %d)", rr, st.PID)
	}
	if !testbin.WaitGone(st.PID, 5*time.Second) {
		t.Fatalf("old generation pid %d still running", st.PID)
	}
	if !testbin.Alive(rr.Status.PID) {
		t.Fatalf("new generation pid %d not running", rr.Status.PID)
	}
	res, err = m.Invoke(ctx, "echo", "echo", []byte("again"))
	if err != nil || string(res.Payload) != "again" || res.Generation != 2 {
		t.Fatalf("Invoke after reload: %v %+v", err, res)
	}
	var stages []string
	for _, s := range rr.Report.Stages {
		stages = append(stages, s.Stage.String())
	}
	if got := strings.Join(stages, ","); got != "resolve,start,handshake,describe,ready,swap,drain" {
		t.Fatalf("report stages = %s", got)
	}
	if _, err := m.Unload(ctx, "echo", 0); err != nil {
		t.Fatalf("Unload: %v", err)
	}
	if !testbin.WaitGone(rr.Status.PID, 5*time.Second) {
		t.Fatalf("pid %d still running after Unload", rr.Status.PID)
	}
	if _, err := m.Invoke(ctx, "echo", "echo", nil); !errors.Is(err, manager.ErrNotFound) {
		t.Fatalf("Invoke after Unload: %v, want ErrNotFound", err)
	}
}

func TestReloadToMisbehavingCandidate(t *testing.T) {
	cases := []struct {
		binary  string
		stage   manager.Stage
		timeout time.Duration
		want    string
	}{
		{"exitstart", manager.StageStart, 0, "exited with status 3 before completing the handshake: exitstart: missing required configuration"},
		{"hang", manager.StageStart, 500 * time.Millisecond, "timeout"},
		{"badcookie", manager.StageHandshake, 0, ""},
		{"badversion", manager.StageHandshake, 0, "incompatible API version"},
		{"garbage", manager.StageHandshake, 0, "Unrecognized remote plugin message"},
		{"wrongname", manager.StageDescribe, 0, `describes itself as "notecho"`},
		{"notready", manager.StageReady, 0, "backend database unreachable"},
	}
	m, sock := newManager(t, "")
	st := loadEcho(t, m, "echo")
	for _, c := range cases {
		t.Run(c.binary, func(t *testing.T) {
			_, err := m.Reload(context.Background(), manager.ReloadRequest{
				Name: "echo",
				Spec: &manager.Spec{Name: "echo", Binary: c.binary, StartTimeout: c.timeout},
			})
			var ce *manager.CandidateError
			if !errors.As(err, &ce) {
				t.Fatalf("Reload to %s: %v, want a CandidateError", c.binary, err)
			}
			if ce.Stage != c.stage {
				t.Fatalf("stage = %s, want %s (%v; stderr %q)", ce.Stage, c.stage, err, ce.StderrTail)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "generation 1 stays active") {
				t.Fatalf("error %q lacks %q or the active generation", err, c.want)
			}
			if ce.Report.CandidatePID == 0 {
				t.Fatalf("no candidate pid reported")
			}
			if !testbin.WaitGone(ce.Report.CandidatePID, 5*time.Second) {
				t.Fatalf("candidate pid %d still running", ce.Report.CandidatePID)
			}
			now, err := m.Get("echo")
			if err != nil || now.Generation != 1 || now.PID != st.PID || now.State != manager.StateServing {
				t.Fatalf("active generation changed: %+v %v", now, err)
			}
			if !strings.Contains(now.LastError, c.stage.String()) {
				t.Fatalf("last_error %q does not name the stage", now.LastError)
			}
			if res, err := m.Invoke(context.Background(), "echo", "echo", []byte("x")); err != nil || res.Generation != 1 {
				t.Fatalf("old generation does not serve: %v", err)
			}
			// Only the active generation's socket directory remains.
			if ents, _ := os.ReadDir(sock); len(ents) != 1 {
				t.Fatalf("socket directories: %d, want 1 (the active generation's)", len(ents))
			}
		})
	}
}

func TestReloadUnderInvokeLoad(t *testing.T) {
	m, _ := newManager(t, "")
	loadEcho(t, m, "echo")
	ctx, cancel := context.WithCancel(context.Background())
	var calls, failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				_, err := m.Invoke(context.Background(), "echo", "sleep", []byte("2ms"))
				calls.Add(1)
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	const reloads = 50
	drained := 0
	for i := range reloads {
		rr, err := m.Reload(context.Background(), manager.ReloadRequest{Name: "echo"})
		if err != nil {
			cancel()
			wg.Wait()
			t.Fatalf("reload %d: %v", i, err)
		}
		drained += rr.Report.DrainedCalls
		if rr.Report.DrainTimedOut {
			t.Errorf("reload %d: drain timed out", i)
		}
	}
	cancel()
	wg.Wait()
	if failures.Load() != 0 {
		t.Fatalf("%d of %d invokes failed across %d reloads; first: %v", failures.Load(), calls.Load(), reloads, firstErr.Load())
	}
	if drained == 0 {
		t.Fatalf("no reload had calls in flight to drain; the test did not exercise draining")
	}
	t.Logf("%d invokes, %d drained in flight, 0 failed, across %d reloads", calls.Load(), drained, reloads)
}

func TestValidateOnlyAndExpectedGeneration(t *testing.T) {
	m, _ := newManager(t, "")
	st := loadEcho(t, m, "echo")
	ctx := context.Background()
	rr, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo", ValidateOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if rr.Status.Generation != 1 || rr.Status.PID != st.PID {
		t.Fatalf("validate_only changed the plugin: %+v", rr.Status)
	}
	if !testbin.WaitGone(rr.Report.CandidatePID, 5*time.Second) {
		t.Fatalf("validate_only candidate %d still running", rr.Report.CandidatePID)
	}
	_, err = m.Reload(ctx, manager.ReloadRequest{Name: "echo", ExpectedGeneration: 7})
	var gm *manager.GenerationMismatchError
	if !errors.As(err, &gm) || gm.Active != 1 || gm.Expected != 7 {
		t.Fatalf("expected_generation mismatch: %v", err)
	}
	if now, _ := m.Get("echo"); now.Generation != 1 || now.PID != st.PID {
		t.Fatalf("mismatch changed the plugin: %+v", now)
	}
	if _, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo", ExpectedGeneration: 1}); err != nil {
		t.Fatalf("matching expected_generation: %v", err)
	}
}

func TestHandlerPanicIsRecovered(t *testing.T) {
	m, _ := newManager(t, "")
	st := loadEcho(t, m, "echo")
	_, err := m.Invoke(context.Background(), "echo", "panic", []byte("boom"))
	var ce *manager.CallError
	if !errors.As(err, &ce) || ce.Panic == nil {
		t.Fatalf("Invoke panic: %v, want a CallError with panic info", err)
	}
	if ce.Panic.Message != "boom" || len(ce.Panic.Fingerprint) != 16 || !strings.Contains(ce.Panic.Stack, "goroutine") {
		t.Fatalf("panic info: %+v", ce.Panic)
	}
	if status.Code(ce.Err) != codes.Internal {
		t.Fatalf("code = %v, want Internal", status.Code(ce.Err))
	}
	_, err2 := m.Invoke(context.Background(), "echo", "panic", []byte("boom"))
	if !errors.As(err2, &ce) || ce.Panic == nil {
		t.Fatalf("second panic: %v", err2)
	}
	first := ce.Panic.Fingerprint
	_ = first
	if !testbin.Alive(st.PID) {
		t.Fatalf("plugin process died after a handler panic")
	}
	if res, err := m.Invoke(context.Background(), "echo", "echo", []byte("ok")); err != nil || string(res.Payload) != "ok" {
		t.Fatalf("plugin does not serve after a panic: %v", err)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	dir := t.TempDir()
	copyFile(t, filepath.Join(pluginDir, "echo"), filepath.Join(dir, "echo"), 0o755)
	copyFile(t, filepath.Join(pluginDir, "echo"), filepath.Join(dir, "noexec"), 0o644)
	outside := t.TempDir()
	copyFile(t, filepath.Join(pluginDir, "echo"), filepath.Join(outside, "evil"), 0o755)
	if err := os.Symlink(filepath.Join(outside, "evil"), filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("echo", filepath.Join(dir, "alias")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	m, _ := newManager(t, dir)
	ctx := context.Background()
	loadEcho(t, m, "echo")

	bad := []struct {
		spec  manager.Spec
		field string
		want  string
	}{
		{manager.Spec{Name: "Echo2", Binary: "echo"}, "name", "must match"},
		{manager.Spec{Name: "", Binary: "echo"}, "name", "must match"},
		{manager.Spec{Name: "e\xff", Binary: "echo"}, "name", "must match"},
		{manager.Spec{Name: strings.Repeat("a", 64), Binary: "echo"}, "name", "must match"},
		{manager.Spec{Name: "x", Binary: "../x"}, "binary", `contains ".."`},
		{manager.Spec{Name: "x", Binary: "sub/../../x"}, "binary", `contains ".."`},
		{manager.Spec{Name: "x", Binary: filepath.Join(outside, "evil")}, "binary", "absolute path"},
		{manager.Spec{Name: "x", Binary: ""}, "binary", "required"},
		{manager.Spec{Name: "x", Binary: "echo", SHA256: "zz"}, "sha256", "64 hex digits"},
		{manager.Spec{Name: "x", Binary: "echo", Env: map[string]string{"PLUGIN_X": "1"}}, "env", "reserved"},
		{manager.Spec{Name: "x", Binary: "echo", StartTimeout: -time.Second}, "start_timeout", "outside"},
		{manager.Spec{Name: "x", Binary: "echo", ReadyTimeout: 11 * time.Minute}, "ready_timeout", "outside 0..10m0s"},
		{manager.Spec{Name: "x", Binary: "echo", Env: map[string]string{"PLUGINCONTROL_CONTAIN": "x"}}, "env", "set by plugind"},
		{manager.Spec{Name: "x", Binary: "echo", Env: map[string]string{"K" + strings.Repeat("k", 256): "1"}}, "env", "at most 256 bytes"},
		{manager.Spec{Name: "x", Binary: "echo", Resources: manager.Resources{MemoryMax: 4096}}, "resources.memory_max_bytes", "at least 1 MiB"},
		{manager.Spec{Name: "x", Binary: "echo", Resources: manager.Resources{PidsMax: -1}}, "resources.pids_max", "negative"},
		{manager.Spec{Name: "x", Binary: "echo", Resources: manager.Resources{CPUMax: "50000 100000 x"}}, "resources.cpu_max", "QUOTA PERIOD"},
		{manager.Spec{Name: "x", Binary: "echo", Resources: manager.Resources{CPUMax: "max 100000"}}, "resources.cpu_max", "QUOTA PERIOD"},
		{manager.Spec{Name: "x", Binary: "echo", Resources: manager.Resources{CPUMax: "500 100000"}}, "resources.cpu_max", "quota at least 1000"},
	}
	for _, b := range bad {
		_, err := m.Load(ctx, b.spec)
		var ie *manager.InvalidError
		if !errors.As(err, &ie) || ie.Field != b.field || !strings.Contains(err.Error(), b.want) {
			t.Errorf("Load(%+v) = %v, want InvalidError on %s containing %q", b.spec, err, b.field, b.want)
		}
	}
	resolveFails := []struct{ binary, want string }{
		{"escape", "outside the plugin directory"},
		{"missing", "not found in plugin directory"},
		{"noexec", "not executable"},
		{"sub", "not a regular file"},
	}
	for _, r := range resolveFails {
		_, err := m.Load(ctx, manager.Spec{Name: "x", Binary: r.binary})
		var ce *manager.CandidateError
		if !errors.As(err, &ce) || ce.Stage != manager.StageResolve || !strings.Contains(err.Error(), r.want) {
			t.Errorf("Load binary %q = %v, want resolve failure containing %q", r.binary, err, r.want)
		}
		_, err = m.Reload(ctx, manager.ReloadRequest{Name: "echo", Spec: &manager.Spec{Name: "echo", Binary: r.binary}})
		if !errors.As(err, &ce) || ce.Stage != manager.StageResolve {
			t.Errorf("Reload to binary %q = %v, want resolve failure", r.binary, err)
		}
	}
	// A symlink inside the directory is fine.
	if _, err := m.Load(ctx, manager.Spec{Name: "alias", Binary: "alias"}); err != nil {
		t.Errorf("Load through an in-directory symlink: %v", err)
	}
	if _, err := m.Unload(ctx, "nope", 0); !errors.Is(err, manager.ErrNotFound) {
		t.Errorf("Unload unknown: %v", err)
	}
	if _, err := m.Reload(ctx, manager.ReloadRequest{Name: "nope"}); !errors.Is(err, manager.ErrNotFound) {
		t.Errorf("Reload unknown: %v", err)
	}
	if _, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo"}); !errors.Is(err, manager.ErrAlreadyExists) {
		t.Errorf("Load twice: %v", err)
	}
	if _, err := m.Reload(ctx, manager.ReloadRequest{Name: "echo", Spec: &manager.Spec{Name: "other", Binary: "echo"}}); err == nil {
		t.Errorf("Reload with a spec for another name succeeded")
	}
	list := m.List()
	if len(list) != 2 || list[0].Name != "alias" || list[1].Name != "echo" || list[1].Generation != 1 {
		t.Fatalf("bad input changed the registry: %+v", list)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// TestSpecReadyTimeout: a spec's ready_timeout bounds its ready stage, not
// the manager's default (5s here): slowready, whose probe never answers,
// fails at stage ready once the spec's 200ms are up.
func TestSpecReadyTimeout(t *testing.T) {
	m, _ := newManager(t, "")
	start := time.Now()
	_, err := m.Load(context.Background(), manager.Spec{Name: "slow", Binary: "slowready", ReadyTimeout: 200 * time.Millisecond})
	took := time.Since(start)
	var ce *manager.CandidateError
	if !errors.As(err, &ce) || ce.Stage != manager.StageReady {
		t.Fatalf("Load: %v, want a failure at stage ready", err)
	}
	if took >= 5*time.Second {
		t.Fatalf("the ready stage ran %v: the manager's 5s default applied, not the spec's 200ms", took)
	}
}
