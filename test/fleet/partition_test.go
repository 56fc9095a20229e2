package fleet

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// TestShortPartition: a node cut off from etcd for less than its lease's
// TTL (3s of 10s) is not lost: it keeps its lease, so a rollout never
// counts it LOST, keeps running what it has while cut off, and catches up
// with what changed meanwhile once it is back.
func TestShortPartition(t *testing.T) {
	etcd := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	px := startProxy(t, etcd.clientURL.Host)
	cut := dialNode(t, "cut", testbin.StartDaemon(t, testbin.DaemonOptions{Bin: bins,
		Args: []string{"--fleet-etcd", px.endpoint(), "--node-name", "cut", "--fleet-lease-ttl", "10s", "--log-level", "info"}}))
	ctl := startNode(t, etcd, "ctl")
	greet := func(v string) *pb.FleetPlugin {
		return &pb.FleetPlugin{Spec: &pb.PluginSpec{Name: "greet", Binary: "echo", Env: map[string]string{"VERSION": v}}, Selector: map[string]string{}}
	}
	if _, err := ctl.c.ApplyFleetPlugin(ctx, greet("1"), true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "cut runs greet 1", func() error { return runs(ctx, cut, "greet", "1", 0) })
	ecli := etcdClient(t, clientv3.Config{Endpoints: []string{etcd.endpoint()}})
	lease := func() int64 {
		t.Helper()
		resp, err := ecli.Get(ctx, "/plugincontrol/nodes/cut")
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("the node key of cut: %v %v", resp, err)
		}
		return resp.Kvs[0].Lease
	}
	before := lease()

	px.block()
	if _, err := ctl.c.ApplyFleetPlugin(ctx, greet("2"), true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // time is what is tested: a cut shorter than the node's 10s lease TTL
	if err := runs(ctx, cut, "greet", "1", 0); err != nil {
		t.Fatalf("cut off, the node changed what it runs: %v", err)
	}
	px.unblock()
	eventually(t, 20*time.Second, "cut catches up with greet 2", func() error { return runs(ctx, cut, "greet", "2", 0) })
	if after := lease(); after != before {
		t.Fatalf("the node's lease went from %x to %x: a cut shorter than its TTL made it leave the fleet", before, after)
	}
}
