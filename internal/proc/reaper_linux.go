//go:build linux

package proc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The reaper is a small process that outlives the daemon when the daemon is
// killed (SIGKILL, an OOM kill, a crash). The daemon tells it, over a
// SOCK_SEQPACKET socket on its stdin (one command per packet), what it
// runs: process groups ("+ PGID", "- PGID" once stopped), cgroup subtrees
// ("c PATH", "u PATH"), processes marked with a MarkEnv prefix ("m
// PREFIX"), and, in keep mode, each generation's stdout and stderr ("s
// GENID PLUGIN" carrying the daemon's two pipe read ends as SCM_RIGHTS,
// "x GENID" once stopped).
//
// When the socket reaches EOF (the daemon is gone, however it died):
//
//   - by default the reaper writes cgroup.kill of the subtrees, SIGKILLs
//     the groups and the marked processes, then exits: nothing the daemon
//     started outlives it;
//   - in keep mode ("k PATH", plugind --live-restore) it kills nothing. It
//     holds the plugins' stdout and stderr so that no plugin blocks on a
//     full pipe or dies of SIGPIPE, drains them (every line logged to its
//     own stderr, the daemon's, with the plugin's name), and hands them to
//     the next daemon that connects to PATH and asks (TakeHeld). Then it
//     exits; it also exits once every pipe it holds has reached EOF (the
//     plugins are gone).
//
// A daemon that re-executes itself (a reload: same pid) keeps its reaper:
// the socket is inherited across the exec (AdoptReaper), so the reaper
// never sees EOF.
//
// The reaper ignores the signals a terminal or a service manager sends the
// daemon, so it is still there when they land. It is the daemon's own
// binary run again with ReaperEnv set (no shell needed: distroless images
// have none); the binary's main calls ReaperMain first thing.

// ReaperMain runs the reaper and exits when this process was started as one
// (ReaperEnv is set); otherwise it returns at once. Call it first thing in
// main of a binary that embeds a manager with a reaper.
func ReaperMain() {
	if os.Getenv(ReaperEnv) != "1" {
		return
	}
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGPIPE)
	c, err := net.FileConn(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "plugind reaper: stdin is not the daemon's socket:", err)
		os.Exit(2)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		fmt.Fprintln(os.Stderr, "plugind reaper: stdin is not a unix socket")
		os.Exit(2)
	}
	os.Stdin.Close()
	r := &reaperState{groups: map[int]bool{}, cgroups: map[string]bool{}, marks: map[string]bool{}, held: map[string]*heldStdio{},
		log: slog.New(slog.NewTextHandler(os.Stderr, nil)).With(slog.String("component", "plugind-reaper"))}
	r.follow(uc)
	if r.keep != "" {
		r.holdForNext()
	} else {
		r.killAll()
	}
	os.Exit(0)
}

// reaperState is what the reaper knows. Only follow's goroutine changes
// it, until the daemon is gone.
type reaperState struct {
	log     *slog.Logger
	groups  map[int]bool
	cgroups map[string]bool
	marks   map[string]bool
	keep    string // keep mode: the handoff socket's path; "": kill
	held    map[string]*heldStdio
}

// heldStdio is one generation's stdout and stderr, held in keep mode.
type heldStdio struct {
	gen, plugin string
	files       []*os.File // stdout, stderr
}

// maxPacketFDs bounds the descriptors one packet carries.
const maxPacketFDs = 2

// follow applies the daemon's commands until the socket reaches EOF.
func (r *reaperState) follow(c *net.UnixConn) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(maxPacketFDs*4))
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		fds := parseRights(oob[:oobn])
		if err != nil || (n == 0 && oobn == 0) {
			closeFDs(fds)
			return
		}
		r.apply(string(buf[:n]), fds)
	}
}

