package testbin

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// DaemonBinaries builds what StartDaemon runs: plugind and pluginctl into
// dir (Commands) and the example plugins into dir/plugins (Plugins); and
// into dir the pinned tools named by tools (Tool), for tests that drive the
// daemon with them.
func DaemonBinaries(dir string, tools ...string) error {
	if err := Plugins(filepath.Join(dir, "plugins")); err != nil {
		return err
	}
	if err := Commands(dir); err != nil {
		return err
	}
	for _, pkg := range tools {
		if _, err := Tool(dir, pkg); err != nil {
			return err
		}
	}
	return nil
}

// DaemonOptions says how StartDaemon runs plugind.
type DaemonOptions struct {
	// Bin is the directory holding the built plugind and pluginctl (see
	// DaemonBinaries).
	Bin string
	// PluginDir is plugind's --plugin-dir. Empty: Bin/plugins, where
	// DaemonBinaries builds the example plugins.
	PluginDir string
	// StateDir is plugind's --state-dir. Empty: a fresh temporary
	// directory, removed at cleanup once the daemon has stopped.
	StateDir string
	// Load names the plugins loaded at start (--load, in order). With
	// any, StartDaemon waits until "pluginctl list" shows one SERVING;
	// without, until "pluginctl list" succeeds.
	Load []string
	// Args are more flags, after --plugin-dir, --state-dir and --load.
	Args []string
	// Env are more environment variables (NAME=VALUE).
	Env []string
}

// Daemon is a plugind started by StartDaemon.
type Daemon struct {
	// Cmd is the running plugind: signal or kill it with Cmd.Process.
	// Wait for it with Exited, not Cmd.Wait.
	Cmd *exec.Cmd
	// Socket is the path of the control socket (in the state directory).
	Socket string
	// StateDir is the daemon's --state-dir.
	StateDir string
	// Stderr collects what plugind writes to its standard error.
	Stderr *Buffer

	exited chan struct{} // closed when plugind has exited
	err    error         // Cmd.Wait's result; set before exited is closed
}

// StartDaemon runs the built plugind with opts and waits up to 15 seconds
// until it answers pluginctl on its control socket (see
// DaemonOptions.Load); if it does not, the test fails with pluginctl's
// output and plugind's stderr. At cleanup, unless it has exited already,
// plugind gets SIGTERM and, if it has not exited 20 seconds later,
// SIGKILL; cleanup returns once it has exited.
func StartDaemon(t testing.TB, opts DaemonOptions) *Daemon {
	t.Helper()
	state := opts.StateDir
	if state == "" {
		var err error
		if state, err = os.MkdirTemp("", "pd-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(state) })
	}
	d := &Daemon{Socket: filepath.Join(state, "plugind.sock"), StateDir: state, Stderr: &Buffer{}, exited: make(chan struct{})}
	pluginDir := opts.PluginDir
	if pluginDir == "" {
		pluginDir = filepath.Join(opts.Bin, "plugins")
	}
	args := []string{"--plugin-dir", pluginDir, "--state-dir", state}
	for _, name := range opts.Load {
		args = append(args, "--load", name)
	}
	args = append(args, opts.Args...)
	d.Cmd = exec.Command(filepath.Join(opts.Bin, "plugind"), args...)
	// Its stderr is a pipe of our own, copied into Stderr, rather than
	// os/exec's: with --live-restore plugind's reaper keeps writing to it
	// after plugind is killed, and Cmd.Wait would wait for that.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	d.Cmd.Stderr = pw
	if len(opts.Env) > 0 {
		d.Cmd.Env = append(os.Environ(), opts.Env...)
	}
	err = d.Cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		t.Fatal(err)
	}
	copied := make(chan struct{})
	go func() {
		_, _ = io.Copy(d.Stderr, pr)
		close(copied)
	}()
	go func() {
		d.err = d.Cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		// Once every writer is gone (plugind, and a reaper that outlived
		// it), the copy ends; a writer still there past 10 seconds is a
		// leak the test reports on its own (processes left).
		<-d.exited
		select {
		case <-copied:
		case <-time.After(10 * time.Second):
		}
		pr.Close()
		<-copied
	})
	t.Cleanup(func() {
		select {
		case <-d.exited:
			return
		default:
		}
		_ = d.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(20 * time.Second):
			_ = d.Cmd.Process.Kill()
			<-d.exited
		}
	})
	d.waitReady(t, opts)
	return d
}

