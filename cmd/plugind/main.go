// Command plugind is the plugincontrol daemon: it runs plugin processes
// under a manager.Manager and serves the control API over gRPC.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/plugincontrol/plugincontrol/client"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/server"
)

const usage = `plugind: the plugincontrol daemon.

Runs plugin binaries from --plugin-dir under hashicorp/go-plugin, reloads them
with try-activate semantics and serves the control API
(plugincontrol.v1.PluginControlService, PluginGatewayService, grpc.health.v1
and server reflection) on --listen.

Usage:
  plugind [flags]

Flags:
`

type config struct {
	pluginDir       string
	stateDir        string
	listen          string
	logLevel        string
	logFormat       string
	loads           []string
	startTimeout    time.Duration
	drainTimeout    time.Duration
	shutdownTimeout time.Duration
}

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "plugind: %v\n", err)
		return 2
	}
	log, err := newLogger(cfg.logLevel, cfg.logFormat, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "plugind: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, cfg, log); err != nil {
		log.Error("plugind failed", slog.String("error", err.Error()))
		return 1
	}
	return 0
}

func parseFlags(args []string, out io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("plugind", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, usage)
		fs.PrintDefaults()
		fmt.Fprint(out, "\nSignals: SIGTERM or SIGINT drain and stop everything, then exit 0.\nExit codes: 0 clean stop, 1 runtime failure, 2 bad flags.\n")
	}
	fs.StringVar(&cfg.pluginDir, "plugin-dir", "plugins", "directory plugin binaries are resolved in (the API never runs anything outside it)")
	fs.StringVar(&cfg.stateDir, "state-dir", defaultStateDir(), "directory for the daemon's socket and state (created mode 0700)")
	fs.StringVar(&cfg.listen, "listen", "", "address to serve on: unix://PATH or tcp://HOST:PORT (loopback only until TLS is configured) (default unix://<state-dir>/plugind.sock)")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "log format: text or json")
	fs.Func("load", "load a plugin at start: NAME or NAME=BINARY (repeatable)", func(v string) error {
		cfg.loads = append(cfg.loads, v)
		return nil
	})
	fs.DurationVar(&cfg.startTimeout, "start-timeout", 10*time.Second, "default launch+handshake timeout of a plugin")
	fs.DurationVar(&cfg.drainTimeout, "drain-timeout", 30*time.Second, "default time in-flight calls get to finish before a generation is stopped")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long SIGTERM waits for streams and calls before stopping hard")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q (see --help)", fs.Args())
	}
	if cfg.listen == "" {
		cfg.listen = "unix://" + filepath.Join(cfg.stateDir, "plugind.sock")
	}
	return cfg, nil
}

// defaultStateDir is shared with pluginctl's default address.
func defaultStateDir() string { return client.DefaultStateDir() }

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
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
}

// listen opens the control socket. A unix socket is created mode 0600; a
// stale socket file from a crashed daemon is replaced, a live one is not.
func listen(addr string) (net.Listener, error) {
	switch {
	case strings.HasPrefix(addr, "unix://"):
		path := strings.TrimPrefix(addr, "unix://")
		if path == "" {
			return nil, fmt.Errorf("--listen %q: empty socket path", addr)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		if _, err := os.Stat(path); err == nil {
			if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
				c.Close()
				return nil, fmt.Errorf("--listen %q: another daemon is serving on this socket", addr)
			}
			if err := os.Remove(path); err != nil {
				return nil, fmt.Errorf("removing stale socket: %w", err)
			}
		}
		old := syscall.Umask(0o077)
		lis, err := net.Listen("unix", path)
		syscall.Umask(old)
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(path, 0o600); err != nil {
			lis.Close()
			return nil, err
		}
		return lis, nil
	case strings.HasPrefix(addr, "tcp://"):
		hostport := strings.TrimPrefix(addr, "tcp://")
		host, _, err := net.SplitHostPort(hostport)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: %w", addr, err)
		}
		ip := net.ParseIP(host)
		if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("--listen %q: plaintext TCP is only allowed on loopback addresses (127.0.0.1, [::1], localhost)", addr)
		}
		return net.Listen("tcp", hostport)
	default:
		return nil, fmt.Errorf("--listen %q: want unix://PATH or tcp://HOST:PORT", addr)
	}
}

func serve(ctx context.Context, cfg config, log *slog.Logger) error {
	if err := os.MkdirAll(cfg.stateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	sockDir := filepath.Join(cfg.stateDir, "sockets")
	if abs, err := filepath.Abs(sockDir); err != nil || len(abs) > 60 {
		// Unix socket paths are limited to 107 bytes; leave room for
		// go-plugin's names, else use a fresh directory under $TMPDIR.
		sockDir = ""
	} else {
		_ = os.RemoveAll(sockDir) // stale sockets of a previous run
	}
	m, err := manager.New(manager.Config{
		PluginDir:    cfg.pluginDir,
		SocketDir:    sockDir,
		Logger:       log,
		StartTimeout: cfg.startTimeout,
		DrainTimeout: cfg.drainTimeout,
	})
	if err != nil {
		return err
	}
	closeManager := func() {
		cctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
		defer cancel()
		_ = m.Close(cctx)
	}
	lis, err := listen(cfg.listen)
	if err != nil {
		closeManager()
		return err
	}
	srv := server.New(m, server.WithLogger(log))
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	log.Info("plugind serving", slog.String("listen", cfg.listen), slog.String("plugin_dir", m.PluginDir()), slog.Int("pid", os.Getpid()))

	for _, l := range cfg.loads {
		name, binary, ok := strings.Cut(l, "=")
		if !ok {
			binary = name
		}
		if _, err := m.Load(ctx, manager.Spec{Name: name, Binary: binary}); err != nil {
			log.Error("--load failed", slog.String("plugin", name), slog.String("error", err.Error()))
		}
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-serveErr:
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	srv.Shutdown(sctx)
	closeManager()
	if strings.HasPrefix(cfg.listen, "unix://") {
		_ = os.Remove(strings.TrimPrefix(cfg.listen, "unix://"))
	}
	log.Info("plugind stopped")
	return runErr
}
