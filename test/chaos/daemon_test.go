package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// daemon is a running plugind (the built binary).
type daemon struct {
	cmd    *exec.Cmd
	state  string
	sock   string
	stderr *testbin.Buffer
	done   chan error
	conn   *grpc.ClientConn
	ctl    pb.PluginControlServiceClient
	gw     pb.PluginGatewayServiceClient
}

// startDaemon runs plugind on state with the given --load values and waits
// until every loaded plugin is SERVING. It is stopped with SIGTERM (then
// SIGKILL) at cleanup if the test did not stop it.
func startDaemon(t *testing.T, state string, loads ...string) *daemon {
	t.Helper()
	return startDaemonArgs(t, state, nil, loads...)
}

// startDaemonArgs is startDaemon with more flags.
func startDaemonArgs(t *testing.T, state string, extra []string, loads ...string) *daemon {
	t.Helper()
	return startDaemonEnv(t, state, nil, extra, loads...)
}

// startDaemonEnv is startDaemonArgs with more environment variables.
func startDaemonEnv(t *testing.T, state string, env, extra []string, loads ...string) *daemon {
	t.Helper()
	d := &daemon{state: state, sock: filepath.Join(state, "plugind.sock"), stderr: &testbin.Buffer{}, done: make(chan error, 1)}
	args := append([]string{"--plugin-dir", pluginDir, "--state-dir", state, "--log-level", "warn", "--shutdown-timeout", "5s"}, extra...)
	for _, l := range loads {
		args = append(args, "--load", l)
	}
	d.cmd = exec.Command(filepath.Join(binDir, "plugind"), args...)
	d.cmd.Stderr = d.stderr
	d.cmd.Env = append(os.Environ(), env...)
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() { d.stop(t, syscall.SIGTERM) })
	conn, err := grpc.NewClient("unix://"+d.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	d.conn, d.ctl, d.gw = conn, pb.NewPluginControlServiceClient(conn), pb.NewPluginGatewayServiceClient(conn)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ps, err := d.list()
		serving := 0
		for _, p := range ps {
			if p.GetState() == pb.PluginState_PLUGIN_STATE_SERVING {
				serving++
			}
		}
		if err == nil && serving == len(loads) {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("plugind did not come up with %v serving: %v %v\nstderr:\n%s", loads, ps, err, d.stderr)
		}
		time.Sleep(20 * time.Millisecond) // polls: plugind is starting, its socket may not be there yet
	}
}

// stop signals plugind (if it still runs) and waits for it to exit; it
// returns the exit error.
func (d *daemon) stop(t *testing.T, sig syscall.Signal) error {
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	if d.cmd.ProcessState != nil {
		return nil
	}
	_ = d.cmd.Process.Signal(sig)
	select {
	case err := <-d.done:
		return err
	case <-time.After(20 * time.Second):
		t.Errorf("plugind did not exit 20s after %v\n%s", sig, d.stderr)
		_ = d.cmd.Process.Kill()
		return <-d.done
	}
}

func (d *daemon) list() ([]*pb.PluginStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	res, err := d.ctl.ListPlugins(ctx, &pb.ListPluginsRequest{})
	return res.GetPlugins(), err
}

func (d *daemon) invoke(name, method string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := d.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: name, Method: method, Payload: []byte("x")})
	return res.GetPayload(), err
}

