package fleet_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/plugincontrol/plugincontrol/fleet"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// TestDepartedNodeKeys: the leader deletes the managed and detached keys
// of a node gone for longer than the node retention; the node, back, knows
// its fleet plugins from its memory file: it writes the keys again, keeps
// following the fleet for what it managed (not refusing it as a plugin of
// its own) and keeps its detached plugin its own.
func TestDepartedNodeKeys(t *testing.T) {
	const prefix = "/gone"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	newClient := startEtcd(t)
	m, dir := newManager(ctx, t)
	admin := newClient()
	defer admin.Close()
	store := fleet.NewStore(admin, prefix)
	memory := filepath.Join(dir, "fleet-etcd.json")

	ctlLogs := newLogTap()
	ccli := newClient()
	defer ccli.Close()
	ctrl := fleet.NewController(fleet.ControllerConfig{Client: ccli, Prefix: prefix, Node: "ctl", Logger: slog.New(ctlLogs),
		StepInterval: 20 * time.Millisecond, NodeRetention: 300 * time.Millisecond})
	cctx, stopCtrl := context.WithCancel(ctx)
	ctrlDone := make(chan struct{})
	go func() { defer close(ctrlDone); _ = ctrl.Run(cctx) }()
	defer func() { stopCtrl(); <-ctrlDone }()

	runNode := func() (*fleet.Agent, *logTap, func()) {
		cli := newClient()
		logs := newLogTap()
		agent, err := fleet.NewAgent(fleet.AgentConfig{Client: cli, Prefix: prefix, Node: "n1", Manager: m, Logger: slog.New(logs), Memory: memory})
		if err != nil {
			t.Fatal(err)
		}
		actx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); agent.Run(actx) }()
		return agent, logs, func() { stop(); <-done; cli.Close() }
	}
	keys := func() (managed, detached int64) {
		t.Helper()
		for i, p := range []string{prefix + "/managed/n1/", prefix + "/detached/n1/"} {
			resp, err := admin.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				managed = resp.Count
			} else {
				detached = resp.Count
			}
		}
		return managed, detached
	}

	agent, _, stop := runNode()
	hello := &pb.FleetPlugin{Spec: &pb.PluginSpec{Name: "hello", Binary: "echo"}}
	for _, p := range []*pb.FleetPlugin{greet("1"), hello} {
		if _, err := store.Apply(ctx, p, true); err != nil {
			t.Fatal(err)
		}
	}
	waitServing(ctx, t, m, "greet", 1)
	waitServing(ctx, t, m, "hello", 1)
	if err := agent.Detach(ctx, "hello"); err != nil {
		t.Fatal(err)
	}
	if mk, dk := keys(); mk != 1 || dk != 1 {
		t.Fatalf("before leaving: %d managed and %d detached keys, want 1 and 1", mk, dk)
	}
	stop() // a clean stop revokes the lease: the node is gone at once

	ctlLogs.wait(ctx, t, "collected the keys of a departed node")
	if mk, dk := keys(); mk != 0 || dk != 0 {
		t.Fatalf("after the retention: %d managed and %d detached keys, want none", mk, dk)
	}

	agent, logs, stop := runNode()
	defer stop()
	logs.wait(ctx, t, "wrote this node's managed and detached plugins to etcd again")
	if mk, dk := keys(); mk != 1 || dk != 1 {
		t.Fatalf("back: %d managed and %d detached keys, want 1 and 1", mk, dk)
	}
	if _, ok := agent.Managed("hello"); ok {
		t.Fatal("hello is managed again: its detach was forgotten")
	}
	// greet is still the fleet's: a new spec reloads it.
	if _, err := store.Apply(ctx, greet("2"), true); err != nil {
		t.Fatal(err)
	}
	waitServing(ctx, t, m, "greet", 2)
	if st, err := m.Get("hello"); err != nil || st.Generation != 1 {
		t.Fatalf("hello: %+v %v", st, err)
	}
}
