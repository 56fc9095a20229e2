package chaos_test

import (
	"context"
	"errors"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// quotaSubject returns the subject of a QuotaFailure detail.
func quotaSubject(st *status.Status) string {
	for _, d := range st.Details() {
		if q, ok := d.(*errdetails.QuotaFailure); ok && len(q.GetViolations()) > 0 {
			return q.GetViolations()[0].GetSubject()
		}
	}
	return ""
}

// TestMaxPlugins: past Config.MaxPlugins a Load is refused before anything
// is started (*manager.LimitError "max_plugins"; ResourceExhausted with a
// QuotaFailure naming the limit); the loaded plugins keep serving, and an
// Unload makes room again.
func TestMaxPlugins(t *testing.T) {
	f := startServer(t, manager.Config{MaxPlugins: 2})
	ctx := context.Background()
	var pids []int
	for _, n := range []string{"a", "b"} {
		res, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: n, Binary: "echo"}})
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, int(res.GetPlugin().GetPid()))
	}
	_, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "c", Binary: "echo"}})
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || quotaSubject(st) != "max_plugins" {
		t.Fatalf("third Load: %v, want ResourceExhausted naming max_plugins", st)
	}
	_, err = f.m.Load(ctx, manager.Spec{Name: "c", Binary: "echo"})
	var le *manager.LimitError
	if !errors.As(err, &le) || le.Limit != "max_plugins" || le.Value != 2 {
		t.Fatalf("manager Load past the limit: %v", err)
	}
	onlyProcesses(t, pluginDir, pids)
	f.serves(t, "a", 1, pids[0])
	f.serves(t, "b", 1, pids[1])
	if _, err := f.ctl.Unload(ctx, &pb.UnloadRequest{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	res, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "c", Binary: "echo"}})
	if err != nil {
		t.Fatalf("Load after an Unload made room: %v", err)
	}
	f.serves(t, "c", 1, int(res.GetPlugin().GetPid()))
}

// TestMaxWatchers: past Config.MaxWatchers client watches (the server's
// grpc.health.v1 mirror is not counted) a WatchHealth stream is refused with
// ResourceExhausted naming max_watchers; ending a stream makes room again.
func TestMaxWatchers(t *testing.T) {
	f := startServer(t, manager.Config{MaxWatchers: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	open := func() (pb.PluginControlService_WatchHealthClient, context.CancelFunc, error) {
		sctx, scancel := context.WithCancel(ctx)
		s, err := f.ctl.WatchHealth(sctx, &pb.WatchHealthRequest{})
		if err == nil {
			_, err = s.Recv() // SYNCED (no plugins), or the refusal
		}
		if err != nil {
			scancel()
		}
		return s, scancel, err
	}
	_, cancel1, err := open()
	if err != nil {
		t.Fatalf("first watch: %v", err)
	}
	_, cancel2, err := open()
	if err != nil {
		t.Fatalf("second watch (the mirror's must not count): %v", err)
	}
	defer cancel2()
	if n := f.m.Watchers(); n != 2 {
		t.Fatalf("Watchers() = %d with two client streams, want 2", n)
	}
	_, _, err = open()
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || quotaSubject(st) != "max_watchers" {
		t.Fatalf("watch past the limit: %v, want ResourceExhausted naming max_watchers", st)
	}
	_, err = f.m.Watch(nil, 0)
	var le *manager.LimitError
	if !errors.As(err, &le) || le.Limit != "max_watchers" || le.Value != 2 {
		t.Fatalf("manager Watch past the limit: %v", err)
	}
	cancel1()
	waitFor(t, 5*time.Second, "the ended watch to be released", func() bool { return f.m.Watchers() == 1 })
	_, cancel3, err := open()
	if err != nil {
		t.Fatalf("watch after one ended: %v", err)
	}
	cancel3()
	// The daemon still serves.
	res, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "echo", Binary: "echo"}})
	if err != nil {
		t.Fatal(err)
	}
	f.serves(t, "echo", 1, int(res.GetPlugin().GetPid()))
}
