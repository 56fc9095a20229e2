//go:build linux

package proc

import (
	"encoding/binary"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

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

// WatchExit returns a channel closed when the process pid exits (a child
// is left a zombie for whoever waits for it: go-plugin's cmd.Wait, or an
// attached plugin's runner) and a func that stops watching and waits for
// the watcher to end. pid need not be a child: a plugin adopted from a
// crashed daemon is not. The wait uses the runtime's poller, not a thread
// per plugin. exited is nil when the kernel has no pidfd support (Linux <
// 5.4) or pid is gone already.
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
		_ = rc.Read(func(fd uintptr) bool { return pidfdExited(int(fd)) })
	}()
	return ch, func() {
		f.Close() // wakes the Read above
		<-ch
	}
}

// pidfdExited reports whether the process of pidfd fd has exited, without
// blocking or reaping: a pidfd is readable (POLLIN) once its process is a
// zombie or gone, child or not.
func pidfdExited(fd int) bool {
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case err != nil:
			return true // not a pidfd any more: nothing to wait for
		}
		return n > 0
	}
}

// WaitExit waits for process pid to exit, and reaps it when it is a child
// of this process. It returns how it ended as ExitDescription says it
// ("exited with status N", "was killed by signal S"), or, for a process
// that is not a child (its exit status goes to its own parent), "exited
// (status unknown: not a child of this plugind)". It returns at once with
// the same words when pid is gone already. Stop the wait by cancelling
// stop.
func WaitExit(pid int, stop <-chan struct{}) (how string, exited bool) {
	const unknown = "exited (status unknown: not a child of this plugind)"
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return unknown, true
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return unknown, true
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-stop:
			_ = f.SetReadDeadline(time.Now())
		case <-done:
		}
	}()
	readErr := rc.Read(func(fd uintptr) bool { return pidfdExited(int(fd)) })
	if readErr != nil && !pidfdExited(fd) {
		return "", false // stopped
	}
	var info unix.Siginfo
	var werr error
	_ = rc.Control(func(fd uintptr) {
		werr = unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED, nil)
	})
	if werr != nil {
		return unknown, true
	}
	return siginfoDescription(&info), true
}

// siginfoDescription is ExitDescription for a waitid result.
func siginfoDescription(info *unix.Siginfo) string {
	// siginfo_t for SIGCHLD: si_signo, si_errno, si_code, then the union
	// (aligned to a pointer) holding si_pid, si_uid and si_status.
	const ptr = int(unsafe.Sizeof(uintptr(0)))
	union := (12 + ptr - 1) &^ (ptr - 1)
	b := (*[128]byte)(unsafe.Pointer(info))
	status := int32(binary.NativeEndian.Uint32(b[union+8 : union+12]))
	switch info.Code {
	case cldExited:
		return "exited with status " + strconv.Itoa(int(status))
	case cldKilled, cldDumped:
		sig := syscall.Signal(status)
		return "was killed by signal " + unix.SignalName(sig) + " (" + sig.String() + ")"
	}
	return "exited"
}

// si_code values of SIGCHLD (asm-generic/siginfo.h).
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)
