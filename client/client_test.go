package client

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

func TestParseAddr(t *testing.T) {
	tests := []struct {
		addr    string
		network string
		path    string
		target  string
	}{
		{"unix:///run/plugind/plugind.sock", "unix", "/run/plugind/plugind.sock", "unix:///run/plugind/plugind.sock"},
		{"unix:/run/plugind.sock", "unix", "/run/plugind.sock", "unix:///run/plugind.sock"},
		{"unix:plugind.sock", "unix", "plugind.sock", "unix:plugind.sock"},
		{"unix:state/plugind.sock", "unix", "state/plugind.sock", "unix:state/plugind.sock"},
		{"unix://state/plugind.sock", "unix", "state/plugind.sock", "unix:state/plugind.sock"},
		{"unix://./plugind.sock", "unix", "./plugind.sock", "unix:./plugind.sock"},
		{"unix:///tmp/with space.sock", "unix", "/tmp/with space.sock", "unix:///tmp/with%20space.sock"},
		{"tcp://127.0.0.1:7443", "tcp", "", "dns:///127.0.0.1:7443"},
		{"tcp://plugind.example:7443", "tcp", "", "dns:///plugind.example:7443"},
		{"tcp://[::1]:7443", "tcp", "", "dns:///[::1]:7443"},
	}
	for _, tt := range tests {
		ep, err := parseAddr(tt.addr)
		if err != nil {
			t.Errorf("parseAddr(%q): %v", tt.addr, err)
			continue
		}
		if ep.network != tt.network || ep.path != tt.path || ep.target != tt.target {
			t.Errorf("parseAddr(%q) = %+v, want network %q path %q target %q", tt.addr, ep, tt.network, tt.path, tt.target)
		}
	}
}

func TestParseAddrErrors(t *testing.T) {
	for _, addr := range []string{
		"",
		"unix:",
		"unix://",
		"/run/plugind.sock",
		"plugind.sock",
		"http://127.0.0.1:80",
		"tcp://",
		"tcp://127.0.0.1",
		"tcp://:7443",
		"tcp://127.0.0.1:",
		"tcp://127.0.0.1:7443/path",
		"unix:///tmp/a?b",
		"127.0.0.1:7443",
	} {
		_, err := parseAddr(addr)
		if err == nil {
			t.Errorf("parseAddr(%q): no error", addr)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "\""+addr+"\"") || !strings.Contains(msg, addrForms) {
			t.Errorf("parseAddr(%q) error %q does not name the address and the accepted forms", addr, msg)
		}
	}
}

func TestDialErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := Dial(ctx, "bogus"); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("Dial(bogus) = %v", err)
	}
	if _, err := Dial(ctx, "tcp://plugind.example:7443", WithToken("s3cret")); err == nil || !strings.Contains(err.Error(), "clear text") {
		t.Errorf("token over plaintext remote tcp: %v", err)
	}
	if _, err := Dial(ctx, "unix:///tmp/x.sock", WithToken("")); err == nil {
		t.Error("empty token accepted")
	}
	if _, err := Dial(ctx, "unix:///tmp/x.sock", WithToken("a\nb")); err == nil {
		t.Error("token with newline accepted")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Dial(cctx, "unix:///tmp/x.sock"); err == nil {
		t.Error("Dial with canceled context succeeded")
	}
	// Loopback plaintext TCP may carry a token; TLS to anywhere may.
	for _, c := range []struct {
		addr string
		opts []Option
	}{
		{"tcp://127.0.0.1:1", []Option{WithToken("t")}},
		{"tcp://localhost:1", []Option{WithToken("t")}},
		{"tcp://[::1]:1", []Option{WithToken("t")}},
		{"tcp://plugind.example:7443", []Option{WithToken("t"), WithTLS(nil)}},
	} {
		cl, err := Dial(ctx, c.addr, c.opts...)
		if err != nil {
			t.Errorf("Dial(%s): %v", c.addr, err)
			continue
		}
		cl.Close()
	}
}

