package manager

import (
	"time"
)

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
		st.Protocol = m.protocolName(&st.Spec)
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
