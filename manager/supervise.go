package manager

import (
	"fmt"
	"log/slog"
	"time"
)

// startBackground runs f in a goroutine tracked by Close, after running
// before (if any) — both only if the manager is not closing. It reports
// whether it did. It takes only bgMu, so it may be called with any entry
// lock held.
func (m *Manager) startBackground(f func(), before ...func()) bool {
	m.bgMu.Lock()
	if m.bgClosed {
		m.bgMu.Unlock()
		return false
	}
	m.bg.Add(1)
	m.bgMu.Unlock()
	for _, b := range before {
		b()
	}
	go func() {
		defer m.bg.Done()
		f()
	}()
	return true
}

// watchExit waits for inst's process to exit (see waitGone: go-plugin's done
// context, and a pidfd; nothing is polled). An exit the manager did not ask
// for is a crash: it is counted with its exit status and, when stderr shows
// a Go panic, the panic message and fingerprint. Then, for the active
// generation: a generation on trial in a bake is reverted; any other is
// restarted by the supervisor. The process kept warm by a bake ends the
// bake when it dies.
func (m *Manager) watchExit(e *entry, inst *instance) {
	waitGone(inst)
	if inst.intended() {
		return
	}
	m.gate.RLock()
	defer m.gate.RUnlock()
	if inst.intended() {
		return // stopped while a handover held the gate
	}
	gen := inst.generation()
	// Written by go-plugin's cmd.Wait (or an attached process's runner)
	// before the done context is cancelled.
	exit := inst.exitDescription()
	if exit == "" {
		exit = "exited"
	}
	rec := panicFromStderr(inst.stderr.Tail())
	reason := fmt.Sprintf("generation %d (pid %d) crashed: %s", gen, inst.pid, exit)
	if rec != nil {
		reason += ": panic: " + rec.Message
	}
	m.log.Error("plugin crashed", slog.String("plugin", e.name), slog.Uint64("generation", gen),
		slog.Int("pid", inst.pid), slog.String("reason", reason))
	active := e.deactivate(inst)
	inst.stop()
	e.mu.Lock()
	m.countLocked(e, gen, FailureCrash, rec, reason)
	switch {
	case !active:
		// Not the active generation: the process a bake kept warm, or
		// one already replaced.
		m.transitionLocked(e, evUpdated, "")
		e.mu.Unlock()
		m.bakePrevExited(e, inst, reason)
	case e.bake != nil && e.bake.Result == BakeBaking && e.bake.Generation == gen:
		m.transitionLocked(e, evExited, reason+"; reverting to the previous generation")
		e.mu.Unlock()
		m.revert(e, gen, reason)
	default:
		m.scheduleRestartLocked(e, gen, reason)
		e.mu.Unlock()
	}
}

