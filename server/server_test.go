package server_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/server"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

var pluginDir string

func TestMain(m *testing.M) { testbin.Main(m, &pluginDir, testbin.Plugins) }

type fixture struct {
	sock   string
	m      *manager.Manager
	srv    *server.Server
	conn   *grpc.ClientConn
	ctl    pb.PluginControlServiceClient
	gw     pb.PluginGatewayServiceClient
	health healthpb.HealthClient
}

// start runs a manager and server on a unix socket; both stop at cleanup.
func start(t *testing.T, opts ...server.Option) *fixture {
	t.Helper()
	return startWith(t, manager.Config{}, opts...)
}

// startWith is start with a manager configuration (PluginDir and Logger
// are set).
func startWith(t *testing.T, cfg manager.Config, opts ...server.Option) *fixture {
	t.Helper()
	cfg.PluginDir, cfg.Logger = pluginDir, slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := manager.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "d.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(m, append([]server.Option{server.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}, opts...)...)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(server.PeerCredListener(lis))
	}()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{sock: sock, m: m, srv: srv, conn: conn, ctl: pb.NewPluginControlServiceClient(conn), gw: pb.NewPluginGatewayServiceClient(conn), health: healthpb.NewHealthClient(conn)}
	t.Cleanup(func() {
		conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		_ = m.Close(ctx)
	})
	return f
}

func (f *fixture) load(t *testing.T, name, binary string) *pb.PluginStatus {
	t.Helper()
	res, err := f.ctl.Load(context.Background(), &pb.LoadRequest{Spec: &pb.PluginSpec{Name: name, Binary: binary}})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return res.GetPlugin()
}

// detail returns the last detail of type T in st, or T's zero value.
func detail[T any](st *status.Status) T {
	var out T
	for _, d := range st.Details() {
		if v, ok := d.(T); ok {
			out = v
		}
	}
	return out
}

func TestErrorCodesAndDetails(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	f.load(t, "echo", "echo")

	_, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "Bad Name", Binary: "echo"}})
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "name") {
		t.Fatalf("bad name: %v", err)
	}
	br := detail[*errdetails.BadRequest](st)
	if br == nil || br.GetFieldViolations()[0].GetField() != "name" {
		t.Fatalf("no BadRequest detail naming the field: %v", st.Details())
	}
	if _, err := f.ctl.Load(ctx, &pb.LoadRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("missing spec: %v", err)
	}
	if _, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "x", Binary: "../echo"}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("path traversal: %v", err)
	}
	if _, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "x", Binary: "missing"}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("missing binary: %v", err)
	}
	if _, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "x", Binary: "echo", StartTimeout: &durationpb.Duration{Seconds: -1}}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("negative duration: %v", err)
	}
	if _, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "echo", Binary: "echo"}}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := f.ctl.Unload(ctx, &pb.UnloadRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown: %v", err)
	}
	if _, err := f.ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo", ExpectedGeneration: 9}); status.Code(err) != codes.Aborted {
		t.Fatalf("generation mismatch: %v", err)
	}
	_, err = f.ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo", Spec: &pb.PluginSpec{Name: "echo", Binary: "notready"}})
	st = status.Convert(err)
	if st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "generation 1 stays active") {
		t.Fatalf("candidate failure: %v", err)
	}
	cf := detail[*pb.CandidateFailure](st)
	if cf == nil || cf.GetStage() != pb.CandidateStage_CANDIDATE_STAGE_READY || cf.GetActiveGeneration() != 1 || !strings.Contains(cf.GetMessage(), "backend database unreachable") {
		t.Fatalf("CandidateFailure detail: %v", cf)
	}
	_, err = f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "panic", Payload: []byte("boom")})
	st = status.Convert(err)
	pd := detail[*pluginv1.PanicDetail](st)
	if st.Code() != codes.Internal || pd == nil || pd.GetMessage() != "boom" || pd.GetFingerprint() == "" {
		t.Fatalf("panic: %v %v", err, pd)
	}
	if _, err := f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "nosuch"}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("unknown method passes the plugin's code through: %v", err)
	}
	if _, err := f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "nope", Method: "echo"}); status.Code(err) != codes.NotFound {
		t.Fatalf("invoke unknown plugin: %v", err)
	}
	list, err := f.ctl.ListPlugins(ctx, &pb.ListPluginsRequest{})
	if err != nil || len(list.GetPlugins()) != 1 || list.GetPlugins()[0].GetGeneration() != 1 {
		t.Fatalf("bad requests changed state: %v %v", list, err)
	}
}

