package server

import (
	"context"
	"log/slog"
	"strings"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// EndpointInterceptors are the stream interceptors plugind puts in front of
// plugin endpoints (package endpoint): recovery, the access log (a
// forwarded call that succeeds is logged at Debug, a failed one at the
// level of its code, as the hot methods of the control API), and
// authentication under cfg's rules: every call needs role invoker, except
// grpc.health.v1 and reflection when cfg opens them. With cfg nil callers
// are only named, as on the control API without auth.
func EndpointInterceptors(cfg *AuthConfig, log *slog.Logger) []grpc.StreamServerInterceptor {
	authFunc := identify
	if cfg != nil {
		authFunc = (&endpointAuth{newAuthorizer(cfg)}).authenticate
	}
	rec := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		log.ErrorContext(ctx, "endpoint handler panic", slog.Any("panic", p))
		return rpcerr.New(codes.Internal, rpcerr.ReasonInternal, "internal error (endpoint handler panic)", nil)
	})
	return []grpc.StreamServerInterceptor{
		recovery.StreamServerInterceptor(rec),
		// The access log's format, at the data path's levels.
		newAccessLog(log).hotStream,
		auth.StreamServerInterceptor(authFunc),
	}
}

// endpointAuth applies an authorizer's credentials to endpoint calls, whose
// methods are the plugins' own.
type endpointAuth struct{ a *authorizer }

func (e *endpointAuth) authenticate(ctx context.Context) (context.Context, error) {
	method, _ := grpc.Method(ctx)
	need := RoleInvoker
	switch {
	case strings.HasPrefix(method, "/grpc.health.v1.Health/") && e.a.open["health"],
		strings.HasPrefix(method, "/grpc.reflection.") && e.a.open["reflection"]:
		need = ""
	}
	return e.a.check(ctx, method, need)
}