// scheduleRestart decides whether the supervisor restarts e after generation
// gen died: OTP-style intensity (at most RestartLimit restarts within
// RestartPeriod, and the crash and start-failure limits of the policy when
// set), exponential backoff between attempts. Past a limit the plugin stays
// UNHEALTHY until an operator reloads it, also across daemon restarts.
//
// e.mu is held; nothing here blocks or touches the disk.
func (m *Manager) scheduleRestartLocked(e *entry, gen uint64, reason string) {
	if e.removed || e.generation != gen || e.active.Load() != nil || e.state == StateStopped {
		return
	}
	p := e.spec.Policy.WithDefaults()
	now := time.Now()
	kept := e.restartLog[:0]
	for _, t := range e.restartLog {
		if now.Sub(t) < p.RestartPeriod {
			kept = append(kept, t)
		}
	}
	e.restartLog = kept
	if len(kept) == 0 {
		// No restart within a period: it stayed up a whole period (or was
		// never restarted), so backoff starts over.
		e.consecutive = 0
	}
	limit := ""
	switch {
	case len(e.restartLog) >= p.RestartLimit:
		limit = fmt.Sprintf("restart limit reached (%d restarts within %v)", p.RestartLimit, p.RestartPeriod)
	default:
		limit = e.faults.restartsExceeded(now, &p)
	}
	if limit != "" {
		why := fmt.Sprintf("%s; %s: not restarting until an operator reloads it", reason, limit)
		m.transitionLocked(e, evGaveUp, why)
		m.log.Error("plugin unhealthy", slog.String("plugin", e.name), slog.Uint64("generation", gen), slog.String("reason", why))
		// Held across daemon restarts until an operator reloads it; the
		// store is written under the operation lock, never under e.mu.
		m.startBackground(func() { m.gated(func() { m.persistHold(e, gen, why) }) })
		return
	}
	delay := p.BackoffInitial << min(e.consecutive, 30)
	if delay > p.BackoffMax || delay <= 0 {
		delay = p.BackoffMax
	}
	e.consecutive++
	e.restartLog = append(e.restartLog, now)
	why := fmt.Sprintf("%s; restarting in %v (restart %d of %d within %v)", reason, delay, len(e.restartLog), p.RestartLimit, p.RestartPeriod)
	m.transitionLocked(e, evExited, why)
	m.startBackground(func() { m.restartAfter(e, gen, delay) })
}

// persistHold records that the supervisor gave up on generation gen of e,
// unless an operator acted meanwhile.
func (m *Manager) persistHold(e *entry, gen uint64, why string) {
	if err := e.lock(m.ctx); err != nil {
		return
	}
	defer e.unlock()
	e.mu.Lock()
	stale := e.removed || e.generation != gen || e.state != StateUnhealthy || e.active.Load() != nil
	rec := e.recordLocked()
	e.mu.Unlock()
	if stale {
		return
	}
	rec.HeldUnhealthy, rec.Reason = true, why
	a := auditRecord(m.ctx, "hold", e.name, gen, gen, nil, rec.Spec, nil)
	a.Error = why // what the supervisor gave up on
	if err := m.commit("the hold of "+e.name, Change{Put: &rec, Audit: a}); err != nil {
		// The plugin is held in memory all the same; only a daemon
		// restart would relaunch it.
		m.log.Error("the unhealthy hold is not recorded: a daemon restart would relaunch the plugin",
			slog.String("plugin", e.name), slog.String("error", err.Error()))
	}
}

// restartAfter waits delay, then relaunches e through the candidate
// pipeline unless an operator acted meanwhile (Reload, Unload) or the
// manager closed.
func (m *Manager) restartAfter(e *entry, gen uint64, delay time.Duration) {
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-m.ctx.Done():
		return
	}
	m.gate.RLock()
	defer m.gate.RUnlock()
	if err := e.lock(m.ctx); err != nil {
		return
	}
	defer e.unlock()
	e.mu.Lock()
	stale := e.removed || e.generation != gen || e.active.Load() != nil || e.state != StateStarting
	spec, expect := e.spec, e.pluginName
	e.mu.Unlock()
	if stale {
		return
	}
	inst, _, err := m.launch(m.ctx, candidate{action: "restart", spec: spec, gen: gen + 1, expectName: expect})
	if err != nil {
		if m.ctx.Err() != nil {
			return
		}
		m.auditFailure(m.ctx, "restart", e.name, gen, nil, spec, err)
		why := "restart failed: " + err.Error()
		e.mu.Lock()
		m.countLocked(e, gen, FailureStart, nil, why)
		m.scheduleRestartLocked(e, gen, why)
		e.mu.Unlock()
		return
	}
	if err := m.recordRestart(e, "restart", gen, inst); err != nil {
		// Never a restart that is not recorded: the candidate goes, and
		// the supervisor tries again (its limit holds the plugin in the
		// end).
		inst.stop()
		why := "restart not recorded: " + err.Error()
		e.mu.Lock()
		m.scheduleRestartLocked(e, gen, why)
		e.mu.Unlock()
		return
	}
	if !m.activateRestart(e, inst) {
		return
	}
	m.log.Info("plugin restarted", slog.String("plugin", e.name), slog.Uint64("generation", inst.generation()), slog.Int("pid", inst.pid))
}

