package server_test

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/internal/version"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// panics makes n recovered panics of plugin name: n CHANGED events.
func panics(m *manager.Manager, name string, n int) {
	for range n {
		func() {
			defer m.Recover(name, "test")
			panic("slow watcher test")
		}()
	}
}

// TestSlowWatcherEvicted: a watcher that stops reading while events keep
// coming is evicted once its oldest undelivered event has waited longer
// than the lag limit: after the events already sent, its stream ends with
// ResourceExhausted (WATCH_EVICTED, naming the last revision sent), and a
// watch resumed from the last revision received gets everything after it.
// A watcher that keeps reading is never evicted.
func TestSlowWatcherEvicted(t *testing.T) {
	f := startWith(t, manager.Config{WatchLagLimit: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	spec := &pb.PluginSpec{Name: "echo", Binary: "echo", HealthPolicy: &pb.HealthPolicy{PanicThreshold: 1000, PanicWindow: durationpb.New(24 * time.Hour)}}
	if _, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	// A fixed 64 KiB stream window (no BDP growth): the client buffers
	// that much, the server's queue the rest.
	slowConn, err := grpc.NewClient("unix://"+f.sock, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithInitialWindowSize(1<<16))
	if err != nil {
		t.Fatal(err)
	}
	defer slowConn.Close()
	slow, err := pb.NewPluginControlServiceClient(slowConn).WatchHealth(ctx, &pb.WatchHealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		r, err := slow.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.GetEvent().GetType() == pb.HealthEventType_HEALTH_EVENT_TYPE_SYNCED {
			break
		}
	}
	// The live watcher reads everything.
	live, err := f.ctl.WatchHealth(ctx, &pb.WatchHealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	liveErr := make(chan error, 1)
	go func() {
		for {
			if _, err := live.Recv(); err != nil {
				liveErr <- err
				return
			}
		}
	}()

	// Far more than 128 KiB of events: the slow stream's window and
	// grpc-go's write quota fill, the server's send blocks, and events
	// wait in the hub.
	// Then more, until an event finds the oldest pending one older than
	// the 1s limit (bounded: the slow stream never reads, so its send
	// blocks).
	panics(f.m, "echo", 3000)
	for i := 0; f.m.EvictedWatches() == 0 && i < 300; i++ {
		time.Sleep(100 * time.Millisecond) // time is what is tested: pending events age past the 1s lag limit
		panics(f.m, "echo", 10)
	}
	if n := f.m.EvictedWatches(); n != 1 {
		t.Fatalf("%d watches evicted, want the slow one", n)
	}

	// Reading again: the events sent, then the end.
	var last uint64
	received := 0
	for {
		r, err := slow.Recv()
		if err != nil {
			st := status.Convert(err)
			info := rpcerr.Info(err)
			if st.Code() != codes.ResourceExhausted || info.GetReason() != rpcerr.ReasonWatchEvicted {
				t.Fatalf("slow stream ended with %v (%v), want ResourceExhausted WATCH_EVICTED", err, info)
			}
			if info.GetMetadata()["last_revision"] != strconv.FormatUint(last, 10) {
				t.Fatalf("eviction names revision %s, the last received was %d", info.GetMetadata()["last_revision"], last)
			}
			t.Logf("%d events received, then: %s", received, st.Message())
			break
		}
		received++
		last = r.GetEvent().GetRevision()
	}
	if received == 0 || last >= f.m.Revision() {
		t.Fatalf("received %d events up to revision %d of %d: the eviction dropped nothing?", received, last, f.m.Revision())
	}

	// Resumed from the last revision received: nothing is lost.
	resumed, err := f.ctl.WatchHealth(ctx, &pb.WatchHealthRequest{SinceRevision: last})
	if err != nil {
		t.Fatal(err)
	}
	var replayed uint64
	for {
		r, err := resumed.Recv()
		if err != nil {
			t.Fatal(err)
		}
		e := r.GetEvent()
		if e.GetType() == pb.HealthEventType_HEALTH_EVENT_TYPE_SYNCED {
			if e.GetReset_() {
				t.Fatalf("resume from %d was a reset, want a replay", last)
			}
			break
		}
		replayed = e.GetRevision()
	}
	if replayed != f.m.Revision() {
		t.Fatalf("the resumed watch replayed up to %d, want %d", replayed, f.m.Revision())
	}
	select {
	case err := <-liveErr:
		t.Fatalf("the reading watcher's stream ended: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if f.m.EvictedWatches() != 1 {
		t.Fatalf("%d evictions, want only the slow watcher's", f.m.EvictedWatches())
	}
}

// TestOneAccessLogFormat: every call is logged by the same interceptor with
// the same keys; a hot method's success at Debug, another's at Info, a
// failure at the level for its code.
func TestOneAccessLogFormat(t *testing.T) {
	h := &testbin.LogRecords{}
	f := start(t, server.WithLogger(slog.New(h)))
	f.load(t, "echo", "echo")
	ctx := context.Background()
	if _, err := f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "echo"}); err != nil {
		t.Fatal(err)
	}
	_, _ = f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "nope", Method: "echo"})
	keysOf := func(method string, code string) (slog.Level, []string) {
		recs := h.Find(func(r slog.Record, attrs map[string]string) bool {
			return r.Message == "finished call" && attrs["grpc.method"] == method && attrs["grpc.code"] == code
		})
		if len(recs) > 0 {
			var keys []string
			recs[0].Attrs(func(a slog.Attr) bool { keys = append(keys, a.Key); return true })
			slices.Sort(keys)
			return recs[0].Level, keys
		}
		t.Fatalf("no access log record of %s %s", method, code)
		return 0, nil
	}
	loadLvl, loadKeys := keysOf("Load", "OK")
	invLvl, invKeys := keysOf("Invoke", "OK")
	failLvl, failKeys := keysOf("Invoke", "NotFound")
	if loadLvl != slog.LevelInfo || invLvl != slog.LevelDebug || failLvl != slog.LevelInfo {
		t.Errorf("levels: Load %v, Invoke %v, failed Invoke %v; want INFO, DEBUG, INFO (NotFound is a client's error)", loadLvl, invLvl, failLvl)
	}
	if !slices.Equal(loadKeys, invKeys) || !slices.Contains(loadKeys, "grpc.time_ms") {
		t.Errorf("two formats: Load %v, Invoke %v", loadKeys, invKeys)
	}
	if !slices.Contains(failKeys, "grpc.error") {
		t.Errorf("a failed call's record lacks grpc.error: %v", failKeys)
	}

	// With Debug off, a hot method's success is not logged and its failure
	// is, in the same format, with the call's own start time and duration.
	info := &testbin.LogRecords{Level: slog.LevelInfo}
	f = start(t, server.WithLogger(slog.New(info)))
	f.load(t, "echo", "echo")
	before := time.Now().Truncate(time.Second)
	if _, err := f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "echo"}); err != nil {
		t.Fatal(err)
	}
	_, _ = f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "nope", Method: "echo"})
	recs := info.Find(func(r slog.Record, attrs map[string]string) bool {
		return r.Message == "finished call" && attrs["grpc.method"] == "Invoke"
	})
	if len(recs) != 1 {
		t.Fatalf("with Debug off, %d Invoke records, want 1 (the failure's)", len(recs))
	}
	var keys []string
	attrs := map[string]string{}
	recs[0].Attrs(func(a slog.Attr) bool { keys = append(keys, a.Key); attrs[a.Key] = a.Value.String(); return true })
	slices.Sort(keys)
	if recs[0].Level != slog.LevelInfo || !slices.Equal(keys, failKeys) || attrs["grpc.code"] != "NotFound" {
		t.Errorf("with Debug off, the failed Invoke's record is %v %v (code %s); with Debug on it was %v %v (NotFound)", recs[0].Level, keys, attrs["grpc.code"], failLvl, failKeys)
	}
	if at, err := time.Parse(time.RFC3339, attrs["grpc.start_time"]); err != nil || at.Before(before) || at.After(time.Now()) {
		t.Errorf("the failed Invoke's grpc.start_time %q (%v) is not the call's", attrs["grpc.start_time"], err)
	}
	if ms, err := strconv.ParseFloat(attrs["grpc.time_ms"], 64); err != nil || ms < 0 || ms > 60000 {
		t.Errorf("the failed Invoke's grpc.time_ms %q (%v) is not a duration in ms", attrs["grpc.time_ms"], err)
	}
}

