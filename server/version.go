package server

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/plugincontrol/plugincontrol/internal/version"
)

// versionHeader sends the daemon's version in the plugincontrol-version
// response header of every call, refused ones included, so that a client
// (pluginctl version) learns it without an RPC of its own.
func versionHeader() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	v, _ := version.Get()
	md := metadata.Pairs(version.Header, v)
	unary := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		_ = grpc.SetHeader(ctx, md)
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		_ = ss.SetHeader(md)
		return handler(srv, ss)
	}
	return unary, stream
}
