// Package healthwire converts the manager's health records and events to
// and from their protobuf messages, for the API (package server) and the
// handover of a reload in place (internal/handover).
package healthwire

import (
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/wire"
	"github.com/plugincontrol/plugincontrol/manager"
)

// HealthProto converts a health record to its PluginHealth.
func HealthProto(h manager.Health) *pb.PluginHealth {
	out := &pb.PluginHealth{
		Name:           h.Name,
		State:          pb.PluginState(h.State),
		Generation:     h.Generation,
		PanicsInWindow: uint32(h.PanicsInWindow),
		LifetimePanics: h.LifetimePanics,
		Crashes:        h.Crashes,
		Restarts:       uint32(h.Restarts),
		Reason:         h.Reason,
		Since:          wire.Timestamp(h.Since),
		Revision:       h.Revision,
	}
	if p := h.LastPanic; p != nil {
		out.LastPanic = PanicProto(p)
	}
	for _, f := range h.Failures {
		out.Failures = append(out.Failures, &pb.FailureCount{Class: pb.FailureClass(f.Class), InWindow: uint32(f.InWindow), Lifetime: f.Lifetime})
	}
	if b := h.Bake; b != nil {
		out.Bake = BakeProto(*b)
	}
	return out
}

// Health converts a PluginHealth back (a handover carries the hub's).
func Health(h *pb.PluginHealth) manager.Health {
	out := manager.Health{
		Name:           h.GetName(),
		State:          manager.State(h.GetState()),
		Generation:     h.GetGeneration(),
		PanicsInWindow: int(h.GetPanicsInWindow()),
		LifetimePanics: h.GetLifetimePanics(),
		Crashes:        h.GetCrashes(),
		Restarts:       int(h.GetRestarts()),
		Reason:         h.GetReason(),
		Since:          wire.Time(h.GetSince()),
		Revision:       h.GetRevision(),
		LastPanic:      Panic(h.GetLastPanic()),
	}
	for _, f := range h.GetFailures() {
		out.Failures = append(out.Failures, manager.FailureCount{Class: manager.FailureClass(f.GetClass()), InWindow: int(f.GetInWindow()), Lifetime: f.GetLifetime()})
	}
	if b := h.GetBake(); b != nil {
		s := Bake(b)
		out.Bake = &s
	}
	return out
}

// PanicProto converts a panic record.
func PanicProto(p *manager.PanicRecord) *pb.PanicRecord {
	if p == nil {
		return nil
	}
	return &pb.PanicRecord{Message: p.Message, Fingerprint: p.Fingerprint, Time: wire.Timestamp(p.Time), Generation: p.Generation}
}

// Panic converts a PanicRecord back; nil stays nil.
func Panic(p *pb.PanicRecord) *manager.PanicRecord {
	if p == nil {
		return nil
	}
	return &manager.PanicRecord{Message: p.GetMessage(), Fingerprint: p.GetFingerprint(), Time: wire.Time(p.GetTime()), Generation: p.GetGeneration()}
}

// BakeProto converts a bake's status.
func BakeProto(b manager.BakeStatus) *pb.Bake {
	return &pb.Bake{Generation: b.Generation, PreviousGeneration: b.PreviousGeneration, Until: wire.Timestamp(b.Until),
		Result: pb.BakeResult(b.Result), Reason: b.Reason, RevertedTo: b.RevertedTo}
}

// Bake converts a Bake back.
func Bake(b *pb.Bake) manager.BakeStatus {
	return manager.BakeStatus{Generation: b.GetGeneration(), PreviousGeneration: b.GetPreviousGeneration(), Until: wire.Time(b.GetUntil()),
		Result: manager.BakeResult(b.GetResult()), Reason: b.GetReason(), RevertedTo: b.GetRevertedTo()}
}

// EventProto converts a health event.
func EventProto(e manager.Event) *pb.HealthEvent {
	ev := &pb.HealthEvent{Type: pb.HealthEventType(e.Type), Revision: e.Revision, Reset_: e.Reset}
	if e.Type != manager.EventSynced && e.Type != manager.EventBookmark {
		ev.Health = HealthProto(e.Health)
	}
	return ev
}

// Event converts a HealthEvent back.
func Event(e *pb.HealthEvent) manager.Event {
	out := manager.Event{Type: manager.EventType(e.GetType()), Revision: e.GetRevision(), Reset: e.GetReset_()}
	if h := e.GetHealth(); h != nil {
		out.Health = Health(h)
	}
	return out
}
