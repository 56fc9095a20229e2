//go:build linux

package proc

import (
	"errors"
	"syscall"
	"time"
)

// SysProcAttr returns the attributes every plugin starts with: its own
// process group (so a kill reaches the plugin's children) and, with
// deathSignal, Pdeathsig (so the plugin dies with the daemon; go-plugin
// sets neither).
//
// Pdeathsig fires when the thread that forked the plugin exits, and exec
// ends every thread but the one that execs: a daemon that re-executes
// itself in place (a reload) would kill the plugins its other threads
// started. So a daemon with a reaper (which kills what the daemon ran
// when it dies, or, with live restore, keeps it) starts plugins without
// it.
func SysProcAttr(deathSignal bool) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if deathSignal {
		a.Pdeathsig = syscall.SIGKILL
	}
	return a
}

// KillGroup SIGKILLs the process group led by pid (plugins start with
// Setpgid, so the group id is the plugin's pid), or pid alone when the
// group is gone.
func KillGroup(pid int) {
	if pid <= 0 {
		return
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// AwaitOrKill waits for done, escalating after each grace period: first it
// kills pid's process group, then every process holding one of pipes (on
// whose EOF go-plugin waits before it reports an exit or returns from
// Kill), and then it waits for done.
func AwaitOrKill(done <-chan struct{}, grace time.Duration, pid int, pipes []string) {
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	KillGroup(pid)
	t.Reset(grace)
	select {
	case <-done:
		return
	case <-t.C:
	}
	KillPipeHolders(pipes)
	<-done
}
