package manager

import (
	"fmt"
	"log/slog"
	"time"
)

// bake is a reload's trial period (entry.bake, guarded by the entry's mu).
type bake struct {
	BakeStatus
	prev           *instance // the previous generation's process; nil once stopped or revived
	prevSpec       Spec
	prevPluginName string
	timer          *time.Timer
}

func (b *bake) status() BakeStatus { return b.BakeStatus }

// startBake begins the bake of generation inst after a swap from old: old
// admits no new calls (those in flight finish on it) but its process stays
// up until the bake ends. The caller holds e's operation lock.
func (m *Manager) startBake(e *entry, inst, old *instance, prevSpec Spec, prevName string, d time.Duration) {
	old.hold()
	gen := inst.generation()
	b := &bake{
		BakeStatus: BakeStatus{Generation: gen, PreviousGeneration: old.generation(), Until: time.Now().Add(d), Result: BakeBaking},
		prev:       old, prevSpec: prevSpec, prevPluginName: prevName,
	}
	e.mu.Lock()
	e.bake = b
	b.timer = time.AfterFunc(d, func() { m.startBackground(func() { m.gated(func() { m.endBake(e, gen) }) }) })
	m.transitionLocked(e, evUpdated, "")
	e.mu.Unlock()
	m.log.Info("bake started", slog.String("plugin", e.name), slog.Uint64("generation", gen),
		slog.Uint64("previous_generation", old.generation()), slog.Duration("bake", d))
}

// endBake ends a clean bake of generation gen: the previous process is
// stopped (after the calls it still had finish, up to the drain timeout).
func (m *Manager) endBake(e *entry, gen uint64) {
	if err := e.lock(m.ctx); err != nil {
		return
	}
	defer e.unlock()
	e.mu.Lock()
	b := e.bake
	if b == nil || b.Result != BakeBaking || b.Generation != gen {
		e.mu.Unlock()
		return
	}
	prev := b.prev
	b.prev, b.Result = nil, BakeKept
	m.transitionLocked(e, evUpdated, "")
	e.mu.Unlock()
	m.log.Info("bake passed: previous generation stopped", slog.String("plugin", e.name), slog.Uint64("generation", gen))
	if prev != nil {
		prev.drain(m.cfg.DrainTimeout)
		prev.stop()
	}
}

// cancelBake ends e's bake, if one runs, stopping the warm process: another
// Reload, an Unload or the shutdown moves on from it. The caller holds e's
// operation lock; the process is stopped before cancelBake returns.
func (m *Manager) cancelBake(e *entry, why string) {
	e.mu.Lock()
	b := e.bake
	if b == nil || b.Result != BakeBaking {
		e.mu.Unlock()
		return
	}
	prev := b.prev
	b.prev, b.Result, b.Reason = nil, BakeCancelled, why
	if b.timer != nil {
		b.timer.Stop()
	}
	if !e.removed {
		m.transitionLocked(e, evUpdated, "")
	}
	e.mu.Unlock()
	if prev != nil {
		prev.drain(m.cfg.DrainTimeout)
		prev.stop()
	}
}

// bakePrevExited ends the bake when inst, the process it keeps warm, died:
// there is nothing to revert to any more. It reports whether inst was that
// process.
func (m *Manager) bakePrevExited(e *entry, inst *instance, reason string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	b := e.bake
	if b == nil || b.Result != BakeBaking || b.prev != inst {
		return false
	}
	b.prev, b.Result, b.Reason = nil, BakeCancelled, "the previous generation's process exited during the bake ("+reason+"): there is nothing to revert to"
	if b.timer != nil {
		b.timer.Stop()
	}
	m.transitionLocked(e, evUpdated, "")
	return true
}

// revert makes the process the bake kept warm the active generation again
// (as a new generation: generations only rise) because generation gen, on
// trial, became UNHEALTHY or crashed. The previous spec is persisted, with
// a "revert" audit record in the same transaction, before the swap; then
// the failed generation is drained and stopped. Calls never fail for it:
// new calls go to the revived process from the swap on, and calls in flight
// on the failed generation finish there (or fail with it, as it fails).
func (m *Manager) revert(e *entry, gen uint64, why string) {
	if err := e.lock(m.ctx); err != nil {
		return
	}
	defer e.unlock()
	e.mu.Lock()
	b := e.bake
	if b == nil || b.Result != BakeBaking || b.Generation != gen || b.prev == nil || e.generation != gen {
		e.mu.Unlock()
		return
	}
	prev, newGen := b.prev, gen+1
	rec := PluginRecord{Name: e.name, Spec: b.prevSpec.Clone(), Generation: newGen, PluginName: b.prevPluginName}
	e.mu.Unlock()

	reason := fmt.Sprintf("generation %d failed during its bake (%s): reverted to the previous generation's process (pid %d), now generation %d",
		gen, why, prev.pid, newGen)
	// The revert is one step that cannot leave the store and memory apart:
	// the warm process is made ready to serve first (it cannot be once it
	// is stopping, and then nothing is recorded), then the revert is
	// recorded (when that fails, the process is held again, as it was),
	// and only then does it become the active generation.
	prevGen := prev.generation()
	if !prev.revive(newGen) {
		m.log.Error("revert not possible: the previous process is stopping", slog.String("plugin", e.name))
		return
	}
	if err := m.commit("the revert of "+e.name, Change{Put: &rec, Audit: auditRecord(m.ctx, "revert", e.name, gen, newGen, prev, rec.Spec, nil)}); err != nil {
		prev.hold()
		prev.gen.Store(prevGen)
		m.log.Error("revert not possible: it cannot be recorded; the bake is cancelled", slog.String("plugin", e.name), slog.String("error", err.Error()))
		m.auditFailure(m.ctx, "revert", e.name, gen, prev, rec.Spec, err)
		e.mu.Lock()
		e.failedLocked(err.Error())
		e.mu.Unlock()
		m.cancelBake(e, err.Error())
		return
	}
	failed := e.active.Load()
	e.mu.Lock()
	if b.timer != nil {
		b.timer.Stop()
	}
	b.prev, b.Result, b.Reason, b.RevertedTo = nil, BakeReverted, why, newGen
	e.failedLocked(reason)
	m.activateLocked(e, prev) // prev.spec and pluginName are rec's: the bake kept them
	e.mu.Unlock()
	m.log.Warn("plugin reverted", slog.String("plugin", e.name), slog.Uint64("failed_generation", gen),
		slog.Uint64("generation", newGen), slog.Int("pid", prev.pid), slog.String("reason", why))
	m.saveRuntime(e)
	if failed != nil && failed != prev {
		failed.drain(m.cfg.DrainTimeout)
		failed.stop()
	}
}
