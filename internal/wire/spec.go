// Package wire converts the manager's durable data (package record: specs)
// and times to and from their protobuf messages, for the places they cross
// a boundary: the API (package server), the store's records (package
// store), the fleet and the handover. Health records and events are
// converted by internal/healthwire, which needs the manager's runtime types.
package wire

import (
	"fmt"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager/record"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Duration converts an optional Duration field; unset is 0. A malformed or
// negative one is an *record.InvalidError naming field.
func Duration(field string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, &record.InvalidError{Field: field, Reason: err.Error()}
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, &record.InvalidError{Field: field, Reason: fmt.Sprintf("%v is negative", v)}
	}
	return v, nil
}

// Spec converts a PluginSpec of the API (or of a stored record) to the
// manager's Spec; a malformed field is an *record.InvalidError. The spec's
// own rules are checked later, by the manager (Spec.Validate).
func Spec(s *pb.PluginSpec) (record.Spec, error) {
	if s == nil {
		return record.Spec{}, &record.InvalidError{Field: "spec", Reason: "required"}
	}
	st, err := Duration("spec.start_timeout", s.GetStartTimeout())
	if err != nil {
		return record.Spec{}, err
	}
	rt, err := Duration("spec.ready_timeout", s.GetReadyTimeout())
	if err != nil {
		return record.Spec{}, err
	}
	spec := record.Spec{
		Name:         s.GetName(),
		Binary:       s.GetBinary(),
		Args:         s.GetArgs(),
		Env:          s.GetEnv(),
		SHA256:       s.GetSha256(),
		Config:       s.GetConfig(),
		StartTimeout: st,
		ReadyService: s.GetReadyService(),
		ReadyTimeout: rt,
	}
	if r := s.GetResources(); r != nil {
		spec.Resources = record.Resources{
			MemoryMax: int64(min(r.GetMemoryMaxBytes(), 1<<62)),
			PidsMax:   int64(r.GetPidsMax()),
			CPUMax:    r.GetCpuMax(),
		}
	}
	if h := s.GetHandshake(); h != nil {
		spec.Handshake = &record.Handshake{ProtocolVersion: uint(h.GetProtocolVersion()), MagicCookieKey: h.GetMagicCookieKey(), MagicCookieValue: h.GetMagicCookieValue()}
	}
	if p := s.GetHealthPolicy(); p != nil {
		var ds [5]time.Duration
		for i, f := range []struct {
			name string
			d    *durationpb.Duration
		}{
			{"panic_window", p.GetPanicWindow()}, {"restart_period", p.GetRestartPeriod()},
			{"backoff_initial", p.GetBackoffInitial()}, {"backoff_max", p.GetBackoffMax()},
			{"liveness_interval", p.GetLivenessInterval()},
		} {
			if ds[i], err = Duration("spec.health_policy."+f.name, f.d); err != nil {
				return record.Spec{}, err
			}
		}
		spec.Policy = record.HealthPolicy{
			PanicThreshold:   int(min(p.GetPanicThreshold(), 1<<20)),
			PanicWindow:      ds[0],
			RestartLimit:     int(min(p.GetRestartLimit(), 1<<20)),
			RestartPeriod:    ds[1],
			BackoffInitial:   ds[2],
			BackoffMax:       ds[3],
			LivenessInterval: ds[4],
			LivenessFailures: int(min(p.GetLivenessFailures(), 1<<20)),
		}
		for _, l := range []struct {
			name string
			in   *pb.FailureLimit
			out  *record.FailureLimit
		}{
			{"panics", p.GetPanics(), &spec.Policy.Panics}, {"crashes", p.GetCrashes(), &spec.Policy.Crashes},
			{"hangs", p.GetHangs(), &spec.Policy.Hangs}, {"timeouts", p.GetTimeouts(), &spec.Policy.Timeouts},
			{"start_failures", p.GetStartFailures(), &spec.Policy.StartFailures},
		} {
			if l.in == nil {
				continue
			}
			w, err := Duration("spec.health_policy."+l.name+".window", l.in.GetWindow())
			if err != nil {
				return record.Spec{}, err
			}
			*l.out = record.FailureLimit{Threshold: int(min(l.in.GetThreshold(), 1<<20)), Window: w}
		}
		switch p.GetUnhealthyAction() {
		case pb.UnhealthyAction_UNHEALTHY_ACTION_UNSPECIFIED, pb.UnhealthyAction_UNHEALTHY_ACTION_NONE:
			spec.Policy.OnUnhealthy = record.ActionNone
		case pb.UnhealthyAction_UNHEALTHY_ACTION_RESTART:
			spec.Policy.OnUnhealthy = record.ActionRestart
		case pb.UnhealthyAction_UNHEALTHY_ACTION_STOP:
			spec.Policy.OnUnhealthy = record.ActionStop
		default:
			return record.Spec{}, &record.InvalidError{Field: "spec.health_policy.unhealthy_action", Reason: fmt.Sprintf("unknown value %d", p.GetUnhealthyAction())}
		}
	}
	return spec, nil
}

