//go:build linux

// Command plugind is the plugincontrol daemon: it runs plugin processes
// under a manager.Manager and serves the control API over gRPC.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/plugincontrol/plugincontrol/endpoint"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/metrics"
	"github.com/plugincontrol/plugincontrol/server"
	"github.com/plugincontrol/plugincontrol/store"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

func main() {
	// When started as the reaper of a plugind (see manager.Config.Reaper),
	// be that and nothing else.
	manager.ReaperMain()
	os.Exit(run(os.Args[1:], os.Stderr))
}

// maxSockRoot is the longest directory plugin sockets can go in: go-plugin
// puts each in <root>/<10-digit id>/plugin<up to 10 digits>, and a unix
// socket path holds 107 bytes.
const maxSockRoot = 107 - 1 - 10 - 1 - 16

// socketDirs returns where plugin sockets go (<state-dir>/sockets when it
// is short enough, else a directory of this state directory's own under
// $TMPDIR), a short directory for endpoints whose path would be too long,
// and the id of this state directory (the name of its cgroup subtree).
// Socket directories left by a daemon that was killed are removed.
func socketDirs(stateDir string) (sockDir, shortDir, id string, err error) {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return "", "", "", err
	}
	sum := sha256.Sum256([]byte(abs))
	id = hex.EncodeToString(sum[:6])
	shortDir = filepath.Join(os.TempDir(), "plugind-"+id)
	sockDir = filepath.Join(abs, "sockets")
	if len(sockDir) > maxSockRoot {
		sockDir = filepath.Join(shortDir, "sockets")
	}
	for _, d := range []string{filepath.Join(abs, "sockets"), shortDir} {
		if err := os.RemoveAll(d); err != nil {
			return "", "", "", fmt.Errorf("removing stale plugin sockets: %w", err)
		}
	}
	if err := os.MkdirAll(sockDir, 0o700); err != nil {
		return "", "", "", err
	}
	return sockDir, shortDir, id, nil
}

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1 // a runtime failure
	exitUsage   = 2 // bad flags or configuration
	exitDamaged = 3 // the store file is damaged: plugind store recover
)

func run(args []string, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "store" {
		return runStore(args[1:], os.Stdout, stderr)
	}
	cfg, err := parseFlags(args, stderr, os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "plugind: %v\n", err)
		return exitUsage
	}
	log, err := newLogger(cfg.logLevel, cfg.logFormat, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "plugind: %v\n", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ignoreHangup(ctx, log)
	if err := serve(ctx, cfg, log); err != nil {
		var de *store.DamagedError
		if errors.As(err, &de) {
			fmt.Fprintf(stderr, "plugind: %v\n%s", err, recoverHint(cfg.stateDir))
			return exitDamaged
		}
		log.Error("plugind failed", slog.String("error", err.Error()))
		return exitFailed
	}
	return exitOK
}

func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		// Durations as Go duration strings ("1.5ms"), as in the text
		// format, rather than integer nanoseconds.
		opts.ReplaceAttr = func(_ []string, a slog.Attr) slog.Attr {
			if a.Value.Kind() == slog.KindDuration {
				a.Value = slog.StringValue(a.Value.Duration().String())
			}
			return a
		}
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
}

