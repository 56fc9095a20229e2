package manager

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

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
	done := inst.conn.Done.Done()
	exited, stop := watchProcess(inst.pid)
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
	awaitOrKill(done, 100*time.Millisecond, inst.pid, inst.pipes)
}

// stdioPipes returns the identities ("pipe:[inode]") of the pipes on
// pid's stdout and stderr: go-plugin's, while the plugin runs.
func stdioPipes(pid int) []string {
	var out []string
	for _, fd := range []string{"1", "2"} {
		l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + fd)
		if err == nil && strings.HasPrefix(l, "pipe:") {
			out = append(out, l)
		}
	}
	return out
}

// killPipeHolders SIGKILLs every other process that holds one of pipes
// open. Once a plugin and its group are dead, those are descendants that
// left the group (setsid) with the plugin's stdout or stderr, on which
// go-plugin waits for EOF before it reports the exit or returns from Kill.
func killPipeHolders(pipes []string) {
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

// watchProcess returns a channel closed when the child process pid exits
// (it is left a zombie for go-plugin's cmd.Wait to reap) and a func that
// stops watching and waits for the watcher to end. The wait uses the
// runtime's poller, not a thread per plugin. exited is nil when the kernel
// has no pidfd support (Linux < 5.4).
func watchProcess(pid int) (exited <-chan struct{}, stop func()) {
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