func TestWatchHealthStream(t *testing.T) {
	f := start(t, server.WithBookmarkInterval(50*time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.load(t, "echo", "echo")
	stream, err := f.ctl.WatchHealth(ctx, &pb.WatchHealthRequest{Names: []string{"echo"}})
	if err != nil {
		t.Fatal(err)
	}
	recv := func() *pb.HealthEvent {
		t.Helper()
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		return r.GetEvent()
	}
	if e := recv(); e.GetType() != pb.HealthEventType_HEALTH_EVENT_TYPE_SNAPSHOT || e.GetHealth().GetState() != pb.PluginState_PLUGIN_STATE_SERVING {
		t.Fatalf("first event: %v", e)
	}
	synced := recv()
	if synced.GetType() != pb.HealthEventType_HEALTH_EVENT_TYPE_SYNCED {
		t.Fatalf("second event: %v", synced)
	}
	if e := recv(); e.GetType() != pb.HealthEventType_HEALTH_EVENT_TYPE_BOOKMARK || e.GetRevision() < synced.GetRevision() {
		t.Fatalf("bookmark: %v", e)
	}
	_, _ = f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "panic", Payload: []byte("p")})
	for {
		e := recv()
		if e.GetType() == pb.HealthEventType_HEALTH_EVENT_TYPE_CHANGED {
			if e.GetHealth().GetState() != pb.PluginState_PLUGIN_STATE_DEGRADED || e.GetHealth().GetLastPanic().GetMessage() != "p" {
				t.Fatalf("change: %v", e)
			}
			break
		}
	}
	// grpc.health.v1 mirror follows.
	waitHealth(t, f, "plugin/echo", healthpb.HealthCheckResponse_SERVING)
	if r, err := f.health.Check(ctx, &healthpb.HealthCheckRequest{Service: ""}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("daemon health: %v %v", r, err)
	}
	// Shutdown ends the stream with Unavailable.
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	go f.srv.Shutdown(sctx)
	for {
		_, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("stream ended with %v, want Unavailable", err)
			}
			break
		}
	}
}

// TestWatchHealthCompactView: a compact watcher gets the same events as a
// full one (same types, same revisions) carrying only name, state,
// generation and revision; an unknown view is InvalidArgument. Health of
// all plugins (served from a per-revision cache) follows the change.
func TestWatchHealthCompactView(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.load(t, "echo", "echo")
	open := func(view pb.HealthView) grpc.ServerStreamingClient[pb.WatchHealthResponse] {
		t.Helper()
		st, err := f.ctl.WatchHealth(ctx, &pb.WatchHealthRequest{View: view})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	recv := func(st grpc.ServerStreamingClient[pb.WatchHealthResponse]) *pb.HealthEvent {
		t.Helper()
		for {
			r, err := st.Recv()
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			if r.GetEvent().GetType() != pb.HealthEventType_HEALTH_EVENT_TYPE_BOOKMARK {
				return r.GetEvent()
			}
		}
	}
	full, compact := open(pb.HealthView_HEALTH_VIEW_FULL), open(pb.HealthView_HEALTH_VIEW_COMPACT)
	before, err := f.ctl.Health(ctx, &pb.HealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	again, err := f.ctl.Health(ctx, &pb.HealthRequest{})
	if err != nil || !proto.Equal(before, again) {
		t.Fatalf("Health at one revision differs: %v then %v (%v)", before, again, err)
	}
	// snapshot, SYNCED, then the change, in both views.
	for i := range 3 {
		if i == 2 {
			_, _ = f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "panic", Payload: []byte("p")})
		}
		fe, ce := recv(full), recv(compact)
		if fe.GetType() != ce.GetType() || fe.GetRevision() != ce.GetRevision() {
			t.Fatalf("event %d: full %v, compact %v", i, fe, ce)
		}
		fh, ch := fe.GetHealth(), ce.GetHealth()
		if fh == nil {
			continue
		}
		want := &pb.PluginHealth{Name: fh.GetName(), State: fh.GetState(), Generation: fh.GetGeneration(), Revision: fh.GetRevision()}
		if !proto.Equal(ch, want) || fh.GetSince() == nil {
			t.Fatalf("event %d: compact health %v, want %v (full %v)", i, ch, want, fh)
		}
		if i == 2 && (ch.GetState() != pb.PluginState_PLUGIN_STATE_DEGRADED || fh.GetLastPanic().GetMessage() != "p") {
			t.Fatalf("change: full %v, compact %v", fe, ce)
		}
	}
	after, err := f.ctl.Health(ctx, &pb.HealthRequest{})
	if err != nil || after.GetRevision() <= before.GetRevision() || after.GetPlugins()[0].GetLifetimePanics() != 1 {
		t.Fatalf("Health after the panic: %v (%v), before %v", after, err, before)
	}
	bad, err := f.ctl.WatchHealth(ctx, &pb.WatchHealthRequest{View: pb.HealthView(7)})
	if err == nil {
		_, err = bad.Recv()
	}
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "view") {
		t.Fatalf("view 7: %v, want InvalidArgument naming view", err)
	}
}

