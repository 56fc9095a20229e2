package manager

import (
	"context"
	"crypto/tls"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	"github.com/plugincontrol/plugincontrol/internal/launch"
	"github.com/plugincontrol/plugincontrol/internal/proc"
	"google.golang.org/grpc"
)

// instance is one generation of a plugin: one process.
type instance struct {
	// gen is the generation number the process serves as: set at launch,
	// raised only when a revert makes the process active again.
	gen atomic.Uint64

	// Immutable after launch.
	name       string
	spec       Spec
	proto      *Protocol
	client     *goplugin.Client
	cmd        *exec.Cmd
	rpc        *grpc.ClientConn // go-plugin's connection to the plugin
	dispensed  any              // what the protocol's plugin dispensed
	hooks      Conn             // what the protocol's hooks get
	native     pluginv1.PluginServiceClient
	done       context.Context // go-plugin's: cancelled when the process exits
	pid        int
	sha256     string
	version    string
	pluginName string
	services   []string
	unary      map[string]bool // full method names of unary methods, as described
	startedAt  time.Time
	sockDir    string
	stderr     *proc.StderrSink
	reap       *proc.Reaper // nil until the process runs (or with cgroups)
	cgroup     *proc.Cgroup // the generation's cgroup (ContainAuto); nil: none
	stopped    func(error)  // the manager's bookkeeping once the process is gone (with the cgroup's kill error)
	pipes      []string     // the plugin's stdout and stderr pipes, "pipe:[inode]"
	// Kept for a handover: the negotiated go-plugin protocol version,
	// go-plugin's AutoMTLS config and the plugin's certificate (seen at
	// the TLS handshake), the generation's mark (proc.MarkEnv) and the
	// process's start time in ticks.
	protocolVersion int
	tls             *tls.Config
	serverCert      atomic.Pointer[[]byte]
	mark            string
	startTicks      uint64
	// attached is set for a process this manager did not start (a reload
	// or a crash adoption handed it over): its runner knows how it exited.
	attached *launch.Runner
	// stdio are the daemon's ends of an attached process's stdout and
	// stderr (go-plugin holds those of a process it started).
	stdio []*os.File

	// gone is cancelled once the generation is being stopped: leases
	// still out (calls the drain gave up on) end with Unavailable.
	gone       context.Context
	cancelGone context.CancelFunc

	mu       sync.Mutex // guards inflight, draining, drainNote, stopping, idle
	inflight int        // calls and leases admitted and not finished
	draining bool       // no new calls are admitted
	// drainNote is closed when draining begins (leases learn that calls
	// should move on); nil until someone asks.
	drainNote chan struct{}
	stopping  bool          // stop was called: an exit from now on is intended
	idle      chan struct{} // closed when draining and inflight reaches 0

	stopOnce sync.Once
}

// exitDescription says how the process ended ("" while it runs, or when
// unknown).
func (i *instance) exitDescription() string {
	if i.attached != nil {
		return i.attached.Exit()
	}
	if i.cmd != nil {
		return proc.ExitDescription(i.cmd.ProcessState)
	}
	return ""
}

// generation is the generation number the process serves as.
func (i *instance) generation() uint64 { return i.gen.Load() }

// acquire admits one call or lease, unless the instance is draining. A
// caller that is refused reloads the plugin's active pointer: a swap always
// publishes the new generation before it drains the old one.
func (i *instance) acquire() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.draining {
		return false
	}
	i.inflight++
	return true
}

func (i *instance) release() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.inflight--
	if i.draining && i.inflight == 0 && i.idle != nil {
		close(i.idle)
		i.idle = nil
	}
}

// drain stops admitting calls and waits up to timeout for the admitted ones
// (calls and leases) to finish. It returns how many were in flight when it
// started and whether it gave up on some.
func (i *instance) drain(timeout time.Duration) (pending int, timedOut bool) {
	i.mu.Lock()
	i.draining = true
	i.noteDrainLocked()
	pending = i.inflight
	if pending == 0 {
		i.mu.Unlock()
		return 0, false
	}
	idle := make(chan struct{})
	i.idle = idle
	i.mu.Unlock()

	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-idle:
		return pending, false
	case <-t.C:
		return pending, true
	}
}

