package wire

import (
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager/record"
)

// TestSpecRoundTrip converts random specs with every field set to their
// PluginSpec and back: nothing is lost or changed.
func TestSpecRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	d := func() time.Duration { return time.Duration(1+r.IntN(3600)) * time.Second }
	lim := func() record.FailureLimit { return record.FailureLimit{Threshold: r.IntN(9), Window: d()} }
	for i := range 500 {
		s := record.Spec{
			Name: "p", Binary: "bin/p", Args: []string{"-a", "b"}, Env: map[string]string{"K": "v"},
			SHA256: strings.Repeat("0f", 32), Config: []byte("cfg"), StartTimeout: d(), ReadyTimeout: d(),
			Handshake:    &record.Handshake{ProtocolVersion: uint(1 + r.IntN(5)), MagicCookieKey: "K", MagicCookieValue: "V"},
			ReadyService: "svc",
			Resources:    record.Resources{MemoryMax: int64(1+r.IntN(100)) << 20, PidsMax: int64(r.IntN(100)), CPUMax: "50000 100000"},
			Policy: record.HealthPolicy{
				PanicThreshold: r.IntN(9), PanicWindow: d(), Panics: lim(), Crashes: lim(), Hangs: lim(), Timeouts: lim(), StartFailures: lim(),
				LivenessInterval: d(), LivenessFailures: r.IntN(9), RestartLimit: r.IntN(9), RestartPeriod: d(),
				BackoffInitial: d(), BackoffMax: d(), OnUnhealthy: record.Action(r.IntN(3)),
			},
		}
		back, err := Spec(SpecProto(s))
		if err != nil {
			t.Fatalf("spec %d: %v", i, err)
		}
		if !reflect.DeepEqual(back, s) {
			t.Fatalf("spec %d changed:\n%+v\n%+v", i, s, back)
		}
	}
}

// TestSpecProtoSetsEveryField: a spec with every field set leaves no field
// of PluginSpec unset, so a field added to the API without a conversion
// fails here.
func TestSpecProtoSetsEveryField(t *testing.T) {
	s := record.Spec{
		Name: "p", Binary: "b", Args: []string{"a"}, Env: map[string]string{"K": "v"}, SHA256: strings.Repeat("0f", 32),
		Config: []byte("c"), StartTimeout: time.Second, ReadyTimeout: time.Second,
		Handshake: &record.Handshake{ProtocolVersion: 1, MagicCookieKey: "K", MagicCookieValue: "V"}, ReadyService: "s",
		Resources: record.Resources{MemoryMax: 1 << 20, PidsMax: 1, CPUMax: "1000 1000"},
		Policy: record.HealthPolicy{PanicThreshold: 1, PanicWindow: time.Second, LivenessInterval: time.Second, LivenessFailures: 1,
			RestartLimit: 1, RestartPeriod: time.Second, BackoffInitial: time.Second, BackoffMax: time.Second, OnUnhealthy: record.ActionStop,
			Panics: record.FailureLimit{Threshold: 1, Window: time.Second}, Crashes: record.FailureLimit{Threshold: 1, Window: time.Second},
			Hangs: record.FailureLimit{Threshold: 1, Window: time.Second}, Timeouts: record.FailureLimit{Threshold: 1, Window: time.Second},
			StartFailures: record.FailureLimit{Threshold: 1, Window: time.Second}},
	}
	var unset []string
	var walk func(m protoreflect.Message, prefix string)
	walk = func(m protoreflect.Message, prefix string) {
		fields := m.Descriptor().Fields()
		for i := range fields.Len() {
			f := fields.Get(i)
			if !m.Has(f) {
				unset = append(unset, prefix+string(f.Name()))
				continue
			}
			if f.Message() != nil && !f.IsList() && !f.IsMap() && f.Message().FullName() != "google.protobuf.Duration" {
				walk(m.Get(f).Message(), prefix+string(f.Name())+".")
			}
		}
	}
	walk(SpecProto(s).ProtoReflect(), "")
	if len(unset) > 0 {
		t.Fatalf("PluginSpec fields the conversion does not write: %v", unset)
	}
}

// TestSpecRefusesMalformedFields names the field.
func TestSpecRefusesMalformedFields(t *testing.T) {
	if _, err := Spec(nil); err == nil || !strings.Contains(err.Error(), "spec") {
		t.Fatalf("nil spec: %v", err)
	}
	bad := &pb.PluginSpec{Name: "p", Binary: "b", HealthPolicy: &pb.HealthPolicy{UnhealthyAction: 42}}
	if _, err := Spec(bad); err == nil || !strings.Contains(err.Error(), "unhealthy_action") {
		t.Fatalf("unknown action: %v", err)
	}
}
