package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plugincontrol/plugincontrol/manager/record"
)

// numClasses bounds the FailureClass values.
const numClasses = record.NumClasses

// perGeneration reports whether the class is counted per generation (a new
// generation starts with an empty window) rather than across generations.
// Crashes and failed restarts end or precede generations, so their windows
// span them: they are what the supervisor judges before a restart.
func perGeneration(c FailureClass) bool {
	return c == FailurePanic || c == FailureHang || c == FailureTimeout
}

// tracker counts the failures of one plugin. Each entry owns one; its fields
// are guarded by the entry's mu, so states and counts move together.
type tracker struct {
	gen      uint64                  // the generation the per-generation windows belong to
	windows  [numClasses][]time.Time // failure times per class, oldest first, bounded
	lifetime [numClasses]uint64      // per class, over all generations
	combined []time.Time             // panics and crashes of gen: the panic_threshold window
	last     *PanicRecord            // the last panic (or crash with a panic message)
	recovery *time.Timer             // fires when the windows may have emptied
}

// maxWindowEvents bounds each window: counts beyond it are reported as this
// many (a threshold is at most record.MaxFailureLimit).
const maxWindowEvents = record.MaxFailureLimit

// reset starts fresh per-generation windows for generation gen; lifetime
// counts and the cross-generation windows (crashes, failed restarts) stay.
func (t *tracker) reset(gen uint64) {
	t.gen = gen
	for _, c := range Classes {
		if perGeneration(c) {
			t.windows[c] = t.windows[c][:0]
		}
	}
	t.combined = t.combined[:0]
	if t.recovery != nil {
		t.recovery.Stop()
		t.recovery = nil
	}
}

// forgetRestarts clears the cross-generation windows: an operator's action
// gives the plugin a fresh start.
func (t *tracker) forgetRestarts() {
	t.windows[FailureCrash] = t.windows[FailureCrash][:0]
	t.windows[FailureStart] = t.windows[FailureStart][:0]
}

func appendBounded(w []time.Time, now time.Time) []time.Time {
	w = append(w, now)
	if len(w) > maxWindowEvents {
		w = w[len(w)-maxWindowEvents:]
	}
	return w
}

// prune drops the times of w older than window and returns the rest.
func prune(w []time.Time, now time.Time, window time.Duration) []time.Time {
	cut := 0
	for cut < len(w) && now.Sub(w[cut]) >= window {
		cut++
	}
	return w[cut:]
}

// counts prunes every window at now and returns the counts per class.
func (t *tracker) counts(now time.Time, p *HealthPolicy) []FailureCount {
	out := make([]FailureCount, 0, len(Classes))
	for _, c := range Classes {
		t.windows[c] = prune(t.windows[c], now, p.Limit(c).Window)
		out = append(out, FailureCount{Class: c, InWindow: len(t.windows[c]), Lifetime: t.lifetime[c]})
	}
	return out
}

// combinedInWindow prunes and returns the panics and crashes of the current
// generation within panic_window.
func (t *tracker) combinedInWindow(now time.Time, p *HealthPolicy) int {
	t.combined = prune(t.combined, now, p.PanicWindow)
	return len(t.combined)
}

// exceeded reports which limit the per-generation windows reach at now, as
// a reason, or "".
func (t *tracker) exceeded(now time.Time, p *HealthPolicy) string {
	if n := t.combinedInWindow(now, p); n >= p.PanicThreshold {
		return fmt.Sprintf("%d panics or crashes within %v (panic_threshold %d)", n, p.PanicWindow, p.PanicThreshold)
	}
	for _, c := range Classes {
		l := p.Limit(c)
		if !perGeneration(c) || l.Threshold <= 0 {
			continue
		}
		t.windows[c] = prune(t.windows[c], now, l.Window)
		if n := len(t.windows[c]); n >= l.Threshold {
			return fmt.Sprintf("%d %s failures within %v (threshold %d)", n, c, l.Window, l.Threshold)
		}
	}
	return ""
}

// empty reports whether the per-generation windows hold no failure at now.
func (t *tracker) empty(now time.Time, p *HealthPolicy) bool {
	if t.combinedInWindow(now, p) > 0 {
		return false
	}
	for _, c := range Classes {
		if perGeneration(c) {
			t.windows[c] = prune(t.windows[c], now, p.Limit(c).Window)
			if len(t.windows[c]) > 0 {
				return false
			}
		}
	}
	return true
}

// restartsExceeded reports which cross-generation limit (crashes, failed
// restarts) is reached at now, as a reason, or "": the supervisor stops
// restarting then.
func (t *tracker) restartsExceeded(now time.Time, p *HealthPolicy) string {
	for _, c := range []FailureClass{FailureCrash, FailureStart} {
		l := p.Limit(c)
		if l.Threshold <= 0 {
			continue
		}
		t.windows[c] = prune(t.windows[c], now, l.Window)
		if n := len(t.windows[c]); n >= l.Threshold {
			return fmt.Sprintf("%d %s failures within %v (threshold %d)", n, c, l.Window, l.Threshold)
		}
	}
	return ""
}

