package server

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plugincontrol/plugincontrol/fleet"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
	"github.com/plugincontrol/plugincontrol/manager"
)

// FleetNode is this node's part in the fleet (a *fleet.Agent).
type FleetNode interface {
	// Managed reports whether the fleet manages plugin name on this node,
	// and its fleet key.
	Managed(name string) (key string, managed bool)
	// Detach and Attach stop and resume following the fleet for a plugin.
	Detach(ctx context.Context, name string) error
	Attach(ctx context.Context, name string) error
	// Fenced says why the node refuses to act on the fleet's keys ("":
	// it follows them).
	Fenced() string
	// Adopt makes the node accept the etcd it reaches as its fleet's.
	Adopt(ctx context.Context) error
}

// WithFleet serves FleetService from store and node, and refuses local
// Load, Reload and Unload of the plugins node reports as fleet-managed
// (FailedPrecondition, reason FLEET_MANAGED). Without it FleetService
// answers FailedPrecondition (reason FLEET_DISABLED).
func WithFleet(store *fleet.Store, node FleetNode) Option {
	return func(o *options) { o.fleet, o.fleetNode = store, node }
}

// fleetTimeout bounds each etcd request of FleetService, so that an
// unreachable etcd answers Unavailable rather than hanging the call.
const fleetTimeout = 5 * time.Second

// fleetService is FleetService over a fleet.Store.
type fleetService struct {
	pb.UnimplementedFleetServiceServer
	store *fleet.Store // nil: fleet disabled
	node  FleetNode
	// shutdown is closed when the server drains: WatchFleet streams end
	// with ended's status (Unavailable), to be resumed.
	shutdown <-chan struct{}
	ended    func() error
}

func (f *fleetService) check(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if f.store == nil {
		return nil, nil, rpcerr.New(codes.FailedPrecondition, rpcerr.ReasonFleetDisabled,
			"this plugind is not part of a fleet (start it with --fleet-etcd)", nil)
	}
	ctx, cancel := context.WithTimeout(ctx, fleetTimeout)
	return ctx, cancel, nil
}

