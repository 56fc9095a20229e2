package client

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// PluginKey is the metadata key that names the plugin of a call on the
// daemon's shared TCP endpoint (plugind --endpoint-listen).
const PluginKey = "plugincontrol-plugin"

// DialPlugin returns a connection to the plugin's own gRPC API at its
// endpoint (PluginStatus.endpoint), for the plugin's own typed clients:
//
//	conn, err := c.DialPlugin(ctx, "kv")
//	if err != nil { ... }
//	defer conn.Close()
//	kv := proto.NewKVClient(conn)
//
// The endpoint is stable across reloads and restarts: calls go to the
// active generation. The address is read with ListPlugins; the connection
// takes the options given to Dial (a bearer token is sent when the daemon
// requires one). It fails with ErrNotFound for an unknown plugin and when
// the daemon serves no endpoint for it.
func (c *Client) DialPlugin(ctx context.Context, name string) (*grpc.ClientConn, error) {
	list, err := c.List(ctx, WithNames(name), WithBasicView())
	if err != nil {
		return nil, err
	}
	if len(list) != 1 || list[0].GetEndpoint() == "" {
		return nil, fmt.Errorf("client: plugin %q has no endpoint: %w", name, ErrNotFound)
	}
	return DialEndpoint(ctx, list[0].GetEndpoint(), "", c.opts...)
}

// DialEndpoint returns a connection to a plugin endpoint at addr: a
// plugin's own unix socket (plugin ""), or the daemon's shared TCP endpoint
// (tcp://host:port), where every call is sent for plugin. Options are
// Dial's.
func DialEndpoint(ctx context.Context, addr, plugin string, opts ...Option) (*grpc.ClientConn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var more []grpc.DialOption
	if plugin != "" {
		more = append(more,
			grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				return invoker(metadata.AppendToOutgoingContext(ctx, PluginKey, plugin), method, req, reply, cc, opts...)
			}),
			grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
				return streamer(metadata.AppendToOutgoingContext(ctx, PluginKey, plugin), desc, cc, method, opts...)
			}))
	}
	return newConn(addr, opts, more...)
}