func serve(ctx context.Context, cfg config, log *slog.Logger) error {
	if err := os.MkdirAll(cfg.stateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	// Only the daemon's user may enter the state directory (it holds the
	// control socket and the store).
	if err := os.Chmod(cfg.stateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	var authCfg *server.AuthConfig
	if cfg.authFile != "" {
		a, err := server.LoadAuthFile(cfg.authFile)
		if err != nil {
			return err
		}
		authCfg = a
	}
	tlsCfg, err := serverTLS(cfg)
	if err != nil {
		return err
	}
	st, err := store.Open(cfg.stateDir, store.Options{AuditRetention: cfg.auditRetention, AuditMaxAge: cfg.auditMaxAge})
	if err != nil {
		return err
	}
	defer st.Close()

	sockDir, shortDir, id, err := socketDirs(cfg.stateDir)
	if err != nil {
		return err
	}
	// After the endpoints and the manager (deferred below) are gone.
	defer os.RemoveAll(shortDir)

	met := metrics.New()
	epOpts := []endpoint.Option{
		endpoint.WithLogger(log),
		endpoint.WithCallObserver(met.ObserveCall),
		endpoint.WithMaxMessageBytes(cfg.endpointMaxMsg),
		endpoint.WithServerOptions(grpc.ChainStreamInterceptor(server.EndpointInterceptors(authCfg, log)...)),
	}
	if authCfg != nil {
		// The daemon's bearer tokens are not the plugins' business.
		epOpts = append(epOpts, endpoint.WithStrippedMetadata("authorization"))
	}
	epOpts = append(epOpts, endpoint.WithShortDir(filepath.Join(shortDir, "endpoints")))
	eps, err := endpoint.New(cfg.endpointDir, epOpts...)
	if err != nil {
		return err
	}
	defer eps.Shutdown()
	if p := eps.Path(strings.Repeat("x", 63)); len(p) > 107 {
		// Only when $TMPDIR itself is very long.
		return fmt.Errorf("endpoint socket paths do not fit 107 bytes (%s): set a shorter --endpoint-dir or TMPDIR", p)
	}

	m, err := manager.New(manager.Config{
		PluginDir:     cfg.pluginDir,
		SocketDir:     sockDir,
		Logger:        log,
		StartTimeout:  cfg.startTimeout,
		ReadyTimeout:  cfg.readyTimeout,
		DrainTimeout:  cfg.drainTimeout,
		DefaultBake:   cfg.bake,
		Containment:   cfg.containment,
		ContainID:     id,
		Reaper:        true,
		CallTimeout:   cfg.callTimeout,
		AutoMTLS:      cfg.autoMTLS,
		RequirePin:    cfg.requirePin,
		Store:         st,
		MaxPlugins:    cfg.maxPlugins,
		MaxWatchers:   cfg.maxWatchers,
		HealthHistory: cfg.healthHistory,
		WatchLagLimit: func() time.Duration {
			if cfg.watchLagLimit == 0 {
				return -1 // never
			}
			return cfg.watchLagLimit
		}(),
		OnCandidate: met.ObserveCandidate,
		Endpoints:   eps,
	})
	if err != nil {
		return err
	}
	met.Attach(m)
	closeManager := func() {
		cctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
		defer cancel()
		_ = m.Close(cctx)
	}

	listeners, err := openListeners(cfg, tlsCfg != nil, authCfg != nil)
	if err != nil {
		closeManager()
		return err
	}
	fm, err := joinFleet(cfg, m, log)
	if err != nil {
		closeManager()
		return err
	}
	defer func() {
		if fm != nil {
			fm.close()
		}
	}()
	metU, metS := met.ServerInterceptors()
	opts := []server.Option{
		server.WithLogger(log),
		server.WithLimits(cfg.maxMessageBytes, uint32(cfg.maxStreams)),
		server.WithBookmarkInterval(cfg.bookmarkInterval),
		server.WithInterceptors([]grpc.UnaryServerInterceptor{metU}, []grpc.StreamServerInterceptor{metS}),
		server.WithCallObserver(met.ObserveCall),
		server.WithPanicStacks(cfg.panicStacks),
	}
	if authCfg != nil {
		opts = append(opts, server.WithAuth(authCfg))
	}
	if tlsCfg != nil {
		opts = append(opts, server.WithTLS(tlsCfg))
	}
	if fm != nil {
		opts = append(opts, server.WithFleet(fm.store, fm.agent))
	}
	srv := server.New(m, opts...)
	met.InitializeServer(srv.GRPCServer())
	serveErr := make(chan error, len(listeners)+1)
	for _, l := range listeners {
		go func() { serveErr <- srv.Serve(l.wrap()) }()
		log.Info("plugind serving", slog.String("listen", l.addr))
	}
	if cfg.endpointListen != "" {
		l, err := openTCP("--endpoint-listen", cfg.endpointListen, cfg, tlsCfg != nil, authCfg != nil)
		if err != nil {
			srv.Shutdown(context.Background())
			closeManager()
			return err
		}
		var creds []grpc.ServerOption
		if tlsCfg != nil {
			creds = append(creds, grpc.Creds(credentials.NewTLS(tlsCfg)))
		}
		go func() {
			if err := eps.ServeTCP(l.lis, creds...); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				serveErr <- fmt.Errorf("--endpoint-listen: %w", err)
			}
		}()
		log.Info("plugin endpoints serving", slog.String("listen", l.addr), slog.String("select_with", endpoint.PluginKey))
	}
	var metricsSrv *http.Server
	var ready atomic.Bool // /readyz: restored and serving, until shutdown
	if cfg.metricsListen != "" {
		metricsSrv, err = serveMetrics(cfg.metricsListen, met, srv, &ready, log)
		if err != nil {
			srv.Shutdown(context.Background())
			closeManager()
			return err
		}
	}
	log.Info("plugind started", slog.String("plugin_dir", m.PluginDir()), slog.String("state_dir", cfg.stateDir), slog.Int("pid", os.Getpid()),
		slog.String("containment", m.Containment()))

	// Relaunch what was loaded before, then what --load asks for.
	start := time.Now()
	if err := m.Restore(ctx); err != nil {
		log.Error("restore failed", slog.String("error", err.Error()))
	}
	log.Info("desired state restored", slog.Int("plugins", len(m.List())), slog.Duration("took", time.Since(start)))
	for _, l := range cfg.loads {
		name, binary, ok := strings.Cut(l, "=")
		if !ok {
			binary = name
		}
		if _, err := m.Get(name); err == nil {
			continue // restored from the store
		}
		if _, err := m.Load(manager.WithCaller(ctx, "plugind --load"), manager.Spec{Name: name, Binary: binary}); err != nil {
			log.Error("--load failed", slog.String("plugin", name), slog.String("error", err.Error()))
		}
	}

	if fm != nil {
		// After the restore: the agent adopts what the node already runs.
		fm.start(ctx)
		log.Info("fleet agent started", slog.String("etcd", cfg.fleetEtcd), slog.String("prefix", cfg.fleetPrefix))
	}
	ready.Store(true)
	notifyReady(log, len(m.List()))
	wctx, stopWatchdog := context.WithCancel(ctx)
	defer stopWatchdog()
	go watchdog(wctx, log, m)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-serveErr:
	}
	ready.Store(false)
	stopWatchdog()
	notifyStopping()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if fm != nil {
		fm.close() // the node leaves the fleet before its plugins stop
		fm = nil
	}
	srv.Shutdown(sctx) // NOT_SERVING, streams end, calls in flight finish
	if metricsSrv != nil {
		_ = metricsSrv.Shutdown(sctx)
	}
	closeManager() // plugins stop (desired state stays in the store)
	eps.Shutdown()
	for _, l := range listeners {
		l.cleanup()
	}
	log.Info("plugind stopped")
	return runErr
}

// serveMetrics serves /metrics (Prometheus text or OpenMetrics, as the
// scraper asks), and for HTTP probes (Kubernetes httpGet) /healthz (200
// while the gRPC server serves, 503 once it shuts down) and /readyz (200
// once the plugins are restored and the listeners serve, until shutdown).
func serveMetrics(addr string, met *metrics.Metrics, srv *server.Server, ready *atomic.Bool, log *slog.Logger) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(met, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	probe := func(ok func() bool, what string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			if !ok() {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "not %s\n", what)
				return
			}
			fmt.Fprintf(w, "%s\n", what)
		}
	}
	mux.HandleFunc("/healthz", probe(srv.Serving, "serving"))
	mux.HandleFunc("/readyz", probe(ready.Load, "ready"))
	hs := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	lis, err := listenTCP(addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	go func() {
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", slog.String("error", err.Error()))
		}
	}()
	log.Info("metrics serving", slog.String("listen", "http://"+lis.Addr().String()+"/metrics"), slog.String("probes", "/healthz /readyz"))
	return hs, nil
}
