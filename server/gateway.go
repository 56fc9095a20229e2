package server

import (
	"context"
	"time"

	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// gateway implements PluginGatewayService, the data path.
type gateway struct {
	pb.UnimplementedPluginGatewayServiceServer
	s *Server
}

func (g *gateway) Invoke(ctx context.Context, req *pb.InvokeRequest) (*pb.InvokeResponse, error) {
	start := time.Now()
	res, err := g.s.m.Invoke(ctx, req.GetPlugin(), req.GetMethod(), req.GetPayload())
	if err != nil {
		err = toStatus(err)
		if !g.s.opts.panicStacks && !hasRole(ctx, RoleOperator) {
			err = withoutPanicStack(err)
		}
	}
	// Calls to plugins that are not loaded are not observed: their names
	// come from callers.
	if obs := g.s.opts.onCall; obs != nil && rpcerr.Info(err).GetReason() != rpcerr.ReasonPluginNotFound {
		obs(req.GetPlugin(), req.GetMethod(), status.Code(err), time.Since(start))
	}
	if err != nil {
		return nil, err
	}
	return &pb.InvokeResponse{Payload: res.Payload, Generation: res.Generation}, nil
}

// withoutPanicStack returns err with the stack of its PanicDetail left out
// (the message and fingerprint stay): a plugin's stack names its source
// files and build paths, for operators only (see WithPanicStacks).
func withoutPanicStack(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	p := st.Proto()
	changed := false
	for i, a := range p.GetDetails() {
		var pd pluginv1.PanicDetail
		if a.MessageIs(&pd) && a.UnmarshalTo(&pd) == nil && pd.GetStack() != "" {
			pd.Stack = ""
			if b, err := anypb.New(&pd); err == nil {
				p.Details[i] = b
				changed = true
			}
		}
	}
	if !changed {
		return err
	}
	return status.FromProto(p).Err()
}
