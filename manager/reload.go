package manager

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/plugincontrol/plugincontrol/manager/record"
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
	spec = spec.Clone()
	e := &entry{name: spec.Name, op: make(chan struct{}, 1), spec: spec}
	e.op <- struct{}{} // held until the launch is decided
	defer e.unlock()

	replaced, err := m.register(ctx, e)
	if err != nil {
		return nil, err
	}

	var (
		inst *instance
		rep  *Report
	)
	err = m.openEndpoint(e)
	if err == nil {
		inst, rep, err = m.launch(ctx, candidate{action: "load", spec: spec, gen: 1})
	}
	committed := false
	if err == nil {
		// Recorded, with its audit record, before it is acknowledged (and
		// before it serves).
		rec := PluginRecord{Name: spec.Name, Spec: spec, Generation: 1, PluginName: inst.pluginName}
		err = m.commit("the load of "+spec.Name, Change{Put: &rec, Audit: auditRecord(ctx, "load", spec.Name, 0, 1, inst, spec, nil)})
		committed = err == nil
		switch {
		case err != nil:
			inst.stop()
		case !m.activate(e, inst, true):
			// The daemon shuts down under the load: take the record back
			// (the caller is told it failed).
			inst.stop()
			err = ErrClosed
			if cerr := m.commit("the undone load of "+spec.Name, Change{Delete: spec.Name, Audit: auditRecord(ctx, "load", spec.Name, 1, 0, inst, spec, err)}); cerr != nil {
				m.log.Error("a load undone by the shutdown stays recorded", slog.String("plugin", spec.Name), slog.String("error", cerr.Error()))
			}
		}
	}
	if err != nil && !committed {
		m.auditFailure(ctx, "load", spec.Name, 0, inst, spec, err)
	}
	if err != nil {
		m.mu.Lock()
		if m.plugins[spec.Name] == e {
			delete(m.plugins, spec.Name)
			if replaced != nil {
				// The unreadable record it was to replace is still there.
				m.plugins[spec.Name] = replaced
			}
		}
		m.mu.Unlock()
		e.mu.Lock()
		e.removed = true
		e.failedLocked(err.Error())
		m.transitionLocked(e, evRemoved, err.Error())
		e.mu.Unlock()
		m.closeEndpoint(e)
		return nil, err
	}
	m.log.Info("plugin loaded", slog.String("plugin", spec.Name), slog.Uint64("generation", 1),
		slog.Int("pid", inst.pid), slog.Duration("took", rep.Total))
	return &LoadResult{Status: m.status(e), Report: rep}, nil
}

