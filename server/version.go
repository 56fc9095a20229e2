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
	// A stream's header is sent at once. SetHeader would keep a merged
	// copy of md per stream until its first message (about 300 bytes,
	// for as long as a WatchHealth stream lives; bench/NOTES.md item 7);
	// SendHeader on a stream with no header yet keeps md itself, which is
	// never written to. No stream handler of this server sets headers of
	// its own. Unary calls keep SetHeader: sending the header alone would
	// cost a write of its own per call.
	stream := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		_ = ss.SendHeader(md)
		return handler(srv, ss)
	}
	return unary, stream
}
