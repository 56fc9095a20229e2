package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	etcdpb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
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
// reload scenario), in a fleet of many plugins with a history: every other
// plugin has a status per node and an ended rollout across all nodes. It
// reports what the leading controller reads from etcd at idle and during
// the rollout, how long each wave takes from its start until every node of
// it is UPDATED, and the load the rollout puts on etcd.
func runFleet(e *env) ([]row, error) {
	agents, plugins, canary, wave := 1000, 50, 10, 100
	idle := 5 * time.Second
	if e.short {
		agents, plugins, canary, wave, idle = 50, 5, 5, 15, time.Second
	}
	member, etcd, err := etcdtest.StartNew("bench", filepath.Join(e.tmp, "etcd"))
	if err != nil {
		return nil, err
	}
	defer etcd.Close()
	endpoint := member.ClientURL.String()
	ctx, cancel := ctxT(10 * time.Minute)
	defer cancel()
	newClient := func(opts ...grpc.DialOption) (*clientv3.Client, error) {
		return clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(), DialOptions: opts})
	}
	const prefix = "/bench"
	from := &pb.PluginSpec{Name: "greet", Binary: "echo", Sha256: fmt.Sprintf("%x", e.echoSum), Env: map[string]string{"VERSION": "1"}}
	to := proto.Clone(from).(*pb.PluginSpec)
	to.Env["VERSION"] = "2"

	var counters fleetsim.Counters
	actx, stopAgents := context.WithCancel(ctx)
	nodes, err := fleetsim.Nodes(actx, agents, func() (*clientv3.Client, error) { return newClient() }, prefix, fleet.SchemaVersion, "greet", spec.Digest(from), &counters)
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
	history, err := fleetHistory(ctx, cli, store, prefix, e, agents, plugins-1)
	if err != nil {
		return nil, err
	}
	progress("fleet: %d other plugins with %d statuses and ended rollouts (%s of records)", plugins-1, agents, fmtBytes(float64(history)))

	var load etcdLoad
	ccli, err := newClient(grpc.WithChainUnaryInterceptor(load.count))
	if err != nil {
		return nil, err
	}
	defer ccli.Close()
	ctrl := fleet.NewController(fleet.ControllerConfig{Client: ccli, Prefix: prefix, Node: "bench", Logger: e.log})
	cctx, stopCtrl := context.WithCancel(ctx)
	ctrlDone := make(chan struct{})
	go func() { defer close(ctrlDone); _ = ctrl.Run(cctx) }()
	defer func() { stopCtrl(); <-ctrlDone }()
	for ctrl.Stats().Steps < 2 {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("the controller took no step: %w", ctx.Err())
		}
		time.Sleep(10 * time.Millisecond) // polls an in-memory counter: a step has no event
	}

	// Idle: what the leader reads with nothing to do. Time is what is
	// measured here (a rate over a window).
	idleBefore, idleSteps := load.snapshot(), ctrl.Stats().Steps
	time.Sleep(idle) // the idle window: time is what is measured
	idleLoad, idleSteps := load.snapshot().minus(idleBefore), ctrl.Stats().Steps-idleSteps
	full, err := cli.Get(ctx, prefix+"/rollouts/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	fullBytes := proto.Size((*etcdpb.RangeResponse)(full))

	startRev, err := cli.Get(ctx, prefix+"/schema")
	if err != nil {
		return nil, err
	}
	counters.Events.Store(0)
	counters.StatusWrites.Store(0)
	before, stepsBefore := load.snapshot(), ctrl.Stats().Steps
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
		time.Sleep(10 * time.Millisecond) // polls the record: the bench's own reads, not the controller's
	}
	total := time.Since(start)
	during, rolloutSteps := load.snapshot().minus(before), ctrl.Stats().Steps-stepsBefore
	endRev, err := cli.Get(ctx, prefix+"/schema")
	if err != nil {
		return nil, err
	}
	revisions := endRev.Header.GetRevision() - startRev.Header.GetRevision()
	slices.Sort(steps)
	med := steps[len(steps)/2]
	name := fmt.Sprintf("fleet rollout, %d simulated agents", agents)
	idleName := fmt.Sprintf("fleet controller, %d nodes × %d plugins", agents, plugins)
	perSec := func(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() }
	// The writes of the rollout: etcd counts one revision per
	// transaction (one raft proposal, one fsync), whatever keys it holds.
	writesOK := revisions <= int64(2*agents)+int64(rolloutSteps)
	return []row{
		{scenario: idleName, measure: fmt.Sprintf("etcd reads by the leader at idle, per second (%d steps in %s; %s of rollout records in etcd)", idleSteps, idle, fmtBytes(float64(fullBytes))),
			plugind: fmt.Sprintf("%.1f read calls/s, %s/s", perSec(idleLoad.reads, idle), fmtBytes(perSec(idleLoad.readBytes, idle))),
			ref:     fmt.Sprintf("a full read of the records per step (the controller before its watch): %.1f read calls/s, %s/s", perSec(int64(idleSteps), idle), fmtBytes(perSec(int64(idleSteps)*int64(fullBytes), idle))),
			target:  "no reads beyond the watch", ok: okIf(idleLoad.reads == 0)},
		{scenario: idleName, measure: fmt.Sprintf("etcd reads by the leader during the rollout, per second (%d steps in %s)", rolloutSteps, fmtDur(total)),
			plugind: fmt.Sprintf("%.1f read calls/s, %s/s", perSec(during.reads, total), fmtBytes(perSec(during.readBytes, total))),
			ref:     "the plugin and its nodes' reports read once (a get per node, layout 2), then the watch (before: the live nodes, the plugin and its reports read every step)"},
		{scenario: name, measure: fmt.Sprintf("start to SUCCEEDED: canary %d, waves of %d, bake 0 (%d waves)", canary, wave, r.GetWaves()),
			plugind: fmtDur(total), ref: "controller step every 250ms"},
		{scenario: name, measure: "wave step: wave start until all its nodes UPDATED, median / max",
			plugind: fmtDur(med) + " / " + fmtDur(steps[len(steps)-1]), ref: "controller step every 250ms"},
		{scenario: name, measure: fmt.Sprintf("etcd writes of the rollout: revisions (transactions); keys the controller wrote (%d in %d transactions) and statuses the nodes wrote (%d); watch events to agents (%d)",
			during.keys, during.writes, counters.StatusWrites.Load(), counters.Events.Load()),
			plugind: fmt.Sprintf("%d revisions, %.2f per node", revisions, float64(revisions)/float64(agents)),
			ref:     fmt.Sprintf("%d nodes, %d steps", agents, rolloutSteps),
			target:  "≤ 2 per node + 1 per step", ok: okIf(writesOK)},
	}, nil
}

