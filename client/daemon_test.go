package client

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	pluginendpoint "github.com/plugincontrol/plugincontrol/endpoint"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/server"
)

// pluginDir holds the example plugins, built once by TestMain.
var pluginDir string

func TestMain(m *testing.M) { testbin.Main(m, &pluginDir, testbin.Plugins) }

// daemon is an in-process plugind: a real manager running real plugin
// processes, and the real gRPC server, on a unix socket.
type daemon struct {
	sock string
	dir  string
	eps  *pluginendpoint.Server
	m    *manager.Manager
	srv  *server.Server
	done chan struct{}
}

// daemonConfig tunes startDaemon.
type daemonConfig struct {
	sock          string // reuse this socket path (a daemon restart)
	healthHistory int
	bookmark      time.Duration
}

func startDaemon(cfg daemonConfig) (*daemon, error) {
	d := &daemon{done: make(chan struct{})}
	if cfg.sock == "" {
		dir, err := os.MkdirTemp("", "pc-client-")
		if err != nil {
			return nil, err
		}
		d.dir = dir
		cfg.sock = filepath.Join(dir, "plugind.sock")
	}
	d.sock = cfg.sock
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	eps, err := pluginendpoint.New(filepath.Join(filepath.Dir(cfg.sock), "plugins"), pluginendpoint.WithLogger(discard))
	if err != nil {
		return nil, err
	}
	d.eps = eps
	m, err := manager.New(manager.Config{PluginDir: pluginDir, Logger: discard, HealthHistory: cfg.healthHistory, Endpoints: eps})
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("unix", d.sock)
	if err != nil {
		_ = m.Close(context.Background())
		return nil, err
	}
	opts := []server.Option{server.WithLogger(discard)}
	if cfg.bookmark > 0 {
		opts = append(opts, server.WithBookmarkInterval(cfg.bookmark))
	}
	d.m, d.srv = m, server.New(m, opts...)
	go func() {
		defer close(d.done)
		_ = d.srv.Serve(lis)
	}()
	return d, nil
}

func (d *daemon) addr() string { return "unix://" + d.sock }

// stop shuts the server down (streams end with Unavailable), closes the
// manager (plugins stop) and removes the socket; the directory stays so
// that a new daemon can reuse the socket path.
func (d *daemon) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d.srv.Shutdown(ctx)
	<-d.done
	_ = d.m.Close(ctx)
	d.eps.Shutdown()
	_ = os.Remove(d.sock)
}

// newDaemon starts a daemon that stops at the end of the test.
func newDaemon(t *testing.T, cfg daemonConfig) *daemon {
	t.Helper()
	d, err := startDaemon(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.stop()
		if d.dir != "" {
			os.RemoveAll(d.dir)
		}
	})
	return d
}
