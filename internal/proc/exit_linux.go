//go:build linux

package proc

import (
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// StdioPipes returns the identities ("pipe:[inode]") of the pipes on
// pid's stdout and stderr: go-plugin's, while the plugin runs.
func StdioPipes(pid int) []string {
	var out []string
	for _, fd := range []string{"1", "2"} {
		l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + fd)
		if err == nil && strings.HasPrefix(l, "pipe:") {
			out = append(out, l)
		}
	}
	return out
}

// KillPipeHolders SIGKILLs every other process that holds one of pipes
// open. Once a plugin and its group are dead, those are descendants that
// left the group (setsid) with the plugin's stdout or stderr, on which
// go-plugin waits for EOF before it reports the exit or returns from Kill.
func KillPipeHolders(pipes []string) {
	if len(pipes) == 0 {
		return
	}
	procs, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		fds, _ := os.ReadDir("/proc/" + p.Name() + "/fd")
		for _, fd := range fds {
			l, err := os.Readlink("/proc/" + p.Name() + "/fd/" + fd.Name())
			if err == nil && slices.Contains(pipes, l) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				break
			}
		}
	}
}

// ExitDescription says how a process that was waited for ended: "exited
// with status N" or "was killed by signal S"; "" when it has not been
// waited for.
func ExitDescription(ps *os.ProcessState) string {
	if ps == nil {
		return ""
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	switch {
	case !ok:
		return ps.String()
	case ws.Signaled():
		return "was killed by signal " + unix.SignalName(ws.Signal()) + " (" + ws.Signal().String() + ")"
	case ws.Exited():
		return "exited with status " + strconv.Itoa(ws.ExitStatus())
	}
	return ps.String()
}

// ExitedWithin reports whether the child process pid exits (or has exited)
// within d, without reaping it.
func ExitedWithin(pid int, d time.Duration) bool {
	exited, stop := WatchExit(pid)
	if exited == nil {
		// No such process: it exited and was reaped already.
		return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
	}
	defer stop()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-exited:
		return true
	case <-t.C:
		return false
	}
}

// WatchExit returns a channel closed when the child process pid exits (it
// is left a zombie for go-plugin's cmd.Wait to reap) and a func that stops
// watching and waits for the watcher to end. The wait uses the runtime's
// poller, not a thread per plugin. exited is nil when the kernel has no
// pidfd support (Linux < 5.4).
func WatchExit(pid int) (exited <-chan struct{}, stop func()) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, nil
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		_ = rc.Read(func(fd uintptr) bool {
			// A pidfd is readable once the process exited; check without
			// blocking or reaping. ECHILD: already reaped, so exited too.
			var info unix.Siginfo
			err := unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
			return err != nil || info.Signo != 0
		})
	}()
	return ch, func() {
		f.Close() // wakes the Read above
		<-ch
	}
}
