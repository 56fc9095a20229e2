// Package server puts gRPC in front of a manager.Manager: the
// PluginControlService and PluginGatewayService, error mapping to status
// codes (errors.go, the only place codes are chosen), recovery and logging
// interceptors, the grpc.health.v1 mirror of plugin health, and reflection.
// Lifecycle decisions stay in the manager.
package server

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/plugincontrol/plugincontrol/fleet"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/workers"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

// Option configures a Server.
type Option func(*options)

type options struct {
	auth             *AuthConfig
	tls              *tls.Config
	maxRecvBytes     int
	onCall           CallObserver
	panicStacks      bool
	fleet            *fleet.Store
	fleetNode        FleetNode
	maxStreams       uint32
	logger           *slog.Logger
	bookmarkInterval time.Duration
	grpcOpts         []grpc.ServerOption
	directSocket     string
	directBuckets    []float64
	onLease          DirectLeaseObserver
	unaryInts        []grpc.UnaryServerInterceptor
	streamInts       []grpc.StreamServerInterceptor
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithBookmarkInterval sets how often idle WatchHealth streams get a
// bookmark (default 30s). One timer serves every stream, so a new stream's
// first bookmark comes at the next tick, within d of its opening.
func WithBookmarkInterval(d time.Duration) Option {
	return func(o *options) { o.bookmarkInterval = d }
}

// WithAuth requires credentials (bearer tokens or client certificates) on
// every call but the services cfg leaves open, and checks roles per method.
// Without it every caller is allowed (protect the socket instead) and only
// named in the audit log.
func WithAuth(cfg *AuthConfig) Option { return func(o *options) { o.auth = cfg } }

// MinPingInterval is the shortest interval between HTTP/2 keepalive pings a
// client may send, on an idle connection too: one that pings more often is
// disconnected (GOAWAY too_many_pings after three strikes).
const MinPingInterval = 5 * time.Second

// CallObserver is told of every call to a plugin through Invoke (a loaded
// plugin's): the plugin, the method, the gRPC code it ended with and how
// long it took (package metrics' ObserveCall).
type CallObserver func(plugin, method string, code codes.Code, took time.Duration)

// WithCallObserver sets the observer of Invoke calls.
func WithCallObserver(f CallObserver) Option { return func(o *options) { o.onCall = f } }

// WithPanicStacks sends the stack of a plugin's panic (PanicDetail.stack)
// to every Invoke caller. Without it only callers with the operator role
// get it (with an auth config); the message and fingerprint always go.
func WithPanicStacks(on bool) Option { return func(o *options) { o.panicStacks = on } }

// WithLimits sets the largest message received or sent, requests and
// responses alike (bytes; default 4 MiB), and the concurrent streams per
// connection (default 1024: high enough that long-lived WatchHealth streams
// sharing a connection do not make grpc-go clients queue their unary calls
// behind them).
func WithLimits(maxRecvBytes int, maxStreamsPerConn uint32) Option {
	return func(o *options) { o.maxRecvBytes, o.maxStreams = maxRecvBytes, maxStreamsPerConn }
}

// WithGRPCOptions adds grpc.ServerOptions (credentials, limits).
func WithGRPCOptions(opts ...grpc.ServerOption) Option {
	return func(o *options) { o.grpcOpts = append(o.grpcOpts, opts...) }
}

// WithInterceptors adds interceptors that run after recovery, logging and
// authentication (metrics, for instance).
func WithInterceptors(u []grpc.UnaryServerInterceptor, s []grpc.StreamServerInterceptor) Option {
	return func(o *options) {
		o.unaryInts = append(o.unaryInts, u...)
		o.streamInts = append(o.streamInts, s...)
	}
}

// Server is the gRPC face of a manager.
type Server struct {
	m      *manager.Manager
	opts   options
	log    *slog.Logger
	grpc   *grpc.Server
	health *health.Server

	shutdown     chan struct{} // closed by Shutdown (under mu): no new streams, streams end
	shutdownOnce sync.Once
	reloading    atomic.Bool // set by Handover before shutdown is closed
	mirrorDone   chan struct{}

	tickets tickets // the direct path's tickets not presented yet

	// Cached Health of all plugins, in the full view and in
	// HEALTH_VIEW_COMPACT.
	healthAll, healthAllCompact atomic.Pointer[healthAll]
	// Encoded health events, per view (events of the full view, and of
	// HEALTH_VIEW_COMPACT).
	events        eventCache
	compactEvents eventCache

	// mu guards watches, and orders track against Shutdown's closing of
	// shutdown, so that no stream is added once Shutdown has begun waking
	// and waiting for them.
	mu sync.Mutex
	// watches are the open WatchHealth streams' watches, woken by
	// Shutdown (their streams wait on the watch alone, see watch.go).
	watches  map[*manager.Watch]struct{}
	watchers sync.WaitGroup // open WatchHealth streams
	// bookmarks fires every bookmarkInterval and marks every watch for a
	// bookmark (markBookmarks); set, reset and stopped under mu.
	bookmarks *time.Timer

	pool *workers.Pool // runs unary calls (onWorker); stopped by stop
}

// New builds the gRPC server over m and registers every service. Call Serve
// to accept connections and Shutdown to stop.
func New(m *manager.Manager, opts ...Option) *Server {
	o := options{logger: slog.Default(), bookmarkInterval: 30 * time.Second, maxRecvBytes: 4 << 20, maxStreams: 1024}
	for _, f := range opts {
		f(&o)
	}
	s := &Server{m: m, opts: o, log: o.logger, shutdown: make(chan struct{}), mirrorDone: make(chan struct{}),
		watches: map[*manager.Watch]struct{}{}, pool: workers.New(workers.Size())}
	s.compactEvents.compact = true
	s.mu.Lock()
	s.bookmarks = time.AfterFunc(o.bookmarkInterval, s.markBookmarks)
	s.mu.Unlock()

	recOpts := []recovery.Option{recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		s.log.ErrorContext(ctx, "handler panic", slog.Any("panic", p))
		return status.Errorf(codes.Internal, "internal error (handler panic)")
	})}
	// Authentication runs through go-grpc-middleware's auth interceptor.
	// Without an auth config it only names the caller; with one,
	// authenticate checks credentials and roles, and for the services the
	// config leaves open (grpc.health.v1 for probes, reflection) only names
	// the caller, as identify does.
	authFunc := identify
	if o.auth != nil {
		authFunc = newAuthorizer(o.auth).authenticate
	}
	authU := []grpc.UnaryServerInterceptor{auth.UnaryServerInterceptor(authFunc)}
	authS := []grpc.StreamServerInterceptor{auth.StreamServerInterceptor(authFunc)}
	// Order: recovery outermost (nothing escapes, a panic on a worker
	// included: the pool raises it again on the call's goroutine), the
	// pool, the version header, then logging (refused calls are logged
	// with their code), then authentication.
	verU, verS := versionHeader()
	access := newAccessLog(s.log)
	// Unary calls run on a pool of goroutines that keep their grown
	// stacks (package workers says why), right inside recovery.
	unary := append(append([]grpc.UnaryServerInterceptor{
		recovery.UnaryServerInterceptor(recOpts...), s.onWorker, verU, access.unary}, authU...), o.unaryInts...)
	stream := append(append([]grpc.StreamServerInterceptor{
		recovery.StreamServerInterceptor(recOpts...), verS, access.stream}, authS...), o.streamInts...)

	gopts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		// Clients ping idle watch streams every 30s (package client);
		// allow that, and ping silent clients ourselves so dead peers are
		// noticed while live idle streams stay up for hours.
		// Clients may ping every 5s, idle or not: grpc-go's own
		// clients ping at most every 10s, grpc-java and grpc-python let
		// users pick 10s, and a ping more often than MinTime counts a
		// strike (the third closes the connection with too_many_pings).
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: MinPingInterval, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.MaxRecvMsgSize(o.maxRecvBytes),
		grpc.MaxSendMsgSize(o.maxRecvBytes),
		grpc.MaxConcurrentStreams(o.maxStreams),
		grpc.ForceServerCodecV2(newCodec(s)),
	}
	if o.tls != nil {
		gopts = append(gopts, grpc.Creds(newMixedCreds(o.tls)))
	}
	s.grpc = grpc.NewServer(append(gopts, o.grpcOpts...)...)
	pb.RegisterPluginControlServiceServer(s.grpc, &control{s: s})
	pb.RegisterPluginGatewayServiceServer(s.grpc, &gateway{s: s})
	pb.RegisterPluginDirectServiceServer(s.grpc, &direct{s: s})
	pb.RegisterFleetServiceServer(s.grpc, &fleetService{store: o.fleet, node: o.fleetNode, shutdown: s.shutdown, ended: s.ended})
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, healthService{s.health, s})
	reflection.Register(s.grpc)
	s.startMirror()
	return s
}

