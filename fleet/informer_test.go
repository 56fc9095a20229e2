package fleet

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pbetcd "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/etcdtest"
	"github.com/plugincontrol/plugincontrol/internal/fleetsim"
	"github.com/plugincontrol/plugincontrol/spec"
)

// nextChange applies the next response of a view's watch to it.
func nextChange(ctx context.Context, t *testing.T, v view, changes clientv3.WatchChan) {
	t.Helper()
	select {
	case resp, ok := <-changes:
		if err := v.apply(resp, ok); err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("no watch event")
	}
}

func rolloutIn(name string, state pb.RolloutState) string {
	return encode(&pb.Rollout{Plugin: name, State: state})
}

// TestRolloutView: the controller's view of the rollout records keeps the
// ones with work (active, cleanup pending), follows the watch, is not set
// back by the watch's copy of its own writes, and reports a watch that
// ended (compacted past) so that the controller lists again.
func TestRolloutView(t *testing.T) {
	cli := etcdtest.Clients(t, "view")()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := newKeys("/view")
	put := func(key, value string) int64 {
		t.Helper()
		resp, err := cli.Put(ctx, key, value)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.GetRevision()
	}
	due := func(v *rollouts) string {
		var names []string
		for _, w := range v.work() {
			names = append(names, base(w.key))
		}
		return strings.Join(names, " ")
	}
	put(k.rollout("a"), rolloutIn("a", pb.RolloutState_ROLLOUT_STATE_RUNNING))
	put(k.rollout("b"), rolloutIn("b", pb.RolloutState_ROLLOUT_STATE_SUCCEEDED))
	put(k.rollout("c"), "not a record")
	put(k.rollout("d"), encode(&pb.Rollout{Plugin: "d", State: pb.RolloutState_ROLLOUT_STATE_ROLLED_BACK, CleanupPending: true}))
	put(k.rollout("e"), rolloutIn("e", pb.RolloutState_ROLLOUT_STATE_HALTED))
	v, err := listRollouts(ctx, cli, k)
	if err != nil {
		t.Fatal(err)
	}
	if got := due(v); got != "a d" {
		t.Fatalf("after the list, work in %q, want \"a d\" (running, cleanup pending)", got)
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	changes := v.watch(wctx, cli)
	next := func() { t.Helper(); nextChange(ctx, t, v, changes) }

	put(k.rollout("b"), rolloutIn("b", pb.RolloutState_ROLLOUT_STATE_PAUSED)) // a new rollout of b
	next()
	if got := due(v); got != "a b d" {
		t.Fatalf("after b started again, work in %q", got)
	}
	// The controller ends a's rollout: its own write is in the view at
	// once, and the watch's copy of it (here carrying the older value, as
	// an older event would) does not bring a back.
	rev := put(k.rollout("a"), rolloutIn("a", pb.RolloutState_ROLLOUT_STATE_RUNNING))
	v.wrote(k.rollout("a"), &pb.Rollout{Plugin: "a", State: pb.RolloutState_ROLLOUT_STATE_SUCCEEDED}, rev)
	if got := due(v); got != "b d" {
		t.Fatalf("after the controller ended a, work in %q", got)
	}
	next()
	if got := due(v); got != "b d" {
		t.Fatalf("after the watch's copy of that write, work in %q", got)
	}
	if _, err := cli.Delete(ctx, k.rollout("b")); err != nil {
		t.Fatal(err)
	}
	next()
	v.forget(k.rollout("d"))
	if got := due(v); got != "" {
		t.Fatalf("after b's record went and d's cleanup, work in %q", got)
	}
	// A step's copy is its own to change.
	put(k.rollout("f"), rolloutIn("f", pb.RolloutState_ROLLOUT_STATE_RUNNING))
	next()
	v.work()[0].r.State = pb.RolloutState_ROLLOUT_STATE_HALTED
	if v.work()[0].r.GetState() != pb.RolloutState_ROLLOUT_STATE_RUNNING {
		t.Fatal("changing a step's copy changed the view")
	}

	// A watch from a compacted revision ends with ErrCompacted.
	stale := &rollouts{k: k, due: map[string]cachedRollout{}, seen: map[string]int64{}, rev: v.rev - 3}
	last := put(k.rollout("g"), rolloutIn("g", pb.RolloutState_ROLLOUT_STATE_RUNNING))
	if _, err := cli.Compact(ctx, last); err != nil {
		t.Fatal(err)
	}
	resp, ok := <-stale.watch(wctx, cli)
	if err := stale.apply(resp, ok); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("a watch from a compacted revision: %v, want ErrCompacted", err)
	}
}

