package manager

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// LoadResult is the outcome of a successful Load.
type LoadResult struct {
	Status Status
	Report *Report
}

// Load launches a new plugin through the candidate pipeline. The name is
// reserved (STARTING) while the candidate runs; on failure it is released and
// nothing remains.
func (m *Manager) Load(ctx context.Context, spec Spec) (*LoadResult, error) {
	if err := m.validate(&spec); err != nil {
		return nil, err
	}
	spec = spec.clone()
	e := &entry{name: spec.Name, op: make(chan struct{}, 1), spec: spec}
	e.op <- struct{}{} // held until the launch is decided
	defer e.unlock()

	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	if _, ok := m.plugins[spec.Name]; ok {
		m.mu.Unlock()
		return nil, fmt.Errorf("plugin %q: %w", spec.Name, ErrAlreadyExists)
	}
	if len(m.plugins) >= m.cfg.MaxPlugins {
		m.mu.Unlock()
		return nil, &LimitError{Limit: "max_plugins", Value: m.cfg.MaxPlugins}
	}
	m.plugins[spec.Name] = e
	_ = m.transition(e, evLaunch, "loading")
	m.mu.Unlock()

	var (
		inst *instance
		rep  *Report
	)
	err := m.openEndpoint(e)
	if err == nil {
		inst, rep, err = m.launch(ctx, candidate{action: "load", spec: spec, gen: 1})
	}
	audited := false
	if err == nil {
		// Persisted before it is acknowledged (and before it serves),
		// with its audit record when the store can do both at once.
		var perr error
		audited, perr = m.persist(PluginRecord{Spec: spec, Generation: 1, PluginName: inst.pluginName},
			auditRecord(ctx, "load", spec.Name, 0, 1, inst, spec, nil))
		if perr != nil {
			audited = false
			inst.stop()
			err = fmt.Errorf("plugin %q: persisting desired state: %w", spec.Name, perr)
		} else if !m.activate(e, inst, true) {
			audited = false // the record said ok: say what happened after it
			inst.stop()
			_ = m.store.DeletePlugin(spec.Name)
			err = ErrClosed
		}
	}
	if !audited {
		m.audit(ctx, "load", spec.Name, 0, uint64(b2i(err == nil)), inst, spec, err)
	}
	if err != nil {
		m.mu.Lock()
		if m.plugins[spec.Name] == e {
			delete(m.plugins, spec.Name)
		}
		m.mu.Unlock()
		e.mu.Lock()
		e.removed = true
		e.lastError = err.Error()
		_ = m.transitionLocked(e, evRemoved, err.Error())
		e.mu.Unlock()
		m.closeEndpoint(e)
		return nil, err
	}
	m.log.Info("plugin loaded", slog.String("plugin", spec.Name), slog.Uint64("generation", 1),
		slog.Int("pid", inst.pid), slog.Duration("took", rep.Total))
	return &LoadResult{Status: e.status(), Report: rep}, nil
}

// activate makes inst the active generation of e, with fresh failure
// windows, and starts watching its process (and probing it, when the
// policy asks for liveness). operator is true for Load and Reload: an
// operator's action also clears the supervisor's restart history, so a
// plugin left UNHEALTHY at its restart limit is supervised again. It
// returns false when the manager closed meanwhile (the caller stops inst).
// The caller holds e's operation lock.
func (m *Manager) activate(e *entry, inst *instance, operator bool) bool {
	return m.startBackground(func() { m.watchExit(e, inst) }, func() {
		e.mu.Lock()
		e.generation = inst.generation()
		e.spec = inst.spec
		e.pluginName = inst.pluginName
		e.faults.reset(inst.generation())
		if operator {
			e.restartLog = nil
			e.consecutive = 0
			e.faults.forgetRestarts()
		}
		e.active.Store(inst)
		_ = m.transitionLocked(e, evActivated, "")
		e.mu.Unlock()
		m.startLiveness(e, inst)
	})
}

// NoBake in ReloadRequest.Bake asks for no bake even when the manager has a
// default bake period.
const NoBake time.Duration = -1

// ReloadRequest asks for a new generation.
type ReloadRequest struct {
	Name string
	// Spec, when not nil, upgrades the plugin; Spec.Name must equal Name.
	Spec *Spec
	// ExpectedGeneration, when not 0, must equal the active generation.
	ExpectedGeneration uint64
	// ValidateOnly runs stages 1-5 and discards the candidate.
	ValidateOnly bool
	// DrainTimeout bounds the drain of the old generation (0: default).
	DrainTimeout time.Duration
	// Bake, when positive, keeps the previous generation's process warm
	// for that long after the swap: if the new generation becomes
	// UNHEALTHY (any failure class) or crashes meanwhile, the manager
	// reverts to it by itself. 0 means Config.DefaultBake; NoBake means
	// none.
	Bake time.Duration
}

