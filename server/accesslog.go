package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The access log is go-grpc-middleware's logging interceptor, one format
// for every call ("finished call" with grpc.service, grpc.method,
// grpc.code, grpc.time_ms, ...) at two sets of levels: the hot methods
// (the data path, reads, probes, watch streams, and every call forwarded
// to a plugin's endpoint) log a success at Debug, since they come at high
// rates; everything else at the middleware's default levels (a success at
// Info).

// hotMethods are called at high rates.
var hotMethods = map[string]bool{
	pb.PluginGatewayService_Invoke_FullMethodName:      true,
	pb.PluginControlService_Health_FullMethodName:      true,
	pb.PluginControlService_ListPlugins_FullMethodName: true,
	pb.PluginControlService_WatchHealth_FullMethodName: true,
	healthpb.Health_Check_FullMethodName:               true,
	healthpb.Health_Watch_FullMethodName:               true,
}

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

// accessLog is the access log of the control server and of plugin
// endpoints. A cold method always goes through the middleware. A hot one
// does too while the logger is enabled at Debug; otherwise the call runs
// bare and only a failure goes through the middleware, replayed after the
// call with the call's own start time and duration.
//
// Why not the middleware alone: it builds a record's fields (the common
// fields, the peer's address, two formatted timestamps, a context value)
// before every call, whether the record is then logged or not, and a hot
// success is not logged at Info. That was 10% of plugind's CPU serving
// Invoke at 16 callers (go tool pprof of bench's invoke scenario); a bare
// call costs none of it. The records are the middleware's in both cases
// (TestOneAccessLogFormat).
type accessLog struct {
	l                *slog.Logger
	coldU, hotU, reU grpc.UnaryServerInterceptor
	coldS, hotS, reS grpc.StreamServerInterceptor
}

func newAccessLog(l *slog.Logger) *accessLog {
	log := slogAdapter(l)
	replay := append(accessLogOptions(true), logging.WithFieldsFromContextAndCallMeta(measuredFields))
	return &accessLog{
		l:     l,
		coldU: logging.UnaryServerInterceptor(log, accessLogOptions(false)...),
		hotU:  logging.UnaryServerInterceptor(log, accessLogOptions(true)...),
		reU:   logging.UnaryServerInterceptor(log, replay...),
		coldS: logging.StreamServerInterceptor(log, accessLogOptions(false)...),
		hotS:  logging.StreamServerInterceptor(log, accessLogOptions(true)...),
		reS:   logging.StreamServerInterceptor(log, replay...),
	}
}

// bare reports whether a call of a hot method runs without the middleware.
func (a *accessLog) bare(ctx context.Context) bool {
	return !a.l.Enabled(ctx, slog.LevelDebug)
}

// unary logs the control server's unary calls.
func (a *accessLog) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	switch {
	case !hotMethods[info.FullMethod]:
		return a.coldU(ctx, req, info, handler)
	case !a.bare(ctx):
		return a.hotU(ctx, req, info, handler)
	}
	start := time.Now()
	resp, err := handler(ctx, req)
	if err == nil {
		return resp, nil
	}
	return a.reU(context.WithValue(ctx, measuredKey{}, measured{start, time.Since(start)}), req, info,
		func(context.Context, any) (any, error) { return resp, err })
}

// stream logs the control server's streams.
func (a *accessLog) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !hotMethods[info.FullMethod] {
		return a.coldS(srv, ss, info, handler)
	}
	return a.hotStream(srv, ss, info, handler)
}

// hotStream logs a stream as a hot method: every call forwarded to a
// plugin's endpoint, and the control server's hot streams.
func (a *accessLog) hotStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := ss.Context()
	if !a.bare(ctx) {
		return a.hotS(srv, ss, info, handler)
	}
	start := time.Now()
	err := handler(srv, ss)
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	return a.reS(srv, &measuredStream{ss, context.WithValue(ctx, measuredKey{}, measured{start, time.Since(start)})}, info,
		func(any, grpc.ServerStream) error { return err })
}

// measured is a call's start and duration, for its replayed record.
type measured struct {
	start time.Time
	took  time.Duration
}

type measuredKey struct{}

// measuredFields gives a replayed record the call's own start time and
// duration: fields from this function come first in the middleware's
// records, and the first of two with one key is the one kept.
func measuredFields(ctx context.Context, _ interceptors.CallMeta) logging.Fields {
	m, ok := ctx.Value(measuredKey{}).(measured)
	if !ok {
		return nil
	}
	return append(logging.Fields{"grpc.start_time", m.start.Format(time.RFC3339)}, logging.DurationToTimeMillisFields(m.took)...)
}

// measuredStream is a stream whose context carries measured.
type measuredStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *measuredStream) Context() context.Context { return s.ctx }

// slogAdapter lets go-grpc-middleware's logging interceptor write to slog
// (the middleware has no slog adapter of its own).
func slogAdapter(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}
