package endpoint_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin/examples/grpc/proto"
	"github.com/plugincontrol/plugincontrol/endpoint"
	examplev1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/example/v1"
	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// fixture is a manager whose plugins are served by an endpoint.Server.
type fixture struct {
	m   *manager.Manager
	eps *endpoint.Server
}

func newFixture(t *testing.T, opts ...endpoint.Option) *fixture {
	t.Helper()
	root, err := os.MkdirTemp("", "ep-")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	eps, err := endpoint.New(filepath.Join(root, "plugins"), append([]endpoint.Option{endpoint.WithLogger(log)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manager.New(manager.Config{PluginDir: pluginDir, SocketDir: filepath.Join(root, "s"), Logger: log, Endpoints: eps})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = m.Close(ctx)
		eps.Shutdown()
		if left, _ := filepath.Glob(filepath.Join(root, "plugins", "*")); len(left) > 0 {
			t.Errorf("endpoint sockets left: %v", left)
		}
		os.RemoveAll(root)
	})
	return &fixture{m: m, eps: eps}
}

func tickerSpec(name string) manager.Spec {
	return manager.Spec{Name: name, Binary: "ticker", Handshake: &manager.Handshake{ProtocolVersion: 1, MagicCookieKey: "TICKER_PLUGIN", MagicCookieValue: "tick"}}
}

func kvSpec(name string) manager.Spec {
	h := testbin.KVHandshake
	return manager.Spec{Name: name, Binary: "kv", Handshake: &manager.Handshake{ProtocolVersion: h.ProtocolVersion, MagicCookieKey: h.MagicCookieKey, MagicCookieValue: h.MagicCookieValue}}
}

// dial connects to a plugin's endpoint address.
func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	if !strings.HasPrefix(addr, "unix:///") {
		t.Fatalf("endpoint address %q", addr)
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (f *fixture) load(t *testing.T, spec manager.Spec) manager.Status {
	t.Helper()
	res, err := f.m.Load(context.Background(), spec)
	if err != nil {
		t.Fatalf("Load %s: %v", spec.Name, err)
	}
	return res.Status
}

// The endpoint is a 0600 socket with a stable address; the plugin's own
// typed API works through it, statuses of the plugin pass through
// untouched, and it is gone after Unload.
func TestEndpointForwardsTypedAPI(t *testing.T) {
	f := newFixture(t)
	st := f.load(t, kvSpec("kv"))
	path := strings.TrimPrefix(st.Endpoint, "unix://")
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("endpoint %s: %v %v", path, fi.Mode(), err)
	}
	kv := proto.NewKVClient(dial(t, st.Endpoint))
	ctx := context.Background()
	if _, err := kv.Put(ctx, &proto.PutRequest{Key: "ep", Value: []byte("through the endpoint")}); err != nil {
		t.Fatalf("Put: %v", err)
	}
	got, err := kv.Get(ctx, &proto.GetRequest{Key: "ep"})
	if err != nil || !strings.HasPrefix(string(got.GetValue()), "through the endpoint") {
		t.Fatalf("Get: %q %v", got.GetValue(), err)
	}
	// The plugin's own error: its code and message, no plugind ErrorInfo.
	_, err = kv.Get(ctx, &proto.GetRequest{Key: "missing"})
	if status.Code(err) != codes.Unknown || !strings.Contains(err.Error(), "kv_missing: no such file") || rpcerr.Info(err) != nil {
		t.Fatalf("Get of a missing key: %v (info %v)", err, rpcerr.Info(err))
	}

	rr, err := f.m.Reload(ctx, manager.ReloadRequest{Name: "kv"})
	if err != nil || rr.Status.Endpoint != st.Endpoint {
		t.Fatalf("reload: %v; endpoint %q, was %q", err, rr.Status.Endpoint, st.Endpoint)
	}
	if _, err := kv.Get(ctx, &proto.GetRequest{Key: "ep"}); err != nil {
		t.Fatalf("Get after reload on the same connection: %v", err)
	}
	if _, err := f.m.Unload(ctx, "kv", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("endpoint socket after Unload: %v", err)
	}
}

// Unary, server-streaming, client-streaming and bidi calls all pass,
// with request metadata in and response headers and trailers out.
func TestEndpointAllCallKinds(t *testing.T) {
	f := newFixture(t)
	st := f.load(t, tickerSpec("ticker"))
	c := examplev1.NewTickerServiceClient(dial(t, st.Endpoint))
	ctx := context.Background()

	who, err := c.Whoami(ctx, &examplev1.WhoamiRequest{})
	if err != nil || who.GetPid() != int64(st.PID) {
		t.Fatalf("Whoami: %v %v (pid %d)", who, err, st.PID)
	}
	ticks, err := c.Ticks(ctx, &examplev1.TicksRequest{Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	for i := uint32(1); i <= 3; i++ {
		m, err := ticks.Recv()
		if err != nil || m.GetSeq() != i {
			t.Fatalf("tick %d: %v %v", i, m, err)
		}
	}
	if _, err := ticks.Recv(); err != io.EOF {
		t.Fatalf("after the last tick: %v", err)
	}
	col, err := c.Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"a", "b", "c"} {
		if err := col.Send(&examplev1.CollectRequest{Text: s}); err != nil {
			t.Fatal(err)
		}
	}
	sum, err := col.CloseAndRecv()
	if err != nil || sum.GetCount() != 3 || sum.GetJoined() != "a,b,c" {
		t.Fatalf("Collect: %v %v", sum, err)
	}
	chat, err := c.Chat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"x", "y"} {
		if err := chat.Send(&examplev1.ChatRequest{Text: s}); err != nil {
			t.Fatal(err)
		}
		m, err := chat.Recv()
		if err != nil || m.GetText() != s {
			t.Fatalf("chat %q: %v %v", s, m, err)
		}
	}
	_ = chat.CloseSend()
	if _, err := chat.Recv(); err != io.EOF {
		t.Fatalf("chat end: %v", err)
	}

	// go-plugin's grpc.health.v1 answers through the endpoint too, and an
	// unknown method gets the plugin's own Unimplemented.
	conn := dial(t, st.Endpoint)
	err = conn.Invoke(ctx, "/plugincontrol.example.v1.TickerService/Nope", &examplev1.WhoamiRequest{}, &examplev1.WhoamiResponse{})
	if status.Code(err) != codes.Unimplemented || rpcerr.Info(err) != nil {
		t.Fatalf("unknown method: %v", err)
	}
	// go-plugin's own plumbing is not reachable: a caller must not be able
	// to shut the plugin down or take its stdio.
	err = conn.Invoke(ctx, "/plugin.GRPCController/Shutdown", &examplev1.WhoamiRequest{}, &examplev1.WhoamiResponse{})
	if info := rpcerr.Info(err); status.Code(err) != codes.PermissionDenied || info.GetReason() != rpcerr.ReasonInternalService {
		t.Fatalf("go-plugin's controller through the endpoint: %v", err)
	}
	if who, err := c.Whoami(ctx, &examplev1.WhoamiRequest{}); err != nil || who.GetPid() != int64(st.PID) {
		t.Fatalf("after the refused Shutdown: %v %v", who, err)
	}
}

// Metadata passes both ways (the daemon's own keys stripped), and a
// native plugin answers through its PluginService at its endpoint, its
// recovered panics counted by the manager.
func TestEndpointMetadataAndNativePlugin(t *testing.T) {
	f := newFixture(t, endpoint.WithStrippedMetadata("authorization"))
	st := f.load(t, tickerSpec("ticker"))
	tc := examplev1.NewTickerServiceClient(dial(t, st.Endpoint))
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-trace", "t1", "authorization", "Bearer secret")
	var hdr, tr metadata.MD
	who, err := tc.Whoami(ctx, &examplev1.WhoamiRequest{}, grpc.Header(&hdr), grpc.Trailer(&tr))
	if err != nil {
		t.Fatal(err)
	}
	pid := fmt.Sprint(st.PID)
	if who.GetMetadata()["x-trace"] != "t1" || who.GetMetadata()["authorization"] != "" {
		t.Fatalf("request metadata the plugin saw: %v", who.GetMetadata())
	}
	if fmt.Sprint(hdr.Get("x-ticker-pid")) != "["+pid+"]" || fmt.Sprint(tr.Get("x-ticker-done")) != "["+pid+"]" {
		t.Fatalf("response header %v, trailer %v", hdr, tr)
	}

	es := f.load(t, manager.Spec{Name: "echo", Binary: "echo"})
	if es.Endpoint == "" || fmt.Sprint(es.Services) != "[plugincontrol.plugin.v1.PluginService]" {
		t.Fatalf("native status: %+v", es)
	}
	c := pluginv1.NewPluginServiceClient(dial(t, es.Endpoint))
	resp, err := c.Invoke(context.Background(), &pluginv1.InvokeRequest{Method: "echo", Payload: []byte("hi")})
	if err != nil || string(resp.GetPayload()) != "hi" {
		t.Fatalf("Invoke through the endpoint: %v %v", resp, err)
	}
	_, err = c.Invoke(context.Background(), &pluginv1.InvokeRequest{Method: "panic", Payload: []byte("boom")})
	if status.Code(err) != codes.Internal || len(status.Convert(err).Details()) == 0 {
		t.Fatalf("panic through the endpoint: %v", err)
	}
	hs, _, _ := f.m.Health([]string{"echo"})
	if hs[0].LifetimePanics != 1 || hs[0].State != manager.StateDegraded {
		t.Fatalf("panic not counted: %+v", hs[0])
	}
}

// Calls and streams in flight finish on the generation they started on;
// new calls go to the new generation; a stream longer than drain_timeout
// ends with Unavailable and plugind's ErrorInfo.
func TestEndpointStreamsAcrossReload(t *testing.T) {
	f := newFixture(t)
	st := f.load(t, tickerSpec("ticker"))
	c := examplev1.NewTickerServiceClient(dial(t, st.Endpoint))
	ctx := context.Background()

	ticks, err := c.Ticks(ctx, &examplev1.TicksRequest{Count: 10, IntervalMs: 50})
	if err != nil {
		t.Fatal(err)
	}
	first, err := ticks.Recv()
	if err != nil {
		t.Fatal(err)
	}
	chat, err := c.Chat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := chat.Send(&examplev1.ChatRequest{Text: "before"}); err != nil {
		t.Fatal(err)
	}
	if m, err := chat.Recv(); err != nil || m.GetPid() != int64(st.PID) {
		t.Fatalf("chat before: %v %v", m, err)
	}
	// The reload drains: it returns once both streams have ended.
	reloaded := make(chan *manager.ReloadResult, 1)
	go func() {
		rr, err := f.m.Reload(ctx, manager.ReloadRequest{Name: "ticker", DrainTimeout: 10 * time.Second})
		if err != nil {
			t.Errorf("Reload: %v", err)
		}
		reloaded <- rr
	}()
	// New calls reach the new generation while the old streams go on.
	deadline := time.Now().Add(5 * time.Second)
	for {
		who, err := c.Whoami(ctx, &examplev1.WhoamiRequest{})
		if err != nil {
			t.Fatalf("Whoami during the reload: %v", err)
		}
		if who.GetPid() != int64(st.PID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no new generation")
		}
		time.Sleep(5 * time.Millisecond) // paces the calls: each must succeed, whichever generation answers
	}
	if err := chat.Send(&examplev1.ChatRequest{Text: "after"}); err != nil {
		t.Fatal(err)
	}
	if m, err := chat.Recv(); err != nil || m.GetPid() != int64(st.PID) {
		t.Fatalf("chat after the swap must stay on the old generation: %v %v", m, err)
	}
	_ = chat.CloseSend()
	if _, err := chat.Recv(); err != io.EOF {
		t.Fatalf("chat end: %v", err)
	}
	n := 1
	for {
		m, err := ticks.Recv()
		if err == io.EOF {
			break
		}
		if err != nil || m.GetPid() != first.GetPid() {
			t.Fatalf("tick %d: %v %v", n, m, err)
		}
		n++
	}
	if n != 10 {
		t.Fatalf("%d ticks on the old generation, want 10", n)
	}
	rr := <-reloaded
	// The two streams, and perhaps a Whoami of the loop above that was in
	// flight on the old generation at the swap.
	if rr.Report.DrainedCalls < 2 || rr.Report.DrainedCalls > 3 || rr.Report.DrainTimedOut {
		t.Fatalf("drain report: %+v", rr.Report)
	}
	if !testbin.WaitGone(st.PID, 5*time.Second) {
		t.Fatal("old generation still running")
	}

	// Longer than drain_timeout: Unavailable with plugind's ErrorInfo.
	long, err := c.Ticks(ctx, &examplev1.TicksRequest{Count: 1000, IntervalMs: 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := long.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Reload(ctx, manager.ReloadRequest{Name: "ticker", DrainTimeout: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err = long.Recv()
		if err != nil {
			break
		}
	}
	info := rpcerr.Info(err)
	if status.Code(err) != codes.Unavailable || info == nil || info.GetReason() != rpcerr.ReasonGenerationStopped || info.GetMetadata()["plugin"] != "ticker" {
		t.Fatalf("stream past drain_timeout: %v (info %v)", err, info)
	}
}

// 5 reloads while 4 callers call Get through the endpoint: no call fails.
func TestEndpointReloadsUnderLoad(t *testing.T) {
	f := newFixture(t)
	st := f.load(t, kvSpec("kv"))
	kv := proto.NewKVClient(dial(t, st.Endpoint))
	ctx := context.Background()
	if _, err := kv.Put(ctx, &proto.PutRequest{Key: "load", Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	loop := testbin.StartLoop(4, func() error {
		_, err := kv.Get(ctx, &proto.GetRequest{Key: "load"})
		return err
	})
	pids := []int{st.PID}
	for range 5 {
		rr, err := f.m.Reload(ctx, manager.ReloadRequest{Name: "kv"})
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, rr.Status.PID)
		time.Sleep(20 * time.Millisecond) // time is what is tested: the load runs on each generation a while
	}
	if calls, failed, first := loop.Stop(); calls < 20 || failed != 0 {
		t.Fatalf("%d calls, %d failed: %v", calls, failed, first)
	}
	for _, p := range pids[:5] {
		if !testbin.WaitGone(p, 5*time.Second) {
			t.Fatalf("pid %d of an old generation still running", p)
		}
	}
}

// Failures of plugind itself carry an ErrorInfo: no generation serves.
func TestEndpointErrorsOfPlugind(t *testing.T) {
	f := newFixture(t)
	st := f.load(t, manager.Spec{Name: "crash", Binary: "crasher", Config: []byte("crash_after=10ms"),
		Policy: manager.HealthPolicy{RestartLimit: 1, BackoffInitial: time.Millisecond}})
	c := pluginv1.NewPluginServiceClient(dial(t, st.Endpoint))
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	h, err := f.m.WaitHealth(wctx, "crash", func(h manager.Health) bool { return h.State == manager.StateUnhealthy })
	wcancel()
	if err != nil {
		t.Fatalf("crasher never UNHEALTHY: %+v", h)
	}
	_, err = c.Describe(context.Background(), &pluginv1.DescribeRequest{})
	info := rpcerr.Info(err)
	if status.Code(err) != codes.Unavailable || info == nil || info.GetReason() != rpcerr.ReasonPluginUnavailable {
		t.Fatalf("call with no serving generation: %v (info %v)", err, info)
	}
}

// The shared TCP endpoint routes by the plugincontrol-plugin key.
func TestEndpointTCP(t *testing.T) {
	f := newFixture(t)
	f.load(t, kvSpec("kv"))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- f.eps.ServeTCP(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kv := proto.NewKVClient(conn)
	ctx := context.Background()
	_, err = kv.Get(ctx, &proto.GetRequest{Key: "x"})
	if info := rpcerr.Info(err); status.Code(err) != codes.InvalidArgument || info.GetReason() != rpcerr.ReasonPluginNotSelected {
		t.Fatalf("no plugin named: %v", err)
	}
	_, err = kv.Get(metadata.AppendToOutgoingContext(ctx, endpoint.PluginKey, "nope"), &proto.GetRequest{Key: "x"})
	if info := rpcerr.Info(err); status.Code(err) != codes.NotFound || info.GetReason() != rpcerr.ReasonPluginNotFound {
		t.Fatalf("unknown plugin: %v", err)
	}
	kctx := metadata.AppendToOutgoingContext(ctx, endpoint.PluginKey, "kv")
	if _, err := kv.Put(kctx, &proto.PutRequest{Key: "tcp", Value: []byte("v")}); err != nil {
		t.Fatalf("Put over TCP: %v", err)
	}
	f.eps.Shutdown()
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		t.Fatalf("ServeTCP: %v", err)
	}
}

// A unary call (the shorter path) outliving drain_timeout also ends with
// Unavailable and plugind's ErrorInfo, and the generation's unary methods
// are known from reflection.
func TestEndpointUnaryPastDrain(t *testing.T) {
	f := newFixture(t)
	st := f.load(t, manager.Spec{Name: "echo", Binary: "echo"})
	ctx := context.Background()
	l, err := f.m.Acquire(ctx, "echo")
	if err != nil {
		t.Fatal(err)
	}
	if !l.Unary("/plugincontrol.plugin.v1.PluginService/Invoke") || l.Unary("/plugincontrol.plugin.v1.PluginService/Nope") {
		t.Fatal("native unary methods not known")
	}
	l.Release()
	tk := f.load(t, tickerSpec("ticker"))
	l, err = f.m.Acquire(ctx, "ticker")
	if err != nil {
		t.Fatal(err)
	}
	if !l.Unary("/plugincontrol.example.v1.TickerService/Echo") || l.Unary("/plugincontrol.example.v1.TickerService/Ticks") || l.Unary("/plugincontrol.example.v1.TickerService/Chat") {
		t.Fatalf("ticker %v: unary methods from reflection wrong", tk.Services)
	}
	l.Release()

	c := pluginv1.NewPluginServiceClient(dial(t, st.Endpoint))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Invoke(ctx, &pluginv1.InvokeRequest{Method: "sleep", Payload: []byte("5s")})
		errc <- err
	}()
	// The drain report below proves the call was in flight when the
	// reload swapped.
	time.Sleep(200 * time.Millisecond) // time is what is tested: the call reaches the plugin within it
	rr, err := f.m.Reload(ctx, manager.ReloadRequest{Name: "echo", DrainTimeout: 200 * time.Millisecond})
	if err != nil || !rr.Report.DrainTimedOut || rr.Report.DrainedCalls != 1 {
		t.Fatalf("reload: %v %+v", err, rr.Report)
	}
	err = <-errc
	if info := rpcerr.Info(err); status.Code(err) != codes.Unavailable || info.GetReason() != rpcerr.ReasonGenerationStopped {
		t.Fatalf("unary call past drain_timeout: %v", err)
	}
}

// With the daemon's auth, an endpoint call needs role invoker (health
// checks open when the config opens them), and the daemon's token never
// reaches the plugin.
func TestEndpointAuth(t *testing.T) {
	cfg := &server.AuthConfig{
		Tokens: []server.TokenIdentity{
			{Name: "dash", Token: "viewer-token-0123456789", Roles: []string{server.RoleViewer}},
			{Name: "svc", Token: "invoker-token-0123456789", Roles: []string{server.RoleInvoker}},
		},
		Open: []string{"health"},
	}
	f := newFixture(t, endpoint.WithStrippedMetadata("authorization"),
		endpoint.WithServerOptions(grpc.ChainStreamInterceptor(server.EndpointInterceptors(cfg, slog.New(slog.DiscardHandler))...)))
	st := f.load(t, tickerSpec("ticker"))
	conn := dial(t, st.Endpoint)
	tc := examplev1.NewTickerServiceClient(conn)
	ctx := context.Background()
	bearer := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	if _, err := tc.Whoami(ctx, &examplev1.WhoamiRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: %v", err)
	}
	if _, err := tc.Whoami(bearer("viewer-token-0123456789"), &examplev1.WhoamiRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("viewer: %v", err)
	}
	who, err := tc.Whoami(bearer("invoker-token-0123456789"), &examplev1.WhoamiRequest{})
	if err != nil || who.GetMetadata()["authorization"] != "" {
		t.Fatalf("invoker: %v; the plugin saw %v", err, who.GetMetadata())
	}
	if resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "plugin"}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("open health check through the endpoint: %v %v", resp, err)
	}
}
