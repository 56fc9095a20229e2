package main_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// bins holds the built binaries: plugind, pluginctl, grpcurl,
// grpc-health-probe, and the example plugins under bins/plugins.
var bins string

func TestMain(m *testing.M) {
	testbin.Main(m, &bins, func(dir string) error {
		return testbin.DaemonBinaries(dir,
			"github.com/fullstorydev/grpcurl/cmd/grpcurl",
			"github.com/grpc-ecosystem/grpc-health-probe")
	})
}

// daemon is a running plugind, with the helpers below.
type daemon struct{ *testbin.Daemon }

// startDaemon runs the built plugind with echo loaded in a fresh state
// directory and waits until it answers. It is stopped with SIGTERM at
// cleanup if the test did not.
func startDaemon(t *testing.T, extra ...string) *daemon {
	t.Helper()
	return startDaemonIn(t, "", extra...)
}

// startDaemonIn is startDaemon on an existing state directory ("": a fresh
// one).
func startDaemonIn(t *testing.T, state string, extra ...string) *daemon {
	t.Helper()
	return &daemon{testbin.StartDaemon(t, testbin.DaemonOptions{
		Bin:      bins,
		StateDir: state,
		Load:     []string{"echo"},
		Args:     extra,
	})}
}

// run runs a built binary and returns its combined output and exit code.
func run(t *testing.T, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(bins, name), args...).CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return string(out), code
}

func (d *daemon) grpcurl(t *testing.T, data string, args ...string) (string, int) {
	t.Helper()
	a := []string{"-plaintext"}
	if data != "" {
		a = append(a, "-d", data)
	}
	a = append(a, "-unix", d.Socket)
	return run(t, "grpcurl", append(a, args...)...)
}

func mustContain(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Fatalf("%s: output lacks %q:\n%s", what, w, out)
		}
	}
}

