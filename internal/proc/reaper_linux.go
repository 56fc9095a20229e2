//go:build linux

package proc

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// The reaper is a small process that outlives the daemon when the daemon is
// SIGKILLed. Pdeathsig takes the plugins down with the daemon, but not their
// own children, which would be re-parented to init and run on. The daemon
// tells the reaper, on its stdin, what to kill if it dies: process groups
// ("+ PGID", "- PGID" once stopped), cgroup subtrees ("c PATH", "u PATH")
// and processes marked with a MarkEnv prefix ("m PREFIX"). When
// stdin reaches EOF (the daemon is gone, however it died) the reaper
// writes cgroup.kill of the subtrees, SIGKILLs the groups and the marked
// processes, then exits.
// It ignores the signals a terminal or a service manager sends the daemon,
// so it is still there when they land.
//
// The reaper is the daemon's own binary run again with ReaperEnv set (no
// shell needed: distroless images have none); the binary's main calls
// ReaperMain first thing.

// ReaperMain runs the reaper and exits when this process was started as one
// (ReaperEnv is set); otherwise it returns at once. Call it first thing in
// main of a binary that embeds a manager with a reaper.
func ReaperMain() {
	if os.Getenv(ReaperEnv) != "1" {
		return
	}
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	runReaper(os.Stdin)
	os.Exit(0)
}

// runReaper follows the daemon's instructions on r until EOF, then kills
// what is registered.
func runReaper(r io.Reader) {
	groups := map[int]bool{}
	cgroups := map[string]bool{}
	marks := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		op, arg, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		switch op {
		case "+", "-":
			pg, err := strconv.Atoi(arg)
			if err != nil || pg <= 0 {
				continue
			}
			if op == "+" {
				groups[pg] = true
			} else {
				delete(groups, pg)
			}
		case "c":
			cgroups[arg] = true
		case "u":
			delete(cgroups, arg)
		case "m":
			marks[arg] = true
		}
	}
	for p := range cgroups {
		// Kill everything in the subtree, then remove it (a cgroup with
		// processes cannot be removed: rmdirRetry waits for them to go).
		_ = os.WriteFile(filepath.Join(p, "cgroup.kill"), []byte("1"), 0)
		ents, _ := os.ReadDir(p)
		for _, e := range ents {
			if e.IsDir() {
				_ = rmdirRetry(filepath.Join(p, e.Name()))
			}
		}
		_ = rmdirRetry(p)
	}
	for pg := range groups {
		_ = syscall.Kill(-pg, syscall.SIGKILL)
	}
	for m := range marks {
		KillMarked(m)
	}
}

// Reaper is the daemon's end of the reaper process. A nil *Reaper does
// nothing (no reaper: an embedder's default).
type Reaper struct {
	log *slog.Logger

	mu  sync.Mutex // guards w and cmd
	w   *os.File   // the reaper's stdin (close-on-exec: plugins never hold it)
	cmd *exec.Cmd
}

// StartReaper starts the reaper: this process's own binary with ReaperEnv
// set. When it cannot, it logs a warning and returns a Reaper that does
// nothing: plugins still die with the daemon (Pdeathsig), their children
// may not.
func StartReaper(log *slog.Logger) *Reaper {
	r := &Reaper{log: log}
	exe, err := os.Executable()
	if err != nil {
		log.Warn("no reaper for plugin processes: children of plugins may outlive a killed daemon", slog.String("error", err.Error()))
		return r
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		log.Warn("no reaper for plugin processes", slog.String("error", err.Error()))
		return r
	}
	cmd := exec.Command(exe)
	cmd.Args = []string{filepath.Base(exe) + "-reaper"}
	cmd.Stdin = pr
	cmd.Env = []string{ReaperEnv + "=1"}
	// Its own group, and no Pdeathsig: it must outlive the daemon.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	pr.Close()
	if err != nil {
		pw.Close()
		log.Warn("no reaper for plugin processes: children of plugins may outlive a killed daemon", slog.String("error", err.Error()))
		return r
	}
	r.w, r.cmd = pw, cmd
	return r
}

// PID is the reaper's pid (0 when there is none).
func (r *Reaper) PID() int {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil || r.cmd.Process == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

func (r *Reaper) send(line string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.w == nil {
		return
	}
	if _, err := fmt.Fprintln(r.w, line); err != nil {
		r.log.Warn("reaper gone: children of plugins may outlive a killed daemon", slog.String("error", err.Error()))
		r.w.Close()
		r.w = nil
	}
}

// Add registers a plugin's process group.
func (r *Reaper) Add(pgid int) {
	if pgid > 0 {
		r.send("+ " + strconv.Itoa(pgid))
	}
}

// Remove unregisters a process group once it is killed.
func (r *Reaper) Remove(pgid int) {
	if pgid > 0 {
		r.send("- " + strconv.Itoa(pgid))
	}
}

// AddMark registers a MarkEnv prefix: every process whose mark starts with
// it is killed, wherever it went (descendants that left their plugin's
// process group and session).
func (r *Reaper) AddMark(prefix string) { r.send("m " + prefix) }

// AddCgroup registers a cgroup subtree to kill.
func (r *Reaper) AddCgroup(path string) { r.send("c " + path) }

// RemoveCgroup unregisters a cgroup subtree.
func (r *Reaper) RemoveCgroup(path string) { r.send("u " + path) }

// Close ends the reaper (it kills what is still registered) and waits for
// it.
func (r *Reaper) Close() {
	if r == nil {
		return
	}
	r.mu.Lock()
	w, cmd := r.w, r.cmd
	r.w, r.cmd = nil, nil
	r.mu.Unlock()
	if w != nil {
		w.Close()
	}
	if cmd != nil {
		_ = cmd.Wait()
	}
}
