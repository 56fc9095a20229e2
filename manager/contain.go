package manager

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"os/signal"
	"sync"

	"github.com/plugincontrol/plugincontrol/internal/proc"
)

// Containment says how the manager keeps plugin processes, and everything
// they start, from outliving them.
type Containment int

const (
	// ContainProcessGroup (the default): each plugin runs in its own
	// process group, killed on stop, and dies with the manager's process
	// (Pdeathsig). A descendant that leaves the group (setsid) is not
	// tracked. It changes nothing of the embedding process.
	ContainProcessGroup Containment = iota
	// ContainAuto: each generation runs in a cgroup v2 of its own (see
	// ContainCgroup) when the process can create one (root, or a
	// delegated subtree under systemd's Delegate=yes), else the process
	// becomes a child subreaper (ContainSubreaper). For a daemon whose
	// only children are its plugins (plugind): the subreaper fallback
	// kills every re-parented child that is not a plugin.
	ContainAuto
	// ContainSubreaper: process groups, and the process is a child
	// subreaper: descendants of a stopped plugin that left its group are
	// re-parented to it, and killed when a plugin stops.
	ContainSubreaper
)

// mode names the containment in effect.
func (m *Manager) containmentName() string {
	switch {
	case m.cgroups != nil:
		return "cgroup"
	case m.subreaper:
		return "subreaper"
	}
	return "process-group"
}

// Containment describes the containment in effect: "cgroup" (with the
// subtree's directory), "subreaper" or "process-group".
func (m *Manager) Containment() string {
	if m.cgroups != nil {
		return "cgroup (" + m.cgroups.Root + ")"
	}
	return m.containmentName()
}

// setupContainment applies cfg.Containment at New: it picks the mode,
// kills what a killed manager of the same ContainID left (cgroups, marked
// processes), and starts the sweeper where one is needed.
func (m *Manager) setupContainment() {
	m.containID = m.cfg.ContainID
	if m.containID == "" {
		b := make([]byte, 6)
		_, _ = rand.Read(b)
		m.containID = hex.EncodeToString(b)
	}
	// Processes of a killed manager of this id that left their group and
	// session (their mark says whose they are), but those of the
	// generations handed over (Restore adopts them, or kills them).
	// With a handover, Restore's end does it (dropInherited), knowing
	// what it took over: the scan of every process is not paid twice.
	_, keepCgroups := m.inheritedMarks()
	if m.cfg.Inherit == nil {
		if n := proc.KillMarked(m.containID + "/"); n > 0 {
			m.log.Warn("killed processes left by plugins of a killed daemon", slog.Int("processes", n))
		}
	}
	m.reaper.AddMark(m.containID + "/")
	switch m.cfg.Containment {
	case ContainAuto:
		cg, err := proc.OpenCgroups(m.containID, keepCgroups)
		if err == nil {
			m.cgroups = cg
			m.reaper.AddCgroup(cg.Root)
			break
		}
		m.log.Warn("no cgroup v2 for plugins: falling back to a child subreaper", slog.String("error", err.Error()))
		fallthrough
	case ContainSubreaper:
		was, err := proc.SetSubreaper(true)
		if err != nil {
			m.log.Warn("not a child subreaper: descendants that leave a plugin's process group are not tracked", slog.String("error", err.Error()))
			break
		}
		m.subreaper, m.unsetSubreaper = true, !was
	}
	m.pid1 = os.Getpid() == 1
	if m.subreaper || m.pid1 {
		m.sweeper = newSweeper(m)
	}
}

// closeContainment runs at the end of Close, once every plugin stopped: a
// last sweep, the cgroup subtree removed, the process no longer a
// subreaper if New made it one (an embedder gets its process back as it
// was).
func (m *Manager) closeContainment() {
	m.sweeper.close()
	if m.cgroups != nil {
		if err := m.cgroups.Close(); err != nil {
			m.log.Error("removing the plugins' cgroup subtree", slog.String("error", err.Error()))
		}
	}
	if m.unsetSubreaper {
		_, _ = proc.SetSubreaper(false)
	}
}

// mark is the MarkEnv value of a generation's processes.
func (m *Manager) mark(genID string) string { return m.containID + "/" + genID }

// sweeper kills and reaps what plugins leave re-parented to this process
// (subreaper mode) or, as PID 1, every orphan of the namespace. One
// goroutine does it all, in the background: a stop only queues the
// generation's mark, and SIGCHLD asks for a reap.
type sweeper struct {
	m      *Manager
	wake   chan struct{} // 1 slot
	sigchd chan os.Signal
	done   chan struct{}
	exited chan struct{}

	mu    sync.Mutex // guards marks
	marks map[string]bool
}

func newSweeper(m *Manager) *sweeper {
	s := &sweeper{m: m, wake: make(chan struct{}, 1), sigchd: make(chan os.Signal, 1),
		done: make(chan struct{}), exited: make(chan struct{}), marks: map[string]bool{}}
	proc.NotifyChildExit(s.sigchd)
	go s.run()
	return s
}

// stopped queues the mark of a stopped generation: what carries it is
// killed. Nil-safe.
func (s *sweeper) stopped(mark string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.marks[mark] = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *sweeper) run() {
	defer close(s.exited)
	for {
		select {
		case <-s.done:
			s.sweep()
			return
		case <-s.wake:
		case <-s.sigchd:
		}
		s.sweep()
	}
}

// sweep kills what stopped generations left and reaps the zombies. It
// holds the start lock: a plugin just forked is registered before it runs
// (the mark keeps it safe from the kill; the lock keeps its exit status
// from the reap).
func (s *sweeper) sweep() {
	s.mu.Lock()
	marks := s.marks
	s.marks = map[string]bool{}
	s.mu.Unlock()
	m := s.m
	m.pids.start.Lock()
	defer m.pids.start.Unlock()
	reaper := m.reaper.PID()
	keep := func(pid int) bool { return pid == reaper || m.pids.has(pid) }
	if len(marks) > 0 {
		if n := proc.KillAdopted(keep, marks); n > 0 {
			m.log.Warn("killed descendants of stopped plugins that had left their process groups", slog.Int("processes", n))
		}
	}
	proc.ReapAdopted(keep, m.pid1)
}

// close runs a last sweep and stops the goroutine. Nil-safe.
func (s *sweeper) close() {
	if s == nil {
		return
	}
	signal.Stop(s.sigchd)
	close(s.done)
	<-s.exited
}

// pidSet is the pids of the plugin processes this manager started and has
// not stopped: the sweeper must not take them for orphans. Starting a
// process and registering its pid happen under start's read lock, so a
// sweep (under its write lock) never sees an unregistered plugin.
type pidSet struct {
	start sync.RWMutex
	mu    sync.Mutex // guards pids
	pids  map[int]bool
}

func (s *pidSet) add(pid int) {
	s.mu.Lock()
	if s.pids == nil {
		s.pids = map[int]bool{}
	}
	s.pids[pid] = true
	s.mu.Unlock()
}

func (s *pidSet) remove(pid int) {
	s.mu.Lock()
	delete(s.pids, pid)
	s.mu.Unlock()
}

func (s *pidSet) has(pid int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pids[pid]
}

// limitsOf is r as the cgroup code spells it.
func limitsOf(r Resources) proc.Limits {
	return proc.Limits{MemoryMax: r.MemoryMax, PidsMax: r.PidsMax, CPUMax: r.CPUMax}
}

// ReaperMain runs this process as a manager's reaper and exits, when it
// was started as one (see Config.Reaper); otherwise it returns at once.
// Call it first thing in main.
func ReaperMain() { proc.ReaperMain() }
