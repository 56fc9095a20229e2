package manager

import (
	"fmt"
	"time"
)

// lifecycleEvent is what happened to a plugin, as its state machine sees
// it. The table transitions says which state each event leads to from each
// state; transitionLocked is the one place that applies it (see the
// diagram in the package doc).
type lifecycleEvent int

const (
	// evLaunch: a plugin's first launch (Load) or restore begins.
	evLaunch lifecycleEvent = iota + 1
	// evActivated: a generation became the active one (Load, Reload,
	// supervisor restart, restart on unhealthy, revert after a bake).
	evActivated
	// evFault: a fault of the active generation left every failure class
	// below its threshold.
	evFault
	// evFaultLimit: a failure class of the active generation reached its
	// threshold.
	evFaultLimit
	// evRecovered: the windows of the active generation hold no fault
	// any more.
	evRecovered
	// evExited: the active generation's process exited on its own; the
	// supervisor restarts it.
	evExited
	// evGaveUp: no generation will serve until an operator acts (restart
	// limit or a failure class of restarts reached, restore failed, a
	// restart of a plugin held UNHEALTHY across a daemon restart).
	evGaveUp
	// evStopped: the plugin stays registered with no process (stop action,
	// daemon shutdown).
	evStopped
	// evRemoved: the plugin leaves the registry (Unload, failed first
	// Load); published as EventRemoved.
	evRemoved
	// evUpdated: something but the state changed (counts, the bake, the
	// endpoint): published, the state stays.
	evUpdated
)

var lifecycleEventNames = map[lifecycleEvent]string{
	evLaunch: "launch", evActivated: "activated", evFault: "fault", evFaultLimit: "fault-limit",
	evRecovered: "recovered", evExited: "exited", evGaveUp: "gave-up", evStopped: "stopped",
	evRemoved: "removed", evUpdated: "updated",
}

func (ev lifecycleEvent) String() string {
	if n, ok := lifecycleEventNames[ev]; ok {
		return n
	}
	return fmt.Sprintf("event(%d)", int(ev))
}

// transitions is the state machine: for each state, the events allowed in
// it and the state each leads to. StateUnknown is a plugin not yet in the
// registry. An event missing from a state's row is refused. evUpdated is
// allowed everywhere and keeps the state.
var transitions = map[State]map[lifecycleEvent]State{
	StateUnknown: {
		evLaunch: StateStarting,
	},
	StateStarting: {
		evActivated: StateServing,
		evExited:    StateStarting, // a restart's candidate failed: another is scheduled
		evGaveUp:    StateUnhealthy,
		evStopped:   StateStopped,
		evRemoved:   StateStopped,
	},
	StateServing: {
		evActivated:  StateServing, // a reload swapped generations
		evFault:      StateDegraded,
		evFaultLimit: StateUnhealthy,
		evExited:     StateStarting,
		evGaveUp:     StateUnhealthy, // it crashed past a restart limit
		evStopped:    StateStopped,
		evRemoved:    StateStopped,
	},
	StateDegraded: {
		evActivated:  StateServing,
		evFault:      StateDegraded,
		evFaultLimit: StateUnhealthy,
		evRecovered:  StateServing,
		evExited:     StateStarting,
		evGaveUp:     StateUnhealthy,
		evStopped:    StateStopped,
		evRemoved:    StateStopped,
	},
	StateUnhealthy: {
		evActivated:  StateServing,   // an operator reload, a restart on unhealthy, a revert
		evFault:      StateUnhealthy, // sticky for the generation: counted only
		evFaultLimit: StateUnhealthy,
		evExited:     StateStarting,
		evGaveUp:     StateUnhealthy,
		evStopped:    StateStopped,
		evRemoved:    StateStopped,
	},
	StateStopped: {
		evActivated: StateServing, // an operator reload of a stopped plugin
		evStopped:   StateStopped,
		evRemoved:   StateStopped,
	},
}

// nextState returns the state ev leads to from s, and whether ev is
// allowed in s.
func nextState(s State, ev lifecycleEvent) (State, bool) {
	if ev == evUpdated {
		return s, s != StateUnknown
	}
	to, ok := transitions[s][ev]
	return to, ok
}

