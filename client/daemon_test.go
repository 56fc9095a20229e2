package client

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// bins holds plugind and, under plugins/, the example plugins: built once
// by TestMain from this repository (the module one directory up), so that
// the tests run against the real daemon as a separate process, the way
// clients meet it.
var bins string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pc-client-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, b := range [][]string{{dir + "/", "./cmd/plugind"}, {filepath.Join(dir, "plugins") + "/", "./examples/plugins/...", "./test/plugins/..."}} {
		cmd := exec.Command("go", append([]string{"build", "-o", b[0]}, b[1:]...)...)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", b[1], err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	bins = dir
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: goroutines leaked: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// daemon is a plugind process on a unix socket, with real plugin
// processes, in a state directory of its own.
type daemon struct {
	sock string
	mu   sync.Mutex // guards cmd, done and dirs (a restart replaces them)
	cmd  *exec.Cmd
	done chan struct{}
	dirs []string // state directories to remove
}

// daemonConfig tunes startDaemon.
type daemonConfig struct {
	sock          string // listen on this socket path (a daemon restart)
	healthHistory int
	bookmark      time.Duration
	flags         []string // more plugind flags
}

// startDaemon starts plugind on a fresh state directory (its revisions
// start over, its plugins are none) and waits until it accepts
// connections.
func startDaemon(cfg daemonConfig) (*daemon, error) {
	dir, err := os.MkdirTemp("", "pc-client-")
	if err != nil {
		return nil, err
	}
	if cfg.sock == "" {
		cfg.sock = filepath.Join(dir, "plugind.sock")
	}
	args := []string{"--plugin-dir", filepath.Join(bins, "plugins"), "--state-dir", dir, "--listen", "unix://" + cfg.sock,
		"--log-level", "error", "--shutdown-timeout", "5s"}
	if cfg.healthHistory > 0 {
		args = append(args, "--health-history", strconv.Itoa(cfg.healthHistory))
	}
	if cfg.bookmark > 0 {
		args = append(args, "--watch-bookmark-interval", cfg.bookmark.String())
	}
	args = append(args, cfg.flags...)
	cmd := exec.Command(filepath.Join(bins, "plugind"), args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	d := &daemon{sock: cfg.sock, cmd: cmd, done: make(chan struct{}), dirs: []string{dir}}
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(d.done)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("unix", cfg.sock)
		if err == nil {
			c.Close()
			return d, nil
		}
		select {
		case <-d.done:
			os.RemoveAll(dir)
			return nil, errors.New("plugind exited at start")
		default:
		}
		if time.Now().After(deadline) {
			d.stop()
			os.RemoveAll(dir)
			return nil, fmt.Errorf("plugind does not accept connections on %s: %w", cfg.sock, err)
		}
		time.Sleep(10 * time.Millisecond) // polls: plugind is starting, its socket may not be there yet
	}
}

func (d *daemon) addr() string { return "unix://" + d.sock }

// stop sends plugind SIGTERM (streams end with Unavailable, plugins stop)
// and waits for it to exit; the socket path can then be reused.
func (d *daemon) stop() {
	d.mu.Lock()
	cmd, done := d.cmd, d.done
	d.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// replace makes d stand for nd, a daemon restarted on d's socket, so that
// cleanup stops the running one.
func (d *daemon) replace(nd *daemon) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cmd, d.done = nd.cmd, nd.done
	d.dirs = append(d.dirs, nd.dirs...)
}

// remove deletes the state directories.
func (d *daemon) remove() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, dir := range d.dirs {
		os.RemoveAll(dir)
	}
}

// newDaemon starts a daemon that stops at the end of the test.
func newDaemon(t *testing.T, cfg daemonConfig) *daemon {
	t.Helper()
	d, err := startDaemon(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.stop()
		d.remove()
	})
	return d
}