// TestHealthCompactView: Health with HEALTH_VIEW_COMPACT returns the same
// plugins at the same revision as the full view, each cut to name, state,
// generation and revision; both views of all plugins are cached apart (a
// change shows in both); names select the same way; an unknown view is
// InvalidArgument.
func TestHealthCompactView(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	f.load(t, "echo", "echo")
	f.load(t, "other", "echo")
	health := func(view pb.HealthView, names ...string) *pb.HealthResponse {
		t.Helper()
		r, err := f.ctl.Health(ctx, &pb.HealthRequest{Names: names, View: view})
		if err != nil {
			t.Fatalf("Health %v %v: %v", view, names, err)
		}
		return r
	}
	same := func(full, compact *pb.HealthResponse) {
		t.Helper()
		if full.GetRevision() != compact.GetRevision() || len(full.GetPlugins()) != len(compact.GetPlugins()) {
			t.Fatalf("full %v and compact %v differ in revision or plugins", full, compact)
		}
		for i, fh := range full.GetPlugins() {
			want := &pb.PluginHealth{Name: fh.GetName(), State: fh.GetState(), Generation: fh.GetGeneration(), Revision: fh.GetRevision()}
			if ch := compact.GetPlugins()[i]; !proto.Equal(ch, want) || fh.GetSince() == nil || len(fh.GetFailures()) == 0 {
				t.Fatalf("plugin %d: compact %v, want %v (full %v)", i, ch, want, fh)
			}
		}
	}
	// Twice each: the second answers come from the caches.
	for range 2 {
		same(health(pb.HealthView_HEALTH_VIEW_FULL), health(pb.HealthView_HEALTH_VIEW_COMPACT))
	}
	if r := health(pb.HealthView_HEALTH_VIEW_UNSPECIFIED); len(r.GetPlugins()) != 2 || r.GetPlugins()[0].GetSince() == nil {
		t.Fatalf("the default view is not the full one: %v", r)
	}
	_, _ = f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "panic", Payload: []byte("p")})
	full, compact := health(pb.HealthView_HEALTH_VIEW_FULL), health(pb.HealthView_HEALTH_VIEW_COMPACT)
	same(full, compact)
	if compact.GetPlugins()[0].GetState() != pb.PluginState_PLUGIN_STATE_DEGRADED {
		t.Fatalf("compact view after the panic: %v", compact)
	}
	same(health(pb.HealthView_HEALTH_VIEW_FULL, "other"), health(pb.HealthView_HEALTH_VIEW_COMPACT, "other"))
	_, err := f.ctl.Health(ctx, &pb.HealthRequest{View: pb.HealthView(7)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "view") {
		t.Fatalf("view 7: %v, want InvalidArgument naming view", err)
	}
}

func TestHealthMirrorNotServingWhenUnhealthy(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	_, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "echo", Binary: "echo", HealthPolicy: &pb.HealthPolicy{PanicThreshold: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	waitHealth(t, f, "plugin/echo", healthpb.HealthCheckResponse_SERVING)
	_, _ = f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "panic", Payload: []byte("p")})
	waitHealth(t, f, "plugin/echo", healthpb.HealthCheckResponse_NOT_SERVING)
	h, err := f.ctl.Health(ctx, &pb.HealthRequest{Names: []string{"echo"}})
	if err != nil || h.GetPlugins()[0].GetState() != pb.PluginState_PLUGIN_STATE_UNHEALTHY || h.GetRevision() == 0 {
		t.Fatalf("Health: %v %v", h, err)
	}
	if _, err := f.ctl.Health(ctx, &pb.HealthRequest{Names: []string{"nope"}}); status.Code(err) != codes.NotFound {
		t.Fatalf("Health of unknown: %v", err)
	}
}

func waitHealth(t *testing.T, f *fixture, svc string, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, err := f.health.Watch(ctx, &healthpb.HealthCheckRequest{Service: svc})
	if err != nil {
		t.Fatal(err)
	}
	var last *healthpb.HealthCheckResponse
	for last.GetStatus() != want {
		if last, err = w.Recv(); err != nil {
			t.Fatalf("health of %q: %v (last %v), want %v", svc, err, last, want)
		}
	}
}

// TestKeepalivePingsEvery10s: a client that pings every 10s (the shortest
// grpc-go allows; grpc-java and grpc-python users pick it too) keeps an idle
// WatchHealth stream for 70s, past the three strikes a 15s minimum would
// have counted, and the stream still delivers.
func TestKeepalivePingsEvery10s(t *testing.T) {
	t.Parallel()
	f := start(t)
	f.load(t, "echo", "echo")
	conn, err := grpc.NewClient("unix://"+f.sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := pb.NewPluginControlServiceClient(conn).WatchHealth(ctx, &pb.WatchHealthRequest{Names: []string{"echo"}})
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan *pb.HealthEvent, 16)
	errc := make(chan error, 1)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			events <- r.GetEvent()
		}
	}()
	idle := time.After(70 * time.Second)
	for waiting := true; waiting; {
		select {
		case err := <-errc:
			t.Fatalf("the idle watch ended: %v", err)
		case <-events: // snapshot, SYNCED, bookmarks
		case <-idle:
			waiting = false
		}
	}
	if _, err := f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "panic", Payload: []byte("after 70s")}); err == nil {
		t.Fatal("panic method did not fail")
	}
	for {
		select {
		case err := <-errc:
			t.Fatalf("the watch ended after 70s idle: %v", err)
		case e := <-events:
			if e.GetType() == pb.HealthEventType_HEALTH_EVENT_TYPE_CHANGED {
				return
			}
		case <-ctx.Done():
			t.Fatal("no CHANGED event after 70s idle")
		}
	}
}
