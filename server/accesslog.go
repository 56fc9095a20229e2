package server

import (
	"context"
	"log/slog"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The access log is go-grpc-middleware's logging interceptor, one format
// for every call ("finished call" with grpc.service, grpc.method,
// grpc.code, grpc.time_ms, ...). Two instances, scoped with its selector:
// the hot methods (the data path, reads, probes, watch streams, and every
// call forwarded to a plugin's endpoint) log a success at Debug, since they
// come at high rates; everything else at the middleware's default levels
// (a success at Info).

// hotMethods are called at high rates.
var hotMethods = map[string]bool{
	pb.PluginGatewayService_Invoke_FullMethodName:      true,
	pb.PluginControlService_Health_FullMethodName:      true,
	pb.PluginControlService_ListPlugins_FullMethodName: true,
	pb.PluginControlService_WatchHealth_FullMethodName: true,
	healthpb.Health_Check_FullMethodName:               true,
	healthpb.Health_Watch_FullMethodName:               true,
}

func isHot(_ context.Context, c interceptors.CallMeta) bool    { return hotMethods[c.FullMethod()] }
func isCold(ctx context.Context, c interceptors.CallMeta) bool { return !isHot(ctx, c) }

// hotLevels: a success at Debug, a failure at the middleware's level for
// its code.
func hotLevels(c codes.Code) logging.Level {
	if c == codes.OK {
		return logging.LevelDebug
	}
	return logging.DefaultServerCodeToLevel(c)
}

func accessLogOptions(hot bool) []logging.Option {
	opts := []logging.Option{logging.WithLogOnEvents(logging.FinishCall)}
	if hot {
		opts = append(opts, logging.WithLevels(hotLevels))
	}
	return opts
}

// accessLogUnary and accessLogStream are the access log of the control
// server.
func accessLogUnary(l *slog.Logger) []grpc.UnaryServerInterceptor {
	return []grpc.UnaryServerInterceptor{
		selector.UnaryServerInterceptor(logging.UnaryServerInterceptor(slogAdapter(l), accessLogOptions(true)...), selector.MatchFunc(isHot)),
		selector.UnaryServerInterceptor(logging.UnaryServerInterceptor(slogAdapter(l), accessLogOptions(false)...), selector.MatchFunc(isCold)),
	}
}

func accessLogStream(l *slog.Logger) []grpc.StreamServerInterceptor {
	return []grpc.StreamServerInterceptor{
		selector.StreamServerInterceptor(logging.StreamServerInterceptor(slogAdapter(l), accessLogOptions(true)...), selector.MatchFunc(isHot)),
		selector.StreamServerInterceptor(logging.StreamServerInterceptor(slogAdapter(l), accessLogOptions(false)...), selector.MatchFunc(isCold)),
	}
}

// slogAdapter lets go-grpc-middleware's logging interceptor write to slog
// (the middleware has no slog adapter of its own).
func slogAdapter(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}