// TransitionError is a lifecycle event refused in the plugin's state: a
// bug in the manager if it ever surfaces (the state is left as it was).
type TransitionError struct {
	Plugin string
	From   State
	Event  string
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("plugin %q: lifecycle event %s is not allowed in state %s", e.Plugin, e.Event, e.From)
}

// failures are the events whose reason is also the plugin's last error.
var failures = map[lifecycleEvent]bool{evFaultLimit: true, evExited: true, evGaveUp: true}

// transitionLocked applies ev to e: the one place where e.state, e.since
// and e.reason change, and where every health change of e is published
// (under e.mu, so that a plugin's events are in the order of its changes;
// publishing never blocks). reason says why e is in its new state and is
// kept only for states that are not SERVING; for a failure it is the last
// error too. A refused event changes nothing: it is a bug in the manager,
// logged at error level and counted (RefusedTransitions; the tests fail
// on it). e.mu is held.
func (m *Manager) transitionLocked(e *entry, ev lifecycleEvent, reason string) {
	to, ok := nextState(e.state, ev)
	if !ok {
		err := &TransitionError{Plugin: e.name, From: e.state, Event: ev.String()}
		m.refused.Add(1)
		m.log.Error("refused lifecycle transition (a bug in plugind)", "plugin", e.name, "error", err.Error())
		return
	}
	if failures[ev] && reason != "" {
		e.lastError = reason
	}
	if to != e.state || ev == evActivated {
		e.since = time.Now()
	}
	if ev != evUpdated {
		e.state = to
		e.reason = reason
		if to == StateServing {
			e.reason = ""
		}
	}
	t := EventChanged
	if ev == evRemoved {
		t = EventRemoved
	}
	e.revision = m.events.Publish(t, e.healthLocked())
}

// transition is transitionLocked taking e.mu.
func (m *Manager) transition(e *entry, ev lifecycleEvent, reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	m.transitionLocked(e, ev, reason)
}

// RefusedTransitions counts lifecycle events refused in a plugin's state
// since New: each is a bug in the manager (logged with the plugin, the
// state and the event), so anything but 0 is worth a report.
func (m *Manager) RefusedTransitions() uint64 { return m.refused.Load() }

// activateLocked makes inst the active generation of e, the one place a
// generation becomes active (Load, Reload, a restart, a restore, an
// adoption, a revert): its generation, spec and plugin name become e's, the
// failure windows start over, and evActivated is published. e.mu is held.
func (m *Manager) activateLocked(e *entry, inst *instance) {
	gen := inst.generation()
	e.generation = gen
	e.spec = inst.spec
	e.pluginName = inst.pluginName
	e.faults.reset(gen)
	e.active.Store(inst)
	m.transitionLocked(e, evActivated, "")
}

// resumeLocked makes inst, a process taken over across a reload in place,
// the active generation again: nothing changed, nothing is published.
// e.mu is held.
func (e *entry) resumeLocked(inst *instance) { e.active.Store(inst) }

// deactivate makes inst no longer the active generation of e, if it still
// is, and reports whether it was (its exit, a stop by the health policy).
func (e *entry) deactivate(inst *instance) bool { return e.active.CompareAndSwap(inst, nil) }

// takeActive ends the active generation of e (Unload, Close) and returns
// it, nil if there was none.
func (e *entry) takeActive() *instance { return e.active.Swap(nil) }

// failedLocked records a failure that leaves e's state as it is (a reload
// refused, a change that could not be recorded) as its last error. e.mu
// is held.
func (e *entry) failedLocked(msg string) { e.lastError = msg }

// restoreState puts the lifecycle state of a reload's handover into e, a
// plugin being restored, without publishing anything: nothing changed.
// e.mu is not held; nothing else knows e yet.
func (e *entry) restoreState(p *PluginHandover) {
	e.generation = max(e.generation, p.Generation)
	if p.PluginName != "" {
		e.pluginName = p.PluginName
	}
	e.state, e.since, e.reason = p.State, p.Since, p.Reason
	e.lastError, e.restarts, e.revision, e.consecutive = p.LastError, p.Restarts, p.Revision, p.Consecutive
	e.restartLog = append([]time.Time(nil), p.RestartLog...)
	e.faults.restore(p.Faults)
	if b := p.Bake; b != nil {
		e.bake = &bake{BakeStatus: b.Status, prevSpec: b.PreviousSpec.Clone(), prevPluginName: b.PreviousPluginName}
	}
}
