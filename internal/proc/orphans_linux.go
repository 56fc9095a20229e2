//go:build linux

package proc

import (
	"bytes"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

// process is what orphan handling reads of a process in /proc.
type process struct {
	pid, ppid, pgid, sid int
	zombie               bool
}

// stat reads /proc/PID/stat.
func stat(pid int) (process, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return process{}, false
	}
	// PID (COMM) STATE PPID PGRP SESSION ...; COMM may hold spaces and ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return process{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 4 {
		return process{}, false
	}
	p := process{pid: pid, zombie: f[0] == "Z"}
	p.ppid, _ = strconv.Atoi(f[1])
	p.pgid, _ = strconv.Atoi(f[2])
	p.sid, _ = strconv.Atoi(f[3])
	return p, true
}

// Mark returns the MarkEnv value of pid ("" when it has none or it cannot
// be read).
func Mark(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return ""
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte(MarkEnv+"=")); ok {
			return string(v)
		}
	}
	return ""
}

// pids lists the processes in /proc.
func pids() []int {
	ents, _ := os.ReadDir("/proc")
	out := make([]int, 0, len(ents))
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// foreign lists this process's children in another process group or
// session than its own, not kept: plugins (each leads its own group; keep
// them), the reaper (keep it too), and descendants of plugins re-parented
// to this process as a child subreaper. Children started the ordinary way
// (os/exec without Setpgid or Setsid) share the process's group and are
// never listed: an embedder's own children are not touched.
func foreign(keep func(pid int) bool) []process {
	self := os.Getpid()
	pg, sid := syscall.Getpgrp(), 0
	if me, ok := stat(self); ok {
		sid = me.sid
	}
	var out []process
	for _, pid := range pids() {
		if pid == self || keep(pid) {
			continue
		}
		p, ok := stat(pid)
		if !ok || p.ppid != self || (p.pgid == pg && p.sid == sid) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// KillAdopted kills and reaps the foreign children (see foreign) whose
// MarkEnv value is one of marks: what stopped plugins left, re-parented to
// this process. Each is waited for by pid, never with wait(-1), so exit
// statuses that os/exec waits for are never taken. It returns how many.
func KillAdopted(keep func(pid int) bool, marks map[string]bool) int {
	n := 0
	for _, p := range foreign(keep) {
		if p.zombie || !marks[Mark(p.pid)] {
			continue
		}
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(p.pid, &ws, 0, nil)
		n++
	}
	return n
}

// ReapAdopted reaps foreign children that have exited (zombies) and are
// in a session of their own: descendants of plugins that daemonized
// (setsid) and then exited. With all set (this process is PID 1, the
// parent of every orphan in its namespace), it reaps every foreign zombie.
// Plugins (keep) are left to os/exec.
func ReapAdopted(keep func(pid int) bool, all bool) int {
	self, _ := stat(os.Getpid())
	n := 0
	for _, p := range foreign(keep) {
		if !p.zombie || (!all && p.sid == self.sid) {
			continue
		}
		var ws syscall.WaitStatus
		if got, _ := syscall.Wait4(p.pid, &ws, syscall.WNOHANG, nil); got == p.pid {
			n++
		}
	}
	return n
}

// KillMarked kills every process (whatever its parent) whose MarkEnv value
// starts with prefix: the plugins of a killed daemon of the same id, and
// their descendants, wherever they went. It returns how many.
func KillMarked(prefix string) int { return KillMarkedExcept(prefix, nil) }

// KillMarkedExcept is KillMarked sparing the processes whose mark is in
// keep (the generations a handover adopts).
func KillMarkedExcept(prefix string, keep map[string]bool) int {
	self := os.Getpid()
	n := 0
	for _, pid := range pids() {
		if pid == self {
			continue
		}
		if m := Mark(pid); m != "" && strings.HasPrefix(m, prefix) && !keep[m] {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				n++
			}
		}
	}
	return n
}

// NotifyChildExit relays SIGCHLD to ch (signal.Notify): a child of this
// process exited, or an orphan re-parented to it did.
func NotifyChildExit(ch chan<- os.Signal) { signal.Notify(ch, syscall.SIGCHLD) }
