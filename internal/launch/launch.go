// Package launch is the process side of plugin generations the manager
// did not start itself: attaching to a plugin process that already runs,
// with go-plugin's ReattachConfig, when a reload re-executed plugind in
// place or a plugind adopts the plugins a crashed one left running
// (--live-restore). Starting plugins is still the manager's candidate
// pipeline (manager/launch.go); this package is where that moves when
// manager is split by job.
//
// An attached process may not be this process's child (an adopted one was
// re-parented when its daemon died): its exit is watched through a pidfd,
// reaped when it is a child, and reported as of unknown status when not.
package launch

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"

	"github.com/plugincontrol/plugincontrol/internal/proc"
)

// Target is a running plugin process to attach to.
type Target struct {
	// PID and StartTicks name the process (see proc.SameProcess).
	PID        int
	StartTicks uint64
	// Network and Address are where the plugin serves ("unix" and its
	// socket path).
	Network, Address string
	// ProtocolVersion is the go-plugin protocol version negotiated when it
	// started; Plugins the host's plugin sets by version.
	ProtocolVersion int
	Plugins         map[int]goplugin.PluginSet
	// TLS is go-plugin's AutoMTLS client config for it (nil: plaintext).
	TLS *tls.Config
	// Logger gets go-plugin's own lines; Stderr what the plugin writes to
	// os.Stderr over go-plugin's stdio stream (its stderr pipe is read by
	// the caller: go-plugin does not wire it for an attached process).
	Logger hclog.Logger
	Stderr io.Writer
}

// Attach checks that t's process is still the one that was recorded and
// returns a go-plugin client attached to it (not yet connected: call
// Client) and the runner that watches it.
func Attach(t Target) (*goplugin.Client, *Runner, error) {
	if ok, why := proc.SameProcess(t.PID, t.StartTicks); !ok {
		return nil, nil, fmt.Errorf("not the plugin process any more: %s", why)
	}
	set, ok := t.Plugins[t.ProtocolVersion]
	if !ok {
		return nil, nil, fmt.Errorf("the plugin speaks go-plugin protocol version %d, which this host no longer has a plugin set for", t.ProtocolVersion)
	}
	var addr net.Addr
	switch t.Network {
	case "unix":
		addr = &net.UnixAddr{Net: "unix", Name: t.Address}
	case "tcp":
		a, err := net.ResolveTCPAddr("tcp", t.Address)
		if err != nil {
			return nil, nil, fmt.Errorf("the plugin's address %q: %w", t.Address, err)
		}
		addr = a
	default:
		return nil, nil, fmt.Errorf("the plugin's address network %q is not one go-plugin serves on", t.Network)
	}
	r := newRunner(t.PID)
	cfg := &goplugin.ClientConfig{
		Plugins: set,
		Reattach: &goplugin.ReattachConfig{
			Protocol:        goplugin.ProtocolGRPC,
			ProtocolVersion: t.ProtocolVersion,
			Addr:            addr,
			Pid:             t.PID,
			ReattachFunc:    func() (runner.AttachedRunner, error) { return r, nil },
		},
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		TLSConfig:        t.TLS,
		Logger:           t.Logger,
		SyncStdout:       io.Discard,
		SyncStderr:       t.Stderr,
	}
	c := goplugin.NewClient(cfg)
	if _, err := c.Start(); err != nil {
		r.stopWatching()
		return nil, nil, fmt.Errorf("attach: %w", err)
	}
	return c, r, nil
}

// Runner is go-plugin's AttachedRunner for an attached process: Wait
// returns when the process exits (reaping it when it is this process's
// child), Kill SIGKILLs it.
type Runner struct {
	pid    int
	stop   chan struct{} // closed to stop watching (attach failed)
	exited chan struct{} // closed once the process exited
	once   sync.Once

	mu  sync.Mutex // guards how
	how string     // how it exited, once it did
}

func newRunner(pid int) *Runner {
	r := &Runner{pid: pid, stop: make(chan struct{}), exited: make(chan struct{})}
	go func() {
		how, ok := proc.WaitExit(pid, r.stop)
		if !ok {
			return
		}
		r.mu.Lock()
		r.how = how
		r.mu.Unlock()
		close(r.exited)
	}()
	return r
}

func (r *Runner) stopWatching() { r.once.Do(func() { close(r.stop) }) }

// Wait implements runner.AttachedRunner.
func (r *Runner) Wait(ctx context.Context) error {
	select {
	case <-r.exited:
		return nil
	case <-r.stop:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Kill implements runner.AttachedRunner.
func (r *Runner) Kill(context.Context) error {
	p, err := os.FindProcess(r.pid)
	if err != nil {
		return nil // gone
	}
	if err := p.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

// ID implements runner.AttachedRunner.
func (r *Runner) ID() string { return strconv.Itoa(r.pid) }

// PluginToHost implements runner.AddrTranslator: the plugin runs on this
// host.
func (r *Runner) PluginToHost(network, address string) (string, string, error) {
	return network, address, nil
}

// HostToPlugin implements runner.AddrTranslator.
func (r *Runner) HostToPlugin(network, address string) (string, string, error) {
	return network, address, nil
}

// Exit says how the process exited ("" while it runs).
func (r *Runner) Exit() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.how
}

// Exited is closed once the process exited.
func (r *Runner) Exited() <-chan struct{} { return r.exited }

// ListenerFile returns a copy of l's listening socket, for an image of this
// daemon that execs in its place (the copy is close-on-exec until the
// caller clears it), and makes a unix listener leave its socket file in
// place when it is closed: connections that arrive meanwhile wait in the
// socket's backlog for the next image.
func ListenerFile(l net.Listener) (*os.File, error) {
	switch l := l.(type) {
	case *net.UnixListener:
		l.SetUnlinkOnClose(false)
		return l.File()
	case *net.TCPListener:
		return l.File()
	}
	return nil, fmt.Errorf("a %T cannot be handed over", l)
}