// fleetHistory writes n other fleet plugins, each with a SERVING status
// per node and an ended rollout across all of them (what a fleet that ran
// rollouts of its plugins keeps), and returns the bytes of those records.
func fleetHistory(ctx context.Context, cli *clientv3.Client, store *fleet.Store, prefix string, e *env, agents, n int) (int, error) {
	total := 0
	for i := range n {
		name := fmt.Sprintf("other%02d", i)
		ps := &pb.PluginSpec{Name: name, Binary: "echo", Sha256: fmt.Sprintf("%x", e.echoSum)}
		if _, err := store.Apply(ctx, &pb.FleetPlugin{Spec: ps}, false); err != nil {
			return 0, err
		}
		r := &pb.Rollout{Plugin: name, State: pb.RolloutState_ROLLOUT_STATE_SUCCEEDED, ToSpec: ps, ToDigest: spec.Digest(ps), Waves: 1}
		var ops []clientv3.Op
		flush := func(force bool) error {
			if len(ops) < 100 && !(force && len(ops) > 0) {
				return nil
			}
			_, err := cli.Txn(ctx).Then(ops...).Commit()
			ops = ops[:0]
			return err
		}
		for a := range agents {
			node := fmt.Sprintf("n%03d", a)
			r.Nodes = append(r.Nodes, &pb.RolloutNode{Node: node, State: pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATED})
			st, err := proto.Marshal(&pb.FleetPluginStatus{Node: node, Plugin: name, Generation: 1, State: pb.PluginState_PLUGIN_STATE_SERVING, SpecDigest: r.GetToDigest()})
			if err != nil {
				return 0, err
			}
			ops = append(ops, clientv3.OpPut(prefix+"/reports/"+node+"/"+name, string(st))) // layout 2
			if err := flush(false); err != nil {
				return 0, err
			}
		}
		if err := flush(true); err != nil {
			return 0, err
		}
		b, err := proto.Marshal(r)
		if err != nil {
			return 0, err
		}
		if _, err := cli.Put(ctx, prefix+"/rollouts/"+name, string(b)); err != nil {
			return 0, err
		}
		total += len(b)
	}
	return total, nil
}

// etcdLoad counts what one etcd client asked of etcd (its unary calls;
// watches and lease keep-alives are streams).
type etcdLoad struct {
	mu sync.Mutex // guards counts
	c  loadCounts
}

// loadCounts: reads are the calls that read (a range, a transaction with
// ranges), readBytes their responses' size; writes are the calls that wrote (a committed
// transaction with a put or delete, a put, a delete), keys the puts and
// deletes in them.
type loadCounts struct{ reads, readBytes, writes, keys int64 }

func (c loadCounts) minus(o loadCounts) loadCounts {
	return loadCounts{c.reads - o.reads, c.readBytes - o.readBytes, c.writes - o.writes, c.keys - o.keys}
}

func (l *etcdLoad) snapshot() loadCounts {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c
}

// count is a unary client interceptor.
func (l *etcdLoad) count(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if err != nil {
		return err
	}
	var d loadCounts
	switch r := req.(type) {
	case *etcdpb.RangeRequest:
		d.reads, d.readBytes = 1, int64(proto.Size(reply.(proto.Message)))
	case *etcdpb.PutRequest, *etcdpb.DeleteRangeRequest:
		d.writes, d.keys = 1, 1
	case *etcdpb.TxnRequest:
		ops := r.GetSuccess()
		if !reply.(*etcdpb.TxnResponse).GetSucceeded() {
			ops = r.GetFailure()
		}
		for _, op := range ops {
			switch {
			case op.GetRequestRange() != nil:
				d.reads = 1 // a call that reads, however many ranges
			case op.GetRequestPut() != nil, op.GetRequestDeleteRange() != nil:
				d.keys++
			}
		}
		if d.reads > 0 {
			d.readBytes = int64(proto.Size(reply.(proto.Message)))
		}
		if d.keys > 0 {
			d.writes = 1
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.c.reads += d.reads
	l.c.readBytes += d.readBytes
	l.c.writes += d.writes
	l.c.keys += d.keys
	return nil
}