// TestStreamHeaders: a stream gets the version header at once, before its
// first message (WatchHealth sends it when the stream opens, so no stream
// keeps a merged copy of it), and a refused stream gets it too.
func TestStreamHeaders(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	want, _ := version.Get()
	// No plugin is loaded: the stream's first message is SYNCED, and the
	// header must be readable on its own.
	stream, err := f.ctl.WatchHealth(ctx, &pb.WatchHealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	md, err := stream.Header()
	if err != nil {
		t.Fatalf("Header: %v", err)
	}
	if got := md.Get(version.Header); len(got) != 1 || got[0] != want {
		t.Fatalf("WatchHealth header %s = %q, want [%q]", version.Header, got, want)
	}
	if r, err := stream.Recv(); err != nil || r.GetEvent().GetType() != pb.HealthEventType_HEALTH_EVENT_TYPE_SYNCED {
		t.Fatalf("first message %v, %v; want SYNCED", r, err)
	}
	refused, err := f.ctl.WatchHealth(ctx, &pb.WatchHealthRequest{View: pb.HealthView(99)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := refused.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("unknown view: %v, want InvalidArgument", err)
	}
	if md, _ := refused.Header(); len(md.Get(version.Header)) != 1 {
		t.Fatalf("refused stream's header %v has no %s", md, version.Header)
	}
}