// TestIdleControllerReadsNothing: a leader with no rollout to step reads
// no rollout record, however many steps it takes; a rollout started
// meanwhile reaches it through its watch, its nodes' reports are read once
// (then watched), and once it ended the reads stop again.
func TestIdleControllerReadsNothing(t *testing.T) {
	const prefix = "/idle"
	k := newKeys(prefix)
	var reads, reportReads atomic.Int64 // of P/rollouts/ and P/reports/ by the controller's client
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		// A call that reads any of those counts once.
		var rollouts, reports bool
		counted := func(r *pbetcd.RangeRequest) {
			key := string(r.GetKey())
			rollouts = rollouts || strings.HasPrefix(key, k.rollouts())
			reports = reports || strings.HasPrefix(key, k.reports())
		}
		switch r := req.(type) {
		case *pbetcd.RangeRequest:
			counted(r)
		case *pbetcd.TxnRequest:
			for _, op := range r.GetSuccess() {
				if rr := op.GetRequestRange(); rr != nil {
					counted(rr)
				}
			}
		}
		if rollouts {
			reads.Add(1)
		}
		if reports {
			reportReads.Add(1)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	newClient := etcdtest.Clients(t, "view")
	cli := newClient()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store := NewStore(cli, prefix)
	from := &pb.PluginSpec{Name: "greet", Binary: "echo", Env: map[string]string{"VERSION": "1"}}
	if _, err := store.Apply(ctx, &pb.FleetPlugin{Spec: from}, true); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"old1", "old2", "old3"} { // history: ended rollouts of other plugins
		if _, err := cli.Put(ctx, k.rollout(name), rolloutIn(name, pb.RolloutState_ROLLOUT_STATE_SUCCEEDED)); err != nil {
			t.Fatal(err)
		}
	}
	var counters fleetsim.Counters
	nctx, stopNodes := context.WithCancel(ctx)
	group, err := fleetsim.Nodes(nctx, 3, func() (*clientv3.Client, error) { return newClient(), nil }, prefix, SchemaVersion, "greet", spec.Digest(from), &counters)
	defer func() { stopNodes(); group.Wait() }()
	if err != nil {
		t.Fatal(err)
	}

	ctrl := NewController(ControllerConfig{Client: newClient(grpc.WithChainUnaryInterceptor(count)), Prefix: prefix, Node: "ctl", StepInterval: 5 * time.Millisecond})
	cctx, stopCtrl := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = ctrl.Run(cctx) }()
	defer func() { stopCtrl(); <-done }()
	steps := func(n uint64) {
		t.Helper()
		from := ctrl.Stats().Steps
		for ctrl.Stats().Steps < from+n {
			if ctx.Err() != nil {
				t.Fatalf("the controller took %d steps, want %d", ctrl.Stats().Steps-from, n)
			}
			time.Sleep(5 * time.Millisecond) // polls a counter in memory: a step has no event to wait on
		}
	}
	steps(50)
	if n := reads.Load(); n != 1 {
		t.Fatalf("an idle leader read the rollout records %d times in 50 steps, want once (its list)", n)
	}

	to := &pb.PluginSpec{Name: "greet", Binary: "echo", Env: map[string]string{"VERSION": "2"}}
	if _, err := store.StartRollout(ctx, to, &pb.RolloutStrategy{Canary: 1}, true); err != nil {
		t.Fatal(err)
	}
	for {
		r, err := store.GetRollout(ctx, "greet")
		if err != nil {
			t.Fatal(err)
		}
		if r.GetState() == pb.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			break
		}
		if ctx.Err() != nil || r.GetState() != pb.RolloutState_ROLLOUT_STATE_RUNNING {
			t.Fatalf("rollout %s %s, want SUCCEEDED", r.GetState(), r.GetReason())
		}
		time.Sleep(10 * time.Millisecond) // polls the record: its progress has no other event here
	}
	if n := reportReads.Load(); n != 1 {
		t.Fatalf("the leader read the nodes' reports %d times during the rollout, want once (then its watch)", n)
	}
	before := reads.Load()
	steps(50)
	if n := reads.Load() - before; n != 0 {
		t.Fatalf("after its rollout ended the leader read the rollout records %d times in 50 steps, want none", n)
	}
	if n := ctrl.Stats().StepErrors; n != 0 {
		t.Fatalf("%d failed steps", n)
	}
}

