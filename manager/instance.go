package manager

import (
	"errors"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"github.com/plugincontrol/plugincontrol/plugin"
)

// instance is one generation of a plugin: one process.
type instance struct {
	// Immutable after launch.
	name       string
	gen        uint64
	spec       Spec
	client     *goplugin.Client
	cmd        *exec.Cmd
	conn       *plugin.Conn
	pid        int
	sha256     string
	version    string
	pluginName string
	startedAt  time.Time
	sockDir    string
	stderr     *stderrSink
	reap       *reaper  // nil until the process runs
	pipes      []string // the plugin's stdout and stderr pipes, "pipe:[inode]"

	mu       sync.Mutex    // guards inflight, draining, stopping, idle
	inflight int           // calls admitted and not finished
	draining bool          // no new calls are admitted
	stopping bool          // stop was called: an exit from now on is intended
	idle     chan struct{} // closed when draining and inflight reaches 0

	stopOnce sync.Once
}

// acquire admits one call, unless the instance is draining. A caller that is
// refused reloads the plugin's active pointer: a swap always publishes the new
// generation before it drains the old one.
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
// to finish. It returns how many calls were in flight when it started and
// whether it gave up on some.
func (i *instance) drain(timeout time.Duration) (pending int, timedOut bool) {
	i.mu.Lock()
	i.draining = true
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

// intended reports whether the process exit is one the manager asked for.
func (i *instance) intended() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.stopping
}

// markStopping records that the process is about to be stopped: its exit
// is intended, and no call is admitted any more.
func (i *instance) markStopping() {
	i.mu.Lock()
	i.stopping = true
	i.draining = true
	i.mu.Unlock()
}

// stop kills the process and its process group and removes the socket
// directory. It is idempotent and waits until the process is gone.
func (i *instance) stop() {
	i.stopOnce.Do(func() {
		i.markStopping()
		killClient(i.client, i.pid, i.pipes)
		if i.reap != nil {
			i.reap.remove(i.pid)
		}
		removeSockDir(i.sockDir)
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
	awaitOrKill(done, 500*time.Millisecond, pid, pipes)
	killGroup(pid)
}

// awaitOrKill waits for done, escalating after each grace period: first it
// kills pid's process group, then every process holding one of pipes (on
// whose EOF go-plugin waits), and then it waits for done.
func awaitOrKill(done <-chan struct{}, grace time.Duration, pid int, pipes []string) {
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	killGroup(pid)
	t.Reset(grace)
	select {
	case <-done:
		return
	case <-t.C:
	}
	killPipeHolders(pipes)
	<-done
}

// killGroup SIGKILLs the process group led by pid (plugins are started with
// Setpgid, so the group id is the plugin's pid).
func killGroup(pid int) {
	if pid <= 0 {
		return
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func removeSockDir(dir string) {
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
}
