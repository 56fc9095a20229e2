package manager

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"regexp"
	"runtime/debug"
	"strings"
	"time"

	"github.com/plugincontrol/plugincontrol/plugin"
)

// tracker counts the panics and crashes of one plugin: a sliding window over
// the current generation (fresh for every new generation) and lifetime
// counts over all generations. Each entry owns one; its fields are guarded
// by the entry's mu, so state changes and counts move together.
type tracker struct {
	gen      uint64      // generation the window belongs to
	window   []time.Time // times of panics and crashes of gen, oldest first, bounded
	panics   uint64      // lifetime recovered panics
	crashes  uint64      // lifetime unexpected exits
	last     *PanicRecord
	degraded *time.Timer // fires when the window may have emptied
}

// maxWindowEvents bounds the window slice: counts beyond it are reported as
// this many (the threshold is at most maxPanicLimit).
const maxWindowEvents = maxPanicLimit

// reset starts a fresh window for a new generation; lifetime counts stay.
func (t *tracker) reset(gen uint64) {
	t.gen = gen
	t.window = t.window[:0]
	if t.degraded != nil {
		t.degraded.Stop()
		t.degraded = nil
	}
}

// add records one panic or crash at now and returns the count in window.
func (t *tracker) add(now time.Time, window time.Duration) int {
	t.window = append(t.window, now)
	if len(t.window) > maxWindowEvents {
		t.window = t.window[len(t.window)-maxWindowEvents:]
	}
	return t.inWindow(now, window)
}

// inWindow drops events older than window and returns how many remain.
func (t *tracker) inWindow(now time.Time, window time.Duration) int {
	cut := 0
	for cut < len(t.window) && now.Sub(t.window[cut]) >= window {
		cut++
	}
	t.window = t.window[cut:]
	return len(t.window)
}

// recordFault counts a recovered panic of generation gen (see
// recordFaultReason).
func (m *Manager) recordFault(e *entry, gen uint64, rec *PanicRecord) {
	m.recordFaultReason(e, gen, false, rec, "")
}

// recordFaultReason counts a panic (crash false) or crash of generation gen
// and moves the state machine: the first fault in the window makes a serving
// plugin DEGRADED, reaching the threshold makes it UNHEALTHY (once per
// generation: exactly one event and one log line), after which the policy's
// action runs. Faults of a generation that is no longer current count only
// in the lifetime totals. A crashed generation no longer serves, so for a
// crash the state is left to the supervisor (scheduleRestart); the crash is
// counted and its reason recorded.
func (m *Manager) recordFaultReason(e *entry, gen uint64, crash bool, rec *PanicRecord, reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	t := &e.panics
	if crash {
		t.crashes++
	} else {
		t.panics++
	}
	if rec != nil {
		r := *rec
		r.Time, r.Generation = now, gen
		t.last = &r
	}
	if reason != "" {
		e.lastError = reason
	}
	if crash && gen == e.generation && e.active.Load() == nil && e.state != StateStopped {
		// The crashed generation serves no more; the supervisor decides
		// next (STARTING for a restart, UNHEALTHY past the limit).
		e.state, e.since = StateStarting, now
	}
	if crash || gen != e.generation || t.gen != gen {
		e.publishLocked(m.events)
		return
	}
	policy := e.spec.Policy.withDefaults()
	n := t.add(now, policy.PanicWindow)
	switch {
	case e.state == StateUnhealthy || e.state == StateStopped || e.state == StateStarting:
		// Sticky, or nothing serving: counts only.
	case n >= policy.PanicThreshold:
		e.state, e.since = StateUnhealthy, now
		e.lastError = fmt.Sprintf("%d panics or crashes within %v (threshold %d) in generation %d", n, policy.PanicWindow, policy.PanicThreshold, gen)
		m.log.Error("plugin unhealthy", slog.String("plugin", e.name), slog.Uint64("generation", gen),
			slog.String("reason", e.lastError), slog.String("action", policy.OnUnhealthy.String()))
		if policy.OnUnhealthy != ActionNone {
			m.startBackground(func() { m.onUnhealthy(e, gen, policy.OnUnhealthy) })
		}
	case e.state == StateServing:
		e.state, e.since = StateDegraded, now
	}
	if e.state == StateDegraded {
		m.armRecovery(e, policy.PanicWindow)
	}
	e.publishLocked(m.events)
}