// apply runs one command; fds are the descriptors its packet carried.
func (r *reaperState) apply(cmd string, fds []int) {
	op, arg, _ := strings.Cut(cmd, " ")
	switch op {
	case "+", "-":
		if pg, err := strconv.Atoi(arg); err == nil && pg > 0 {
			if op == "+" {
				r.groups[pg] = true
			} else {
				delete(r.groups, pg)
			}
		}
	case "c":
		r.cgroups[arg] = true
	case "u":
		delete(r.cgroups, arg)
	case "m":
		r.marks[arg] = true
	case "k":
		r.keep = arg
	case "s":
		gen, plugin, _ := strings.Cut(arg, " ")
		if len(fds) != 2 || gen == "" {
			break
		}
		if old := r.held[gen]; old != nil {
			old.close()
		}
		// Non-blocking (Go's pipes are, and the description is shared): the
		// poller reads them, so a handoff can stop a drain with a deadline.
		_ = unix.SetNonblock(fds[0], true)
		_ = unix.SetNonblock(fds[1], true)
		r.held[gen] = &heldStdio{gen: gen, plugin: plugin, files: []*os.File{os.NewFile(uintptr(fds[0]), gen+".stdout"), os.NewFile(uintptr(fds[1]), gen+".stderr")}}
		return
	case "x":
		if h := r.held[arg]; h != nil {
			h.close()
			delete(r.held, arg)
		}
	}
	closeFDs(fds)
}

func (h *heldStdio) close() {
	for _, f := range h.files {
		f.Close()
	}
}