// onUnhealthy runs the policy's action once generation gen became
// UNHEALTHY: restart relaunches through the candidate pipeline (the
// unhealthy generation serves until the candidate passes, then is drained
// and stopped), stop stops the plugin and leaves it STOPPED in the
// registry.
func (m *Manager) onUnhealthy(e *entry, gen uint64, action Action) {
	if err := e.lock(m.ctx); err != nil {
		return
	}
	defer e.unlock()
	e.mu.Lock()
	stale := e.removed || e.generation != gen || e.state != StateUnhealthy
	spec, expect := e.spec, e.pluginName
	e.mu.Unlock()
	old := e.active.Load()
	if stale || old == nil || old.generation() != gen {
		return
	}
	switch action {
	case ActionStop:
		if err := m.commit("the stop of "+e.name, Change{Audit: auditRecord(m.ctx, "unhealthy-stop", e.name, gen, gen, nil, spec, nil)}); err != nil {
			// Not stopped unless recorded: it stays UNHEALTHY, serving.
			m.log.Error("health policy stop not done: it cannot be recorded", slog.String("plugin", e.name), slog.String("error", err.Error()))
			e.mu.Lock()
			e.failedLocked("the health policy's stop is not done: " + err.Error())
			e.mu.Unlock()
			return
		}
		e.deactivate(old)
		old.drain(m.cfg.DrainTimeout)
		old.stop()
		m.transition(e, evStopped, fmt.Sprintf("stopped by health policy after generation %d became unhealthy", gen))
		m.log.Warn("plugin stopped by health policy", slog.String("plugin", e.name), slog.Uint64("generation", gen))
	case ActionRestart:
		inst, _, err := m.launch(m.ctx, candidate{action: "unhealthy-restart", spec: spec, gen: gen + 1, expectName: expect, activeGen: gen})
		if err != nil {
			m.auditFailure(m.ctx, "unhealthy-restart", e.name, gen, nil, spec, err)
			m.recordFault(e, gen, FailureStart, nil, "restart on unhealthy failed: "+err.Error())
			return
		}
		if err := m.recordRestart(e, "unhealthy-restart", gen, inst); err != nil {
			inst.stop()
			e.mu.Lock()
			e.failedLocked("restart on unhealthy not done: " + err.Error())
			e.mu.Unlock()
			return
		}
		if !m.activateRestart(e, inst) {
			return
		}
		old.drain(m.cfg.DrainTimeout)
		old.stop()
		m.log.Info("plugin restarted by health policy", slog.String("plugin", e.name), slog.Uint64("generation", inst.generation()))
	}
}

// activateRestart counts a supervisor restart of e and makes inst, its new
// generation, the active one. It returns false, with inst stopped, when the
// manager closed meanwhile. The caller holds e's operation lock.
func (m *Manager) activateRestart(e *entry, inst *instance) bool {
	e.mu.Lock()
	e.restarts++
	e.mu.Unlock()
	if !m.activate(e, inst, false) {
		inst.stop()
		return false
	}
	return true
}

// recordRestart records inst, a restarted generation of e replacing
// generation gen, as the desired state, with its audit record.
func (m *Manager) recordRestart(e *entry, action string, gen uint64, inst *instance) error {
	rec := PluginRecord{Name: e.name, Spec: inst.spec, Generation: inst.generation(), PluginName: inst.pluginName}
	err := m.commit("the "+action+" of "+e.name, Change{Put: &rec, Audit: auditRecord(m.ctx, action, e.name, gen, inst.generation(), inst, inst.spec, nil)})
	if err != nil {
		m.log.Error(action+" not done: it cannot be recorded", slog.String("plugin", e.name), slog.String("error", err.Error()))
	}
	return err
}
