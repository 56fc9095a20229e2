//go:build linux

package proc

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain is also the reaper's main: StartReaper runs this test binary
// again with ReaperEnv set.
func TestMain(m *testing.M) {
	ReaperMain()
	goleak.VerifyTestMain(m)
}

// TestIdentity: a process is named by its pid and start time; a pid whose
// process exited, or that another process took, is not the same process.
func TestIdentity(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	ticks, err := StartTicks(pid)
	if err != nil {
		t.Fatal(err)
	}
	if ok, why := SameProcess(pid, ticks); !ok {
		t.Fatalf("the running process is not itself: %s", why)
	}
	if ok, _ := SameProcess(pid, ticks+1); ok {
		t.Fatal("another start time named the same process")
	}
	if !IsChild(pid) {
		t.Fatal("a child is not a child")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if ok, why := SameProcess(pid, ticks); ok || why == "" {
		t.Fatalf("an exited process is still itself (%q)", why)
	}
	if BootID() == "" {
		t.Fatal("no boot id")
	}
}

// TestWaitExit reaps a child and says how it ended; a process that is not
// a child is watched all the same, its status unknown.
func TestWaitExit(t *testing.T) {
	cmd := exec.Command("sh", "-c", "exit 7")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	how, ok := WaitExit(cmd.Process.Pid, nil)
	if !ok || how != "exited with status 7" {
		t.Fatalf("WaitExit: %q %v", how, ok)
	}
	// Reaped: the child is gone.
	if err := syscall.Kill(cmd.Process.Pid, 0); err == nil {
		t.Fatal("the child was not reaped")
	}
	kill := exec.Command("sleep", "60")
	if err := kill.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = syscall.Kill(kill.Process.Pid, syscall.SIGKILL) }()
	if how, _ := WaitExit(kill.Process.Pid, nil); !strings.Contains(how, "SIGKILL") {
		t.Fatalf("a killed child: %q", how)
	}
	// Stopped before the process exits.
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() }()
	stop := make(chan struct{})
	close(stop)
	if _, exited := WaitExit(sleeper.Process.Pid, stop); exited {
		t.Fatal("a stopped wait reports an exit")
	}
	// A watched process that is not a child (this test's parent, say) is
	// reported as running: WatchExit does not mistake "not my child" for
	// an exit.
	exited, stopWatch := WatchExit(os.Getppid())
	if exited == nil {
		t.Fatal("no pidfd")
	}
	select {
	case <-exited:
		t.Fatal("the parent process is reported exited")
	case <-time.After(50 * time.Millisecond): // time is what is tested: nothing happens within it
	}
	stopWatch()
}

// TestPipeEnds finds this process's descriptor of a pipe by its identity.
func TestPipeEnds(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	link, err := os.Readlink("/proc/self/fd/" + itoa(int(w.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	ends := PipeEnds([]string{link})
	if fd := ends[link]; fd != int(r.Fd()) && fd != int(w.Fd()) {
		t.Fatalf("pipe %s: found descriptor %d, the pipe's are %d and %d", link, fd, r.Fd(), w.Fd())
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestReaperKeepsAndHandsOver: a keep-mode reaper whose daemon is gone
// drains the stdio it holds (a writer never blocks) and hands it to the
// next daemon, which reads on from there.
func TestReaperKeepsAndHandsOver(t *testing.T) {
	dir := t.TempDir()
	handoff := dir + "/reaper.sock"
	r := StartReaper(testLogger(t))
	if r == nil {
		t.Fatal("no reaper")
	}
	pid := r.PID()
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	defer outW.Close()
	defer errW.Close()
	r.Keep(handoff)
	r.Hold("id/g1", "plug", int(outR.Fd()), int(errR.Fd()))
	outR.Close()
	errR.Close()
	// The daemon dies: its end of the socket closes.
	r.mu.Lock()
	r.conn.Close()
	r.conn = nil
	wait := r.wait
	r.mu.Unlock()
	// More than a pipe holds: without the reaper draining, this blocks.
	line := strings.Repeat("x", 100) + "\n"
	for range 700 { // 70 KB: more than the 64 KiB a pipe holds
		if _, err := errW.WriteString(line); err != nil {
			t.Fatal(err)
		}
	}
	var held map[string]HeldStdio
	deadline := time.Now().Add(10 * time.Second)
	for held == nil {
		h, err := TakeHeld(handoff, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if h != nil {
			held = h
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the reaper never served its handoff socket")
		}
		time.Sleep(10 * time.Millisecond) // the reaper is starting to listen
	}
	h, ok := held["id/g1"]
	if !ok || h.Plugin != "plug" {
		t.Fatalf("held: %v", held)
	}
	defer h.Stdout.Close()
	defer h.Stderr.Close()
	if _, err := errW.WriteString("after the handoff\n"); err != nil {
		t.Fatal(err)
	}
	// What the reaper had not drained yet comes first: the stream goes on
	// where it stopped.
	br := bufio.NewReader(h.Stderr)
	for {
		got, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read from the handed-over stderr: %q, %v", got, err)
		}
		if got == "after the handoff\n" {
			break
		}
		if strings.Trim(got, "x\n") != "" {
			t.Fatalf("read %q from the handed-over stderr", got)
		}
	}
	wait() // the reaper exits after the handoff
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatal("the reaper is still running")
	}
	if _, err := os.Stat(handoff); !os.IsNotExist(err) {
		t.Fatalf("the handoff socket is left: %v", err)
	}
}

// TestReaperKills: without keep mode, a reaper whose daemon is gone kills
// the process groups registered with it.
func TestReaperKills(t *testing.T) {
	r := StartReaper(testLogger(t))
	if r == nil {
		t.Fatal("no reaper")
	}
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = SysProcAttr(false)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.Add(cmd.Process.Pid)
	r.mu.Lock()
	r.conn.Close()
	r.conn = nil
	wait := r.wait
	r.mu.Unlock()
	wait()
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("the registered process: %v", err)
	}
}

// TestState: the stat file opened once tells a running process from a
// stopped one, and fails once the process is gone, even though its pid may
// be reused.
func TestState(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	s, err := OpenState(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if why := s.Stopped(); why != "" {
		t.Fatalf("a running process: %q", why)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, syscall.WUNTRACED, nil); err != nil || !ws.Stopped() {
		t.Fatalf("waiting for the stop: %v %v", ws, err)
	}
	if why := s.Stopped(); !strings.Contains(why, "stopped (state T") {
		t.Fatalf("a SIGSTOPped process: %q", why)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	_ = cmd.Wait()
	if why := s.Stopped(); !strings.Contains(why, "gone") {
		t.Fatalf("a reaped process: %q", why)
	}
}
