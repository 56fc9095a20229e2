package chaos_test

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/manager"
)

// TestMisbehavingCandidates: candidates that exhaust the start timeout,
// exit mid-handshake, refuse the cookie after a burst of stderr, hang in
// Ready, or flood stderr and then fail Ready,
// each as a Reload of a serving plugin and as a fresh Load. Each fails at
// its stage; the active generation keeps serving with the same pid; the
// candidate process is gone; no socket directory remains but the active
// generation's; a failed Load leaves no trace in the registry.
func TestMisbehavingCandidates(t *testing.T) {
	cases := []struct {
		name  string
		spec  manager.Spec
		stage manager.Stage
		want  string // in the error, lower case
		// also is another stage that may fail instead (0: none): a process
		// that dies right after its handshake line races the host's
		// connect (the handshake stage) against its describe call.
		also manager.Stage
	}{
		{"start-timeout", manager.Spec{Binary: "hang", StartTimeout: 300 * time.Millisecond}, manager.StageStart, "start_timeout", 0},
		{"halfshake", manager.Spec{Binary: "halfshake"}, manager.StageHandshake, "unsupported plugin protocol", 0},
		// A wrong cookie after 60 KiB of stderr: go-plugin sees stdout's EOF
		// before the host has read the stderr that says why.
		{"noisycookie", manager.Spec{Binary: "noisycookie"}, manager.StageHandshake, "rejected the handshake cookie", 0},
		{"slowready", manager.Spec{Binary: "slowready"}, manager.StageReady, "deadline", 0},
		// Dead right after a complete handshake: the next stage meets a
		// dead connection, and the report says what happened to the process.
		{"shakeexit", manager.Spec{Binary: "shakeexit"}, manager.StageDescribe, "the plugin process exited with status 4: shakeexit: lost the database connection", manager.StageHandshake},
		{"shakeexit-signal", manager.Spec{Binary: "shakeexit", Args: []string{"-signal"}}, manager.StageDescribe, "the plugin process was killed by signal sigkill", manager.StageHandshake},
		{"flood-notready", manager.Spec{Binary: "flood", Args: []string{"-notready"}}, manager.StageReady, "not ready after flooding", 0},
	}
	m, sock := newManager(t, manager.Config{ReadyTimeout: time.Second})
	st := load(t, m, manager.Spec{Name: "echo", Binary: "echo"})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			check := func(op string, err error, active uint64) {
				t.Helper()
				var ce *manager.CandidateError
				if !errors.As(err, &ce) {
					t.Fatalf("%s: %v, want a CandidateError", op, err)
				}
				// (slowready: the host's deadline or the plugin's own
				// context, whichever ends first: either says so.)
				stageOK := ce.Stage == c.stage || (c.also != 0 && ce.Stage == c.also)
				if !stageOK || !strings.Contains(strings.ToLower(err.Error()), "stage "+ce.Stage.String()+": ") || !strings.Contains(strings.ToLower(err.Error()), c.want) {
					t.Fatalf("%s: stage %s (%v), want stage %s and %q; stderr tail %q", op, ce.Stage, err, c.stage, c.want, truncTail(ce.StderrTail))
				}
				if ce.ActiveGeneration != active {
					t.Fatalf("%s: active generation %d reported, want %d", op, ce.ActiveGeneration, active)
				}
				if strings.Contains(ce.StderrTail, `"@level":"debug"`) {
					t.Fatalf("%s: stderr tail holds go-plugin's debug lines: %q", op, truncTail(ce.StderrTail))
				}
				if len(ce.StderrTail) > 4096 {
					t.Fatalf("%s: stderr tail of %d bytes, want at most 4096", op, len(ce.StderrTail))
				}
				// Every one of them started a process: it must be gone.
				gone(t, op+": candidate", ce.Report.CandidatePID)
				if d := sockDirs(sock); len(d) != 1 {
					t.Fatalf("%s: socket directories %v, want only the active generation's", op, d)
				}
			}
			spec := c.spec
			spec.Name = "echo"
			_, err := m.Reload(context.Background(), manager.ReloadRequest{Name: "echo", Spec: &spec})
			check("Reload", err, 1)
			now := serves(t, m, "echo", 1, st.PID)
			if !(strings.Contains(now.LastError, c.stage.String()) || (c.also != 0 && strings.Contains(now.LastError, c.also.String()))) || now.Spec.Binary != "echo" {
				t.Fatalf("after the failed Reload: last_error %q, spec %+v", now.LastError, now.Spec)
			}

			spec.Name = "cand"
			_, err = m.Load(context.Background(), spec)
			check("Load", err, 0)
			if _, err := m.Get("cand"); !errors.Is(err, manager.ErrNotFound) {
				t.Fatalf("failed Load left %q registered: %v", "cand", err)
			}
			serves(t, m, "echo", 1, st.PID)
			onlyProcesses(t, pluginDir, []int{st.PID})
		})
	}
}

