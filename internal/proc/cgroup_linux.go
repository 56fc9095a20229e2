//go:build linux

package proc

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Cgroups is the cgroup v2 subtree of one daemon's plugins:
// <cgroup2 mount><the daemon's cgroup>/plugind-<id>, one child per
// generation. It is safe for concurrent use.
type Cgroups struct {
	// Root is the subtree's directory.
	Root string
	// Controllers are the controllers its children can use (memory,
	// pids, cpu), as cgroup.controllers lists them.
	Controllers []string
}

// OpenCgroups finds the cgroup v2 hierarchy (the unified one, or the
// cgroup2 mount of a hybrid host), creates the subtree of daemon id under
// the daemon's own cgroup, and kills and removes what a daemon of the same
// id left there (it was killed), but the generations named in keep (the
// cgroups of plugins a handover adopts). It fails when there is no cgroup
// v2 or the daemon may not create cgroups (not delegated, not root): the
// caller falls back to ContainSubreaper.
func OpenCgroups(id string, keep map[string]bool) (*Cgroups, error) {
	mount, err := cgroup2Mount()
	if err != nil {
		return nil, err
	}
	own, err := ownCgroup()
	if err != nil {
		return nil, err
	}
	root := filepath.Join(mount, own, "plugind-"+id)
	if err := os.Mkdir(root, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("creating cgroup %s: %w", root, err)
	}
	c := &Cgroups{Root: root}
	// Leftovers of a daemon that was killed: kill, then remove.
	if err := c.KillExcept(keep); err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(filepath.Join(root, "cgroup.controllers")); err == nil {
		avail := strings.Fields(string(b))
		// Let the children use them (the subtree's root holds no process).
		var enable []string
		for _, ctl := range avail {
			if ctl == "memory" || ctl == "pids" || ctl == "cpu" {
				enable = append(enable, "+"+ctl)
			}
		}
		if len(enable) > 0 && os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte(strings.Join(enable, " ")), 0) == nil {
			for _, e := range enable {
				c.Controllers = append(c.Controllers, e[1:])
			}
		}
	}
	return c, nil
}

// killAll kills every process in the subtree and removes its children.
func (c *Cgroups) killAll() error { return c.KillExcept(nil) }

// KillExcept kills the processes of every generation's cgroup in the
// subtree but those named in keep, and removes those cgroups.
func (c *Cgroups) KillExcept(keep map[string]bool) error {
	ents, err := os.ReadDir(c.Root)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() && !keep[e.Name()] {
			g := &Cgroup{path: filepath.Join(c.Root, e.Name())}
			if err := g.Kill(); err != nil {
				return fmt.Errorf("removing the leftover cgroup %s: %w", g.path, err)
			}
		}
	}
	return nil
}

// Close kills what is left in the subtree and removes it.
func (c *Cgroups) Close() error {
	if err := c.killAll(); err != nil {
		return err
	}
	return rmdirRetry(c.Root)
}

// Cgroup is one generation's cgroup.
type Cgroup struct {
	path string
	fd   int // O_PATH descriptor for CLONE_INTO_CGROUP; -1 once closed
}

// New creates the cgroup name in the subtree, with limits (an error names
// a limit whose controller the host does not delegate).
func (c *Cgroups) New(name string, l Limits) (*Cgroup, error) {
	for _, need := range []struct {
		set  bool
		ctl  string
		file string
	}{{l.MemoryMax > 0, "memory", "memory.max"}, {l.PidsMax > 0, "pids", "pids.max"}, {l.CPUMax != "", "cpu", "cpu.max"}} {
		if need.set && !c.has(need.ctl) {
			return nil, fmt.Errorf("%s needs the %s controller in cgroup v2, which this host does not give plugind (available under %s: %s)",
				need.file, need.ctl, c.Root, orNone(c.Controllers))
		}
	}
	p := filepath.Join(c.Root, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		return nil, fmt.Errorf("creating cgroup %s: %w", p, err)
	}
	g := &Cgroup{path: p, fd: -1}
	for _, w := range []struct {
		set        bool
		file, data string
	}{
		{l.MemoryMax > 0, "memory.max", strconv.FormatInt(l.MemoryMax, 10)},
		{l.PidsMax > 0, "pids.max", strconv.FormatInt(l.PidsMax, 10)},
		{l.CPUMax != "", "cpu.max", l.CPUMax},
	} {
		if w.set {
			if err := os.WriteFile(filepath.Join(p, w.file), []byte(w.data), 0); err != nil {
				_ = syscall.Rmdir(p)
				return nil, fmt.Errorf("setting %s to %q: %w", w.file, w.data, err)
			}
		}
	}
	fd, err := unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = syscall.Rmdir(p)
		return nil, fmt.Errorf("opening cgroup %s: %w", p, err)
	}
	g.fd = fd
	return g, nil
}

func (c *Cgroups) has(ctl string) bool {
	for _, x := range c.Controllers {
		if x == ctl {
			return true
		}
	}
	return false
}

func orNone(xs []string) string {
	if len(xs) == 0 {
		return "none"
	}
	return strings.Join(xs, " ")
}

// CgroupAt is the generation cgroup at path, made by this or an earlier
// image of the daemon (a handover): it can be killed, not started into.
func CgroupAt(path string) *Cgroup { return &Cgroup{path: path, fd: -1} }

// Path is the cgroup's directory.
func (g *Cgroup) Path() string { return g.path }

// Into makes a process started with attr begin its life in the cgroup
// (clone3 with CLONE_INTO_CGROUP): none of its children can be forked
// outside it.
func (g *Cgroup) Into(attr *syscall.SysProcAttr) {
	attr.UseCgroupFD = true
	attr.CgroupFD = g.fd
}

// Started releases the descriptor Into used, once the process runs.
func (g *Cgroup) Started() {
	if g.fd >= 0 {
		_ = unix.Close(g.fd)
		g.fd = -1
	}
}

// Kill kills every process in the cgroup (cgroup.kill), waits until it is
// empty, and removes it. It is idempotent.
func (g *Cgroup) Kill() error {
	g.Started()
	if _, err := os.Stat(g.path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(g.path, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cgroup.kill of %s: %w", g.path, err)
	}
	return rmdirRetry(g.path)
}

// Empty reports whether no process is left in the cgroup.
func (g *Cgroup) Empty() bool {
	b, err := os.ReadFile(filepath.Join(g.path, "cgroup.procs"))
	return err != nil || len(strings.TrimSpace(string(b))) == 0
}

// rmdirRetry removes a cgroup directory, waiting (up to 2s) for the killed
// processes to be gone: a cgroup with processes cannot be removed.
func rmdirRetry(p string) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := syscall.Rmdir(p)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("removing cgroup %s: %w", p, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// cgroup2Mount finds where the cgroup v2 hierarchy is mounted.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted")
}

// ownCgroup is the daemon's cgroup v2 path (the "0::" line of
// /proc/self/cgroup).
func ownCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("the process is in no cgroup v2")
}

// SetSubreaper makes this process the child subreaper of its descendants
// (PR_SET_CHILD_SUBREAPER), or stops it being one: an orphan among them is
// re-parented to it rather than to init. It returns whether the process
// was one before.
func SetSubreaper(on bool) (was bool, err error) {
	var cur int32
	if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&cur)), 0, 0, 0); err != nil {
		return false, err
	}
	v := uintptr(0)
	if on {
		v = 1
	}
	return cur != 0, unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, v, 0, 0, 0)
}
