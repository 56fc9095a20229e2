//go:build linux

package proc

import (
	"errors"
	"syscall"
	"time"
)

// SysProcAttr returns the attributes every plugin starts with: its own
// process group (so a kill reaches the plugin's children) and Pdeathsig (so
// the plugin dies with the daemon; go-plugin sets neither).
func SysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
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