// pluginPid returns the pid of the daemon's one plugin, from
// "pluginctl -o json list".
func (d *daemon) pluginPid(t *testing.T) int {
	t.Helper()
	out, _ := run(t, "pluginctl", "--addr", d.Addr(), "-o", "json", "list")
	var list struct {
		Plugins []struct{ Pid string } `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Plugins) != 1 {
		t.Fatalf("list: %v %s", err, out)
	}
	var pid int
	fmt.Sscan(list.Plugins[0].Pid, &pid)
	return pid
}

func TestGrpcurlWalkthrough(t *testing.T) {
	d := startDaemon(t)
	out, code := d.grpcurl(t, "", "list")
	if code != 0 {
		t.Fatalf("list: exit %d\n%s", code, out)
	}
	mustContain(t, "list", out, "plugincontrol.v1.PluginControlService", "plugincontrol.v1.PluginGatewayService", "grpc.health.v1.Health")

	out, _ = d.grpcurl(t, "", "describe", "plugincontrol.v1.PluginControlService")
	mustContain(t, "describe", out, "rpc Reload", "rpc WatchHealth", "stream .plugincontrol.v1.WatchHealthResponse")

	out, code = d.grpcurl(t, `{"spec":{"name":"echo2","binary":"echo"}}`, "plugincontrol.v1.PluginControlService/Load")
	if code != 0 {
		t.Fatalf("Load: exit %d\n%s", code, out)
	}
	mustContain(t, "Load", out, `"name": "echo2"`, `"generation": "1"`, "PLUGIN_STATE_SERVING", "CANDIDATE_STAGE_READY")

	out, _ = d.grpcurl(t, "", "plugincontrol.v1.PluginControlService/ListPlugins")
	mustContain(t, "ListPlugins", out, `"name": "echo"`, `"name": "echo2"`)

	out, code = d.grpcurl(t, `{"plugin":"echo","method":"echo","payload":"aGVsbG8="}`, "plugincontrol.v1.PluginGatewayService/Invoke")
	if code != 0 {
		t.Fatalf("Invoke: exit %d\n%s", code, out)
	}
	mustContain(t, "Invoke", out, `"payload": "aGVsbG8="`, `"generation": "1"`)

	out, code = d.grpcurl(t, `{"name":"echo","spec":{"name":"echo","binary":"notready"}}`, "plugincontrol.v1.PluginControlService/Reload")
	if code != 64+9 { // grpcurl exits 64 + the status code (FailedPrecondition = 9)
		t.Fatalf("failed Reload: exit %d, want 73\n%s", code, out)
	}
	mustContain(t, "failed Reload", out, "FailedPrecondition", "generation 1 stays active", "CANDIDATE_STAGE_READY", "backend database unreachable")

	out, code = d.grpcurl(t, `{"name":"echo"}`, "plugincontrol.v1.PluginControlService/Reload")
	if code != 0 {
		t.Fatalf("Reload: exit %d\n%s", code, out)
	}
	mustContain(t, "Reload", out, `"generation": "2"`, `"previousGeneration": "1"`, "CANDIDATE_STAGE_DRAIN")

	out, _ = d.grpcurl(t, `{"names":["echo"]}`, "plugincontrol.v1.PluginControlService/Health")
	mustContain(t, "Health", out, "PLUGIN_STATE_SERVING", `"revision"`)

	// A short WatchHealth: snapshot and SYNCED, then grpcurl's deadline.
	out, _ = run(t, "grpcurl", "-plaintext", "-max-time", "1", "-d", `{"names":["echo"]}`, "-unix", d.Socket, "plugincontrol.v1.PluginControlService/WatchHealth")
	mustContain(t, "WatchHealth", out, "HEALTH_EVENT_TYPE_SNAPSHOT", "HEALTH_EVENT_TYPE_SYNCED")

	out, code = d.grpcurl(t, `{"name":"nope"}`, "plugincontrol.v1.PluginControlService/Unload")
	if code != 64+5 {
		t.Fatalf("Unload unknown: exit %d, want 69 (NotFound)\n%s", code, out)
	}
}

func TestPluginctlAndHealthProbe(t *testing.T) {
	d := startDaemon(t)
	addr := d.Addr()
	ctl := func(args ...string) (string, int) {
		return run(t, "pluginctl", append([]string{"--addr", addr}, args...)...)
	}

	out, code := ctl("load", "flaky", "--binary", "echo")
	if code != 0 {
		t.Fatalf("load: %d %s", code, out)
	}
	out, code = ctl("-o", "json", "list")
	if code != 0 {
		t.Fatalf("list: %d %s", code, out)
	}
	var list struct {
		Plugins []struct {
			Name, Generation, State, Pid string
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Plugins) != 2 {
		t.Fatalf("list -o json: %v\n%s", err, out)
	}
	out, code = ctl("invoke", "echo", "echo", "hi there")
	if code != 0 || out != "hi there" {
		t.Fatalf("invoke: %d %q", code, out)
	}
	out, code = ctl("reload", "echo", "--validate-only")
	if code != 0 {
		t.Fatalf("reload --validate-only: %d %s", code, out)
	}
	out, code = ctl("reload", "echo", "--binary", "wrongname")
	if code != 5 {
		t.Fatalf("reload to wrongname: exit %d, want 5\n%s", code, out)
	}
	mustContain(t, "reload to wrongname", out, "describe", "notecho")
	out, code = ctl("reload", "echo", "--expected-generation", "7")
	if code != 6 {
		t.Fatalf("reload with a stale generation: exit %d, want 6\n%s", code, out)
	}
	out, code = ctl("unload", "nope")
	if code != 4 {
		t.Fatalf("unload unknown: exit %d, want 4\n%s", code, out)
	}

	// grpc_health_probe: SERVING, then NOT_SERVING once the plugin is
	// UNHEALTHY (threshold 1: one panic).
	probe := func(svc string) (string, int) {
		return run(t, "grpc-health-probe", "-addr", d.Addr(), "-service", svc)
	}
	if out, code := probe(""); code != 0 {
		t.Fatalf("probe daemon: %d %s", code, out)
	}
	if out, code := probe("plugin/echo"); code != 0 || !strings.Contains(out, "SERVING") {
		t.Fatalf("probe plugin/echo: %d %s", code, out)
	}
	_, _ = d.grpcurl(t, `{"name":"flaky","spec":{"name":"flaky","binary":"echo","health_policy":{"panic_threshold":1}}}`, "plugincontrol.v1.PluginControlService/Reload")
	_, _ = ctl("invoke", "flaky", "panic", "boom")
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, code := probe("plugin/flaky")
		if code == 4 && strings.Contains(out, "NOT_SERVING") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("probe plugin/flaky after UNHEALTHY: %d %s", code, out)
		}
		time.Sleep(20 * time.Millisecond) // polls through grpc-health-probe, the tool under test
	}
	out, _ = ctl("health", "flaky")
	mustContain(t, "health", out, "UNHEALTHY")
}

func TestSigtermStopsEverything(t *testing.T) {
	d := startDaemon(t)
	pid := d.pluginPid(t)
	// An open watcher and a call in flight must not hold the shutdown.
	watch := exec.Command(filepath.Join(bins, "pluginctl"), "--addr", d.Addr(), "watch")
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = watch.Process.Kill(); _ = watch.Wait() }()
	// The in-flight call goes over a connection that is already up, so it
	// is surely on the daemon when SIGTERM lands.
	_, gw := d.dial(t)
	if _, err := gw.Invoke(context.Background(), &pb.InvokeRequest{Plugin: "echo", Method: "echo"}); err != nil {
		t.Fatal(err)
	}
	type result struct {
		payload string
		err     error
	}
	inflight := make(chan result, 1)
	go func() {
		r, err := gw.Invoke(context.Background(), &pb.InvokeRequest{Plugin: "echo", Method: "sleep", Payload: []byte("1s")})
		inflight <- result{string(r.GetPayload()), err}
	}()
	time.Sleep(300 * time.Millisecond) // time is what is tested: the 1s call reaches the plugin within it
	start := time.Now()
	if err := d.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Exited():
		if err := d.ExitErr(); err != nil {
			t.Fatalf("plugind exited with %v\n%s", err, d.Stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("plugind did not exit after SIGTERM\n%s", d.Stderr)
	}
	t.Logf("SIGTERM to exit: %v", time.Since(start))
	if r := <-inflight; r.err != nil || r.payload != "1s" {
		t.Fatalf("in-flight invoke across shutdown: %v %q", r.err, r.payload)
	}
	if !testbin.WaitGone(pid, 5*time.Second) {
		t.Fatalf("plugin %d survived SIGTERM", pid)
	}
	if _, err := os.Stat(d.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("control socket left behind: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(d.StateDir, "sockets")); len(ents) != 0 {
		t.Fatalf("plugin socket directories left behind: %d", len(ents))
	}
}

func TestSigkillOfDaemonTakesPluginsWithIt(t *testing.T) {
	d := startDaemon(t)
	pid := d.pluginPid(t)
	if err := d.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d.Exited()
	if !testbin.WaitGone(pid, 5*time.Second) {
		t.Fatalf("plugin %d outlived a SIGKILLed daemon", pid)
	}
	if c, err := net.Dial("unix", d.Socket); err == nil {
		c.Close()
		t.Fatalf("stale socket still accepts connections")
	}
}

// TestContainmentModeIsLogged: the "plugind started" line says which
// containment is in use, as README and --help promise: the cgroup (with its
// directory) by default on this machine (root, cgroup v2 mounted), the
// subreaper or the process group when asked for.
func TestContainmentModeIsLogged(t *testing.T) {
	for _, c := range []struct{ flag, want string }{
		{"", `containment="cgroup (/sys/fs/cgroup/`},
		{"subreaper", "containment=subreaper"},
		{"process-group", "containment=process-group"},
	} {
		var extra []string
		if c.flag != "" {
			extra = []string{"--containment", c.flag}
		}
		d := startDaemon(t, extra...)
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(d.Stderr.String(), "plugind started") && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // polls the log for the line plugind writes when it serves
		}
		mustContain(t, "--containment "+c.flag, d.Stderr.String(), c.want)
		d.Stop(t)
	}
	if _, code := run(t, "plugind", "--containment", "jail"); code != 2 {
		t.Fatalf("--containment jail: exit %d, want 2 (usage)", code)
	}
}