// ReloadResult is the outcome of a successful Reload.
type ReloadResult struct {
	Status             Status
	PreviousGeneration uint64
	Report             *Report
}

// Reload runs the candidate pipeline and swaps to the candidate only when it
// passes: the active generation keeps serving until then, and untouched if
// the candidate fails. The old generation is drained (calls in flight finish,
// up to the drain timeout) and stopped after the swap, or, with a bake, kept
// warm until the bake ends. Reloads of one plugin are serialized. Draining
// is not cut short by ctx: once swapped, the old generation must be stopped
// either way.
func (m *Manager) Reload(ctx context.Context, req ReloadRequest) (*ReloadResult, error) {
	if req.Spec != nil {
		if err := m.validate(req.Spec); err != nil {
			return nil, err
		}
		if req.Spec.Name != req.Name {
			return nil, &InvalidError{Field: "spec.name", Reason: fmt.Sprintf("%q differs from the plugin being reloaded (%q)", req.Spec.Name, req.Name)}
		}
	}
	if req.DrainTimeout < 0 || req.DrainTimeout > maxTimeout {
		return nil, &InvalidError{Field: "drain_timeout", Reason: fmt.Sprintf("%v is outside 0..%v", req.DrainTimeout, maxTimeout)}
	}
	if req.Bake < NoBake || req.Bake > maxBake {
		return nil, &InvalidError{Field: "bake", Reason: fmt.Sprintf("%v is outside 0..%v", req.Bake, maxBake)}
	}
	bake := req.Bake
	if bake == 0 {
		bake = m.cfg.DefaultBake
	}
	e, err := m.lookup(req.Name)
	if err != nil {
		return nil, err
	}
	if err := e.lock(ctx); err != nil {
		return nil, err
	}
	defer e.unlock()

	e.mu.Lock()
	removed, activeGen, spec, expect := e.removed, e.generation, e.spec, e.pluginName
	e.mu.Unlock()
	if removed {
		return nil, fmt.Errorf("plugin %q: %w", req.Name, ErrNotFound)
	}
	if req.ExpectedGeneration != 0 && req.ExpectedGeneration != activeGen {
		return nil, &GenerationMismatchError{Plugin: req.Name, Expected: req.ExpectedGeneration, Active: activeGen}
	}
	prevSpec := spec
	if req.Spec != nil {
		spec = req.Spec.clone()
	}
	action := "reload"
	if req.ValidateOnly {
		action = "validate"
	} else {
		// A bake in progress ends: this reload moves on from it.
		m.cancelBake(e, "superseded by a reload")
	}
	old := e.active.Load()
	inst, rep, err := m.launch(ctx, candidate{action: action, spec: spec, gen: activeGen + 1, expectName: expect, activeGen: activeGen})
	if err != nil {
		e.mu.Lock()
		e.lastError = err.Error()
		e.mu.Unlock()
		m.audit(ctx, action, req.Name, activeGen, activeGen, nil, spec, err)
		return nil, err
	}
	if req.ValidateOnly {
		inst.stop()
		m.audit(ctx, action, req.Name, activeGen, activeGen, inst, spec, nil)
		return &ReloadResult{Status: e.status(), PreviousGeneration: activeGen, Report: rep}, nil
	}
	// Persisted before the swap: if the daemon dies right after, the
	// restore relaunches what this call was about to acknowledge.
	// The audit record of the swap goes in the same transaction when the
	// store can do both at once (one fsync).
	gen := inst.generation()
	audited, perr := m.persist(PluginRecord{Spec: spec, Generation: gen, PluginName: inst.pluginName},
		auditRecord(ctx, action, req.Name, activeGen, gen, inst, spec, nil))
	if perr != nil {
		inst.stop()
		err := fmt.Errorf("plugin %q: persisting desired state: %w", req.Name, perr)
		m.audit(ctx, action, req.Name, activeGen, activeGen, inst, spec, err)
		return nil, err
	}

	// 6. swap
	start := time.Now()
	if !m.activate(e, inst, true) {
		inst.stop()
		if audited {
			m.audit(ctx, action, req.Name, activeGen, activeGen, inst, spec, ErrClosed)
		}
		return nil, ErrClosed
	}
	if !audited {
		m.audit(ctx, action, req.Name, activeGen, gen, inst, spec, nil)
	}
	rep.Stages = append(rep.Stages, StageTiming{Stage: StageSwap, Duration: time.Since(start)})

	// 7. drain the old generation, then stop it; with a bake, keep its
	// process warm until the bake ends.
	if old != nil && bake > 0 {
		m.startBake(e, inst, old, prevSpec, expect, bake)
	} else if old != nil {
		start = time.Now()
		timeout := req.DrainTimeout
		if timeout == 0 {
			timeout = m.cfg.DrainTimeout
		}
		rep.DrainedCalls, rep.DrainTimedOut = old.drain(timeout)
		// The old generation serves nothing any more: stop its process
		// (go-plugin's graceful Kill takes a few ms, up to 500ms for a
		// plugin that ignores it) in the background rather than in the
		// caller's time; Close waits for it. Its exit is intended from now
		// on, not a crash, and its socket directory goes now: nothing
		// connects to it any more (the connection made at launch lives on).
		old.markStopping()
		removeSockDir(old.sockDir)
		if !m.startBackground(old.stop) {
			old.stop()
		}
		rep.Stages = append(rep.Stages, StageTiming{Stage: StageDrain, Duration: time.Since(start)})
		if rep.DrainTimedOut {
			m.log.Warn("drain timed out; old generation stopped with calls in flight",
				slog.String("plugin", req.Name), slog.Uint64("generation", old.generation()), slog.Duration("drain_timeout", timeout))
		}
	}
	var total time.Duration
	for _, s := range rep.Stages {
		total += s.Duration
	}
	rep.Total = total
	m.log.Info("plugin reloaded", slog.String("plugin", req.Name), slog.Uint64("generation", gen),
		slog.Uint64("previous_generation", activeGen), slog.Int("pid", inst.pid), slog.Duration("took", total))
	return &ReloadResult{Status: e.status(), PreviousGeneration: activeGen, Report: rep}, nil
}