// hold stops admitting calls without waiting for the admitted ones: a
// baking reload keeps the previous generation's process warm this way.
func (i *instance) hold() {
	i.mu.Lock()
	i.draining = true
	i.noteDrainLocked()
	i.mu.Unlock()
}

// noteDrainLocked tells the waiters of drained that draining began.
func (i *instance) noteDrainLocked() {
	if i.drainNote != nil {
		close(i.drainNote)
		i.drainNote = nil
	}
}

// drained returns a channel closed once the instance stops admitting
// calls (at once if it already has).
func (i *instance) drained() <-chan struct{} {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.draining {
		c := make(chan struct{})
		close(c)
		return c
	}
	if i.drainNote == nil {
		i.drainNote = make(chan struct{})
	}
	return i.drainNote
}

// revive makes a held instance serve again as generation gen (a revert). It
// reports false when the instance is already stopping.
func (i *instance) revive(gen uint64) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.stopping {
		return false
	}
	i.draining = false
	i.idle = nil
	i.gen.Store(gen)
	return true
}

// intended reports whether the process exit is one the manager asked for.
func (i *instance) intended() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.stopping
}

// markStopping records that the process is about to be stopped: its exit
// is intended, no call is admitted any more, and leases still out end.
func (i *instance) markStopping() {
	i.mu.Lock()
	i.stopping = true
	i.draining = true
	i.mu.Unlock()
	i.cancelGone()
}

// stop kills the process and its process group and removes the socket
// directory. It is idempotent and waits until the process is gone.
func (i *instance) stop() {
	i.stopOnce.Do(func() {
		i.markStopping()
		if i.client != nil {
			killClient(i.client, i.pid, i.pipes)
		}
		var cgErr error
		if i.cgroup != nil {
			// Every process the plugin started, in or out of its
			// process group, double-forked or not.
			cgErr = i.cgroup.Kill()
		}
		if i.reap != nil {
			i.reap.Remove(i.pid)
			i.reap.Release(i.mark)
		}
		removeSockDir(i.sockDir)
		for _, f := range i.stdio {
			f.Close()
		}
		if i.stderr != nil {
			i.stderr.Close() // a panic still being collected is logged
		}
		if i.stopped != nil {
			i.stopped(cgErr)
		}
	})
}

// killClient stops a go-plugin client and every process left in the plugin's
// process group. go-plugin's Kill asks the plugin to exit (a few ms) and
// SIGKILLs only the direct child after 2s; the group kill takes care of the
// plugin's own children and of a plugin that ignores the request. Kill
// returns only once the plugin's stdout and stderr reach EOF: if processes
// that left the group still hold them, they are killed too (pipes).
func killClient(c *goplugin.Client, pid int, pipes []string) {
	done := make(chan struct{})
	go func() {
		c.Kill()
		close(done)
	}()
	// If the plugin does not exit on request, kill its group (then the
	// pipes' holders) so Kill returns.
	proc.AwaitOrKill(done, 500*time.Millisecond, pid, pipes)
	proc.KillGroup(pid)
}

// waitGone returns once inst's process has exited and go-plugin has seen it
// (its done context is cancelled). go-plugin reports an exit only after the
// plugin's stdout and stderr reach EOF, which never happens while a child
// the plugin started holds them (a shell-out with cmd.Stderr = os.Stderr):
// a crash would go unnoticed and the plugin would stay SERVING with a dead
// pid. So the process is also watched through a pidfd; once the plugin is
// gone and go-plugin still waits, the plugin's process group is killed,
// which closes the pipes; processes that left the group (setsid) but hold
// the pipes are killed next.
func waitGone(inst *instance) {
	done := inst.done.Done()
	exited, stop := proc.WatchExit(inst.pid)
	if exited == nil {
		<-done // no pidfd support: go-plugin's word only
		return
	}
	defer stop()
	select {
	case <-done:
		return
	case <-exited:
	}
	// The plugin is a zombie (go-plugin reaps it only after the pipes
	// close), so its pid and group id cannot have been reused.
	proc.AwaitOrKill(done, 100*time.Millisecond, inst.pid, inst.pipes)
}

func removeSockDir(dir string) {
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
}
