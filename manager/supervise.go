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
// context, and a pidfd; nothing is polled). An exit the
// manager did not ask for is a crash: it is counted with its exit status and,
// when stderr shows a Go panic, the panic message and fingerprint; then the
// supervisor restarts the plugin.
func (m *Manager) watchExit(e *entry, inst *instance) {
	waitGone(inst)
	if inst.intended() {
		return
	}
	exit := "exited"
	if inst.cmd != nil && inst.cmd.ProcessState != nil {
		// Written by go-plugin's cmd.Wait before it cancels the done context.
		exit = inst.cmd.ProcessState.String()
	}
	rec := panicFromStderr(inst.stderr.Tail())
	reason := fmt.Sprintf("generation %d (pid %d) crashed: %s", inst.gen, inst.pid, exit)
	if rec != nil {
		reason += ": panic: " + rec.Message
	}
	m.log.Error("plugin crashed", slog.String("plugin", e.name), slog.Uint64("generation", inst.gen),
		slog.Int("pid", inst.pid), slog.String("reason", reason))
	replaced := !e.active.CompareAndSwap(inst, nil)
	inst.stop()
	m.recordFaultReason(e, inst.gen, true, rec, reason)
	if replaced {
		return
	}
	m.scheduleRestart(e, inst.gen, reason)
}

// scheduleRestart decides whether the supervisor restarts e after generation
// gen died: OTP-style intensity (at most RestartLimit restarts within
// RestartPeriod), exponential backoff between attempts. Past the limit the
// plugin stays UNHEALTHY until an operator reloads it.
func (m *Manager) scheduleRestart(e *entry, gen uint64, reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.removed || e.generation != gen || e.active.Load() != nil {
		return
	}
	p := e.spec.Policy.withDefaults()
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
	if len(e.restartLog) >= p.RestartLimit {
		e.state, e.since = StateUnhealthy, now
		e.lastError = fmt.Sprintf("%s; restart limit reached (%d restarts within %v): not restarting until an operator reloads it",
			reason, p.RestartLimit, p.RestartPeriod)
		m.log.Error("plugin unhealthy", slog.String("plugin", e.name), slog.Uint64("generation", gen), slog.String("reason", e.lastError))
		e.publishLocked(m.events)
		// Held across daemon restarts until an operator reloads it.
		rec := e.recordLocked()
		rec.HeldUnhealthy, rec.Reason = true, e.lastError
		if err := m.store.PutPlugin(rec); err != nil {
			m.log.Error("persisting the unhealthy hold failed", slog.String("plugin", e.name), slog.String("error", err.Error()))
		}
		return
	}
	delay := p.BackoffInitial << min(e.consecutive, 30)
	if delay > p.BackoffMax || delay <= 0 {
		delay = p.BackoffMax
	}
	e.consecutive++
	e.restartLog = append(e.restartLog, now)
	e.state, e.since = StateStarting, now
	e.lastError = fmt.Sprintf("%s; restarting in %v (restart %d of %d within %v)", reason, delay, len(e.restartLog), p.RestartLimit, p.RestartPeriod)
	e.publishLocked(m.events)
	m.startBackground(func() { m.restartAfter(e, gen, delay) })
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
	if err := e.lock(m.ctx); err != nil {
		return
	}
	defer e.unlock()
	e.mu.Lock()
	stale := e.removed || e.generation != gen || e.active.Load() != nil
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
		m.audit(m.ctx, "restart", e.name, gen, gen, nil, spec, err)
		m.scheduleRestart(e, gen, "restart failed: "+err.Error())
		return
	}
	m.persistRestart(e, inst)
	if !m.activateRestart(e, inst) {
		return
	}
	m.audit(m.ctx, "restart", e.name, gen, inst.gen, inst, spec, nil)
	m.log.Info("plugin restarted", slog.String("plugin", e.name), slog.Uint64("generation", inst.gen), slog.Int("pid", inst.pid))
}

// onUnhealthy runs the policy's action once generation gen became
// UNHEALTHY: restart relaunches through the candidate pipeline (the unhealthy
// generation serves until the candidate passes), stop stops the plugin and
// leaves it STOPPED in the registry.
func (m *Manager) onUnhealthy(e *entry, gen uint64, action Action) {
	if err := e.lock(m.ctx); err != nil {
		return
	}
	defer e.unlock()
	e.mu.Lock()
	stale := e.removed || e.generation != gen
	spec, expect := e.spec, e.pluginName
	e.mu.Unlock()
	old := e.active.Load()
	if stale || old == nil || old.gen != gen {
		return
	}
	switch action {
	case ActionStop:
		e.active.CompareAndSwap(old, nil)
		old.drain(m.cfg.DrainTimeout)
		old.stop()
		e.setState(StateStopped, fmt.Sprintf("stopped by health policy after generation %d became unhealthy", gen), m.events)
		m.audit(m.ctx, "unhealthy-stop", e.name, gen, gen, nil, spec, nil)
		m.log.Warn("plugin stopped by health policy", slog.String("plugin", e.name), slog.Uint64("generation", gen))
	case ActionRestart:
		inst, _, err := m.launch(m.ctx, candidate{action: "unhealthy-restart", spec: spec, gen: gen + 1, expectName: expect, activeGen: gen})
		if err != nil {
			m.audit(m.ctx, "unhealthy-restart", e.name, gen, gen, nil, spec, err)
			e.mu.Lock()
			e.lastError = "restart on unhealthy failed: " + err.Error()
			e.publishLocked(m.events)
			e.mu.Unlock()
			return
		}
		if !m.activateRestart(e, inst) {
			return
		}
		m.persistRestart(e, inst)
		m.audit(m.ctx, "unhealthy-restart", e.name, gen, inst.gen, inst, spec, nil)
		old.drain(m.cfg.DrainTimeout)
		old.stop()
		m.log.Info("plugin restarted by health policy", slog.String("plugin", e.name), slog.Uint64("generation", inst.gen))
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

// persistRestart records inst, a restarted generation of e, as the desired
// state; a failure is logged (the restart stands).
func (m *Manager) persistRestart(e *entry, inst *instance) {
	if err := m.store.PutPlugin(PluginRecord{Spec: inst.spec, Generation: inst.gen, PluginName: inst.pluginName}); err != nil {
		m.log.Error("persisting the restarted generation failed", slog.String("plugin", e.name), slog.String("error", err.Error()))
	}
}
