package fleet_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/plugincontrol/plugincontrol/fleet"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/etcdtest"
	"github.com/plugincontrol/plugincontrol/internal/fleetsim"
	"github.com/plugincontrol/plugincontrol/spec"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// A closed embedded etcd's HTTP keep-alive connections time out
		// on their own (net/http's, created by etcd).
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"))
}

// startEtcd starts an embedded single-member etcd (with etcd's default
// limit of 128 operations per transaction) and returns a client factory.
func startEtcd(t *testing.T) func() *clientv3.Client {
	t.Helper()
	clients := etcdtest.Clients(t, "scale")
	return func() *clientv3.Client { return clients() }
}

// waitRollout returns the rollout of name once it is in state, its cleanup
// done; it fails at ctx's end.
func waitRollout(ctx context.Context, t *testing.T, store *fleet.Store, name string, state pb.RolloutState) *pb.Rollout {
	t.Helper()
	for {
		r, err := store.GetRollout(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if r.GetState() == state && !r.GetCleanupPending() {
			return r
		}
		if ctx.Err() != nil {
			t.Fatalf("rollout %s %s, want %s", r.GetState(), r.GetReason(), state)
		}
		time.Sleep(20 * time.Millisecond) // polls the store's read of the record: a rollout's progress has no event here but the record itself
	}
}

// TestRolloutBeyondOneTransaction: a wave, a success and an abort that
// touch more nodes than etcd takes operations in one transaction.
func TestRolloutBeyondOneTransaction(t *testing.T) {
	const nodes, prefix = 150, "/scale"
	newClient := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	from := &pb.PluginSpec{Name: "greet", Binary: "echo", Env: map[string]string{"VERSION": "1"}}
	var counters fleetsim.Counters
	nctx, stopNodes := context.WithCancel(ctx)
	group, err := fleetsim.Nodes(nctx, nodes, func() (*clientv3.Client, error) { return newClient(), nil }, prefix, fleet.SchemaVersion, "greet", spec.Digest(from), &counters)
	defer func() { stopNodes(); group.Wait() }()
	if err != nil {
		t.Fatal(err)
	}
	cli := newClient()
	defer cli.Close()
	store := fleet.NewStore(cli, prefix)
	if _, err := store.Apply(ctx, &pb.FleetPlugin{Spec: from}, true); err != nil {
		t.Fatal(err)
	}
	ctrl := fleet.NewController(fleet.ControllerConfig{Client: cli, Prefix: prefix, Node: "ctl", StepInterval: 50 * time.Millisecond})
	cctx, stopCtrl := context.WithCancel(ctx)
	ctrlDone := make(chan struct{})
	go func() { defer close(ctrlDone); _ = ctrl.Run(cctx) }()
	defer func() { stopCtrl(); <-ctrlDone }()

	wait := func(state pb.RolloutState) *pb.Rollout { t.Helper(); return waitRollout(ctx, t, store, "greet", state) }
	targets := func() int64 {
		t.Helper()
		resp, err := cli.Get(ctx, prefix+"/targets/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}

	to := proto.Clone(from).(*pb.PluginSpec)
	to.Env["VERSION"] = "2"
	if _, err := store.StartRollout(ctx, to, &pb.RolloutStrategy{}, true); err != nil { // one wave of all 150
		t.Fatal(err)
	}
	r := wait(pb.RolloutState_ROLLOUT_STATE_SUCCEEDED)
	if len(r.GetNodes()) != nodes || targets() != 0 {
		t.Fatalf("succeeded with %d nodes, %d targets left", len(r.GetNodes()), targets())
	}
	st, err := store.Status(ctx, "greet")
	if err != nil || st.GetPlugins()[0].GetSpec().GetEnv()["VERSION"] != "2" {
		t.Fatalf("the plugin after the rollout: %v %v", st.GetPlugins(), err)
	}

	// A bake of a minute holds the single wave once its 150 targets are
	// written: then the rollout is aborted.
	to3 := proto.Clone(to).(*pb.PluginSpec)
	to3.Env["VERSION"] = "3"
	if _, err := store.StartRollout(ctx, to3, &pb.RolloutStrategy{Bake: durationpb.New(time.Minute)}, true); err != nil {
		t.Fatal(err)
	}
	for targets() != nodes {
		if ctx.Err() != nil {
			t.Fatalf("%d targets written", targets())
		}
		time.Sleep(5 * time.Millisecond) // polls a count of keys over 150 simulated nodes
	}
	r, err = store.ChangeRollout(ctx, "greet", fleet.Abort)
	if err != nil {
		t.Fatal(err)
	}
	if r.GetState() != pb.RolloutState_ROLLOUT_STATE_ROLLED_BACK || targets() != 0 {
		t.Fatalf("aborted: %s, %d targets left", r.GetState(), targets())
	}
	if r, err := store.GetRollout(ctx, "greet"); err != nil || r.GetCleanupPending() {
		t.Fatalf("the aborted record: cleanup pending %v (%v)", r.GetCleanupPending(), err)
	}

	// A controller that died between an end and its deletes left the
	// record with cleanup_pending and the targets: a new rollout waits,
	// and the controller finishes the deletes.
	r.CleanupPending, r.Revision = true, 0
	target, err := proto.Marshal(&pb.FleetTarget{Spec: to3, SpecDigest: spec.Digest(to3)})
	if err != nil {
		t.Fatal(err)
	}
	var ops []clientv3.Op
	for _, n := range r.GetNodes() {
		ops = append(ops, clientv3.OpPut(prefix+"/targets/"+n.GetNode()+"/greet", string(target)))
	}
	for len(ops) > 0 {
		k := min(len(ops), 100)
		if _, err := cli.Txn(ctx).Then(ops[:k]...).Commit(); err != nil {
			t.Fatal(err)
		}
		ops = ops[k:]
	}
	stopCtrl()
	<-ctrlDone
	rec, err := proto.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, prefix+"/rollouts/greet", string(rec)); err != nil {
		t.Fatal(err)
	}
	if _, err := store.StartRollout(ctx, from, &pb.RolloutStrategy{}, true); !errors.Is(err, fleet.ErrRolloutActive) || !strings.Contains(err.Error(), "still being removed") {
		t.Fatalf("a rollout while the last one's targets are removed: %v", err)
	}
	// Every change under the prefix wakes the check (the controller's
	// deletes and its record write).
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	changes := cli.Watch(wctx, prefix+"/", clientv3.WithPrefix())
	cctx2, stopCtrl2 := context.WithCancel(ctx)
	ctrlDone2 := make(chan struct{})
	go func() { defer close(ctrlDone2); _ = ctrl.Run(cctx2) }()
	defer func() { stopCtrl2(); <-ctrlDone2 }()
	for {
		r, err := store.GetRollout(ctx, "greet")
		if err != nil {
			t.Fatal(err)
		}
		if !r.GetCleanupPending() && targets() == 0 {
			break
		}
		select {
		case <-changes:
		case <-ctx.Done():
			t.Fatalf("cleanup pending %v, %d targets left", r.GetCleanupPending(), targets())
		}
	}
	t.Logf("%d watch events and %d status writes by %d simulated nodes", counters.Events.Load(), counters.StatusWrites.Load(), nodes)
}