// TestSigkillDaemon: SIGKILL of plugind while plugins run takes every plugin
// process with it (Pdeathsig) and their own children (the forker plugin's);
// the daemon leaves its control socket and the plugins' socket directories
// behind, and a plugind restarted on the same state directory replaces the
// stale control socket, removes the stale socket directories and restores
// the plugins as new generations.
func TestSigkillDaemon(t *testing.T) {
	// Short: plugin socket paths live under it (unix socket paths are
	// limited to 107 bytes).
	state, err := os.MkdirTemp("", "pd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	d := startDaemon(t, state, "echo", "fk=forker", "e2=echo")
	ps, _ := d.list()
	var pids []int
	for _, p := range ps {
		pids = append(pids, int(p.GetPid()))
	}
	out, err := d.invoke("fk", "child")
	if err != nil {
		t.Fatal(err)
	}
	var child int
	fmt.Sscan(string(out), &child)
	if !testbin.Alive(child) {
		t.Fatalf("forker child %q not running", out)
	}
	staleDirs := sockDirs(filepath.Join(state, "sockets"))
	if len(staleDirs) != 3 {
		t.Fatalf("plugin socket directories %v, want 3", staleDirs)
	}

	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d.done
	for _, pid := range pids {
		gone(t, "plugin of a SIGKILLed daemon", pid)
	}
	if !testbin.WaitGone(child, 5*time.Second) {
		ppid, _ := procStat(child)
		t.Errorf("the forker plugin's child %d outlived the SIGKILLed daemon (reparented to %d)", child, ppid)
		_ = syscall.Kill(child, syscall.SIGKILL)
	}
	if _, err := os.Stat(d.sock); err != nil {
		t.Fatalf("control socket of the killed daemon: %v (expected a stale file)", err)
	}
	if c, err := net.Dial("unix", d.sock); err == nil {
		c.Close()
		t.Fatalf("stale control socket accepts connections")
	}

	d2 := startDaemon(t, state, "echo", "fk=forker", "e2=echo")
	ps2, err := d2.list()
	if err != nil || len(ps2) != 3 {
		t.Fatalf("restarted daemon lists %v %v", ps2, err)
	}
	var pids2 []int
	for _, p := range ps2 {
		if p.GetGeneration() != 2 || p.GetState() != pb.PluginState_PLUGIN_STATE_SERVING || slices.Contains(pids, int(p.GetPid())) {
			t.Fatalf("restored plugin %v: want generation 2, SERVING, a new pid", p)
		}
		pids2 = append(pids2, int(p.GetPid()))
	}
	if out, err := d2.invoke("echo", "echo"); err != nil || string(out) != "x" {
		t.Fatalf("restored echo: %q %v", out, err)
	}
	dirs := sockDirs(filepath.Join(state, "sockets"))
	for _, s := range staleDirs {
		if slices.Contains(dirs, s) {
			t.Fatalf("stale plugin socket directory %s not removed (now %v)", s, dirs)
		}
	}
	if len(dirs) != 3 {
		t.Fatalf("socket directories after restart %v, want 3", dirs)
	}
	out, err = d2.invoke("fk", "child")
	if err != nil {
		t.Fatal(err)
	}
	var child2 int
	fmt.Sscan(string(out), &child2)
	pids2 = append(pids2, child2)
	onlyProcessesExcept(t, binDir, pids2, d2.cmd.Process.Pid)

	if err := d2.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("plugind after SIGTERM: %v\n%s", err, d2.stderr)
	}
	for _, pid := range pids2 {
		gone(t, "process after SIGTERM", pid)
	}
	if _, err := os.Stat(d2.sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("control socket left after SIGTERM: %v", err)
	}
	if left := sockDirs(filepath.Join(state, "sockets")); len(left) != 0 {
		t.Fatalf("plugin socket directories left after SIGTERM: %v", left)
	}
}

// onlyProcessesExcept is onlyProcesses ignoring one pid (the daemon) and
// its reaper (plugind run again).
func onlyProcessesExcept(t *testing.T, dir string, want []int, except int) {
	t.Helper()
	var got []int
	for _, p := range testbin.ProcessesIn(dir) {
		if p != except && !isReaperOf(p, except) {
			got = append(got, p)
		}
	}
	slices.Sort(got)
	want = slices.Clone(want)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("processes running from %s: %v, want exactly %v (besides the daemon %d)", dir, got, want, except)
	}
}

// isReaperOf reports whether pid is the reaper of daemon: its child, run
// as "plugind-reaper".
func isReaperOf(pid, daemon int) bool {
	ppid, _ := procStat(pid)
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	argv0, _, _ := strings.Cut(string(b), "\x00")
	return ppid == daemon && strings.HasSuffix(argv0, "-reaper")
}