// TestStatusView: a plugin's reports are listed when first asked for,
// then kept by the watch (which started before the list: what the list
// already holds is not set back), and dropped with the rollout's work; in
// both key layouts.
func TestStatusView(t *testing.T) {
	cli := etcdtest.Clients(t, "view")()
	for _, layout := range layouts {
		t.Run("layout "+layout, func(t *testing.T) { testStatusView(t, cli, layout) })
	}
}

func testStatusView(t *testing.T, cli *clientv3.Client, layout string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	k := newKeys("/reports" + layout)
	report := func(node, plugin, digest string) int64 {
		t.Helper()
		resp, err := cli.Put(ctx, k.reportKey(layout, node, plugin), encode(&pb.FleetPluginStatus{Node: node, Plugin: plugin, SpecDigest: digest}))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.GetRevision()
	}
	start, err := cli.Get(ctx, k.schema())
	if err != nil {
		t.Fatal(err)
	}
	v := newStatusView(k, layout, start.Header.GetRevision())
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	changes := v.watch(wctx, cli)
	report("n1", "greet", "old")
	report("n1", "greet", "new") // the list holds this one; the watch brings both
	last := report("n2", "other", "x")
	if _, err := cli.Put(ctx, k.plugin("greet"), encode(&pb.FleetPlugin{Selector: map[string]string{"role": "web"}})); err != nil {
		t.Fatal(err)
	}
	got, selector, err := v.of(ctx, cli, "greet", map[string]bool{"n1": true, "n2": true})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got["n1/greet"].GetSpecDigest() != "new" || selector["role"] != "web" {
		t.Fatalf("listed %v, selector %v", got, selector)
	}
	digest := func() string { return v.reports["greet"]["n1/greet"].GetSpecDigest() }
	next := func() { t.Helper(); nextChange(ctx, t, v, changes) }
	for v.rev < last {
		next()
		if digest() != "new" {
			t.Fatalf("the watch's older event set n1 back to %q", digest())
		}
	}
	if _, ok := v.reports["other"]; ok {
		t.Fatal("a plugin nobody asked for is in the view")
	}
	report("n2", "greet", "new")
	del, err := cli.Delete(ctx, k.reportKey(layout, "n1", "greet"))
	if err != nil {
		t.Fatal(err)
	}
	for v.rev < del.Header.GetRevision() {
		next()
	}
	if got := v.reports["greet"]; len(got) != 1 || got["n2/greet"] == nil {
		t.Fatalf("after n2 reported and n1's report went: %v", got)
	}
	v.keep(map[string]bool{})
	if len(v.reports) != 0 || len(v.seen) != 0 {
		t.Fatalf("kept %v / %v after the rollout's work ended", v.reports, v.seen)
	}
}