// GRPCServer returns the underlying grpc.Server (to register more services).
func (s *Server) GRPCServer() *grpc.Server { return s.grpc }

// Serve accepts connections on lis until Shutdown.
func (s *Server) Serve(lis net.Listener) error { return s.grpc.Serve(lis) }

// Shutdown marks the daemon NOT_SERVING, ends every WatchHealth stream with
// Unavailable, then stops gracefully, falling back to a hard stop when ctx
// ends first (grpc's GracefulStop has no deadline of its own). It does not
// close the manager.
func (s *Server) Shutdown(ctx context.Context) { s.stop(ctx, true) }

// Handover drains the server for a reload in place: every stream
// (WatchHealth, grpc.health.v1 Watch, WatchFleet) ends with Unavailable,
// which clients resume from their last revision; existing connections get
// a GOAWAY (grpc-go's GracefulStop) and unary calls in flight finish, up to
// ctx, then the rest is cut. Health stays SERVING: nothing a prober sees
// changes. Serve's listeners are closed: the caller keeps copies of the
// listening sockets for the next image (set unix listeners not to unlink
// their socket file on close), where connections wait in the backlog.
func (s *Server) Handover(ctx context.Context) {
	s.reloading.Store(true)
	s.stop(ctx, false)
}

func (s *Server) stop(ctx context.Context, notServing bool) {
	s.shutdownOnce.Do(func() {
		if notServing {
			s.health.Shutdown()
		}
		s.mu.Lock()
		close(s.shutdown)
		s.bookmarks.Stop()
		for w := range s.watches {
			w.Wake()
		}
		s.mu.Unlock()
	})
	done := make(chan struct{})
	go func() {
		s.watchers.Wait()
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.grpc.Stop()
		<-done
	}
	<-s.mirrorDone
	// The pool's workers end once their calls have. Unlike grpc-go's own
	// handler goroutines they are waited for, but only up to ctx: a
	// handler that ignores its cancelled context must not hold Shutdown.
	poolDone := make(chan struct{})
	go func() { s.pool.Stop(); close(poolDone) }()
	select {
	case <-poolDone:
	case <-ctx.Done():
	}
}

