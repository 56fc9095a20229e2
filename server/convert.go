package server

import (
	"fmt"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// duration converts an optional Duration field; unset is 0.
func duration(field string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalid(field, err.Error())
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, invalid(field, fmt.Sprintf("%v is negative", v))
	}
	return v, nil
}

func specFromProto(s *pb.PluginSpec) (manager.Spec, error) {
	if s == nil {
		return manager.Spec{}, invalid("spec", "required")
	}
	st, err := duration("spec.start_timeout", s.GetStartTimeout())
	if err != nil {
		return manager.Spec{}, err
	}
	spec := manager.Spec{
		Name:         s.GetName(),
		Binary:       s.GetBinary(),
		Args:         s.GetArgs(),
		Env:          s.GetEnv(),
		SHA256:       s.GetSha256(),
		Config:       s.GetConfig(),
		StartTimeout: st,
		ReadyService: s.GetReadyService(),
	}
	if h := s.GetHandshake(); h != nil {
		spec.Handshake = &manager.Handshake{ProtocolVersion: uint(h.GetProtocolVersion()), MagicCookieKey: h.GetMagicCookieKey(), MagicCookieValue: h.GetMagicCookieValue()}
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
			if ds[i], err = duration("spec.health_policy."+f.name, f.d); err != nil {
				return manager.Spec{}, err
			}
		}
		spec.Policy = manager.HealthPolicy{
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
			out  *manager.FailureLimit
		}{
			{"panics", p.GetPanics(), &spec.Policy.Panics}, {"crashes", p.GetCrashes(), &spec.Policy.Crashes},
			{"hangs", p.GetHangs(), &spec.Policy.Hangs}, {"timeouts", p.GetTimeouts(), &spec.Policy.Timeouts},
			{"start_failures", p.GetStartFailures(), &spec.Policy.StartFailures},
		} {
			if l.in == nil {
				continue
			}
			w, err := duration("spec.health_policy."+l.name+".window", l.in.GetWindow())
			if err != nil {
				return manager.Spec{}, err
			}
			*l.out = manager.FailureLimit{Threshold: int(min(l.in.GetThreshold(), 1<<20)), Window: w}
		}
		switch p.GetUnhealthyAction() {
		case pb.UnhealthyAction_UNHEALTHY_ACTION_UNSPECIFIED, pb.UnhealthyAction_UNHEALTHY_ACTION_NONE:
			spec.Policy.OnUnhealthy = manager.ActionNone
		case pb.UnhealthyAction_UNHEALTHY_ACTION_RESTART:
			spec.Policy.OnUnhealthy = manager.ActionRestart
		case pb.UnhealthyAction_UNHEALTHY_ACTION_STOP:
			spec.Policy.OnUnhealthy = manager.ActionStop
		default:
			return manager.Spec{}, invalid("spec.health_policy.unhealthy_action", fmt.Sprintf("unknown value %d", p.GetUnhealthyAction()))
		}
	}
	return spec, nil
}

func specToProto(s manager.Spec) *pb.PluginSpec {
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
	p := s.Policy
	if p != (manager.HealthPolicy{}) {
		out.HealthPolicy = &pb.HealthPolicy{
			PanicThreshold:  uint32(p.PanicThreshold),
			RestartLimit:    uint32(p.RestartLimit),
			UnhealthyAction: pb.UnhealthyAction(int32(p.OnUnhealthy) + 1),
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
			in  manager.FailureLimit
			out **pb.FailureLimit
		}{
			{p.Panics, &out.HealthPolicy.Panics}, {p.Crashes, &out.HealthPolicy.Crashes}, {p.Hangs, &out.HealthPolicy.Hangs},
			{p.Timeouts, &out.HealthPolicy.Timeouts}, {p.StartFailures, &out.HealthPolicy.StartFailures},
		} {
			if l.in != (manager.FailureLimit{}) {
				*l.out = &pb.FailureLimit{Threshold: uint32(l.in.Threshold)}
				if l.in.Window > 0 {
					(*l.out).Window = durationpb.New(l.in.Window)
				}
			}
		}
	}
	return out
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func statusToProto(s manager.Status) *pb.PluginStatus {
	return &pb.PluginStatus{
		Name:       s.Name,
		Generation: s.Generation,
		State:      pb.PluginState(s.State),
		Pid:        int64(s.PID),
		Binary:     s.Binary,
		Sha256:     s.SHA256,
		Version:    s.Version,
		StartedAt:  timestamp(s.StartedAt),
		Restarts:   uint32(s.Restarts),
		LastError:  s.LastError,
		Spec:       specToProto(s.Spec),
		PluginName: s.PluginName,
		Endpoint:   s.Endpoint,
		Services:   s.Services,
		Protocol:   s.Protocol,
	}
}

func stageToProto(s manager.Stage) pb.CandidateStage { return rpcerr.Stage(s) }

func reportToProto(r *manager.Report) *pb.CandidateReport {
	if r == nil {
		return nil
	}
	out := &pb.CandidateReport{
		Total:         durationpb.New(r.Total),
		CandidatePid:  int64(r.CandidatePID),
		Version:       r.Version,
		DrainedCalls:  uint32(r.DrainedCalls),
		DrainTimedOut: r.DrainTimedOut,
		Notes:         r.Notes,
	}
	for _, s := range r.Stages {
		out.Stages = append(out.Stages, &pb.StageTiming{Stage: stageToProto(s.Stage), Duration: durationpb.New(s.Duration)})
	}
	return out
}

func healthToProto(h manager.Health) *pb.PluginHealth {
	out := &pb.PluginHealth{
		Name:           h.Name,
		State:          pb.PluginState(h.State),
		Generation:     h.Generation,
		PanicsInWindow: uint32(h.PanicsInWindow),
		LifetimePanics: h.LifetimePanics,
		Crashes:        h.Crashes,
		Restarts:       uint32(h.Restarts),
		Reason:         h.Reason,
		Since:          timestamp(h.Since),
		Revision:       h.Revision,
	}
	if p := h.LastPanic; p != nil {
		out.LastPanic = &pb.PanicRecord{Message: p.Message, Fingerprint: p.Fingerprint, Time: timestamp(p.Time), Generation: p.Generation}
	}
	for _, f := range h.Failures {
		out.Failures = append(out.Failures, &pb.FailureCount{Class: pb.FailureClass(f.Class), InWindow: uint32(f.InWindow), Lifetime: f.Lifetime})
	}
	if b := h.Bake; b != nil {
		out.Bake = &pb.Bake{Generation: b.Generation, PreviousGeneration: b.PreviousGeneration, Until: timestamp(b.Until),
			Result: pb.BakeResult(b.Result), Reason: b.Reason, RevertedTo: b.RevertedTo}
	}
	return out
}

// compactEvent reduces the health in r to HEALTH_VIEW_COMPACT: name, state,
// generation and revision.
func compactEvent(r *pb.WatchHealthResponse) {
	if h := r.GetEvent().GetHealth(); h != nil {
		r.Event.Health = &pb.PluginHealth{Name: h.GetName(), State: h.GetState(), Generation: h.GetGeneration(), Revision: h.GetRevision()}
	}
}

func eventToProto(e manager.Event) *pb.WatchHealthResponse {
	ev := &pb.HealthEvent{Type: pb.HealthEventType(e.Type), Revision: e.Revision, Reset_: e.Reset}
	if e.Type != manager.EventSynced && e.Type != manager.EventBookmark {
		ev.Health = healthToProto(e.Health)
	}
	return &pb.WatchHealthResponse{Event: ev}
}
