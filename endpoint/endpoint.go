// Package endpoint serves each plugin's own gRPC API at a stable address
// across reloads, the way plugind exposes foreign go-plugin plugins (and
// native ones) to typed clients.
//
// A plugin's endpoint is a unix socket owned by plugind, mode 0600, named
// after the plugin in one directory (<state-dir>/plugins/NAME.sock; a
// hashed name where that path would not fit, see WithShortDir), the
// same for every generation and removed when the plugin is unloaded. Every
// call on it, unary and the three streaming kinds, is forwarded to the
// plugin's active generation as raw frames (grpc-go's UnknownServiceHandler
// with a codec that never decodes), so any service works, written in any
// language; metadata, response headers, trailers and the plugin's own
// status codes pass through untouched.
//
// Each call holds a lease on the generation it started on
// (manager.Manager.Acquire): after a swap new calls go to the new
// generation, and calls and streams in flight finish on the old one, which
// the reload drains before it stops it. A call that outlives drain_timeout
// ends with Unavailable. Failures of plugind itself (no active generation,
// unknown plugin, the generation stopped under the call) carry a
// google.rpc.ErrorInfo with domain "plugincontrol"; a plugin's own errors
// carry none.
//
//	caller ──▶ endpoint (NAME.sock) ──lease──▶ active generation's connection ──▶ plugin process
//
// Server implements manager.Endpoints: the manager opens an endpoint when
// it loads or restores a plugin and closes it when the plugin goes.
// ServeTCP adds one TCP listener for every plugin, selected per call by the
// "plugincontrol-plugin" metadata key.
package endpoint

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/launch"
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
	"github.com/plugincontrol/plugincontrol/internal/workers"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// PluginKey is the metadata key that selects the plugin of a call on the
// shared TCP endpoint (ServeTCP). It is not forwarded to the plugin.
const PluginKey = "plugincontrol-plugin"

// maxSocketPath is the longest unix socket path Linux binds (sun_path is
// 108 bytes with the terminating NUL).
const maxSocketPath = 107

// Option configures a Server.
type Option func(*options)