func truncTail(s string) string {
	if len(s) > 300 {
		return "…" + s[len(s)-300:]
	}
	return s
}

// lineStats is a slog handler that records the longest message logged and
// the messages that match a marker.
type lineStats struct {
	mu        sync.Mutex
	lines     int
	longest   int
	truncated int
	seen      map[string]bool
}

func (h *lineStats) Enabled(context.Context, slog.Level) bool { return true }
func (h *lineStats) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *lineStats) WithGroup(string) slog.Handler            { return h }
func (h *lineStats) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lines++
	h.longest = max(h.longest, len(r.Message))
	if strings.HasSuffix(r.Message, "(truncated)") {
		h.truncated++
	}
	for _, m := range []string{"flood before done", "flood after done"} {
		if strings.Contains(r.Message, m) {
			h.seen[m] = true
		}
	}
	return nil
}

func (h *lineStats) saw(m string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seen[m]
}

// TestFloodingCandidate: a plugin that writes about 8 MiB to stderr (a
// 3 MiB line without a newline and 32768 short lines, before plugin.Serve
// through the stderr pipe and after it through go-plugin's stdio stream) is
// a valid candidate. While it floods, the active generation keeps answering
// without delay; the host logs each stderr line once, truncated to 4 KiB,
// and its heap does not grow with the flood.
func TestFloodingCandidate(t *testing.T) {
	ls := &lineStats{seen: map[string]bool{}}
	m, sock := newManager(t, manager.Config{Logger: slog.New(ls)})
	st := load(t, m, manager.Spec{Name: "echo", Binary: "echo"})
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	l := invokeLoad(t, m, "echo", "echo", "x", 2, 5*time.Second)
	// Reload to the flood plugin (describes itself as echo) and back, twice:
	// 32 MiB of stderr in all.
	var pids []int
	for i := range 2 {
		rr, err := m.Reload(context.Background(), manager.ReloadRequest{Name: "echo", Spec: &manager.Spec{Name: "echo", Binary: "flood"}})
		if err != nil {
			l.stop()
			t.Fatalf("Reload to flood: %v", err)
		}
		waitFor(t, 20*time.Second, "the flood after plugin.Serve to reach the host", func() bool { return ls.saw("flood after done") })
		serves(t, m, "echo", uint64(2+2*i), rr.Status.PID)
		pids = append(pids, rr.Status.PID)
		rr, err = m.Reload(context.Background(), manager.ReloadRequest{Name: "echo", Spec: &manager.Spec{Name: "echo", Binary: "echo"}})
		if err != nil {
			l.stop()
			t.Fatalf("Reload back to echo: %v", err)
		}
		ls.mu.Lock()
		ls.seen = map[string]bool{}
		ls.mu.Unlock()
	}
	s := l.stop()
	after := heap()
	ls.mu.Lock()
	t.Logf("flood: %d calls meanwhile, %d failed, slowest %v; %d log records, longest %d bytes, %d truncated; heap %d KiB -> %d KiB",
		s.calls, s.failures, s.maxLatency, ls.lines, ls.longest, ls.truncated, before>>10, after>>10)
	longest, truncated := ls.longest, ls.truncated
	ls.mu.Unlock()
	if s.failures != 0 || s.calls == 0 {
		t.Fatalf("calls during the flood: %d, %d failed: %v", s.calls, s.failures, s.errs)
	}
	if s.maxLatency > 2*time.Second {
		t.Errorf("slowest call during the flood took %v", s.maxLatency)
	}
	if longest > 4096+len("…(truncated)") || truncated == 0 {
		t.Errorf("logged stderr lines: longest %d bytes, %d truncated; want at most 4 KiB each, long lines truncated", longest, truncated)
	}
	// Each flood has one 3 MiB line, 4 floods in all: each is logged once,
	// truncated, not as a record per chunk go-plugin happened to read.
	if truncated > 4 {
		t.Errorf("%d truncated records for 4 long lines: the rest of a truncated line is logged again in 4 KiB records (about %d KiB of log for 12 MiB of stderr)", truncated, truncated*4)
	}
	if after > before+32<<20 {
		t.Errorf("heap grew from %d to %d KiB over a 32 MiB stderr flood", before>>10, after>>10)
	}
	for _, p := range pids {
		gone(t, "flood generation", p)
	}
	now := serves(t, m, "echo", 5, 0)
	if d := sockDirs(sock); len(d) != 1 {
		t.Fatalf("socket directories %v", d)
	}
	gone(t, "generation 1", st.PID)
	onlyProcesses(t, pluginDir, []int{now.PID})
}
