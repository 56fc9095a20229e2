package manager

import (
	"time"
)

// State is a plugin's health state.
type State int

// States, numbered as plugincontrol.v1.PluginState.
const (
	StateUnknown State = iota
	StateStarting
	StateServing
	StateDegraded
	StateUnhealthy
	StateStopped
)

var stateNames = [...]string{"UNKNOWN", "STARTING", "SERVING", "DEGRADED", "UNHEALTHY", "STOPPED"}

func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return "UNKNOWN"
	}
	return stateNames[s]
}

// Status is the observed state of one plugin instance.
type Status struct {
	Name       string
	Generation uint64
	State      State
	PID        int
	Binary     string
	SHA256     string
	Version    string
	PluginName string
	StartedAt  time.Time
	Restarts   int
	LastError  string
	Spec       Spec
	// Protocol names the protocol the plugin is spoken to with ("native",
	// "grpc", or an embedder's).
	Protocol string
	// Endpoint is the stable address of the plugin's own gRPC API, the
	// same for every generation ("" when the manager has no Endpoints).
	Endpoint string
	// Services are the gRPC services the active generation serves, where
	// known (described at stage describe).
	Services []string
}

// Health is the health record of one plugin instance.
type Health struct {
	Name       string
	State      State
	Generation uint64
	// PanicsInWindow, LifetimePanics, Crashes and LastPanic are filled by
	// the panic tracker.
	PanicsInWindow int
	LifetimePanics uint64
	Crashes        uint64
	Restarts       int
	LastPanic      *PanicRecord
	Reason         string
	Since          time.Time
	Revision       uint64
}

// PanicRecord is the last panic of a plugin.
type PanicRecord struct {
	Message     string
	Fingerprint string
	Time        time.Time
	Generation  uint64
}

func (e *entry) status() Status {
	inst := e.active.Load()
	e.mu.Lock()
	st := Status{
		Name:       e.name,
		Generation: e.generation,
		State:      e.state,
		Binary:     e.spec.Binary,
		PluginName: e.pluginName,
		Restarts:   e.restarts,
		LastError:  e.lastError,
		Spec:       e.spec.clone(),
		Protocol:   e.spec.protocolName(),
		Endpoint:   e.endpoint,
	}
	e.mu.Unlock()
	if inst != nil {
		st.PID = inst.pid
		st.SHA256 = inst.sha256
		st.Version = inst.version
		st.StartedAt = inst.startedAt
		st.Binary = inst.spec.Binary
		st.Services = append([]string(nil), inst.services...)
		st.Protocol = inst.proto.Name
	}
	return st
}

// healthLocked builds the health record; e.mu is held.
func (e *entry) healthLocked() Health {
	h := Health{
		Name:           e.name,
		State:          e.state,
		Generation:     e.generation,
		Restarts:       e.restarts,
		Reason:         e.lastError,
		Since:          e.since,
		Revision:       e.revision,
		PanicsInWindow: e.panics.inWindow(time.Now(), e.spec.Policy.withDefaults().PanicWindow),
		LifetimePanics: e.panics.panics,
		Crashes:        e.panics.crashes,
	}
	if e.panics.last != nil {
		r := *e.panics.last
		h.LastPanic = &r
	}
	return h
}

// setState records a state change and publishes it. reason becomes
// last_error when not empty.
func (e *entry) setState(s State, reason string, ev *events) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s != e.state {
		e.since = time.Now()
	}
	e.state = s
	if reason != "" {
		e.lastError = reason
	}
	// Publishing under e.mu keeps this plugin's events in the order its
	// state changed; events.publish never blocks.
	e.publishLocked(ev)
}

// publishLocked publishes the current record; e.mu is held.
func (e *entry) publishLocked(ev *events) {
	e.revision = ev.publish(EventChanged, e.healthLocked())
}