type options struct {
	log        *slog.Logger
	serverOpts []grpc.ServerOption
	strip      []string
	maxMessage int
	shortDir   string
	inherited  map[string]net.Listener
	onCall     CallObserver
	callOpts   []grpc.CallOption // of every upstream call, made once
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithServerOptions adds grpc.ServerOptions to every endpoint's server
// (interceptors such as authentication, which run with the forwarded
// method's full name). TCP credentials go to ServeTCP.
func WithServerOptions(opts ...grpc.ServerOption) Option {
	return func(o *options) { o.serverOpts = append(o.serverOpts, opts...) }
}

// WithStrippedMetadata names request metadata keys that are not forwarded
// to plugins, such as "authorization" when it carries the daemon's own
// bearer tokens (lower case). PluginKey is never forwarded.
func WithStrippedMetadata(keys ...string) Option {
	return func(o *options) {
		for _, k := range keys {
			o.strip = append(o.strip, strings.ToLower(k))
		}
	}
}

// WithMaxMessageBytes sets the largest message forwarded either way
// (default 16 MiB).
func WithMaxMessageBytes(n int) Option { return func(o *options) { o.maxMessage = n } }

// CallObserver is told of every call forwarded to a plugin: the plugin, the
// full gRPC method, the code the call ended with and how long it took
// (package metrics' ObserveCall).
type CallObserver func(plugin, method string, code codes.Code, took time.Duration)

// WithCallObserver sets the observer of forwarded calls.
func WithCallObserver(f CallObserver) Option { return func(o *options) { o.onCall = f } }

// WithShortDir names a directory with a short path for the endpoints whose
// NAME.sock path does not fit the 107 bytes of a unix socket path (long
// names under a long endpoint directory). Such an endpoint is
// <dir>/_HASH.sock when that fits, else <short>/_HASH.sock, where HASH is
// 12 hex digits of the name's SHA-256; '_' is not allowed in plugin names,
// so it never meets another plugin's NAME.sock. The directory is created
// when first needed and cleaned of stale sockets by New.
func WithShortDir(short string) Option { return func(o *options) { o.shortDir = short } }

// WithInherited hands New listening sockets of endpoints that an earlier
// image of this daemon served (a reload in place), by plugin name: Open
// serves on them instead of binding anew (callers that connected during
// the reload are waiting in their backlog), and New leaves their socket
// files in place. CloseInherited closes those no plugin opened.
func WithInherited(l map[string]net.Listener) Option {
	return func(o *options) { o.inherited = l }
}

func (o *options) stripped(key string) bool {
	if key == PluginKey {
		return true
	}
	for _, k := range o.strip {
		if k == key {
			return true
		}
	}
	return false
}

// Server serves plugin endpoints. Create it with New, hand it to the
// manager (manager.Config.Endpoints), and Shutdown it after the manager
// closed.
type Server struct {
	dir  string
	opts options

	mu      sync.RWMutex // guards plugins, closed and inherited; never held across I/O
	plugins map[string]*plugin
	closed  bool
	// inherited are the listeners handed over by an earlier image, by
	// plugin name, not opened yet.
	inherited map[string]net.Listener

	tcpMu sync.Mutex // guards tcp
	tcp   []tcpServer

	pool *workers.Pool // runs forwarded unary calls (see package workers)
}

// tcpServer is one ServeTCP listener.
type tcpServer struct {
	srv *grpc.Server
	lis net.Listener
}

// plugin is one open endpoint.
type plugin struct {
	name    string
	path    string
	acquire AcquireFunc
	srv     *grpc.Server
	lis     net.Listener
	served  chan struct{} // closed when Serve returned
}

// New returns a Server with endpoints in dir, which it creates (mode 0700)
// and cleans of sockets left by an earlier run.
func New(dir string, opts ...Option) (*Server, error) {
	o := options{log: slog.Default(), maxMessage: 16 << 20}
	for _, f := range opts {
		f(&o)
	}
	o.callOpts = []grpc.CallOption{grpc.ForceCodecV2(codec{}), grpc.MaxCallRecvMsgSize(o.maxMessage), grpc.MaxCallSendMsgSize(o.maxMessage)}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("endpoint directory: %w", err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("endpoint directory: %w", err)
	}
	if err := os.Chmod(abs, 0o700); err != nil {
		return nil, fmt.Errorf("endpoint directory: %w", err)
	}
	s := &Server{dir: abs, opts: o, plugins: map[string]*plugin{}, inherited: map[string]net.Listener{}, pool: workers.New(workers.Size())}
	keep := map[string]bool{}
	for name, l := range o.inherited {
		s.inherited[name] = l
		keep[s.Path(name)] = true
	}
	// Sockets of a daemon that was killed: plugind owns these directories.
	for _, d := range []string{abs, o.shortDir} {
		if d == "" {
			continue
		}
		stale, _ := filepath.Glob(filepath.Join(d, "*.sock"))
		for _, p := range stale {
			if !keep[p] {
				_ = os.Remove(p)
			}
		}
	}
	return s, nil
}

// Dir is the directory holding the endpoints.
func (s *Server) Dir() string { return s.dir }

// Path returns the socket path of plugin name's endpoint: NAME.sock in
// the endpoint directory when it fits a unix socket path, else the
// hashed name (see WithShortDir). It depends only on the name, so it is
// the same for every generation and every run.
func (s *Server) Path(name string) string {
	path := filepath.Join(s.dir, name+".sock")
	if len(path) <= maxSocketPath {
		return path
	}
	sum := sha256.Sum256([]byte(name))
	hashed := "_" + hex.EncodeToString(sum[:6]) + ".sock"
	if p := filepath.Join(s.dir, hashed); len(p) <= maxSocketPath || s.opts.shortDir == "" {
		return p
	}
	return filepath.Join(s.opts.shortDir, hashed)
}

// Open implements manager.Endpoints: it binds the plugin's socket (mode
// 0600) and serves it until Close.
func (s *Server) Open(name string, acquire func(context.Context) (*manager.Lease, error)) (string, error) {
	path := s.Path(name)
	if len(path) > maxSocketPath {
		return "", fmt.Errorf("socket path %s is %d bytes, longer than the %d a unix socket allows (use a shorter --endpoint-dir)", path, len(path), maxSocketPath)
	}
	s.mu.Lock()
	closed, dup := s.closed, s.plugins[name] != nil
	lis := s.inherited[name]
	delete(s.inherited, name)
	s.mu.Unlock()
	switch {
	case closed:
		return "", manager.ErrClosed
	case dup:
		return "", fmt.Errorf("endpoint %s is already open", path)
	}
	if lis == nil {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return "", fmt.Errorf("endpoint directory: %w", err)
		}
		_ = os.Remove(path) // left by an earlier generation of this daemon
		old := syscall.Umask(0o077)
		l, err := net.Listen("unix", path)
		syscall.Umask(old)
		if err != nil {
			return "", err
		}
		if err := os.Chmod(path, 0o600); err != nil {
			l.Close()
			return "", err
		}
		lis = l
	}
	p := &plugin{name: name, path: path, acquire: acquire, lis: lis, served: make(chan struct{})}
	p.srv = s.newServer(func(_ any, ss grpc.ServerStream) error { return s.observed(name, ss, p.acquire) })
	s.mu.Lock()
	if s.closed || s.plugins[name] != nil {
		s.mu.Unlock()
		lis.Close()
		_ = os.Remove(path)
		return "", fmt.Errorf("endpoint %s: closed or opened concurrently", path)
	}
	s.plugins[name] = p
	s.mu.Unlock()
	go func() {
		defer close(p.served)
		if err := p.srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.opts.log.Error("endpoint stopped serving", slog.String("plugin", name), slog.String("error", err.Error()))
		}
	}()
	return "unix://" + path, nil
}

