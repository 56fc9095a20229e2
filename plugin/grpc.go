package plugin

import (
	"context"
	"errors"

	goplugin "github.com/hashicorp/go-plugin"
	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// GRPCPlugin is the go-plugin glue for PluginService. A plugin sets Impl; the
// host leaves it nil and gets a *Conn from Dispense.
type GRPCPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	// Impl is the plugin's implementation (plugin side only).
	Impl Plugin
}

var _ goplugin.GRPCPlugin = (*GRPCPlugin)(nil)

// GRPCServer registers PluginService on the plugin's gRPC server.
func (p *GRPCPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return errors.New("plugin: GRPCPlugin.Impl is nil")
	}
	pluginv1.RegisterPluginServiceServer(s, &server{impl: p.Impl})
	return nil
}

// GRPCClient returns a *Conn. go-plugin passes its "done" context, which is
// cancelled the moment the plugin process exits; the host uses it to notice
// crashes without polling.
func (p *GRPCPlugin) GRPCClient(done context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &Conn{Client: pluginv1.NewPluginServiceClient(c), Done: done}, nil
}

// Conn is the host's handle on a dispensed plugin.
type Conn struct {
	// Client calls the plugin.
	Client pluginv1.PluginServiceClient
	// Done is cancelled when the plugin process exits.
	Done context.Context
}

// newGRPCServer adds the panic recovery interceptor to go-plugin's server.
func newGRPCServer(opts []grpc.ServerOption) *grpc.Server {
	opts = append(opts, grpc.ChainUnaryInterceptor(recoverUnary))
	return grpc.NewServer(opts...)
}

// server adapts a Plugin to PluginServiceServer.
type server struct {
	pluginv1.UnimplementedPluginServiceServer
	impl Plugin
}

func (s *server) Describe(context.Context, *pluginv1.DescribeRequest) (*pluginv1.DescribeResponse, error) {
	info := s.impl.Info()
	return &pluginv1.DescribeResponse{
		Name:     info.Name,
		Version:  info.Version,
		Protocol: Protocol,
		Methods:  info.Methods,
	}, nil
}

func (s *server) Ready(ctx context.Context, req *pluginv1.ReadyRequest) (*pluginv1.ReadyResponse, error) {
	if err := s.impl.Ready(ctx, req.GetConfig()); err != nil {
		return &pluginv1.ReadyResponse{Ready: false, Reason: err.Error()}, nil
	}
	return &pluginv1.ReadyResponse{Ready: true}, nil
}

func (s *server) Invoke(ctx context.Context, req *pluginv1.InvokeRequest) (*pluginv1.InvokeResponse, error) {
	out, err := s.impl.Invoke(ctx, req.GetMethod(), req.GetPayload())
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Error(codes.Unknown, err.Error())
	}
	return &pluginv1.InvokeResponse{Payload: out}, nil
}
