package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/plugincontrol/plugincontrol/fleet"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/etcdtest"
	"github.com/plugincontrol/plugincontrol/internal/fleetsim"
	"github.com/plugincontrol/plugincontrol/spec"
)

// runFleet measures a rollout driven by the real controller across
// simulated agents (package fleetsim: etcd clients that report every
// target they get as SERVING at once; the reload itself is measured by the
// reload scenario). It reports how long each
// wave takes from its start until every node of it is UPDATED, and the
// load the rollout puts on etcd.
func runFleet(e *env) ([]row, error) {
	agents, canary, wave := 200, 10, 50
	if e.short {
		agents, canary, wave = 50, 5, 15
	}
	member, err := etcdtest.New("bench", filepath.Join(e.tmp, "etcd"))
	if err != nil {
		return nil, err
	}
	etcd, err := member.Start()
	if err != nil {
		return nil, err
	}
	defer etcd.Close()
	endpoint := member.ClientURL.String()
	ctx, cancel := ctxT(5 * time.Minute)
	defer cancel()
	newClient := func() (*clientv3.Client, error) {
		return clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	}
	const prefix = "/bench"
	from := &pb.PluginSpec{Name: "greet", Binary: "echo", Sha256: fmt.Sprintf("%x", e.echoSum), Env: map[string]string{"VERSION": "1"}}
	to := proto.Clone(from).(*pb.PluginSpec)
	to.Env["VERSION"] = "2"

	var counters fleetsim.Counters
	actx, stopAgents := context.WithCancel(ctx)
	nodes, err := fleetsim.Nodes(actx, agents, newClient, prefix, "greet", spec.Digest(from), &counters)
	defer func() { stopAgents(); nodes.Wait() }()
	if err != nil {
		return nil, err
	}
	progress("fleet: %d agents registered", agents)
	cli, err := newClient()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	store := fleet.NewStore(cli, prefix)
	if _, err := store.Apply(ctx, &pb.FleetPlugin{Spec: from}, false); err != nil {
		return nil, err
	}
	ctrl := fleet.NewController(fleet.ControllerConfig{Client: cli, Prefix: prefix, Node: "bench", Logger: e.log})
	cctx, stopCtrl := context.WithCancel(ctx)
	ctrlDone := make(chan struct{})
	go func() { defer close(ctrlDone); _ = ctrl.Run(cctx) }()
	defer func() { stopCtrl(); <-ctrlDone }()
	time.Sleep(500 * time.Millisecond) // the controller wins its election

	startRev, err := cli.Get(ctx, prefix+"/schema")
	if err != nil {
		return nil, err
	}
	counters.Events.Store(0)
	counters.StatusWrites.Store(0)
	start := time.Now()
	r, err := store.StartRollout(ctx, to, &pb.RolloutStrategy{Canary: uint32(canary), WaveSize: uint32(wave), Bake: durationpb.New(0)}, false)
	if err != nil {
		return nil, err
	}
	waveStart := map[uint32]time.Time{0: start}
	var steps []time.Duration
	lastWave := uint32(0)
	for {
		got, err := store.GetRollout(ctx, "greet")
		if err != nil {
			return nil, err
		}
		if got.GetWave() != lastWave || (got.GetState() == pb.RolloutState_ROLLOUT_STATE_SUCCEEDED && len(steps) < int(got.GetWaves())) {
			progress("fleet: wave %d of %d, %s", got.GetWave(), got.GetWaves(), got.GetState())
			now := time.Now()
			steps = append(steps, now.Sub(waveStart[lastWave]))
			lastWave = got.GetWave()
			waveStart[lastWave] = now
		}
		if got.GetState() == pb.RolloutState_ROLLOUT_STATE_SUCCEEDED && !got.GetCleanupPending() {
			// Ended, and its targets deleted (written after the record
			// when they do not fit in one transaction).
			r = got
			break
		}
		if got.GetState() != pb.RolloutState_ROLLOUT_STATE_RUNNING && got.GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			return nil, fmt.Errorf("fleet rollout ended %s: %s", got.GetState(), got.GetReason())
		}
		time.Sleep(10 * time.Millisecond)
	}
	total := time.Since(start)
	endRev, err := cli.Get(ctx, prefix+"/schema")
	if err != nil {
		return nil, err
	}
	writes := endRev.Header.GetRevision() - startRev.Header.GetRevision()
	slices.Sort(steps)
	med := steps[len(steps)/2]
	name := fmt.Sprintf("fleet rollout, %d simulated agents", agents)
	return []row{
		{scenario: name, measure: fmt.Sprintf("start to SUCCEEDED: canary %d, waves of %d, bake 0 (%d waves)", canary, wave, r.GetWaves()),
			plugind: fmtDur(total), ref: "controller step every 250ms"},
		{scenario: name, measure: "wave step: wave start until all its nodes UPDATED, median / max",
			plugind: fmtDur(med) + " / " + fmtDur(steps[len(steps)-1]), ref: "controller step every 250ms"},
		{scenario: name, measure: "etcd load of the rollout: write revisions / watch events to agents / status writes",
			plugind: fmt.Sprintf("%d / %d / %d", writes, counters.Events.Load(), counters.StatusWrites.Load()),
			ref:     fmt.Sprintf("%d nodes: 1 target + 1 status per node, 1 record per step", agents)},
	}, nil
}