// Close implements manager.Endpoints: calls still open on the endpoint end
// (the manager has stopped the plugin's generations by then) and the
// socket is removed.
func (s *Server) Close(name string) {
	s.mu.Lock()
	p := s.plugins[name]
	delete(s.plugins, name)
	s.mu.Unlock()
	if p != nil {
		p.stop()
	}
}

func (p *plugin) stop() {
	p.srv.Stop()
	<-p.served
	_ = os.Remove(p.path)
}

// newServer is a grpc.Server that forwards every method with handler.
func (s *Server) newServer(handler grpc.StreamHandler, extra ...grpc.ServerOption) *grpc.Server {
	opts := []grpc.ServerOption{
		grpc.UnknownServiceHandler(handler),
		grpc.ForceServerCodecV2(codec{}),
		grpc.MaxRecvMsgSize(s.opts.maxMessage),
		grpc.MaxSendMsgSize(s.opts.maxMessage),
		// Clients of plugin APIs ping like any gRPC client: allow every
		// 5s, with or without streams (common settings of C-core, Java
		// and Python clients ping every 10s).
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
	}
	opts = append(opts, s.opts.serverOpts...)
	return grpc.NewServer(append(opts, extra...)...)
}

// ServeTCP serves every plugin's endpoint on lis until Shutdown: a call
// names its plugin in the PluginKey metadata key (grpcurl -H
// 'plugincontrol-plugin: kv'). creds are the listener's server options,
// such as grpc.Creds for TLS.
func (s *Server) ServeTCP(lis net.Listener, creds ...grpc.ServerOption) error {
	srv := s.newServer(s.route, creds...)
	s.tcpMu.Lock()
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		s.tcpMu.Unlock()
		lis.Close()
		return grpc.ErrServerStopped
	}
	s.tcp = append(s.tcp, tcpServer{srv, lis})
	s.tcpMu.Unlock()
	return srv.Serve(lis)
}

