package fleet_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/plugincontrol/plugincontrol/fleet"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/fleetsim"
	"github.com/plugincontrol/plugincontrol/spec"
)

// TestLayoutOne: a fleet started before layout 2 (P/schema "1") keeps its
// layout: Apply does not change it, nodes report by plugin
// (P/status/NAME/NODE), and the controller drives a rollout on those
// reports.
func TestLayoutOne(t *testing.T) {
	const prefix = "/one"
	newClient := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cli := newClient()
	defer cli.Close()
	if _, err := cli.Put(ctx, prefix+"/schema", "1"); err != nil {
		t.Fatal(err)
	}
	store := fleet.NewStore(cli, prefix)
	from := &pb.PluginSpec{Name: "greet", Binary: "echo", Env: map[string]string{"VERSION": "1"}}
	if _, err := store.Apply(ctx, &pb.FleetPlugin{Spec: from}, true); err != nil {
		t.Fatal(err)
	}
	var counters fleetsim.Counters
	nctx, stopNodes := context.WithCancel(ctx)
	group, err := fleetsim.Nodes(nctx, 3, func() (*clientv3.Client, error) { return newClient(), nil }, prefix, "1", "greet", spec.Digest(from), &counters)
	defer func() { stopNodes(); group.Wait() }()
	if err != nil {
		t.Fatal(err)
	}
	ctrl := fleet.NewController(fleet.ControllerConfig{Client: cli, Prefix: prefix, Node: "ctl", StepInterval: 20 * time.Millisecond})
	cctx, stopCtrl := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = ctrl.Run(cctx) }()
	defer func() { stopCtrl(); <-done }()

	to := proto.Clone(from).(*pb.PluginSpec)
	to.Env["VERSION"] = "2"
	if _, err := store.StartRollout(ctx, to, &pb.RolloutStrategy{Canary: 1}, true); err != nil {
		t.Fatal(err)
	}
	waitRollout(ctx, t, store, "greet", pb.RolloutState_ROLLOUT_STATE_SUCCEEDED)
	resp, err := cli.Get(ctx, prefix+"/schema")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "1" {
		t.Fatalf("the schema after Apply and a rollout: %v %v", resp.Kvs, err)
	}
	st, err := store.Status(ctx, "greet")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetStatuses()) != 3 {
		t.Fatalf("FleetStatus of a layout-1 fleet: %d reports, want 3", len(st.GetStatuses()))
	}
	for _, s := range st.GetStatuses() {
		if s.GetSpecDigest() != spec.Digest(to) {
			t.Errorf("%s reports %s, want the new spec", s.GetNode(), s.GetSpecDigest())
		}
	}
}

// TestAgentLayoutOne: a node of a layout-1 fleet reports where that
// layout keeps reports.
func TestAgentLayoutOne(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := startAgent(ctx, t, 0)
	if _, err := f.admin.Put(ctx, f.prefix+"/schema", "1"); err != nil {
		t.Fatal(err)
	}
	put, err := f.store.Apply(ctx, greet("1"), true)
	if err != nil {
		t.Fatal(err)
	}
	key := f.prefix + "/status/greet/n1"
	w := f.admin.Watch(ctx, key, clientv3.WithRev(int64(put.GetRevision())))
	for {
		select {
		case resp := <-w:
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypePut {
					if r, err := f.admin.Get(ctx, f.prefix+"/reports/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || r.Count != 0 {
						t.Fatalf("layout-2 reports in a layout-1 fleet: %d (%v)", r.Count, err)
					}
					return
				}
			}
			if resp.Err() != nil {
				t.Fatal(resp.Err())
			}
		case <-ctx.Done():
			t.Fatalf("no report at %s", key)
		}
	}
}
