package proc

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"syscall"
)

// reaperScript runs in a small /bin/sh process that outlives the daemon
// when the daemon is SIGKILLed. Pdeathsig takes the plugins down with the
// daemon, but not their own children, which would be reparented to init and
// run on. The daemon registers every plugin process group ("+PGID") and
// unregisters it once stopped ("-PGID") on the reaper's stdin; when stdin
// reaches EOF (the daemon is gone, however it died) the reaper SIGKILLs the
// groups still registered and exits. It ignores the signals a terminal or a
// service manager sends the daemon, so it is still there when they land.
const reaperScript = `set -f
trap '' INT TERM HUP QUIT
groups=" "
while read -r op pg; do
	case "$op" in
	+) groups="$groups$pg " ;;
	-) next=" "; for g in $groups; do [ "$g" = "$pg" ] || next="$next$g "; done; groups=$next ;;
	esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
`

// Reaper is the daemon's end of the reaper process.
type Reaper struct {
	log *slog.Logger

	mu  sync.Mutex // guards w and cmd
	w   *os.File   // the reaper's stdin (close-on-exec: plugins never hold it)
	cmd *exec.Cmd
}

// StartReaper starts the reaper process. Without /bin/sh it logs a warning
// and returns a reaper that does nothing: plugins still die with the daemon
// (Pdeathsig), their children may not.
func StartReaper(log *slog.Logger) *Reaper {
	r := &Reaper{log: log}
	pr, pw, err := os.Pipe()
	if err != nil {
		log.Warn("no reaper for plugin process groups", slog.String("error", err.Error()))
		return r
	}
	cmd := exec.Command("/bin/sh", "-c", reaperScript)
	cmd.Stdin = pr
	cmd.Env = []string{}
	// Its own group, and no Pdeathsig: it must outlive the daemon.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	pr.Close()
	if err != nil {
		pw.Close()
		log.Warn("no reaper for plugin process groups: children of plugins may outlive a killed daemon", slog.String("error", err.Error()))
		return r
	}
	r.w, r.cmd = pw, cmd
	return r
}

func (r *Reaper) send(op byte, pgid int) {
	if pgid <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.w == nil {
		return
	}
	if _, err := fmt.Fprintf(r.w, "%c %d\n", op, pgid); err != nil {
		r.log.Warn("reaper gone: children of plugins may outlive a killed daemon", slog.String("error", err.Error()))
		r.w.Close()
		r.w = nil
	}
}

// Add registers a plugin's process group.
func (r *Reaper) Add(pgid int) { r.send('+', pgid) }

// Remove unregisters a process group once it is killed.
func (r *Reaper) Remove(pgid int) { r.send('-', pgid) }

// Close ends the reaper (it kills any group still registered) and waits
// for it.
func (r *Reaper) Close() {
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