// onWorker runs the rest of a unary call's chain on a worker of s.pool.
func (s *Server) onWorker(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	s.pool.Run(func() { resp, err = handler(ctx, req) })
	return resp, err
}

// Serving reports whether the server serves: false once Shutdown began
// (the /healthz probe of plugind).
func (s *Server) Serving() bool { return !s.isDraining() }

// isDraining reports whether Shutdown has begun.
func (s *Server) isDraining() bool {
	select {
	case <-s.shutdown:
		return true
	default:
		return false
	}
}

// markBookmarks asks every open WatchHealth stream for a bookmark, then
// sets the timer again. One timer serves every stream (a timer per stream
// cost each watcher about 190 bytes; bench/NOTES.md item 7). It holds mu,
// which readers of health never take (track and untrack do), for about
// 50 ns per stream: no I/O, one flag and a non-blocking wakeup each.
func (s *Server) markBookmarks() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isDraining() {
		return
	}
	for w := range s.watches {
		w.MarkBookmark()
	}
	s.bookmarks.Reset(s.opts.bookmarkInterval)
}

// track registers the watch of a new WatchHealth stream, so that Shutdown
// wakes it; false once the server is draining.
func (s *Server) track(w *manager.Watch) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isDraining() {
		return false
	}
	s.watchers.Add(1)
	s.watches[w] = struct{}{}
	return true
}

func (s *Server) untrack(w *manager.Watch) {
	s.mu.Lock()
	delete(s.watches, w)
	s.mu.Unlock()
	s.watchers.Done()
}