// TestHelpStatesTheSpecLimits: the spec limits --help states are the ones
// the manager enforces: a spec at each passes validation, one past it
// fails naming the field.
func TestHelpStatesTheSpecLimits(t *testing.T) {
	out, code := run(t, "plugind", "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	help := strings.Join(strings.Fields(out), " ")
	mustContain(t, "--help", help, "name ^[a-z][a-z0-9-]{0,62}$", "binary 255 bytes", "64 args of 4 KiB",
		"128 env variables, names of 256 bytes, values of 8 KiB", "config 1 MiB", "start_timeout and ready_timeout up to 10m",
		"memory_max_bytes at least 1 MiB", "docs/api.md", "Containment (--containment)", "--ready-timeout")
	base := func() manager.Spec { return manager.Spec{Name: "x", Binary: "echo"} }
	env := func(n, k, v int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprintf("V%04d", i)+strings.Repeat("K", k-5)] = strings.Repeat("v", v)
		}
		return m
	}
	args := func(n, l int) []string {
		a := make([]string, n)
		for i := range a {
			a[i] = strings.Repeat("a", l)
		}
		return a
	}
	for _, c := range []struct {
		field    string
		at, over func(*manager.Spec)
	}{
		{"name", func(s *manager.Spec) { s.Name = "n" + strings.Repeat("x", 62) }, func(s *manager.Spec) { s.Name = "n" + strings.Repeat("x", 63) }},
		{"binary", func(s *manager.Spec) { s.Binary = strings.Repeat("b", 255) }, func(s *manager.Spec) { s.Binary = strings.Repeat("b", 256) }},
		{"args", func(s *manager.Spec) { s.Args = args(64, 4096) }, func(s *manager.Spec) { s.Args = args(65, 1) }},
		{"args[0]", func(s *manager.Spec) { s.Args = args(1, 4096) }, func(s *manager.Spec) { s.Args = args(1, 4097) }},
		{"env", func(s *manager.Spec) { s.Env = env(128, 256, 8192) }, func(s *manager.Spec) { s.Env = env(129, 6, 1) }},
		{"env", func(s *manager.Spec) { s.Env = env(1, 256, 1) }, func(s *manager.Spec) { s.Env = env(1, 257, 1) }},
		{"env", func(s *manager.Spec) { s.Env = env(1, 6, 8192) }, func(s *manager.Spec) { s.Env = env(1, 6, 8193) }},
		{"config", func(s *manager.Spec) { s.Config = make([]byte, 1<<20) }, func(s *manager.Spec) { s.Config = make([]byte, 1<<20+1) }},
		{"start_timeout", func(s *manager.Spec) { s.StartTimeout = 10 * time.Minute }, func(s *manager.Spec) { s.StartTimeout = 10*time.Minute + 1 }},
		{"ready_timeout", func(s *manager.Spec) { s.ReadyTimeout = 10 * time.Minute }, func(s *manager.Spec) { s.ReadyTimeout = 10*time.Minute + 1 }},
		{"health_policy.panic_threshold", func(s *manager.Spec) { s.Policy.PanicThreshold = 1000 }, func(s *manager.Spec) { s.Policy.PanicThreshold = 1001 }},
		{"health_policy.panic_window", func(s *manager.Spec) { s.Policy.PanicWindow = 24 * time.Hour }, func(s *manager.Spec) { s.Policy.PanicWindow = 24*time.Hour + 1 }},
		{"resources.memory_max_bytes", func(s *manager.Spec) { s.Resources.MemoryMax = 1 << 20 }, func(s *manager.Spec) { s.Resources.MemoryMax = 1<<20 - 1 }},
	} {
		at, over := base(), base()
		c.at(&at)
		c.over(&over)
		if err := at.Validate(); err != nil {
			t.Errorf("%s at the stated limit: %v", c.field, err)
		}
		var ie *manager.InvalidError
		if err := over.Validate(); !errors.As(err, &ie) || ie.Field != c.field {
			t.Errorf("%s past the stated limit: %v, want an InvalidError on %s", c.field, err, c.field)
		}
	}
}
