package server

import (
	"context"
	"fmt"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	protobuf "google.golang.org/protobuf/proto"
)

// control implements PluginControlService: validate and map, then call the
// manager; no lifecycle decisions here.
type control struct {
	pb.UnimplementedPluginControlServiceServer
	s *Server
}

func (c *control) Load(ctx context.Context, req *pb.LoadRequest) (*pb.LoadResponse, error) {
	spec, err := specFromProto(req.GetSpec())
	if err != nil {
		return nil, err
	}
	res, err := c.s.m.Load(ctx, spec)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.LoadResponse{Plugin: statusToProto(res.Status), Report: reportToProto(res.Report)}, nil
}

func (c *control) Reload(ctx context.Context, req *pb.ReloadRequest) (*pb.ReloadResponse, error) {
	drain, err := duration("drain_timeout", req.GetDrainTimeout())
	if err != nil {
		return nil, err
	}
	mr := manager.ReloadRequest{
		Name:               req.GetName(),
		ExpectedGeneration: req.GetExpectedGeneration(),
		ValidateOnly:       req.GetValidateOnly(),
		DrainTimeout:       drain,
	}
	if b := req.GetBake(); b != nil {
		// Set: 0s means no bake, even when the daemon has a default.
		if mr.Bake, err = duration("bake", b); err != nil {
			return nil, err
		}
		if mr.Bake == 0 {
			mr.Bake = manager.NoBake
		}
	}
	if req.GetSpec() != nil {
		spec, err := specFromProto(req.GetSpec())
		if err != nil {
			return nil, err
		}
		mr.Spec = &spec
	}
	res, err := c.s.m.Reload(ctx, mr)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ReloadResponse{
		Plugin:             statusToProto(res.Status),
		PreviousGeneration: res.PreviousGeneration,
		Report:             reportToProto(res.Report),
	}, nil
}

func (c *control) Unload(ctx context.Context, req *pb.UnloadRequest) (*pb.UnloadResponse, error) {
	drain, err := duration("drain_timeout", req.GetDrainTimeout())
	if err != nil {
		return nil, err
	}
	st, err := c.s.m.Unload(ctx, req.GetName(), drain)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.UnloadResponse{Plugin: statusToProto(st)}, nil
}

func (c *control) ListPlugins(context.Context, *pb.ListPluginsRequest) (*pb.ListPluginsResponse, error) {
	list := c.s.m.List()
	out := &pb.ListPluginsResponse{Plugins: make([]*pb.PluginStatus, 0, len(list))}
	for _, st := range list {
		out.Plugins = append(out.Plugins, statusToProto(st))
	}
	return out, nil
}

// healthAll is the response of Health for all plugins at one revision.
// Nothing changes at the same revision, so every caller until the next
// change gets the same message (never modified after it is built; grpc-go
// only reads it to marshal it, which is safe concurrently).
// The codec sends enc, its encoding made once, for every caller.
type healthAll struct {
	rev  uint64
	resp *pb.HealthResponse
	enc  []byte
}

func (c *control) Health(_ context.Context, req *pb.HealthRequest) (*pb.HealthResponse, error) {
	all := len(req.GetNames()) == 0
	if all {
		if h := c.s.healthAll.Load(); h != nil && h.rev == c.s.m.Revision() {
			return h.resp, nil
		}
	}
	hs, rev, err := c.s.m.Health(req.GetNames())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.HealthResponse{Revision: rev, Plugins: make([]*pb.PluginHealth, 0, len(hs))}
	for _, h := range hs {
		out.Plugins = append(out.Plugins, healthToProto(h))
	}
	if all {
		enc, err := protobuf.Marshal(out)
		if err != nil {
			enc = nil // the codec marshals it per call
		}
		c.s.healthAll.Store(&healthAll{rev: rev, resp: out, enc: enc})
	}
	return out, nil
}

func (c *control) ListAudit(_ context.Context, req *pb.ListAuditRequest) (*pb.ListAuditResponse, error) {
	if req.GetLimit() > 10000 {
		return nil, invalid("limit", fmt.Sprintf("%d is more than 10000", req.GetLimit()))
	}
	recs, err := c.s.m.Audit(req.GetName(), req.GetBeforeSequence(), int(req.GetLimit()))
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.ListAuditResponse{Records: make([]*pb.AuditRecord, 0, len(recs))}
	for _, r := range recs {
		out.Records = append(out.Records, &pb.AuditRecord{
			Sequence:      r.Sequence,
			Time:          timestamp(r.Time),
			Caller:        r.Caller,
			Action:        r.Action,
			Plugin:        r.Plugin,
			OldGeneration: r.OldGeneration,
			NewGeneration: r.NewGeneration,
			BinarySha256:  r.BinarySHA256,
			Binary:        r.Binary,
			Outcome:       r.Outcome,
			Error:         r.Error,
		})
	}
	return out, nil
}
