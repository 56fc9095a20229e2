//go:build linux

// Command plugind is the plugincontrol daemon: it runs plugin processes
// under a manager.Manager and serves the control API over gRPC.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/plugincontrol/plugincontrol/endpoint"
	"github.com/plugincontrol/plugincontrol/internal/handover"
	"github.com/plugincontrol/plugincontrol/internal/proc"
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
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// maxSockRoot is the longest directory plugin sockets can go in: go-plugin
// puts each in <root>/<10-digit id>/plugin<up to 10 digits>, and a unix
// socket path holds 107 bytes.
const maxSockRoot = 107 - 1 - 10 - 1 - 16

// socketDirs returns where plugin sockets go (<state-dir>/sockets when it
// is short enough, else a directory of this state directory's own under
// $TMPDIR), a short directory for endpoints whose path would be too long,
// and the id of this state directory (the name of its cgroup subtree).
// Socket directories left by a daemon that was killed are removed when
// wipe is set (nothing is handed over).
func socketDirs(stateDir string, wipe bool) (sockDir, shortDir, id string, err error) {
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
	// A handover (reload, live restore) keeps them: the plugins taken over
	// serve there (the manager removes what no plugin took).
	for _, d := range []string{filepath.Join(abs, "sockets"), shortDir} {
		if !wipe {
			break
		}
		if err := os.RemoveAll(d); err != nil {
			return "", "", "", fmt.Errorf("removing stale plugin sockets: %w", err)
		}
	}
	if err := os.MkdirAll(sockDir, 0o700); err != nil {
		return "", "", "", err
	}
	return sockDir, shortDir, id, nil
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

// image is one running plugind image: what serve builds, and what a
// reload drains and hands over.
type image struct {
	cfg       config
	log       *slog.Logger
	exe       string // this binary's path when it started: a reload execs the file there
	m         *manager.Manager
	srv       *server.Server
	eps       *endpoint.Server
	listeners []listener
	tcpEP     *listener // --endpoint-listen
	metrics   *http.Server
	metricsL  net.Listener
	fm        *fleetMember
	direct    *listener         // --direct-socket; nil when off
	records   *handover.Records // --live-restore records; nil without
}

func serve(ctx context.Context, cfg config, log *slog.Logger, inh *inheritance, hup <-chan os.Signal) error {
	reloadStart := time.Now()
	d := &image{cfg: cfg, log: log}
	d.exe, _ = os.Executable()
	defer inh.close() // what is left of it once everything took its part
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

	// With live restore, a plugind that starts after a crash adopts what
	// the crashed one left; without, what it left is killed (by the
	// manager, as before).
	var lr *manager.LiveRestore
	if cfg.liveRestore {
		if d.records, err = handover.NewRecords(cfg.stateDir, proc.BootID()); err != nil {
			return err
		}
		lr = &manager.LiveRestore{Handoff: handover.HandoffPath(cfg.stateDir), Save: d.saveRecord, Remove: d.removeRecord}
		if inh.manager == nil {
			inh.manager = adoptAfterCrash(d.records, cfg.stateDir, log)
		}
	} else {
		clearLiveRestore(cfg.stateDir)
	}
	sockDir, shortDir, id, err := socketDirs(cfg.stateDir, inh.manager == nil)
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
		endpoint.WithInherited(inh.endpoints()),
	}
	if authCfg != nil {
		// The daemon's bearer tokens are not the plugins' business.
		epOpts = append(epOpts, endpoint.WithStrippedMetadata("authorization"))
	}
	epOpts = append(epOpts, endpoint.WithShortDir(filepath.Join(shortDir, "endpoints")))
	d.eps, err = endpoint.New(cfg.endpointDir, epOpts...)
	if err != nil {
		return err
	}
	defer d.eps.Shutdown()
	if p := d.eps.Path(strings.Repeat("x", 63)); len(p) > 107 {
		// Only when $TMPDIR itself is very long.
		return fmt.Errorf("endpoint socket paths do not fit 107 bytes (%s): set a shorter --endpoint-dir or TMPDIR", p)
	}

	d.m, err = manager.New(manager.Config{
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
		Endpoints:   d.eps,
		Inherit:     inh.manager,
		LiveRestore: lr,
	})
	if err != nil {
		return err
	}
	inh.manager = nil // the manager owns what it was handed
	met.Attach(d.m)
	closeManager := func() {
		cctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
		defer cancel()
		_ = d.m.Close(cctx)
		if d.records != nil {
			_ = d.records.Clear() // nothing runs any more
		}
	}

	d.listeners, err = openListeners(cfg, tlsCfg != nil, authCfg != nil, inh.listeners)
	if err != nil {
		closeManager()
		return err
	}
	d.fm, err = joinFleet(cfg, d.m, log, inh.daemon.FleetLease, inh.daemon.FleetNode)
	if err != nil {
		closeManager()
		for _, l := range d.listeners {
			l.lis.Close()
			l.cleanup()
		}
		return err
	}
	defer func() {
		if d.fm != nil {
			d.fm.close()
		}
	}()
	if d.fm != nil {
		met.AttachFleet(d.fm.stats)
	}
	metU, metS := met.ServerInterceptors()
	opts := []server.Option{
		server.WithLogger(log),
		server.WithLimits(cfg.maxMessageBytes, uint32(cfg.maxStreams)),
		server.WithBookmarkInterval(cfg.bookmarkInterval),
		server.WithInterceptors([]grpc.UnaryServerInterceptor{metU}, []grpc.StreamServerInterceptor{metS}),
		server.WithCallObserver(met.ObserveCall),
		server.WithPanicStacks(cfg.panicStacks),
	}
	if cfg.directSocket != "" {
		opts = append(opts, server.WithDirectSocket(cfg.directSocket, metrics.CallDurationBuckets()), server.WithDirectLeaseObserver(met.ObserveDirectLease))
	}
	if authCfg != nil {
		opts = append(opts, server.WithAuth(authCfg))
	}
	if tlsCfg != nil {
		opts = append(opts, server.WithTLS(tlsCfg))
	}
	if d.fm != nil {
		opts = append(opts, server.WithFleet(d.fm.store, d.fm.agent))
	}
	reloaded := inh.reloaded
	var restored <-chan struct{}
	if reloaded {
		// A reload: every plugin is registered with the state handed over
		// before this image serves, and taken over in the background; a
		// call to one not yet taken over waits for it (the manager's
		// RestoreInBackground), so the calls that waited in the listen
		// backlog succeed.
		restored = d.startRestore(ctx)
	}
	d.srv = server.New(d.m, opts...)
	met.InitializeServer(d.srv.GRPCServer())
	serveErr := make(chan error, len(d.listeners)+2)
	for _, l := range d.listeners {
		go func() { serveErr <- d.srv.Serve(l.wrap()) }()
		log.Info("plugind serving", slog.String("listen", l.addr))
	}
	if cfg.endpointListen != "" {
		l, err := openTCP("--endpoint-listen", cfg.endpointListen, cfg, tlsCfg != nil, authCfg != nil, inh.take("endpoint-tcp"))
		if err != nil {
			d.srv.Shutdown(context.Background())
			closeManager()
			return err
		}
		d.tcpEP = &l
		var creds []grpc.ServerOption
		if tlsCfg != nil {
			creds = append(creds, grpc.Creds(credentials.NewTLS(tlsCfg)))
		}
		go func() {
			if err := d.eps.ServeTCP(l.lis, creds...); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				serveErr <- fmt.Errorf("--endpoint-listen: %w", err)
			}
		}()
		log.Info("plugin endpoints serving", slog.String("listen", l.addr), slog.String("select_with", endpoint.PluginKey))
	}
	var ready atomic.Bool // /readyz: restored and serving, until shutdown
	if cfg.metricsListen != "" {
		d.metrics, d.metricsL, err = serveMetrics(cfg.metricsListen, met, d.srv, &ready, log, inh.take("metrics"))
		if err != nil {
			d.srv.Shutdown(context.Background())
			closeManager()
			return err
		}
	}
	if cfg.directSocket != "" {
		d.direct, err = openDirect(cfg.directSocket, inh.take("direct"))
		if err != nil {
			d.srv.Shutdown(context.Background())
			closeManager()
			return err
		}
		go func() {
			if err := d.srv.ServeDirect(d.direct.lis); err != nil {
				serveErr <- fmt.Errorf("--direct-socket: %w", err)
			}
		}()
		log.Info("direct connections served", slog.String("direct_socket", cfg.directSocket))
	}
	inh.closeUnused(log)
	servingAt := time.Now()
	log.Info("plugind started", slog.String("plugin_dir", d.m.PluginDir()), slog.String("state_dir", cfg.stateDir), slog.Int("pid", os.Getpid()),
		slog.String("containment", d.m.Containment()), slog.Bool("live_restore", cfg.liveRestore))

	if !reloaded {
		<-d.startRestore(ctx)
	} else {
		<-restored
	}
	d.afterRestore(ctx)
	if d.fm != nil {
		// After the restore: the agent adopts what the node already runs.
		d.fm.start(ctx)
		log.Info("fleet agent started", slog.String("etcd", cfg.fleetEtcd), slog.String("prefix", cfg.fleetPrefix))
	}
	ready.Store(true)
	if reloaded {
		// What the previous image left open for us to close (its
		// connections to the plugins), now that the reload is done.
		go closeFDs(inh.daemon.CloseFDs)
		took := time.Since(inh.daemon.ReloadStarted)
		log.Info("plugind reloaded in place", slog.String("from_version", inh.daemon.Version), slog.String("version", versionString()),
			slog.Int("plugins", len(d.m.List())), slog.Duration("took", took),
			slog.Duration("drain", inh.daemon.Written.Sub(inh.daemon.ReloadStarted)), slog.Duration("exec", reloadStart.Sub(inh.daemon.Written)),
			slog.Duration("serving_after", servingAt.Sub(inh.daemon.ReloadStarted)), slog.Duration("this_image", time.Since(reloadStart)))
		notifyReady(log, fmt.Sprintf("serving %d plugins (reloaded from %s in %v)", len(d.m.List()), inh.daemon.Version, took.Round(time.Millisecond)))
	} else {
		notifyReady(log, fmt.Sprintf("serving %d plugins", len(d.m.List())))
	}
	wctx, stopWatchdog := context.WithCancel(ctx)
	defer stopWatchdog()
	go watchdog(wctx, log, d.m)

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			break loop
		case runErr = <-serveErr:
			break loop
		case <-hup:
			// Only returns when the reload did not happen: the running
			// image carries on (or, past the point of no return, stops).
			if err := d.reload(ctx); err != nil {
				var fatal *fatalReloadError
				if errors.As(err, &fatal) && cfg.liveRestore {
					// As after a crash: the reaper keeps the plugins, and
					// the service manager's restart adopts them.
					log.Error("plugind exits; with live restore its plugins keep running for the next plugind", slog.String("error", err.Error()))
					os.Exit(exitFailed)
				}
				if errors.As(err, &fatal) {
					runErr = err
					break loop
				}
				log.Error("reload refused: plugind carries on unchanged", slog.String("error", err.Error()))
				notifyReady(log, "reload failed: "+err.Error())
			}
		}
	}
	ready.Store(false)
	stopWatchdog()
	notifyStopping()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if d.fm != nil {
		d.fm.close() // the node leaves the fleet before its plugins stop
		d.fm = nil
	}
	d.srv.Shutdown(sctx) // NOT_SERVING, streams end, calls in flight finish
	if d.metrics != nil {
		_ = d.metrics.Shutdown(sctx)
	}
	closeManager() // plugins stop (desired state stays in the store)
	d.eps.Shutdown()
	for _, l := range d.listeners {
		l.cleanup()
	}
	if d.direct != nil {
		d.direct.lis.Close()
		d.direct.cleanup()
	}
	if cfg.liveRestore {
		clearLiveRestore(cfg.stateDir)
	}
	log.Info("plugind stopped")
	return runErr
}

