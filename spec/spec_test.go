package spec_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/spec"
)

// TestApplyAfterGetIsANoOp is the report that made package spec: a health
// policy with only panic_threshold, read back from the daemon with the
// unhealthy action spelled NONE, differed from the file, so every apply
// reloaded the plugin.
func TestApplyAfterGetIsANoOp(t *testing.T) {
	file := &pb.PluginSpec{Name: "echo", Binary: "echo", HealthPolicy: &pb.HealthPolicy{PanicThreshold: 3}}
	daemon, err := spec.Canonical(file)
	if err != nil {
		t.Fatal(err)
	}
	if !spec.Equal(file, daemon) {
		t.Fatalf("the file and what the daemon reports differ: %v", spec.Diff(daemon, file))
	}
	if d := spec.Diff(daemon, file); len(d) != 0 {
		t.Fatalf("diff of equal specs: %v", d)
	}
	explicit := proto.Clone(file).(*pb.PluginSpec)
	explicit.HealthPolicy.UnhealthyAction = pb.UnhealthyAction_UNHEALTHY_ACTION_NONE
	explicit.StartTimeout = durationpb.New(0)
	if !spec.Equal(explicit, file) || spec.Digest(mustCanonical(t, explicit)) != spec.Digest(daemon) {
		t.Fatalf("NONE and a zero start_timeout spelled out are not the same spec")
	}
}

// TestDiffNamesTheChange: a real change is a difference, field by field.
func TestDiffNamesTheChange(t *testing.T) {
	a := &pb.PluginSpec{Name: "echo", Binary: "echo", Env: map[string]string{"V": "1"}}
	b := &pb.PluginSpec{Name: "echo", Binary: "echo", Env: map[string]string{"V": "2"}, Args: []string{"-x"}}
	if spec.Equal(a, b) {
		t.Fatal("different specs are equal")
	}
	got := spec.Diff(a, b)
	want := []string{`args: (unset) → ["-x"]`, `env: {"V":"1"} → {"V":"2"}`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestCanonicalRefusesBadSpecs names the field.
func TestCanonicalRefusesBadSpecs(t *testing.T) {
	for _, tt := range []struct {
		s     *pb.PluginSpec
		field string
	}{
		{&pb.PluginSpec{Name: "Bad", Binary: "echo"}, "name"},
		{&pb.PluginSpec{Name: "ok", Binary: "../x"}, "binary"},
		{&pb.PluginSpec{Name: "ok", Binary: "echo", StartTimeout: durationpb.New(-time.Second)}, "start_timeout"},
	} {
		if _, err := spec.Canonical(tt.s); err == nil || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%v: %v, want an error naming %s", tt.s, err, tt.field)
		}
	}
}

// TestCanonicalProperties: for random valid specs, the canonical form is a
// fixed point, means the same as the spec, and its digest is stable.
func TestCanonicalProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		s := randomSpec(r)
		c, err := spec.Canonical(s)
		if err != nil {
			t.Fatalf("spec %d %v: %v", i, s, err)
		}
		cc, err := spec.Canonical(c)
		if err != nil || !proto.Equal(c, cc) {
			t.Fatalf("spec %d: not a fixed point:\n%v\n%v (%v)", i, c, cc, err)
		}
		if !spec.Equal(s, c) || len(spec.Diff(c, s)) != 0 {
			t.Fatalf("spec %d: differs from its canonical form: %v", i, spec.Diff(c, s))
		}
		if spec.Digest(c) != spec.Digest(cc) {
			t.Fatalf("spec %d: the digest moved", i)
		}
	}
}

func mustCanonical(t *testing.T, s *pb.PluginSpec) *pb.PluginSpec {
	t.Helper()
	c, err := spec.Canonical(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// randomSpec is a valid spec with random fields set, each spelled one of
// the ways a user may write it.
func randomSpec(r *rand.Rand) *pb.PluginSpec {
	dur := func(max time.Duration) *durationpb.Duration {
		switch r.IntN(3) {
		case 0:
			return nil
		case 1:
			return durationpb.New(0)
		}
		return durationpb.New(time.Duration(r.Int64N(int64(max))) + time.Millisecond)
	}
	s := &pb.PluginSpec{Name: fmt.Sprintf("p%d", r.IntN(1000)), Binary: []string{"echo", "bin/echo", "kv"}[r.IntN(3)]}
	if r.IntN(2) == 0 {
		for range r.IntN(4) {
			s.Args = append(s.Args, fmt.Sprintf("-a%d", r.IntN(9)))
		}
	}
	if r.IntN(2) == 0 {
		s.Env = map[string]string{}
		for range r.IntN(4) {
			s.Env[fmt.Sprintf("K%d", r.IntN(9))] = fmt.Sprint(r.IntN(9))
		}
	}
	if r.IntN(3) == 0 {
		s.Sha256 = strings.Repeat("ab", 32)
	}
	s.StartTimeout, s.ReadyTimeout = dur(time.Minute), dur(time.Minute)
	foreign := r.IntN(3) == 0
	if foreign {
		s.Handshake = &pb.Handshake{ProtocolVersion: uint32(1 + r.IntN(3)), MagicCookieKey: "COOKIE", MagicCookieValue: "v"}
		s.ReadyService = []string{"", "plugin", "grpc.health.v1.Health"}[r.IntN(3)]
	} else if r.IntN(3) == 0 {
		s.Config = []byte(fmt.Sprintf("c=%d", r.IntN(9)))
	}
	if r.IntN(2) == 0 {
		p := &pb.HealthPolicy{
			PanicThreshold: uint32(r.IntN(5)), RestartLimit: uint32(r.IntN(5)),
			PanicWindow: dur(time.Hour), RestartPeriod: dur(time.Hour), BackoffInitial: dur(time.Second), BackoffMax: dur(time.Minute),
			UnhealthyAction: pb.UnhealthyAction(r.IntN(4)),
		}
		if r.IntN(2) == 0 {
			p.Panics = &pb.FailureLimit{Threshold: uint32(r.IntN(3)), Window: dur(time.Hour)}
		}
		if r.IntN(3) == 0 {
			p.LivenessInterval = durationpb.New(time.Second * time.Duration(1+r.IntN(5)))
			p.LivenessFailures = uint32(r.IntN(4))
		}
		s.HealthPolicy = p
	}
	if r.IntN(4) == 0 {
		s.Resources = &pb.Resources{PidsMax: uint32(r.IntN(100))}
	}
	return s
}