// route forwards a call on the shared TCP endpoint to the plugin it names.
func (s *Server) route(_ any, ss grpc.ServerStream) error {
	md, _ := metadata.FromIncomingContext(ss.Context())
	names := md.Get(PluginKey)
	if len(names) != 1 || names[0] == "" {
		return rpcerr.New(codes.InvalidArgument, rpcerr.ReasonPluginNotSelected,
			"name the plugin of this call in the "+PluginKey+" metadata key (one value)", nil)
	}
	s.mu.RLock()
	p := s.plugins[names[0]]
	s.mu.RUnlock()
	if p == nil {
		return rpcerr.Status(fmt.Errorf("plugin %q has no endpoint: %w", names[0], manager.ErrNotFound))
	}
	return s.observed(names[0], ss, p.acquire)
}

// observed forwards the call of ss to plugin, telling the observer. It
// looks the method up once for both (a lookup walks the stream context's
// chain of values).
func (s *Server) observed(plugin string, ss grpc.ServerStream, acquire AcquireFunc) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return rpcerr.New(codes.Internal, rpcerr.ReasonInternal, "endpoint: no method in the stream", nil)
	}
	if s.opts.onCall == nil {
		return forward(ss, method, acquire, &s.opts, s.pool)
	}
	start := time.Now()
	err := forward(ss, method, acquire, &s.opts, s.pool)
	s.opts.onCall(plugin, method, status.Code(err), time.Since(start))
	return err
}

// Shutdown closes every endpoint and the TCP listeners. Call it after the
// manager closed (which closes the endpoints of its plugins itself).
func (s *Server) Shutdown() {
	s.mu.Lock()
	s.closed = true
	ps := s.plugins
	s.plugins = map[string]*plugin{}
	s.mu.Unlock()
	for _, p := range ps {
		p.stop()
	}
	s.tcpMu.Lock()
	tcp := s.tcp
	s.tcp = nil
	s.tcpMu.Unlock()
	for _, t := range tcp {
		t.srv.Stop()
	}
	s.CloseInherited()
	s.pool.Stop()
}

// CloseInherited closes the inherited listeners (WithInherited) no plugin
// opened, removing their socket files: their plugins are gone.
func (s *Server) CloseInherited() {
	s.mu.Lock()
	left := s.inherited
	s.inherited = map[string]net.Listener{}
	s.mu.Unlock()
	for name, l := range left {
		l.Close()
		_ = os.Remove(s.Path(name))
	}
}

// Handover drains every endpoint for a reload in place and returns copies
// of their listening sockets by plugin name ("" for each ServeTCP
// listener, in order: TCP) for the next image (WithInherited): existing
// connections get a GOAWAY, calls and streams in flight finish up to ctx
// (then they are cut), and no socket file is removed. The Server serves
// nothing afterwards.
func (s *Server) Handover(ctx context.Context) (unix map[string]*os.File, tcp []*os.File, err error) {
	s.mu.Lock()
	s.closed = true
	ps := s.plugins
	s.plugins = map[string]*plugin{}
	s.mu.Unlock()
	s.tcpMu.Lock()
	ts := s.tcp
	s.tcp = nil
	s.tcpMu.Unlock()
	unix = map[string]*os.File{}
	var errs []error
	for name, p := range ps {
		f, err := launch.ListenerFile(p.lis)
		if err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s: %w", name, err))
			continue
		}
		unix[name] = f
	}
	for _, t := range ts {
		f, err := launch.ListenerFile(t.lis)
		if err != nil {
			errs = append(errs, fmt.Errorf("TCP endpoint: %w", err))
			continue
		}
		tcp = append(tcp, f)
	}
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() { gracefulStop(ctx, p.srv); <-p.served })
	}
	for _, t := range ts {
		wg.Go(func() { gracefulStop(ctx, t.srv) })
	}
	wg.Wait()
	s.pool.Stop()
	return unix, tcp, errors.Join(errs...)
}

// gracefulStop is srv.GracefulStop bounded by ctx.
func gracefulStop(ctx context.Context, srv *grpc.Server) {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		srv.Stop()
		<-done
	}
}
