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

// transitionLocked applies ev to e: the one place where e.state, e.since
// and e.reason change, and where every health change of e is published
// (under e.mu, so that a plugin's events are in the order of its changes;
// publishing never blocks). reason says why e is in its new state and is
// kept only for states that are not SERVING. A refused event changes
// nothing, is logged and returned. e.mu is held.
func (m *Manager) transitionLocked(e *entry, ev lifecycleEvent, reason string) error {
	to, ok := nextState(e.state, ev)
	if !ok {
		err := &TransitionError{Plugin: e.name, From: e.state, Event: ev.String()}
		m.log.Error("refused lifecycle transition", "plugin", e.name, "error", err.Error())
		return err
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
	e.revision = m.events.publish(t, e.healthLocked())
	return nil
}

// transition is transitionLocked taking e.mu.
func (m *Manager) transition(e *entry, ev lifecycleEvent, reason string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return m.transitionLocked(e, ev, reason)
}