// armRecovery schedules the check that returns a DEGRADED plugin to SERVING
// once its window holds no fault. e.mu is held.
func (m *Manager) armRecovery(e *entry, window time.Duration) {
	t := &e.panics
	if t.degraded != nil {
		t.degraded.Stop()
	}
	wait := window
	if len(t.window) > 0 {
		wait = time.Until(t.window[len(t.window)-1].Add(window))
	}
	gen := t.gen
	t.degraded = time.AfterFunc(max(wait, time.Millisecond), func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.state != StateDegraded || t.gen != gen {
			return
		}
		if t.inWindow(time.Now(), e.spec.Policy.withDefaults().PanicWindow) == 0 {
			e.state, e.since = StateServing, time.Now()
			e.publishLocked(m.events)
		} else {
			m.armRecovery(e, e.spec.Policy.withDefaults().PanicWindow)
		}
	})
}

func (a Action) String() string {
	switch a {
	case ActionNone:
		return "none"
	case ActionRestart:
		return "restart"
	case ActionStop:
		return "stop"
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// Recover records a panic of the caller's goroutine against plugin, for
// embedders' own goroutines that work on a plugin's behalf:
//
//	go func() {
//		defer m.Recover("echo", "sync")
//		...
//	}()
//
// It must be deferred directly. The panic is swallowed after it is counted
// like a recovered plugin panic. When there is no panic it does nothing and
// allocates nothing.
func (m *Manager) Recover(pluginName, op string) {
	r := recover()
	if r == nil {
		return
	}
	m.recordRecovered(pluginName, op, r)
}

// recordRecovered is Recover's slow path, kept out of line so the fast path
// stays allocation-free.
//
//go:noinline
func (m *Manager) recordRecovered(pluginName, op string, r any) {
	msg := fmt.Sprintf("%s: %v", op, r)
	fp := plugin.Fingerprint(2)
	m.log.Error("recovered panic", slog.String("plugin", pluginName), slog.String("op", op),
		slog.String("panic", msg), slog.String("fingerprint", fp), slog.String("stack", string(debug.Stack())))
	m.mu.RLock()
	e := m.plugins[pluginName]
	m.mu.RUnlock()
	if e == nil {
		return
	}
	e.mu.Lock()
	gen := e.generation
	e.mu.Unlock()
	m.recordFault(e, gen, &PanicRecord{Message: msg, Fingerprint: fp})
}

var (
	panicLineRE = regexp.MustCompile(`(?m)^panic: (.*)$`)
	frameArgsRE = regexp.MustCompile(`\(.*\)$`)
	frameOffRE  = regexp.MustCompile(` \+0x[0-9a-f]+$`)
)

// panicFromStderr extracts the panic message and a fingerprint from a Go
// crash trace on stderr. The fingerprint hashes the panicking goroutine's
// frames (function and file:line, no arguments or offsets), so it is stable
// across crashes of the same binary at the same site.
func panicFromStderr(tail string) *PanicRecord {
	loc := panicLineRE.FindStringSubmatchIndex(tail)
	if loc == nil {
		return nil
	}
	msg := strings.TrimSpace(tail[loc[2]:loc[3]])
	rest := tail[loc[1]:]
	h := sha256.New()
	inTrace := false
	for _, line := range strings.Split(rest, "\n") {
		switch {
		case strings.HasPrefix(line, "goroutine "):
			if inTrace {
				goto done
			}
			inTrace = true
		case !inTrace || line == "":
			if inTrace && line == "" {
				goto done
			}
		case strings.HasPrefix(line, "\t"):
			h.Write([]byte(frameOffRE.ReplaceAllString(strings.TrimSpace(line), "")))
			h.Write([]byte{'\n'})
		default:
			h.Write([]byte(frameArgsRE.ReplaceAllString(line, "")))
			h.Write([]byte{' '})
		}
	}
done:
	return &PanicRecord{Message: msg, Fingerprint: hex.EncodeToString(h.Sum(nil)[:8])}
}