// startRestore relaunches (or, after a reload or a crash with live
// restore, takes over) what was loaded before; the channel is closed once
// every plugin is decided.
func (d *image) startRestore(ctx context.Context) <-chan struct{} {
	start := time.Now()
	done, err := d.m.RestoreInBackground(ctx)
	out := make(chan struct{})
	go func() {
		defer close(out)
		if err != nil {
			d.log.Error("restore failed", slog.String("error", err.Error()))
			return
		}
		<-done
		d.log.Info("desired state restored", slog.Int("plugins", len(d.m.List())), slog.Duration("took", time.Since(start)))
	}()
	return out
}

// afterRestore loads what --load asks for and the store did not have.
func (d *image) afterRestore(ctx context.Context) {
	for _, l := range d.cfg.loads {
		name, binary, ok := strings.Cut(l, "=")
		if !ok {
			binary = name
		}
		if _, err := d.m.Get(name); err == nil {
			continue // restored from the store
		}
		if _, err := d.m.Load(manager.WithCaller(ctx, "plugind --load"), manager.Spec{Name: name, Binary: binary}); err != nil {
			d.log.Error("--load failed", slog.String("plugin", name), slog.String("error", err.Error()))
		}
	}
}

// serveMetrics serves /metrics (Prometheus text or OpenMetrics, as the
// scraper asks), and for HTTP probes (Kubernetes httpGet) /healthz (200
// while the gRPC server serves, 503 once it shuts down) and /readyz (200
// once the plugins are restored and the listeners serve, until shutdown).
func serveMetrics(addr string, met *metrics.Metrics, srv *server.Server, ready *atomic.Bool, log *slog.Logger, inherited net.Listener) (*http.Server, net.Listener, error) {
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
	lis := inherited
	if lis == nil {
		var err error
		if lis, err = listenTCP(addr); err != nil {
			return nil, nil, fmt.Errorf("--metrics-listen: %w", err)
		}
	}
	go func() {
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", slog.String("error", err.Error()))
		}
	}()
	log.Info("metrics serving", slog.String("listen", "http://"+lis.Addr().String()+"/metrics"), slog.String("probes", "/healthz /readyz"))
	return hs, lis, nil
}
