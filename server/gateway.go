package server

import (
	"context"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// gateway implements PluginGatewayService, the data path.
type gateway struct {
	pb.UnimplementedPluginGatewayServiceServer
	s *Server
}

func (g *gateway) Invoke(ctx context.Context, req *pb.InvokeRequest) (*pb.InvokeResponse, error) {
	res, err := g.s.m.Invoke(ctx, req.GetPlugin(), req.GetMethod(), req.GetPayload())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.InvokeResponse{Payload: res.Payload, Generation: res.Generation}, nil
}
