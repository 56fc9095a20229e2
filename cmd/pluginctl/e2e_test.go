package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/server"
)

// daemon is a manager and server on a unix socket, as plugind runs them.
type daemon struct {
	addr string
	srv  *server.Server
}

// startDaemon builds the example plugins and starts a daemon; cleanup stops
// it and checks that no plugin process is left.
func startDaemon(t *testing.T) *daemon {
	t.Helper()
	pluginDir := examplePlugins(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := manager.New(manager.Config{PluginDir: pluginDir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(shortTempDir(t), "plugind.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(m, server.WithLogger(log))
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
		if err := m.Close(ctx); err != nil {
			t.Errorf("manager Close: %v", err)
		}
		if left := testbin.ProcessesIn(pluginDir); len(left) > 0 {
			t.Errorf("plugin processes left running: %v", left)
		}
	})
	return &daemon{addr: "unix://" + sock, srv: srv}
}

func TestEndToEnd(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	ctl := func(args ...string) result {
		t.Helper()
		return runCLI(ctx, "", append([]string{"--addr", d.addr, "--timeout", "20s"}, args...)...)
	}
	expect := func(r result, code int, args ...string) {
		t.Helper()
		if r.code != code {
			t.Fatalf("%q: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", args, r.code, code, r.stdout, r.stderr)
		}
	}
	run := func(code int, args ...string) result {
		t.Helper()
		r := ctl(args...)
		expect(r, code, args...)
		return r
	}

	// load: status and stage timings.
	r := run(0, "load", "echo")
	if !strings.Contains(r.stdout, "SERVING") || !strings.Contains(r.stdout, "STAGE") || !strings.Contains(r.stdout, "ready") || !strings.Contains(r.stdout, "total") {
		t.Errorf("load output:\n%s", r.stdout)
	}
	run(1, "load", "echo") // AlreadyExists

	// list, as a table and as JSON.
	r = run(0, "list")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME") || strings.Join(strings.Fields(lines[1])[:3], " ") != "echo 1 SERVING" {
		t.Errorf("list:\n%s", r.stdout)
	}
	r = run(0, "-o", "json", "list")
	var list struct {
		Plugins []struct {
			Name       string `json:"name"`
			Generation string `json:"generation"`
			State      string `json:"state"`
			Spec       struct {
				Binary string `json:"binary"`
			} `json:"spec"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list.Plugins) != 1 || list.Plugins[0].Generation != "1" || list.Plugins[0].Spec.Binary != "" {
		t.Errorf("list -o json (%v), want the status without the spec:\n%s", err, r.stdout)
	}
	r = run(0, "-o", "json", "list", "--full")
	list.Plugins = nil
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list.Plugins) != 1 || list.Plugins[0].Spec.Binary != "echo" {
		t.Errorf("list --full -o json (%v), want the spec:\n%s", err, r.stdout)
	}

	// invoke
	if r = run(0, "invoke", "echo", "echo", "hello"); r.stdout != "hello" {
		t.Errorf("invoke stdout %q", r.stdout)
	}
	run(4, "invoke", "nope", "echo", "x")

	// reload --validate-only: a dry run, generation stays 1.
	r = run(0, "reload", "echo", "--validate-only")
	if !strings.Contains(r.stdout, "validate only") || !strings.Contains(r.stdout, "generation 1 keeps serving") {
		t.Errorf("reload --validate-only:\n%s", r.stdout)
	}

	// reload to a binary whose readiness probe fails: exit 5, stage in stderr.
	r = run(5, "reload", "echo", "--binary", "notready")
	if !strings.Contains(r.stderr, "stage: ready") || !strings.Contains(r.stderr, "backend database unreachable") || !strings.Contains(r.stderr, "active generation: 1") {
		t.Errorf("reload to notready stderr:\n%s", r.stderr)
	}
	// Generation 1 keeps serving.
	if r = run(0, "invoke", "echo", "echo", "still"); r.stdout != "still" {
		t.Errorf("invoke after failed reload: %q", r.stdout)
	}
	run(6, "reload", "echo", "--expected-generation", "7")

	// A real reload.
	r = run(0, "reload", "echo", "--expected-generation", "1")
	if !strings.Contains(r.stdout, "generation 1 -> 2") {
		t.Errorf("reload:\n%s", r.stdout)
	}

	// reload --wait-healthy: returns once generation 3 is SERVING.
	r = run(0, "reload", "echo", "--wait-healthy", "--wait-timeout", "15s")
	if !strings.Contains(r.stdout, "generation 2 -> 3") || !strings.Contains(r.stdout, "echo generation 3 is SERVING") {
		t.Errorf("reload --wait-healthy:\n%s", r.stdout)
	}
	r = run(0, "reload", "echo", "--wait-healthy", "--settle", "200ms")
	if !strings.Contains(r.stdout, "echo generation 4 is SERVING and stayed so for 200ms") {
		t.Errorf("reload --wait-healthy --settle:\n%s", r.stdout)
	}

	// The audit record: newest first, the failed reload included.
	r = run(0, "audit", "echo")
	lines = strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) < 6 || !strings.HasPrefix(lines[0], "SEQ") || !strings.Contains(lines[0], "GEN(old→new)") {
		t.Fatalf("audit:\n%s", r.stdout)
	}
	if f := strings.Fields(lines[1]); len(f) < 8 || f[4] != "reload" || f[5] != "echo" || f[6] != "3→4" || f[7] != "ok" {
		t.Errorf("audit, newest record %q:\n%s", lines[1], r.stdout)
	}
	if !strings.Contains(r.stdout, "failed") || !strings.Contains(r.stdout, "backend database unreachable") || !strings.Contains(r.stdout, "0→1") {
		t.Errorf("audit lacks the load or the failed reload:\n%s", r.stdout)
	}
	r = run(0, "-o", "yaml", "audit", "echo", "--limit", "1")
	if !strings.Contains(r.stdout, "action: reload") || strings.Count(r.stdout, "sequence:") != 1 {
		t.Errorf("audit -o yaml --limit 1:\n%s", r.stdout)
	}
	run(1, "audit", "Bad_Name") // InvalidArgument

	// A panic in the plugin: exit 1, panic message and fingerprint.
	r = run(1, "invoke", "echo", "panic", "boom")
	if !strings.Contains(r.stderr, "panic: boom") || !strings.Contains(r.stderr, "fingerprint: ") {
		t.Errorf("invoke panic stderr:\n%s", r.stderr)
	}
	r = run(0, "health", "echo")
	if !strings.Contains(r.stdout, "DEGRADED") || !strings.Contains(r.stdout, "revision: ") {
		t.Errorf("health:\n%s", r.stdout)
	}
	run(4, "health", "nope")

	// unload
	r = run(0, "unload", "echo", "--drain-timeout", "5s")
	if !strings.Contains(r.stdout, "STOPPED") {
		t.Errorf("unload:\n%s", r.stdout)
	}
	run(4, "unload", "echo")
	if r = run(0, "list"); strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("list after unload:\n%s", r.stdout)
	}
}

// TestEndToEndWaitHealthyFails loads the crasher plugin, which passes its
// readiness probe and crashes 50ms later: SERVING at first, so
// --wait-healthy alone may succeed, but it does not stay SERVING for the
// settle period.
func TestEndToEndWaitHealthyFails(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	start := time.Now()
	r := runCLI(ctx, "", "--addr", d.addr, "load", "crash", "--binary", "crasher", "--config", "crash_after=50ms", "--wait-healthy", "--settle", "500ms", "--wait-timeout", "20s")
	if r.code != exitNotHealthy || !strings.Contains(r.stderr, "pluginctl: crash generation 1 is not healthy: ") {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, exitNotHealthy, r.stdout, r.stderr)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("failed after %s: the crash was not noticed at once", took)
	}
	// The load itself happened: its table was printed, and the plugin is
	// there for an operator to look at (and unload).
	if !strings.Contains(r.stdout, "crash") || !strings.Contains(r.stdout, "STAGE") {
		t.Errorf("stdout:\n%s", r.stdout)
	}
	t.Logf("stderr:\n%s", r.stderr)
	if r := runCLI(ctx, "", "--addr", d.addr, "unload", "crash"); r.code != 0 {
		t.Errorf("unload: %+v", r)
	}
}

func TestEndToEndWatch(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	if r := runCLI(ctx, "", "--addr", d.addr, "load", "echo"); r.code != 0 {
		t.Fatalf("load: %+v", r)
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stdout := &markerWriter{marker: "SYNCED", seen: make(chan struct{})}
	stderr := &markerWriter{marker: "reconnecting", seen: make(chan struct{})}
	done := make(chan int, 1)
	go func() {
		c := &cli{stdin: strings.NewReader(""), stdout: stdout, stderr: stderr}
		done <- c.run(wctx, []string{"--addr", d.addr, "watch"})
	}()
	wait := func(ch <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s; stdout:\n%s\nstderr:\n%s", what, stdout.String(), stderr.String())
		}
	}
	wait(stdout.seen, "SYNCED")

	// The daemon shuts down: the stream ends with Unavailable and watch
	// keeps trying to reconnect until interrupted.
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	d.srv.Shutdown(sctx)
	scancel()
	wait(stderr.seen, "reconnect notice")
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("watch exit %d; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not end on interrupt")
	}
	out := stdout.String()
	if !strings.Contains(out, "SNAPSHOT  echo") {
		t.Errorf("watch stdout:\n%s", out)
	}
}
