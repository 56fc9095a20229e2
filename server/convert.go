package server

import (
	"fmt"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/healthwire"
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
	"github.com/plugincontrol/plugincontrol/internal/wire"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/protobuf/types/known/durationpb"
)

func statusToProto(s manager.Status) *pb.PluginStatus {
	return &pb.PluginStatus{
		Name:       s.Name,
		Generation: s.Generation,
		State:      pb.PluginState(s.State),
		Pid:        int64(s.PID),
		Binary:     s.Binary,
		Sha256:     s.SHA256,
		Version:    s.Version,
		StartedAt:  wire.Timestamp(s.StartedAt),
		Restarts:   uint32(s.Restarts),
		LastError:  s.LastError,
		Spec:       wire.SpecProto(s.Spec),
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

func healthToProto(h manager.Health) *pb.PluginHealth { return healthwire.HealthProto(h) }

// isCompact reports whether a request's view is HEALTH_VIEW_COMPACT (false
// for the full view, which is the default), or InvalidArgument naming the
// view field when v is none of them.
func isCompact(v pb.HealthView) (bool, error) {
	switch v {
	case pb.HealthView_HEALTH_VIEW_UNSPECIFIED, pb.HealthView_HEALTH_VIEW_FULL:
		return false, nil
	case pb.HealthView_HEALTH_VIEW_COMPACT:
		return true, nil
	}
	return false, invalid("view", fmt.Sprintf("unknown health view %d", int32(v)))
}

// compactHealth is h in HEALTH_VIEW_COMPACT: name, state, generation and
// revision.
func compactHealth(h *pb.PluginHealth) *pb.PluginHealth {
	return &pb.PluginHealth{Name: h.GetName(), State: h.GetState(), Generation: h.GetGeneration(), Revision: h.GetRevision()}
}

// compactEvent reduces the health in r to HEALTH_VIEW_COMPACT.
func compactEvent(r *pb.WatchHealthResponse) {
	if h := r.GetEvent().GetHealth(); h != nil {
		r.Event.Health = compactHealth(h)
	}
}

func eventToProto(e manager.Event) *pb.WatchHealthResponse {
	return &pb.WatchHealthResponse{Event: healthwire.EventProto(e)}
}

// duration converts an optional Duration field of a request (unset is 0)
// to a status error naming it when malformed.
func duration(field string, d *durationpb.Duration) (time.Duration, error) {
	v, err := wire.Duration(field, d)
	return v, toStatus(err)
}

// specFromProto converts a request's spec, with InvalidArgument errors.
func specFromProto(s *pb.PluginSpec) (manager.Spec, error) {
	spec, err := wire.Spec(s)
	return spec, toStatus(err)
}
