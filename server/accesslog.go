package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// hotMethods are called at high rates (the data path, reads, probes, watch
// streams). They bypass go-grpc-middleware's access log, whose per-call
// fields, context values and formatting cost more than the calls
// themselves (and, on streams, a wrapper on every message): a successful
// call is logged at Debug, only when Debug is enabled; a failed one at the
// access log's level for its code, with the same message and keys.
var hotMethods = map[string]bool{
	pb.PluginGatewayService_Invoke_FullMethodName:      true,
	pb.PluginControlService_Health_FullMethodName:      true,
	pb.PluginControlService_ListPlugins_FullMethodName: true,
	pb.PluginControlService_WatchHealth_FullMethodName: true,
	healthpb.Health_Check_FullMethodName:               true,
	healthpb.Health_Watch_FullMethodName:               true,
}

func accessLogUnary(l *slog.Logger, full grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !hotMethods[info.FullMethod] {
			return full(ctx, req, info, handler)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		logFinished(ctx, l, "server", info.FullMethod, start, err)
		return resp, err
	}
}

func accessLogStream(l *slog.Logger, full grpc.StreamServerInterceptor) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !hotMethods[info.FullMethod] {
			return full(srv, ss, info, handler)
		}
		start := time.Now()
		err := handler(srv, ss)
		logFinished(ss.Context(), l, "server", info.FullMethod, start, err)
		return err
	}
}

func logFinished(ctx context.Context, l *slog.Logger, component, method string, start time.Time, err error) {
	code := status.Code(err)
	lvl := slog.LevelDebug
	if code != codes.OK {
		lvl = slog.Level(logging.DefaultServerCodeToLevel(code))
	}
	if !l.Enabled(ctx, lvl) {
		return
	}
	attrs := []slog.Attr{
		slog.String("grpc.component", component), slog.String("grpc.method", method),
		slog.String("grpc.code", code.String()), slog.Duration("grpc.time", time.Since(start)),
	}
	if err != nil {
		attrs = append(attrs, slog.String("grpc.error", err.Error()))
	}
	l.LogAttrs(ctx, lvl, "finished call", attrs...)
}