// waitReady waits until pluginctl list answers as opts.Load asks.
func (d *Daemon) waitReady(t testing.TB, opts DaemonOptions) {
	t.Helper()
	what := "plugind did not come up"
	if len(opts.Load) > 0 {
		what += " with " + strings.Join(opts.Load, " or ") + " serving"
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := exec.Command(filepath.Join(opts.Bin, "pluginctl"), "--addr", d.Addr(), "list").CombinedOutput()
		if len(opts.Load) == 0 && err == nil || len(opts.Load) > 0 && strings.Contains(string(out), "SERVING") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s\nstderr:\n%s", what, out, d.Stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Addr is the daemon's address for clients: "unix://" and the socket.
func (d *Daemon) Addr() string { return "unix://" + d.Socket }

// Exited is closed once plugind has exited; ExitErr then tells how.
func (d *Daemon) Exited() <-chan struct{} { return d.exited }

// ExitErr is the error of plugind's exit (nil for status 0), as Cmd.Wait
// returns it. Call it only after Exited is closed.
func (d *Daemon) ExitErr() error { return d.err }

// Stop sends plugind SIGTERM and waits up to 20 seconds for it to exit;
// the test fails if it does not, or if it exits with an error.
func (d *Daemon) Stop(t testing.TB) {
	t.Helper()
	_ = d.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		if d.err != nil {
			t.Fatalf("plugind exit: %v\n%s", d.err, d.Stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("plugind did not stop")
	}
}

// Buffer is a bytes.Buffer that is safe to read while a process writes
// to it, and that a test can wait on (WaitFor).
type Buffer struct {
	mu      sync.Mutex // guards b and written
	b       bytes.Buffer
	written chan struct{} // closed (and replaced) at every Write
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.written != nil {
		close(b.written)
		b.written = nil
	}
	return b.b.Write(p)
}

// WaitFor waits until what has been written holds substr at least n times,
// woken by each write (no polling), and reports whether it did within d.
func (b *Buffer) WaitFor(substr string, n int, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		b.mu.Lock()
		if strings.Count(b.b.String(), substr) >= n {
			b.mu.Unlock()
			return true
		}
		if b.written == nil {
			b.written = make(chan struct{})
		}
		w := b.written
		b.mu.Unlock()
		select {
		case <-w:
		case <-t.C:
			return strings.Count(b.String(), substr) >= n
		}
	}
}

// String returns what has been written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Promtool returns the path of promtool: on PATH, or where `make promtool`
// puts it (bin/tools/promtool, from Debian's prometheus package). The
// test fails when it is neither.
func Promtool(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	p := filepath.Join(Root(), "bin", "tools", "promtool")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("promtool is not installed: run `make promtool` (it extracts promtool from Debian's prometheus package): %v", err)
	}
	return p
}

// DebianEtcd returns the paths of Debian's etcd and etcdctl (3.4, an etcd
// this project did not build): where `make debian-etcd` puts them
// (bin/tools/, from the etcd-server and etcd-client packages). The test
// fails when they are not there.
func DebianEtcd(t testing.TB) (etcd, etcdctl string) {
	t.Helper()
	dir := filepath.Join(Root(), "bin", "tools")
	for _, name := range []string{"etcd", "etcdctl"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatalf("Debian's %s is not there: run `make debian-etcd` (it extracts etcd and etcdctl from Debian's packages): %v", name, err)
		}
	}
	return filepath.Join(dir, "etcd"), filepath.Join(dir, "etcdctl")
}
