//go:build !linux

package proc

import (
	"log/slog"
	"os"
	"syscall"
	"time"
)

// Off Linux the API compiles and does nothing, or fails with
// ErrUnsupported: plugind does not start there (cmd/plugind), and an
// embedder's manager.New fails when it would start a plugin.

// SysProcAttr returns no attributes.
func SysProcAttr(bool) *syscall.SysProcAttr { return &syscall.SysProcAttr{} }

// BootID is "".
func BootID() string { return "" }

// StartTicks fails.
func StartTicks(int) (uint64, error) { return 0, ErrUnsupported }

// SameProcess reports false.
func SameProcess(int, uint64) (bool, string) { return false, ErrUnsupported.Error() }

// IsChild reports false.
func IsChild(int) bool { return false }

// ClearCloexec fails.
func ClearCloexec(int) error { return ErrUnsupported }

// PipeEnds finds nothing.
func PipeEnds([]string) map[string]int { return map[string]int{} }

// WaitExit cannot wait.
func WaitExit(int, <-chan struct{}) (string, bool) { return "exited (status unknown)", true }

// HeldStdio is never held off Linux.
type HeldStdio struct {
	Plugin         string
	Stdout, Stderr *os.File
}

// TakeHeld takes nothing.
func TakeHeld(string, time.Duration) (map[string]HeldStdio, error) { return nil, nil }

// AdoptReaper fails.
func AdoptReaper(*slog.Logger, int, int) (*Reaper, error) { return nil, ErrUnsupported }

// KillGroup kills pid alone.
func KillGroup(pid int) {
	if p, err := os.FindProcess(pid); err == nil {
		_ = p.Kill()
	}
}

// AwaitOrKill waits for done for grace, then kills pid.
func AwaitOrKill(done <-chan struct{}, grace time.Duration, pid int, _ []string) {
	select {
	case <-done:
	case <-time.After(grace):
		KillGroup(pid)
		<-done
	}
}

// StdioPipes returns nothing.
func StdioPipes(int) []string { return nil }

// KillPipeHolders does nothing.
func KillPipeHolders([]string) {}

// ExitDescription describes how a process ended.
func ExitDescription(ps *os.ProcessState) string {
	if ps == nil {
		return ""
	}
	return ps.String()
}

// ExitedWithin reports false.
func ExitedWithin(int, time.Duration) bool { return false }

// WatchExit cannot watch without pidfds.
func WatchExit(int) (<-chan struct{}, func()) { return nil, nil }

// Mark returns "".
func Mark(int) string { return "" }

// KillAdopted does nothing.
func KillAdopted(func(int) bool, map[string]bool) int { return 0 }

// ReapAdopted does nothing.
func ReapAdopted(func(int) bool, bool) int { return 0 }

// KillMarked does nothing.
func KillMarked(string) int { return 0 }

// KillMarkedExcept does nothing.
func KillMarkedExcept(string, map[string]bool) int { return 0 }

// CgroupAt returns a Cgroup that does nothing.
func CgroupAt(string) *Cgroup { return &Cgroup{} }

// KillExcept does nothing.
func (c *Cgroups) KillExcept(map[string]bool) error { return nil }

// NotifyChildExit does nothing.
func NotifyChildExit(chan<- os.Signal) {}

// SetSubreaper fails.
func SetSubreaper(bool) (bool, error) { return false, ErrUnsupported }

// Cgroups is never opened off Linux.
type Cgroups struct {
	Root        string
	Controllers []string
}

// OpenCgroups fails.
func OpenCgroups(string, map[string]bool) (*Cgroups, error) { return nil, ErrUnsupported }

// New fails.
func (c *Cgroups) New(string, Limits) (*Cgroup, error) { return nil, ErrUnsupported }

// Close does nothing.
func (c *Cgroups) Close() error { return nil }

// Cgroup is never created off Linux.
type Cgroup struct{}

// Path is "".
func (g *Cgroup) Path() string { return "" }

// Into does nothing.
func (g *Cgroup) Into(*syscall.SysProcAttr) {}

// Started does nothing.
func (g *Cgroup) Started() {}

// Kill does nothing.
func (g *Cgroup) Kill() error { return nil }

// ReaperMain returns at once.
func ReaperMain() {}

// Reaper does nothing off Linux.
type Reaper struct{}

// StartReaper returns a Reaper that does nothing.
func StartReaper(*slog.Logger) *Reaper { return nil }

// PID is 0.
func (r *Reaper) PID() int { return 0 }

// Add does nothing.
func (r *Reaper) Add(int) {}

// Remove does nothing.
func (r *Reaper) Remove(int) {}

// AddMark does nothing.
func (r *Reaper) AddMark(string) {}

// AddCgroup does nothing.
func (r *Reaper) AddCgroup(string) {}

// RemoveCgroup does nothing.
func (r *Reaper) RemoveCgroup(string) {}

// Close does nothing.
func (r *Reaper) Close() {}

// Stop does nothing.
func (r *Reaper) Stop() {}

// Keep does nothing.
func (r *Reaper) Keep(string) {}

// Hold does nothing.
func (r *Reaper) Hold(string, string, int, int) {}

// Release does nothing.
func (r *Reaper) Release(string) {}

// Inherit has nothing to inherit.
func (r *Reaper) Inherit() (int, int) { return 0, 0 }

// State is a process's state, not readable here.
type State struct{}

// OpenState fails: the process state is not read here.
func OpenState(int) (*State, error) { return nil, ErrUnsupported }

// Stopped reports nothing.
func (*State) Stopped() string { return "" }

// Close does nothing.
func (*State) Close() error { return nil }