// recordFault counts a failure of class of generation gen and moves the
// state machine:
//
//   - a panic, hang or timeout of the active generation makes it DEGRADED,
//     or UNHEALTHY when a limit is reached (once per generation: exactly
//     one transition event and one log line), after which a baking
//     generation is reverted, and otherwise the policy's unhealthy action
//     runs;
//   - a crash or a failed restart is counted; what follows (a restart, a
//     revert, giving up) is the supervisor's decision (watchExit);
//   - a failure of a generation that is no longer the active one counts in
//     the lifetime totals only.
//
// reason, when set, becomes the plugin's last error.
func (m *Manager) recordFault(e *entry, gen uint64, class FailureClass, rec *PanicRecord, reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !m.countLocked(e, gen, class, rec, reason) || !perGeneration(class) {
		m.transitionLocked(e, evUpdated, "")
		return
	}
	now := time.Now()
	p := e.spec.Policy.WithDefaults()
	switch why := e.faults.exceeded(now, &p); {
	case e.state == StateUnhealthy || e.state == StateStopped || e.state == StateStarting,
		class != FailurePanic && p.Limit(class).Threshold <= 0:
		// Sticky, nothing serving, or a class counted without being
		// judged (timeouts by default: a caller's tight deadline is not
		// the plugin's fault until the policy says so): counted only.
		m.transitionLocked(e, evUpdated, "")
	case why != "":
		why = fmt.Sprintf("generation %d: %s", gen, why)
		m.transitionLocked(e, evFaultLimit, why)
		if b := e.bake; b != nil && b.Result == BakeBaking && b.Generation == gen {
			m.log.Error("plugin unhealthy during its bake: reverting", slog.String("plugin", e.name), slog.Uint64("generation", gen), slog.String("reason", why))
			m.startBackground(func() { m.gated(func() { m.revert(e, gen, why) }) })
			return
		}
		m.log.Error("plugin unhealthy", slog.String("plugin", e.name), slog.Uint64("generation", gen),
			slog.String("reason", why), slog.String("action", p.OnUnhealthy.String()))
		if p.OnUnhealthy != ActionNone {
			m.startBackground(func() { m.gated(func() { m.onUnhealthy(e, gen, p.OnUnhealthy) }) })
		}
	default:
		m.transitionLocked(e, evFault, fmt.Sprintf("generation %d: %s failure in the window", gen, class))
		m.armRecovery(e)
	}
}

// countLocked counts a failure of class of generation gen and returns
// whether gen is the active generation's (whose windows count it); the
// caller publishes. e.mu is held.
func (m *Manager) countLocked(e *entry, gen uint64, class FailureClass, rec *PanicRecord, reason string) (current bool) {
	now := time.Now()
	t := &e.faults
	t.lifetime[class]++
	if rec != nil {
		r := *rec
		r.Time, r.Generation = now, gen
		t.last = &r
	}
	if reason != "" {
		e.failedLocked(reason)
	}
	current = gen == e.generation && t.gen == gen
	switch {
	case !perGeneration(class):
		t.windows[class] = appendBounded(t.windows[class], now)
		if class == FailureCrash && current {
			t.combined = appendBounded(t.combined, now)
		}
	case current:
		t.windows[class] = appendBounded(t.windows[class], now)
		if class == FailurePanic {
			t.combined = appendBounded(t.combined, now)
		}
	}
	return current
}

// armRecovery schedules the check that returns a DEGRADED plugin to SERVING
// once its windows hold no failure. e.mu is held.
func (m *Manager) armRecovery(e *entry) {
	t := &e.faults
	if t.recovery != nil {
		t.recovery.Stop()
	}
	p := e.spec.Policy.WithDefaults()
	// The earliest moment the newest failure leaves its window.
	wait := p.PanicWindow
	for _, c := range Classes {
		if w := t.windows[c]; perGeneration(c) && len(w) > 0 {
			wait = max(wait, time.Until(w[len(w)-1].Add(p.Limit(c).Window)))
		}
	}
	if n := len(t.combined); n > 0 {
		wait = max(wait, time.Until(t.combined[n-1].Add(p.PanicWindow)))
	}
	gen := t.gen
	t.recovery = time.AfterFunc(max(wait, time.Millisecond), func() {
		m.gate.RLock()
		defer m.gate.RUnlock()
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.state != StateDegraded || t.gen != gen {
			return
		}
		p := e.spec.Policy.WithDefaults()
		if t.empty(time.Now(), &p) {
			m.transitionLocked(e, evRecovered, "")
		} else {
			m.armRecovery(e)
		}
	})
}

// classOfCallError returns the failure class of a call's error: a
// recovered panic (the SDK's PanicDetail), a timeout inside the plugin (the
// call's deadline passed while the plugin had it), or none.
func classOfCallError(err error) (FailureClass, *PanicInfo) {
	if err == nil {
		return FailureUnknown, nil
	}
	if p := panicOf(err); p != nil {
		return FailurePanic, p
	}
	if status.Code(err) == codes.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded) {
		return FailureTimeout, nil
	}
	return FailureUnknown, nil
}