// SpecProto converts a manager Spec to its PluginSpec.
func SpecProto(s record.Spec) *pb.PluginSpec {
	out := &pb.PluginSpec{
		Name:   s.Name,
		Binary: s.Binary,
		Args:   s.Args,
		Env:    s.Env,
		Sha256: s.SHA256,
		Config: s.Config,

		ReadyService: s.ReadyService,
	}
	if h := s.Handshake; h != nil {
		out.Handshake = &pb.Handshake{ProtocolVersion: uint32(h.ProtocolVersion), MagicCookieKey: h.MagicCookieKey, MagicCookieValue: h.MagicCookieValue}
	}
	if s.StartTimeout > 0 {
		out.StartTimeout = durationpb.New(s.StartTimeout)
	}
	if s.ReadyTimeout > 0 {
		out.ReadyTimeout = durationpb.New(s.ReadyTimeout)
	}
	if r := s.Resources; r != (record.Resources{}) {
		out.Resources = &pb.Resources{MemoryMaxBytes: uint64(r.MemoryMax), PidsMax: uint32(r.PidsMax), CpuMax: r.CPUMax}
	}
	p := s.Policy
	if p != (record.HealthPolicy{}) {
		out.HealthPolicy = &pb.HealthPolicy{
			PanicThreshold: uint32(p.PanicThreshold),
			RestartLimit:   uint32(p.RestartLimit),
		}
		// None is written UNSPECIFIED (both mean none): one spelling, so
		// that a spec applied without an action reads back the same.
		if p.OnUnhealthy != record.ActionNone {
			out.HealthPolicy.UnhealthyAction = pb.UnhealthyAction(int32(p.OnUnhealthy) + 1)
		}
		for _, f := range []struct {
			d   time.Duration
			dst **durationpb.Duration
		}{
			{p.PanicWindow, &out.HealthPolicy.PanicWindow}, {p.RestartPeriod, &out.HealthPolicy.RestartPeriod},
			{p.BackoffInitial, &out.HealthPolicy.BackoffInitial}, {p.BackoffMax, &out.HealthPolicy.BackoffMax},
			{p.LivenessInterval, &out.HealthPolicy.LivenessInterval},
		} {
			if f.d > 0 {
				*f.dst = durationpb.New(f.d)
			}
		}
		out.HealthPolicy.LivenessFailures = uint32(p.LivenessFailures)
		for _, l := range []struct {
			in  record.FailureLimit
			out **pb.FailureLimit
		}{
			{p.Panics, &out.HealthPolicy.Panics}, {p.Crashes, &out.HealthPolicy.Crashes}, {p.Hangs, &out.HealthPolicy.Hangs},
			{p.Timeouts, &out.HealthPolicy.Timeouts}, {p.StartFailures, &out.HealthPolicy.StartFailures},
		} {
			if l.in != (record.FailureLimit{}) {
				*l.out = &pb.FailureLimit{Threshold: uint32(l.in.Threshold)}
				if l.in.Window > 0 {
					(*l.out).Window = durationpb.New(l.in.Window)
				}
			}
		}
	}
	return out
}