// maxBake bounds ReloadRequest.Bake and Config.DefaultBake.
const maxBake = 24 * time.Hour

// Unload drains and stops a plugin and forgets it. drain 0 means the default.
func (m *Manager) Unload(ctx context.Context, name string, drain time.Duration) (Status, error) {
	if drain < 0 || drain > maxTimeout {
		return Status{}, &InvalidError{Field: "drain_timeout", Reason: fmt.Sprintf("%v is outside 0..%v", drain, maxTimeout)}
	}
	e, err := m.lookup(name)
	if err != nil {
		return Status{}, err
	}
	if err := e.lock(ctx); err != nil {
		return Status{}, err
	}
	defer e.unlock()
	e.mu.Lock()
	removed := e.removed
	e.mu.Unlock()
	if removed {
		return Status{}, fmt.Errorf("plugin %q: %w", name, ErrNotFound)
	}
	if err := m.store.DeletePlugin(name); err != nil {
		err = fmt.Errorf("plugin %q: persisting desired state: %w", name, err)
		st := e.status()
		m.audit(ctx, "unload", name, st.Generation, st.Generation, nil, st.Spec, err)
		return Status{}, err
	}
	e.mu.Lock()
	e.removed = true
	e.mu.Unlock()
	m.mu.Lock()
	if m.plugins[name] == e {
		delete(m.plugins, name)
	}
	m.mu.Unlock()

	st := e.status()
	m.cancelBake(e, "the plugin was unloaded")
	inst := e.active.Swap(nil)
	if inst != nil {
		if drain == 0 {
			drain = m.cfg.DrainTimeout
		}
		inst.drain(drain)
		inst.stop()
	}
	m.closeEndpoint(e)
	e.mu.Lock()
	e.faults.reset(0)
	_ = m.transitionLocked(e, evRemoved, "unloaded")
	e.mu.Unlock()
	st.State, st.PID = StateStopped, 0
	m.audit(ctx, "unload", name, st.Generation, st.Generation, nil, st.Spec, nil)
	m.log.Info("plugin unloaded", slog.String("plugin", name), slog.Uint64("generation", st.Generation))
	return st, nil
}

// validate checks a spec against its own rules and the daemon's policy.
func (m *Manager) validate(s *Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if m.cfg.RequirePin && s.SHA256 == "" {
		return &InvalidError{Field: "sha256", Reason: "required: this daemon runs with --require-pin, so every spec must pin its binary"}
	}
	return nil
}
