package healthwire

import (
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
)

// TestHealthRoundTrip converts health records and events both ways.
func TestHealthRoundTrip(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 1, 2, 3, 4, time.UTC)
	h := manager.Health{
		Name: "p", State: manager.StateDegraded, Generation: 3, PanicsInWindow: 1, LifetimePanics: 2, Crashes: 1, Restarts: 4,
		LastPanic: &manager.PanicRecord{Message: "boom", Fingerprint: "f", Time: t0, Generation: 3},
		Failures:  []manager.FailureCount{{Class: manager.FailurePanic, InWindow: 1, Lifetime: 2}},
		Reason:    "panic", Since: t0, Revision: 9,
		Bake: &manager.BakeStatus{Generation: 3, PreviousGeneration: 2, Until: t0, Result: manager.BakeBaking, Reason: "r", RevertedTo: 4},
	}
	if back := Health(HealthProto(h)); !reflect.DeepEqual(back, h) {
		t.Fatalf("health changed:\n%+v\n%+v", h, back)
	}
	e := manager.Event{Type: manager.EventChanged, Revision: 9, Health: h, Reset: true}
	if back := Event(EventProto(e)); !reflect.DeepEqual(back, e) {
		t.Fatalf("event changed:\n%+v\n%+v", e, back)
	}
	synced := manager.Event{Type: manager.EventSynced, Revision: 10}
	if p := EventProto(synced); p.GetHealth() != nil || !proto.Equal(p, &pb.HealthEvent{Type: pb.HealthEventType_HEALTH_EVENT_TYPE_SYNCED, Revision: 10}) {
		t.Fatalf("SYNCED carries a health record: %v", p)
	}
}
