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
	return PluginRecord{Name: e.name, Spec: e.spec.Clone(), Generation: e.generation, PluginName: e.pluginName}
}

// commit makes c durable: the one way the manager changes the store. A
// failure is a *StoreError naming op; nothing was changed.
func (m *Manager) commit(op string, c Change) error {
	if err := m.store.Commit(c); err != nil {
		return &StoreError{Op: op, Err: err}
	}
	return nil
}

// auditFailure records an attempt that changed nothing (a candidate that
// failed, an operation refused). The attempt has already failed on its own:
// when the record cannot be written either, that is logged, loudly.
func (m *Manager) auditFailure(ctx context.Context, action, plugin string, gen uint64, inst *instance, spec Spec, err error) {
	r := auditRecord(ctx, action, plugin, gen, gen, inst, spec, err)
	if cerr := m.commit(action+" (failed) of "+plugin, Change{Audit: r}); cerr != nil {
		m.log.Error("audit record lost", slog.String("plugin", plugin), slog.String("action", action),
			slog.String("outcome", "failed"), slog.String("error", cerr.Error()))
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

// Audit returns a page of the audit log, newest first: records of plugin
// name (all when empty), older than sequence before (0: from the newest),
// at most limit (0: 100; capped at 10000).
func (m *Manager) Audit(name string, before uint64, limit int) (AuditPage, error) {
	if name != "" {
		if err := ValidateName(name); err != nil {
			return AuditPage{}, err
		}
	}
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 10000)
	p, err := m.store.Audit(AuditQuery{Plugin: name, Before: before, Limit: limit})
	if err != nil {
		return AuditPage{}, fmt.Errorf("reading the audit log: %w", err)
	}
	return p, nil
}

// Restore relaunches every plugin of the store through the candidate
// pipeline, in parallel, continuing their generations upward. A plugin that
// fails to come back stays registered as UNHEALTHY with the reason (an
// operator Reload retries it); one the supervisor had given up on stays
// UNHEALTHY without a launch; one whose stored record cannot be read (or
// holds a spec this daemon refuses) is listed UNHEALTHY with the reason,
// kept on disk, until an operator unloads it or loads a spec over it.
// Restore returns when every launch is decided.
//
// With Config.Inherit, a plugin handed over is taken over (see Freeze)
// rather than launched.
func (m *Manager) Restore(ctx context.Context) error {
	done, err := m.RestoreInBackground(ctx)
	if err != nil {
		return err
	}
	<-done
	return nil
}

// RestoreInBackground is Restore returning as soon as every stored plugin
// is registered (List, Health and Watch know them all, with the state a
// reload handed over), while the launches and takeovers go on; done is
// closed once every one is decided. A call (Invoke, Acquire) to a plugin
// being taken over waits for it, within its context, rather than failing:
// a reload in place serves at once, its plugins attached in the
// background.
func (m *Manager) RestoreInBackground(ctx context.Context) (done <-chan struct{}, err error) {
	recs, err := m.store.Plugins()
	if err != nil {
		return nil, fmt.Errorf("reading desired state: %w", err)
	}
	var wg sync.WaitGroup
	for _, r := range recs {
		if r.Unreadable == "" {
			if verr := r.Spec.Validate(); verr != nil {
				r.Unreadable = "stored spec is invalid: " + verr.Error()
			}
		}
		name := r.Name
		if name == "" {
			name = r.Spec.Name
		}
		e := &entry{name: name, op: make(chan struct{}, 1), spec: r.Spec.Clone(), generation: r.Generation, pluginName: r.PluginName}
		if r.Unreadable != "" {
			e.spec = Spec{Name: name}
			e.unreadable = true
		}
		inh := m.inherited(name)
		if r.Unreadable != "" || (inh != nil && inh.Spec.Name != "" && inh.Spec.Name != name) {
			inh = nil
		}
		// A reload's handover carries the plugin's state: it continues,
		// and nothing is published for it.
		full := inh != nil && inh.Full
		if full {
			e.restoreState(inh)
		}
		adopt := inh != nil && inh.Active != nil && !r.HeldUnhealthy
		if adopt && full {
			// Calls wait for the takeover, not fail: the plugin serves.
			e.attaching = make(chan struct{})
		}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, ErrClosed
		}
		if _, dup := m.plugins[e.name]; dup {
			m.mu.Unlock()
			continue
		}
		m.plugins[e.name] = e
		if !full {
			m.transition(e, evLaunch, "restoring after daemon start")
		}
		m.mu.Unlock()
		if r.Unreadable != "" {
			why := "stored record unreadable: " + r.Unreadable
			m.log.Error("plugin not restored", slog.String("plugin", name), slog.String("reason", why))
			m.auditFailure(ctx, "restore", name, r.Generation, nil, e.spec, fmt.Errorf("%s", why))
			e.mu.Lock()
			m.transitionLocked(e, evGaveUp, why)
			e.mu.Unlock()
			continue
		}
		openEndpoint := func() {
			if err := m.openEndpoint(e); err != nil {
				// The plugin is restored without its endpoint; say why.
				m.log.Error("endpoint not served", slog.String("plugin", e.name), slog.String("error", err.Error()))
				e.mu.Lock()
				e.failedLocked(err.Error())
				e.mu.Unlock()
			}
		}
		if !adopt {
			openEndpoint()
		}
		switch {
		case r.HeldUnhealthy && full:
			continue // UNHEALTHY, as handed over
		case r.HeldUnhealthy:
			e.mu.Lock()
			m.transitionLocked(e, evGaveUp, r.Reason)
			e.mu.Unlock()
			continue
		case full && inh.Active == nil && e.state != StateStarting:
			// Stopped by its health policy, or given up on: as handed
			// over. (STARTING: a restart was due; it is made now.)
			continue
		}
		e.op <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer e.unlock()
			if adopt {
				// The endpoint opens once the plugin is taken over: calls
				// that waited in its backlog through a reload find it
				// serving.
				m.adoptOne(ctx, e, r, inh)
				e.attached()
				openEndpoint()
				return
			}
			m.restoreOne(ctx, e, r)
		}()
	}
	ch := make(chan struct{})
	go func() {
		wg.Wait()
		m.dropInherited()
		close(ch)
	}()
	return ch, nil
}

// restoreOne relaunches one stored plugin; the caller holds e's operation
// lock.
func (m *Manager) restoreOne(ctx context.Context, e *entry, r PluginRecord) {
	inst, _, err := m.launch(ctx, candidate{action: "restore", spec: e.spec, gen: max(r.Generation, e.generation) + 1, expectName: r.PluginName})
	if err != nil {
		m.auditFailure(ctx, "restore", e.name, r.Generation, nil, e.spec, err)
	} else {
		rec := PluginRecord{Name: e.name, Spec: e.spec.Clone(), Generation: inst.generation(), PluginName: inst.pluginName}
		err = m.commit("the restore of "+e.name, Change{Put: &rec, Audit: auditRecord(ctx, "restore", e.name, r.Generation, inst.generation(), inst, e.spec, nil)})
		switch {
		case err != nil:
			inst.stop()
		case !m.activate(e, inst, true):
			inst.stop()
			err = ErrClosed
		}
	}
	if err != nil {
		why := "restore failed: " + err.Error()
		e.mu.Lock()
		m.transitionLocked(e, evGaveUp, why)
		e.mu.Unlock()
		return
	}
	m.log.Info("plugin restored", slog.String("plugin", e.name), slog.Uint64("generation", inst.generation()), slog.Int("pid", inst.pid))
}
