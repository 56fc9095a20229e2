package chaos_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
	"github.com/plugincontrol/plugincontrol/manager"
	"golang.org/x/sys/unix"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
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

// specAtLimits is a spec with every field at its limit (64 arguments of
// 4 KiB, 128 variables of 256-byte names and 8 KiB values, 1 MiB of
// config): about 2.4 MiB.
func specAtLimits(name string) *pb.PluginSpec {
	s := &pb.PluginSpec{Name: name, Binary: "echo", Env: map[string]string{}, Config: bytes.Repeat([]byte{'c'}, 1<<20)}
	for i := range 64 {
		s.Args = append(s.Args, fmt.Sprintf("%04d", i)+strings.Repeat("a", 4096-4))
	}
	for i := range 128 {
		s.Env[fmt.Sprintf("V%03d", i)+strings.Repeat("K", 256-4)] = strings.Repeat("v", 8192)
	}
	return s
}

// TestListAtSpecLimits: with --max-plugins plugins whose specs are each at
// every limit (about 10 MiB of status in all), ListPlugins answers in
// pages that each fit a client's default 4 MiB, and following the pages
// gives every plugin with its whole spec; the basic view lists them all in
// one page; pluginctl list and Health work.
func TestListAtSpecLimits(t *testing.T) {
	state, err := os.MkdirTemp("", "pd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	const max = 4
	d := startDaemonArgs(t, state, []string{"--max-plugins", strconv.Itoa(max)})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	want := map[string]*pb.PluginSpec{}
	for i := range max {
		s := specAtLimits(fmt.Sprintf("big-%d", i))
		if n := proto.Size(s); n < 2<<20 {
			t.Fatalf("spec at limits is %d bytes", n)
		}
		if _, err := d.ctl.Load(ctx, &pb.LoadRequest{Spec: s}); err != nil {
			t.Fatalf("Load of a spec at the limits: %v", err)
		}
		want[s.GetName()] = s
	}

	// d.ctl receives at most 4 MiB, grpc-go's default: a larger page
	// would fail.
	got := map[string]*pb.PluginSpec{}
	req := &pb.ListPluginsRequest{}
	pages := 0
	for {
		res, err := d.ctl.ListPlugins(ctx, req)
		if err != nil {
			t.Fatalf("ListPlugins page %d: %v", pages, err)
		}
		pages++
		if n := proto.Size(res); n > 4<<20 {
			t.Fatalf("page %d is %d bytes", pages, n)
		}
		for _, p := range res.GetPlugins() {
			if got[p.GetName()] != nil {
				t.Fatalf("%s listed twice", p.GetName())
			}
			got[p.GetName()] = p.GetSpec()
		}
		if res.GetNextPageToken() == "" {
			break
		}
		req.PageToken = res.GetNextPageToken()
	}
	if len(got) != max || pages < 2 {
		t.Fatalf("listed %d plugins in %d pages, want %d in several", len(got), pages, max)
	}
	for n, s := range want {
		if !proto.Equal(got[n], s) {
			t.Fatalf("the listed spec of %s differs from the loaded one", n)
		}
	}
	res, err := d.ctl.ListPlugins(ctx, &pb.ListPluginsRequest{View: pb.PluginView_PLUGIN_VIEW_BASIC})
	if err != nil || len(res.GetPlugins()) != max || res.GetNextPageToken() != "" || res.GetPlugins()[0].GetSpec() != nil {
		t.Fatalf("basic view: %d plugins, token %q, %v", len(res.GetPlugins()), res.GetNextPageToken(), err)
	}
	if _, err := d.ctl.ListPlugins(ctx, &pb.ListPluginsRequest{PageToken: "bogus"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a bad page token: %v, want InvalidArgument", err)
	}
	if _, err := d.ctl.ListPlugins(ctx, &pb.ListPluginsRequest{Names: []string{"nope"}}); status.Code(err) != codes.NotFound {
		t.Fatalf("an unknown name: %v, want NotFound", err)
	}
	h, err := d.ctl.Health(ctx, &pb.HealthRequest{})
	if err != nil || len(h.GetPlugins()) != max {
		t.Fatalf("Health: %v %v", h, err)
	}
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "pluginctl"), "--addr", "unix://"+d.sock, "list").CombinedOutput()
	if err != nil || strings.Count(string(out), "\nbig-") != max {
		t.Fatalf("pluginctl list: %v\n%s", err, out)
	}
}

// TestDaemonOutOfFileDescriptors: plugind's own exhaustion (its
// RLIMIT_NOFILE lowered under it) fails a Load with ResourceExhausted and
// an ErrorInfo naming the resource, changes nothing (the plugin is not
// registered, the others keep serving), and a Load succeeds once
// descriptors are back.
func TestDaemonOutOfFileDescriptors(t *testing.T) {
	state, err := os.MkdirTemp("", "pd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	d := startDaemon(t, state, "echo")
	pid := d.cmd.Process.Pid
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatal(err)
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	low := unix.Rlimit{Cur: uint64(len(fds) + 10), Max: old.Max}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &low, nil); err != nil {
		t.Fatal(err)
	}
	var st *status.Status
	loaded := 0
	for i := range 20 {
		_, err := d.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: fmt.Sprintf("e%d", i), Binary: "echo"}})
		if err != nil {
			st = status.Convert(err)
			break
		}
		loaded++
	}
	if st == nil {
		t.Fatalf("20 Loads with %d file descriptors allowed all succeeded", low.Cur)
	}
	info := rpcerr.Info(st.Err())
	if st.Code() != codes.ResourceExhausted || info.GetReason() != rpcerr.ReasonResourceExhausted || info.GetMetadata()["resource"] != "file descriptors" {
		t.Fatalf("Load past the descriptors: %v (info %v), want ResourceExhausted naming file descriptors", st, info)
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil); err != nil {
		t.Fatal(err)
	}
	ps, err := d.list()
	if err != nil || len(ps) != 1+loaded {
		t.Fatalf("after the failed Load: %d plugins listed (%v), want the %d loaded before", len(ps), err, 1+loaded)
	}
	for _, p := range ps {
		if _, err := d.invoke(p.GetName(), "echo"); err != nil {
			t.Fatalf("%s after the failed Load: %v", p.GetName(), err)
		}
	}
	if _, err := d.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "again", Binary: "echo"}}); err != nil {
		t.Fatalf("Load with descriptors back: %v", err)
	}
	t.Logf("%d Loads fit in %d descriptors; then: %v", loaded, low.Cur, st.Message())
}