// register puts e, a plugin being loaded, in the registry, in STARTING. A
// plugin of that name is ErrAlreadyExists, unless it is one restored from
// an unreadable record: Load may replace that one, which register returns
// (to be put back if the load fails).
func (m *Manager) register(ctx context.Context, e *entry) (replaced *entry, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		if m.closed {
			return nil, ErrClosed
		}
		if m.frozen {
			return nil, ErrFrozen
		}
		old, ok := m.plugins[e.name]
		if !ok {
			break
		}
		old.mu.Lock()
		unreadable, removed := old.unreadable, old.removed
		old.mu.Unlock()
		if !unreadable || removed {
			return nil, fmt.Errorf("plugin %q: %w", e.name, ErrAlreadyExists)
		}
		// Wait for an operation on it (an Unload) without holding m.mu.
		m.mu.Unlock()
		err := old.lock(ctx)
		m.mu.Lock()
		if err != nil {
			return nil, err
		}
		if m.plugins[e.name] == old {
			delete(m.plugins, e.name)
			replaced = old
		}
		old.unlock()
	}
	if len(m.plugins) >= m.cfg.MaxPlugins {
		return nil, &LimitError{Limit: "max_plugins", Value: m.cfg.MaxPlugins}
	}
	m.plugins[e.name] = e
	m.transition(e, evLaunch, "loading")
	return replaced, nil
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
		if operator {
			e.restartLog = nil
			e.consecutive = 0
			e.faults.forgetRestarts()
		}
		m.activateLocked(e, inst)
		e.mu.Unlock()
		m.startLiveness(e, inst)
		m.saveRuntime(e)
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
	if req.DrainTimeout < 0 || req.DrainTimeout > record.MaxTimeout {
		return nil, &InvalidError{Field: "drain_timeout", Reason: fmt.Sprintf("%v is outside 0..%v", req.DrainTimeout, record.MaxTimeout)}
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
	removed, unreadable, activeGen, spec, expect := e.removed, e.unreadable, e.generation, e.spec, e.pluginName
	e.mu.Unlock()
	if removed {
		return nil, fmt.Errorf("plugin %q: %w", req.Name, ErrNotFound)
	}
	if unreadable {
		return nil, fmt.Errorf("plugin %q: its stored record could not be read, so there is no spec to reload: Load a spec over it, or Unload it: %w", req.Name, ErrUnreadable)
	}
	if req.ExpectedGeneration != 0 && req.ExpectedGeneration != activeGen {
		return nil, &GenerationMismatchError{Plugin: req.Name, Expected: req.ExpectedGeneration, Active: activeGen}
	}
	prevSpec := spec
	if req.Spec != nil {
		spec = req.Spec.Clone()
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
		e.failedLocked(err.Error())
		e.mu.Unlock()
		m.auditFailure(ctx, action, req.Name, activeGen, nil, spec, err)
		return nil, err
	}
	if req.ValidateOnly {
		inst.stop()
		// A dry run changes nothing, but it ran a binary: it is audited,
		// and refused when it cannot be.
		if err := m.commit("the dry run of "+req.Name, Change{Audit: auditRecord(ctx, action, req.Name, activeGen, activeGen, inst, spec, nil)}); err != nil {
			return nil, err
		}
		return &ReloadResult{Status: m.status(e), PreviousGeneration: activeGen, Report: rep}, nil
	}
	// Recorded, with its audit record, before the swap: if the daemon dies
	// right after, the restore relaunches what this call was about to
	// acknowledge.
	gen := inst.generation()
	rec := PluginRecord{Name: req.Name, Spec: spec, Generation: gen, PluginName: inst.pluginName}
	if err := m.commit("the reload of "+req.Name, Change{Put: &rec, Audit: auditRecord(ctx, action, req.Name, activeGen, gen, inst, spec, nil)}); err != nil {
		inst.stop()
		m.auditFailure(ctx, action, req.Name, activeGen, inst, spec, err)
		return nil, err
	}

	// 6. swap
	start := time.Now()
	if !m.activate(e, inst, true) {
		// The daemon shuts down under the reload: the record stays (a
		// restart restores the new spec, which was about to be
		// acknowledged); the caller is told it failed.
		inst.stop()
		return nil, ErrClosed
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
	return &ReloadResult{Status: m.status(e), PreviousGeneration: activeGen, Report: rep}, nil
}

// maxBake bounds ReloadRequest.Bake and Config.DefaultBake.
const maxBake = 24 * time.Hour

// Unload drains and stops a plugin and forgets it. drain 0 means the default.
func (m *Manager) Unload(ctx context.Context, name string, drain time.Duration) (Status, error) {
	if drain < 0 || drain > record.MaxTimeout {
		return Status{}, &InvalidError{Field: "drain_timeout", Reason: fmt.Sprintf("%v is outside 0..%v", drain, record.MaxTimeout)}
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
	st := m.status(e)
	if err := m.commit("the unload of "+name, Change{Delete: name, Audit: auditRecord(ctx, "unload", name, st.Generation, st.Generation, nil, st.Spec, nil)}); err != nil {
		// Nothing is done: the plugin keeps running, as recorded.
		m.auditFailure(ctx, "unload", name, st.Generation, nil, st.Spec, err)
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

	m.cancelBake(e, "the plugin was unloaded")
	inst := e.takeActive()
	if inst != nil {
		if drain == 0 {
			drain = m.cfg.DrainTimeout
		}
		inst.drain(drain)
		inst.stop()
	}
	m.closeEndpoint(e)
	m.forgetRuntime(name)
	e.mu.Lock()
	e.faults.reset(0)
	m.transitionLocked(e, evRemoved, "unloaded")
	e.mu.Unlock()
	st.State, st.PID = StateStopped, 0
	m.log.Info("plugin unloaded", slog.String("plugin", name), slog.Uint64("generation", st.Generation))
	return st, nil
}

// validate checks a spec against its own rules and the daemon's policy.
func (m *Manager) validate(s *Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if f := m.cfg.Protocol; f != nil {
		if p := f(*s); p != nil {
			if err := p.check(); err != nil {
				return err
			}
		}
	}
	if m.cfg.RequirePin && s.SHA256 == "" {
		return &InvalidError{Field: "sha256", Reason: "required: this daemon runs with --require-pin, so every spec must pin its binary"}
	}
	return nil
}
