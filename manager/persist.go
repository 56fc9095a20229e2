package manager

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// recordLocked builds the durable record of e; e.mu is held.
func (e *entry) recordLocked() PluginRecord {
	return PluginRecord{Spec: e.spec.clone(), Generation: e.generation, PluginName: e.pluginName}
}

// audit appends one audit record; a failure is logged (the mutation it
// describes has already happened or failed on its own).
func (m *Manager) audit(ctx context.Context, action, plugin string, oldGen, newGen uint64, inst *instance, spec Spec, err error) {
	r := auditRecord(ctx, action, plugin, oldGen, newGen, inst, spec, err)
	if aerr := m.store.AppendAudit(r); aerr != nil {
		m.log.Error("audit record lost", slog.String("plugin", plugin), slog.String("action", action), slog.String("error", aerr.Error()))
	}
}

func auditRecord(ctx context.Context, action, plugin string, oldGen, newGen uint64, inst *instance, spec Spec, err error) *AuditRecord {
	r := &AuditRecord{
		Time:          time.Now(),
		Caller:        CallerFrom(ctx),
		Action:        action,
		Plugin:        plugin,
		OldGeneration: oldGen,
		NewGeneration: newGen,
		Binary:        spec.Binary,
		Outcome:       "ok",
	}
	if inst != nil {
		r.BinarySHA256 = inst.sha256
	} else if spec.SHA256 != "" {
		r.BinarySHA256 = spec.SHA256
	}
	if err != nil {
		r.Outcome, r.Error = "failed", err.Error()
	}
	return r
}

// persist records rec durably before a mutation is acknowledged, with the
// audit record of its success in the same transaction when the store can
// (audited reports that it did; otherwise the caller audits on its own).
func (m *Manager) persist(rec PluginRecord, ok *AuditRecord) (audited bool, err error) {
	if as, yes := m.store.(AuditedStore); yes {
		return true, as.PutPluginAudited(rec, ok)
	}
	return false, m.store.PutPlugin(rec)
}

// Audit returns audit records newest first: of plugin name (all when
// empty), older than sequence before (0: from the newest), at most limit
// (0: 100; capped at 10000).
func (m *Manager) Audit(name string, before uint64, limit int) ([]AuditRecord, error) {
	if name != "" {
		if err := ValidateName(name); err != nil {
			return nil, err
		}
	}
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 10000)
	return m.store.Audit(name, before, limit)
}

// Restore relaunches every plugin of the store through the candidate
// pipeline, in parallel, continuing their generations upward. A plugin that
// fails to come back stays registered as UNHEALTHY with the reason (an
// operator Reload retries it); one the supervisor had given up on stays
// UNHEALTHY without a launch. Restore returns when every launch is decided.
func (m *Manager) Restore(ctx context.Context) error {
	recs, err := m.store.Plugins()
	if err != nil {
		return fmt.Errorf("reading desired state: %w", err)
	}
	var wg sync.WaitGroup
	for _, r := range recs {
		if err := r.Spec.Validate(); err != nil {
			m.log.Error("stored spec is invalid; skipped", slog.String("plugin", r.Spec.Name), slog.String("error", err.Error()))
			continue
		}
		if f := m.cfg.RestoreProtocol; f != nil {
			r.Spec.Protocol = f(r.Spec)
		}
		e := &entry{name: r.Spec.Name, op: make(chan struct{}, 1), spec: r.Spec.clone(), generation: r.Generation, pluginName: r.PluginName}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return ErrClosed
		}
		if _, dup := m.plugins[e.name]; dup {
			m.mu.Unlock()
			continue
		}
		m.plugins[e.name] = e
		_ = m.transition(e, evLaunch, "restoring after daemon start")
		m.mu.Unlock()
		if err := m.openEndpoint(e); err != nil {
			// The plugin is restored without its endpoint; say why.
			m.log.Error("endpoint not served", slog.String("plugin", e.name), slog.String("error", err.Error()))
			e.mu.Lock()
			e.lastError = err.Error()
			e.mu.Unlock()
		}
		if r.HeldUnhealthy {
			e.mu.Lock()
			e.lastError = r.Reason
			_ = m.transitionLocked(e, evGaveUp, r.Reason)
			e.mu.Unlock()
			continue
		}
		e.op <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer e.unlock()
			inst, _, err := m.launch(ctx, candidate{action: "restore", spec: e.spec, gen: r.Generation + 1, expectName: r.PluginName})
			if err == nil {
				e.mu.Lock()
				rec := e.recordLocked()
				e.mu.Unlock()
				rec.Generation = inst.generation()
				if perr := m.store.PutPlugin(rec); perr != nil {
					inst.stop()
					err = fmt.Errorf("persisting desired state: %w", perr)
				} else if !m.activate(e, inst, true) {
					inst.stop()
					err = ErrClosed
				}
			}
			m.audit(ctx, "restore", e.name, r.Generation, r.Generation+uint64(b2i(err == nil)), inst, e.spec, err)
			if err != nil {
				why := "restore failed: " + err.Error()
				e.mu.Lock()
				e.lastError = why
				_ = m.transitionLocked(e, evGaveUp, why)
				e.mu.Unlock()
				return
			}
			m.log.Info("plugin restored", slog.String("plugin", e.name), slog.Uint64("generation", inst.generation()), slog.Int("pid", inst.pid))
		}()
	}
	wg.Wait()
	return nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
