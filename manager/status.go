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
	// PanicsInWindow counts the panics and crashes of the current
	// generation within the policy's panic window (the panic_threshold
	// rule); LifetimePanics and Crashes count recovered panics and crashes
	// over all generations; LastPanic is the last panic (or crash with a
	// panic message). Failures has every class's counts.
	PanicsInWindow int
	LifetimePanics uint64
	Crashes        uint64
	Restarts       int
	LastPanic      *PanicRecord
	Failures       []FailureCount
	// Reason says why the plugin is in State; empty when SERVING.
	Reason   string
	Since    time.Time
	Revision uint64
	// Bake is the current or last bake of a reload with a bake period.
	Bake *BakeStatus
}

// PanicRecord is the last panic of a plugin.
type PanicRecord struct {
	Message     string
	Fingerprint string
	Time        time.Time
	Generation  uint64
}

// status is the plugin's Status. The protocol of a plugin with no running
// generation is resolved again (Config.Protocol), outside e.mu.
func (m *Manager) status(e *entry) Status {
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
		Spec:       e.spec.Clone(),
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
	} else {
		st.Protocol = m.protocolFor(&st.Spec).Name
	}
	return st
}

// healthLocked builds the health record; e.mu is held.
func (e *entry) healthLocked() Health {
	now := time.Now()
	p := e.spec.Policy.WithDefaults()
	h := Health{
		Name:           e.name,
		State:          e.state,
		Generation:     e.generation,
		Restarts:       e.restarts,
		Reason:         e.reason,
		Since:          e.since,
		Revision:       e.revision,
		PanicsInWindow: e.faults.combinedInWindow(now, &p),
		LifetimePanics: e.faults.lifetime[FailurePanic],
		Crashes:        e.faults.lifetime[FailureCrash],
		Failures:       e.faults.counts(now, &p),
	}
	if e.faults.last != nil {
		r := *e.faults.last
		h.LastPanic = &r
	}
	if e.bake != nil {
		b := e.bake.status()
		h.Bake = &b
	}
	return h
}