// fleetError maps a fleet.Store error to a status.
func fleetError(err error) error {
	var inv *manager.InvalidError
	switch {
	case errors.Is(err, fleet.ErrNotFound):
		return rpcerr.New(codes.NotFound, rpcerr.ReasonPluginNotFound, err.Error(), nil)
	case errors.Is(err, fleet.ErrNotManaged):
		return rpcerr.New(codes.FailedPrecondition, rpcerr.ReasonFleetNotManaged, err.Error(), nil)
	case errors.Is(err, fleet.ErrNoRollout):
		return rpcerr.New(codes.NotFound, rpcerr.ReasonPluginNotFound, err.Error(), nil)
	case errors.Is(err, fleet.ErrRolloutActive):
		return rpcerr.New(codes.FailedPrecondition, rpcerr.ReasonRolloutActive, err.Error(), nil)
	case errors.Is(err, fleet.ErrRolloutState):
		return rpcerr.New(codes.FailedPrecondition, rpcerr.ReasonRolloutState, err.Error(), nil)
	case errors.Is(err, fleet.ErrNothingToRoll):
		return rpcerr.New(codes.FailedPrecondition, rpcerr.ReasonNothingToRoll, err.Error(), nil)
	case errors.Is(err, fleet.ErrStrategy):
		return rpcerr.New(codes.InvalidArgument, rpcerr.ReasonInvalidField, err.Error(), nil)
	case errors.Is(err, fleet.ErrUnpinned):
		return rpcerr.New(codes.FailedPrecondition, rpcerr.ReasonFleetUnpinned, err.Error(), nil)
	case errors.As(err, &inv):
		return toStatus(err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return rpcerr.New(codes.Unavailable, rpcerr.ReasonFleetUnavailable, "etcd did not answer within "+fleetTimeout.String()+": "+err.Error(), nil)
	default:
		return rpcerr.New(codes.Unavailable, rpcerr.ReasonFleetUnavailable, "etcd: "+err.Error(), nil)
	}
}

// fleetCall runs fn with a context bounded by fleetTimeout, once the fleet
// is known to be enabled, and maps its error to a status (fleetError).
func fleetCall[T any](ctx context.Context, f *fleetService, fn func(context.Context) (T, error)) (T, error) {
	var zero T
	ctx, cancel, err := f.check(ctx)
	if err != nil {
		return zero, err
	}
	defer cancel()
	v, err := fn(ctx)
	if err != nil {
		return zero, fleetError(err)
	}
	return v, nil
}

// required is the InvalidArgument of a missing request field.
func required(field string) error { return &manager.InvalidError{Field: field, Reason: "required"} }

func (f *fleetService) ListNodes(ctx context.Context, _ *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	return fleetCall(ctx, f, func(ctx context.Context) (*pb.ListNodesResponse, error) {
		nodes, err := f.store.Nodes(ctx)
		return &pb.ListNodesResponse{Nodes: nodes}, err
	})
}

func (f *fleetService) FleetStatus(ctx context.Context, req *pb.FleetStatusRequest) (*pb.FleetStatusResponse, error) {
	return fleetCall(ctx, f, func(ctx context.Context) (*pb.FleetStatusResponse, error) {
		st, err := f.store.Status(ctx, req.GetPlugin())
		if err == nil && f.node != nil {
			st.Fenced = f.node.Fenced()
		}
		return st, err
	})
}

func (f *fleetService) ApplyFleetPlugin(ctx context.Context, req *pb.ApplyFleetPluginRequest) (*pb.ApplyFleetPluginResponse, error) {
	return fleetCall(ctx, f, func(ctx context.Context) (*pb.ApplyFleetPluginResponse, error) {
		if req.GetPlugin().GetSpec() == nil {
			return nil, required("plugin.spec")
		}
		p, err := f.store.Apply(ctx, req.GetPlugin(), req.GetAllowUnpinned())
		return &pb.ApplyFleetPluginResponse{Plugin: p}, err
	})
}

func (f *fleetService) DeleteFleetPlugin(ctx context.Context, req *pb.DeleteFleetPluginRequest) (*pb.DeleteFleetPluginResponse, error) {
	return fleetCall(ctx, f, func(ctx context.Context) (*pb.DeleteFleetPluginResponse, error) {
		return &pb.DeleteFleetPluginResponse{}, f.store.Delete(ctx, req.GetName())
	})
}

func (f *fleetService) StartRollout(ctx context.Context, req *pb.StartRolloutRequest) (*pb.StartRolloutResponse, error) {
	return fleetCall(ctx, f, func(ctx context.Context) (*pb.StartRolloutResponse, error) {
		if req.GetSpec() == nil {
			return nil, required("spec")
		}
		r, err := f.store.StartRollout(ctx, req.GetSpec(), req.GetStrategy(), req.GetAllowUnpinned())
		return &pb.StartRolloutResponse{Rollout: r}, err
	})
}

func (f *fleetService) GetRollout(ctx context.Context, req *pb.GetRolloutRequest) (*pb.GetRolloutResponse, error) {
	return fleetCall(ctx, f, func(ctx context.Context) (*pb.GetRolloutResponse, error) {
		r, err := f.store.GetRollout(ctx, req.GetPlugin())
		return &pb.GetRolloutResponse{Rollout: r}, err
	})
}

// change applies an operator's action to a rollout.
func (f *fleetService) change(ctx context.Context, plugin string, op fleet.RolloutOp) (*pb.Rollout, error) {
	return fleetCall(ctx, f, func(ctx context.Context) (*pb.Rollout, error) { return f.store.ChangeRollout(ctx, plugin, op) })
}

func (f *fleetService) PauseRollout(ctx context.Context, req *pb.PauseRolloutRequest) (*pb.PauseRolloutResponse, error) {
	r, err := f.change(ctx, req.GetPlugin(), fleet.Pause)
	if err != nil {
		return nil, err
	}
	return &pb.PauseRolloutResponse{Rollout: r}, nil
}

func (f *fleetService) ResumeRollout(ctx context.Context, req *pb.ResumeRolloutRequest) (*pb.ResumeRolloutResponse, error) {
	r, err := f.change(ctx, req.GetPlugin(), fleet.Resume)
	if err != nil {
		return nil, err
	}
	return &pb.ResumeRolloutResponse{Rollout: r}, nil
}

func (f *fleetService) AbortRollout(ctx context.Context, req *pb.AbortRolloutRequest) (*pb.AbortRolloutResponse, error) {
	r, err := f.change(ctx, req.GetPlugin(), fleet.Abort)
	if err != nil {
		return nil, err
	}
	return &pb.AbortRolloutResponse{Rollout: r}, nil
}

func (f *fleetService) DetachFleetPlugin(ctx context.Context, req *pb.DetachFleetPluginRequest) (*pb.DetachFleetPluginResponse, error) {
	return fleetCall(ctx, f, func(ctx context.Context) (*pb.DetachFleetPluginResponse, error) {
		return &pb.DetachFleetPluginResponse{}, f.node.Detach(ctx, req.GetName())
	})
}

func (f *fleetService) AttachFleetPlugin(ctx context.Context, req *pb.AttachFleetPluginRequest) (*pb.AttachFleetPluginResponse, error) {
	return fleetCall(ctx, f, func(ctx context.Context) (*pb.AttachFleetPluginResponse, error) {
		return &pb.AttachFleetPluginResponse{}, f.node.Attach(ctx, req.GetName())
	})
}

func (f *fleetService) AdoptFleetEtcd(ctx context.Context, _ *pb.AdoptFleetEtcdRequest) (*pb.AdoptFleetEtcdResponse, error) {
	return fleetCall(ctx, f, func(ctx context.Context) (*pb.AdoptFleetEtcdResponse, error) {
		return &pb.AdoptFleetEtcdResponse{}, f.node.Adopt(ctx)
	})
}

// fleetManaged is the refusal of a local mutation of a fleet-managed
// plugin; nil when the plugin is not managed.
func (s *Server) fleetManaged(name string) error {
	if s.opts.fleetNode == nil {
		return nil
	}
	key, ok := s.opts.fleetNode.Managed(name)
	if !ok {
		return nil
	}
	return rpcerr.New(codes.FailedPrecondition, rpcerr.ReasonFleetManaged,
		"plugin "+name+" is managed by the fleet (key "+key+"): change it with pluginctl fleet apply, or delete it there", map[string]string{"key": key})
}

// withFleetKey marks st with its fleet key when the fleet manages it.
func (s *Server) withFleetKey(st *pb.PluginStatus) *pb.PluginStatus {
	if s.opts.fleetNode != nil {
		if key, ok := s.opts.fleetNode.Managed(st.GetName()); ok {
			st.FleetKey = key
		}
	}
	return st
}

func (f *fleetService) WatchFleet(req *pb.WatchFleetRequest, stream pb.FleetService_WatchFleetServer) error {
	if f.store == nil {
		_, _, err := f.check(stream.Context())
		return err
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-f.shutdown:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := f.store.Watch(ctx, req.GetSinceRevision(), req.GetPlugin(), func(ev *pb.FleetEvent) error {
		return stream.Send(&pb.WatchFleetResponse{Event: ev})
	})
	select {
	case <-f.shutdown:
		return f.ended()
	default:
	}
	switch {
	case err == nil || stream.Context().Err() != nil:
		return nil
	case errors.Is(err, fleet.ErrWatchEnded):
		return rpcerr.New(codes.Unavailable, rpcerr.ReasonFleetUnavailable, err.Error()+"; resume from the last revision received", nil)
	}
	if _, ok := status.FromError(err); ok {
		return err // sending failed: the client is gone
	}
	return fleetError(err)
}