// killAll kills what is registered: the daemon died without live restore.
func (r *reaperState) killAll() {
	for p := range r.cgroups {
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
	for pg := range r.groups {
		_ = syscall.Kill(-pg, syscall.SIGKILL)
	}
	for m := range r.marks {
		KillMarked(m)
	}
}

// holdForNext keeps the plugins' stdio drained until the next daemon takes
// it (or every pipe is at EOF), serving the handoff socket meanwhile.
func (r *reaperState) holdForNext() {
	r.log.Warn("plugind is gone: live restore keeps its plugins running; draining their output until the next plugind adopts them",
		slog.Int("plugins", len(r.held)), slog.String("handoff", r.keep))
	_ = os.Remove(r.keep)
	old := syscall.Umask(0o077)
	lis, err := net.Listen("unixpacket", r.keep)
	syscall.Umask(old)
	if err != nil {
		r.log.Error("no handoff socket: the next plugind cannot take the plugins' output", slog.String("error", err.Error()))
	}
	var drains sync.WaitGroup
	for _, h := range r.held {
		for i, f := range h.files {
			stream := [...]string{"stdout", "stderr"}[i]
			drains.Add(1)
			go func() {
				defer drains.Done()
				drain(f, r.log.With(slog.String("plugin", h.plugin), slog.String("generation_id", h.gen), slog.String("stream", stream)))
			}()
		}
	}
	allEOF := make(chan struct{})
	go func() { drains.Wait(); close(allEOF) }()
	taken := make(chan *net.UnixConn, 1)
	if lis != nil {
		go func() {
			for {
				c, err := lis.Accept()
				if err != nil {
					return
				}
				uc := c.(*net.UnixConn)
				if !samePeer(uc) {
					uc.Close()
					continue
				}
				taken <- uc
				return
			}
		}()
	}
	select {
	case <-allEOF:
		r.log.Info("every plugin's output reached EOF (they are gone): exiting")
	case c := <-taken:
		// Stop draining: the deadline wakes every reader, which logs what it
		// had of a line; then the descriptors go to the new daemon.
		for _, h := range r.held {
			for _, f := range h.files {
				_ = f.SetReadDeadline(time.Now())
			}
		}
		<-allEOF
		r.handOver(c)
		c.Close()
	}
	if lis != nil {
		lis.Close()
		_ = os.Remove(r.keep)
	}
}

// handOver answers a TakeHeld: every held generation, then "end".
func (r *reaperState) handOver(c *net.UnixConn) {
	buf := make([]byte, 64)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "take" {
		return
	}
	for _, h := range r.held {
		fds := make([]int, 0, len(h.files))
		for _, f := range h.files {
			fds = append(fds, int(f.Fd()))
		}
		if _, _, err := c.WriteMsgUnix([]byte("s "+h.gen+" "+h.plugin), unix.UnixRights(fds...), nil); err != nil {
			r.log.Error("handing over a plugin's output failed", slog.String("plugin", h.plugin), slog.String("error", err.Error()))
			return
		}
	}
	_, _ = c.Write([]byte("end"))
	r.log.Info("the next plugind took the plugins' output: exiting", slog.Int("plugins", len(r.held)))
}

// drain logs every line read from f until EOF or its read deadline.
func drain(f *os.File, log *slog.Logger) {
	br := bufio.NewReaderSize(f, maxLogLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			msg := strings.TrimRight(string(line), "\n")
			if errors.Is(err, bufio.ErrBufferFull) {
				msg += "…(truncated)"
				// Drop the rest of the long line.
				for errors.Is(err, bufio.ErrBufferFull) {
					_, err = br.ReadSlice('\n')
				}
			}
			log.LogAttrs(context.Background(), lineLevel(msg), msg)
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// samePeer reports whether the process at the other end of c runs as this
// process's user (or as root).
func samePeer(c *net.UnixConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var cred *unix.Ucred
	_ = rc.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	return err == nil && cred != nil && (cred.Uid == uint32(os.Getuid()) || cred.Uid == 0)
}

func parseRights(oob []byte) []int {
	if len(oob) == 0 {
		return nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var out []int
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err == nil {
			out = append(out, fds...)
		}
	}
	return out
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// HeldStdio is a plugin generation's stdout and stderr, as a live-restore
// reaper held them while no daemon ran (see TakeHeld).
type HeldStdio struct {
	// Plugin is the plugin's instance name.
	Plugin string
	// Stdout and Stderr are the read ends of its pipes.
	Stdout, Stderr *os.File
}

// TakeHeld connects to the handoff socket of a keep-mode reaper whose
// daemon died and takes the stdio it holds, by generation id (the id in a
// generation's mark). A missing socket is no error: nothing is held.
func TakeHeld(path string, timeout time.Duration) (map[string]HeldStdio, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial("unixpacket", path)
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("the previous plugind's reaper: %w", err)
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	_ = uc.SetDeadline(time.Now().Add(timeout))
	if _, err := uc.Write([]byte("take")); err != nil {
		return nil, fmt.Errorf("the previous plugind's reaper: %w", err)
	}
	out := map[string]HeldStdio{}
	buf := make([]byte, 1024)
	oob := make([]byte, unix.CmsgSpace(maxPacketFDs*4))
	for {
		n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
		fds := parseRights(oob[:oobn])
		if err != nil || n == 0 {
			closeFDs(fds)
			closeHeld(out)
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("the previous plugind's reaper hung up before handing everything over: %w", err)
		}
		msg := string(buf[:n])
		if msg == "end" {
			closeFDs(fds)
			return out, nil
		}
		gen, plugin, _ := strings.Cut(strings.TrimPrefix(msg, "s "), " ")
		if !strings.HasPrefix(msg, "s ") || len(fds) != 2 {
			closeFDs(fds)
			continue
		}
		_ = unix.SetNonblock(fds[0], true)
		_ = unix.SetNonblock(fds[1], true)
		out[gen] = HeldStdio{Plugin: plugin, Stdout: os.NewFile(uintptr(fds[0]), gen+".stdout"), Stderr: os.NewFile(uintptr(fds[1]), gen+".stderr")}
	}
}

func closeHeld(m map[string]HeldStdio) {
	for _, h := range m {
		h.Stdout.Close()
		h.Stderr.Close()
	}
}

// Reaper is the daemon's end of the reaper process. A nil *Reaper does
// nothing (no reaper: an embedder's default).
type Reaper struct {
	log *slog.Logger

	mu   sync.Mutex    // guards conn, pid and wait
	conn *net.UnixConn // the reaper's socket (close-on-exec: plugins never hold it)
	pid  int
	// wait waits for the reaper to exit: cmd.Wait for one this image
	// started, a wait by pid for one inherited across an exec.
	wait func()
}

// StartReaper starts the reaper: this process's own binary with ReaperEnv
// set. When it cannot, it logs a warning and returns nil: plugins then
// start with Pdeathsig (they die with the daemon; their children may not),
// and live restore and reloads in place are not available.
func StartReaper(log *slog.Logger) *Reaper {
	exe, err := os.Executable()
	if err != nil {
		log.Warn("no reaper for plugin processes: children of plugins may outlive a killed daemon", slog.String("error", err.Error()))
		return nil
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		log.Warn("no reaper for plugin processes", slog.String("error", err.Error()))
		return nil
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "reaper"), os.NewFile(uintptr(fds[1]), "reaper-peer")
	defer theirs.Close()
	cmd := exec.Command(exe)
	cmd.Args = []string{filepath.Base(exe) + "-reaper"}
	cmd.Stdin = theirs
	// The daemon's stderr: in keep mode the reaper logs the plugins'
	// output there while no daemon runs.
	cmd.Stderr = os.Stderr
	cmd.Env = []string{ReaperEnv + "=1"}
	// Its own group, and no Pdeathsig: it must outlive the daemon.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		ours.Close()
		log.Warn("no reaper for plugin processes: children of plugins may outlive a killed daemon", slog.String("error", err.Error()))
		return nil
	}
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log.Warn("no reaper for plugin processes", slog.String("error", err.Error()))
		return nil
	}
	return &Reaper{log: log, conn: c.(*net.UnixConn), pid: cmd.Process.Pid, wait: func() { _ = cmd.Wait() }}
}

// AdoptReaper takes over the reaper of the image this process replaced
// (a reload re-executes in place, so the reaper is still a child): fd is
// the daemon's end of its socket, inherited across the exec, pid its pid.
func AdoptReaper(log *slog.Logger, pid, fd int) (*Reaper, error) {
	f := os.NewFile(uintptr(fd), "reaper")
	if f == nil {
		return nil, fmt.Errorf("reaper socket %d: not a descriptor", fd)
	}
	unix.CloseOnExec(fd)
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("reaper socket %d: %w", fd, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("reaper socket %d: not a unix socket", fd)
	}
	return &Reaper{log: log, conn: uc, pid: pid, wait: func() {
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, 0, nil)
	}}, nil
}

// PID is the reaper's pid (0 when there is none).
func (r *Reaper) PID() int {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pid
}

func (r *Reaper) send(line string, fds ...int) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		return
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := r.conn.WriteMsgUnix([]byte(line), oob, nil); err != nil {
		r.log.Warn("reaper gone: children of plugins may outlive a killed daemon", slog.String("error", err.Error()))
		r.conn.Close()
		r.conn = nil
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

// Keep switches the reaper to keep mode (live restore): when the daemon
// dies it kills nothing, drains the plugins' stdio registered with Hold,
// and hands it to the next daemon at handoff (TakeHeld). An empty handoff
// leaves keep mode.
func (r *Reaper) Keep(handoff string) { r.send("k " + handoff) }

// Hold gives the reaper copies of a generation's stdout and stderr read
// ends (keep mode): gen is the generation's id, plugin its instance name.
func (r *Reaper) Hold(gen, plugin string, stdout, stderr int) {
	if stdout > 0 && stderr > 0 {
		r.send("s "+gen+" "+plugin, stdout, stderr)
	}
}

// Release closes the reaper's copies of a stopped generation's stdio.
func (r *Reaper) Release(gen string) { r.send("x " + gen) }

// Inherit returns the reaper's pid and the descriptor of its socket, for
// the image this process is about to exec (AdoptReaper's arguments; the
// caller clears the descriptor's close-on-exec flag right before the
// exec); 0, 0 with no reaper.
func (r *Reaper) Inherit() (pid, fd int) {
	if r == nil {
		return 0, 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		return 0, 0
	}
	rc, err := r.conn.SyscallConn()
	if err != nil {
		return 0, 0
	}
	if rc.Control(func(f uintptr) { fd = int(f) }) != nil {
		return 0, 0
	}
	return r.pid, fd
}

// Close ends the reaper (it kills what is still registered, unless in keep
// mode) and waits for it.
func (r *Reaper) Close() {
	if r == nil {
		return
	}
	r.mu.Lock()
	c, wait := r.conn, r.wait
	r.conn, r.wait = nil, nil
	r.mu.Unlock()
	if c != nil {
		c.Close()
	}
	if wait != nil {
		wait()
	}
}

// Stop ends the reaper after a clean stop of every plugin: it leaves keep
// mode first, so it kills what may be left rather than holding it.
func (r *Reaper) Stop() {
	if r == nil {
		return
	}
	r.Keep("")
	r.Close()
}