func TestDefaults(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "/xdg/state")
	t.Setenv("HOME", "/home/op")
	t.Setenv("PLUGIND_ADDR", "")
	if got := DefaultStateDir(); got != "/xdg/state/plugind" {
		t.Errorf("DefaultStateDir with XDG_STATE_HOME = %q", got)
	}
	if got := DefaultAddr(); got != "unix:///xdg/state/plugind/plugind.sock" {
		t.Errorf("DefaultAddr = %q", got)
	}
	t.Setenv("XDG_STATE_HOME", "")
	if got := DefaultStateDir(); got != "/home/op/.local/state/plugind" {
		t.Errorf("DefaultStateDir without XDG_STATE_HOME = %q", got)
	}
	// A relative XDG_STATE_HOME is invalid per the XDG spec and ignored.
	t.Setenv("XDG_STATE_HOME", "relative")
	if got := DefaultStateDir(); got != "/home/op/.local/state/plugind" {
		t.Errorf("DefaultStateDir with relative XDG_STATE_HOME = %q", got)
	}
	if _, err := parseAddr(DefaultAddr()); err != nil {
		t.Errorf("DefaultAddr does not parse: %v", err)
	}
	t.Setenv("PLUGIND_ADDR", "tcp://127.0.0.1:7443")
	if got := DefaultAddr(); got != "tcp://127.0.0.1:7443" {
		t.Errorf("DefaultAddr with PLUGIND_ADDR = %q", got)
	}
}

// fakeControl answers ListPlugins with the authorization header it received.
type fakeControl struct {
	plugincontrolv1.UnimplementedPluginControlServiceServer
}

func (fakeControl) ListPlugins(ctx context.Context, _ *plugincontrolv1.ListPluginsRequest) (*plugincontrolv1.ListPluginsResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	if len(auth) != 1 {
		return nil, status.Error(codes.Unauthenticated, "no token")
	}
	return &plugincontrolv1.ListPluginsResponse{Plugins: []*plugincontrolv1.PluginStatus{{Name: auth[0]}}}, nil
}

// serve starts a gRPC server of impl on a unix socket in a fresh
// directory.
func serve(t *testing.T, impl plugincontrolv1.PluginControlServiceServer) (sock string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "pc-client-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock = filepath.Join(dir, "d.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	plugincontrolv1.RegisterPluginControlServiceServer(srv, impl)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return sock
}

func TestDialUnixWithToken(t *testing.T) {
	sock := serve(t, fakeControl{})
	ctx := context.Background()

	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, sock)
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"unix://" + sock, "unix:" + sock, "unix:" + rel, "unix://" + rel} {
		c, err := Dial(ctx, addr, WithToken("s3cret"))
		if err != nil {
			t.Fatalf("Dial(%s): %v", addr, err)
		}
		resp, err := c.Control().ListPlugins(ctx, &plugincontrolv1.ListPluginsRequest{})
		if err != nil {
			t.Errorf("%s: ListPlugins: %v", addr, err)
		} else if got := resp.GetPlugins()[0].GetName(); got != "Bearer s3cret" {
			t.Errorf("%s: server saw authorization %q", addr, got)
		}
		if c.Gateway() == nil {
			t.Error("nil Gateway client")
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}

	// Without a token the fake server says Unauthenticated.
	c, err := Dial(ctx, "unix://"+sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Control().ListPlugins(ctx, &plugincontrolv1.ListPluginsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("without token: %v", err)
	}
}

func TestDialNoDaemon(t *testing.T) {
	dir, err := os.MkdirTemp("", "pc-client-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	c, err := Dial(context.Background(), "unix://"+filepath.Join(dir, "missing.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Control().ListPlugins(context.Background(), &plugincontrolv1.ListPluginsRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("ListPlugins without daemon: %v, want Unavailable", err)
	}
}
