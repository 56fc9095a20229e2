package launch

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"

	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	"github.com/plugincontrol/plugincontrol/internal/proc"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/plugin"
)

var plugins string

func TestMain(m *testing.M) {
	testbin.Main(m, &plugins, testbin.Plugins)
}

// start launches the echo plugin the way the manager does (its own
// process group) and returns the client that started it.
func start(t *testing.T) (*goplugin.Client, *goplugin.ReattachConfig) {
	t.Helper()
	cmd := exec.Command(filepath.Join(plugins, "echo"))
	cmd.SysProcAttr = proc.SysProcAttr(false)
	c := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  plugin.HandshakeConfig(),
		Plugins:          goplugin.PluginSet{plugin.DispenseName: &plugin.GRPCPlugin{}},
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		Logger:           hclog.NewNullLogger(),
		SyncStderr:       io.Discard,
		SyncStdout:       io.Discard,
	})
	if _, err := c.Start(); err != nil {
		t.Fatal(err)
	}
	// Connected now, as the manager always is: go-plugin's Kill of a client
	// that never connected dials the (maybe dead) plugin and leaks that
	// connection when the dial fails.
	if _, err := c.Client(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
	return c, c.ReattachConfig()
}

// TestAttach takes over a running plugin from a second client: it answers
// through it, and the runner sees it exit.
func TestAttach(t *testing.T) {
	_, rc := start(t)
	ticks, err := proc.StartTicks(rc.Pid)
	if err != nil {
		t.Fatal(err)
	}
	c, r, err := Attach(Target{
		PID: rc.Pid, StartTicks: ticks, Network: rc.Addr.Network(), Address: rc.Addr.String(),
		ProtocolVersion: int(plugin.HandshakeConfig().ProtocolVersion),
		Plugins:         map[int]goplugin.PluginSet{int(plugin.HandshakeConfig().ProtocolVersion): {plugin.DispenseName: &plugin.GRPCPlugin{}}},
		Logger:          hclog.NewNullLogger(), Stderr: io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	rpc, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := rpc.Dispense(plugin.DispenseName)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ready, err := raw.(*plugin.Conn).Client.Ready(ctx, &pluginv1.ReadyRequest{})
	if err != nil || !ready.GetReady() {
		t.Fatalf("Ready through the attached client: %v %v", ready, err)
	}
	if r.Exit() != "" {
		t.Fatalf("exit reported for a running plugin: %q", r.Exit())
	}
	_ = syscall.Kill(rc.Pid, syscall.SIGKILL)
	select {
	case <-r.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("the runner did not see the exit")
	}
	// The starting client reaps it (it is that client's child): this
	// runner may see it as a child or not, depending on who waited first.
	if how := r.Exit(); !strings.Contains(how, "SIGKILL") && !strings.Contains(how, "status unknown") {
		t.Fatalf("exit: %q", how)
	}
	c.Kill()
}

// TestAttachRefusesAnotherProcess: a pid that now names another process
// (or whose start time differs) is not attached to.
func TestAttachRefusesAnotherProcess(t *testing.T) {
	_, rc := start(t)
	ticks, _ := proc.StartTicks(rc.Pid)
	_, _, err := Attach(Target{PID: rc.Pid, StartTicks: ticks + 1, Network: "unix", Address: rc.Addr.String(), ProtocolVersion: 1,
		Plugins: map[int]goplugin.PluginSet{1: {}}, Logger: hclog.NewNullLogger()})
	if err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("attach to a reused pid: %v", err)
	}
	_, _, err = Attach(Target{PID: rc.Pid, StartTicks: ticks, Network: "unix", Address: rc.Addr.String(), ProtocolVersion: 7,
		Plugins: map[int]goplugin.PluginSet{1: {}}, Logger: hclog.NewNullLogger()})
	if err == nil || !strings.Contains(err.Error(), "version 7") {
		t.Fatalf("attach with an unknown protocol version: %v", err)
	}
}

// TestListenerFile hands a unix listener's socket on: connections made
// after the listener closed wait in the backlog of the copy, and the
// socket file stays.
func TestListenerFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ListenerFile(l)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the socket file went with the listener: %v", err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("a connection during the handover was refused: %v", err)
	}
	defer c.Close()
	l2, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	a, err := l2.Accept()
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
}
