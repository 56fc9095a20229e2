package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// Controller drives the fleet's rollouts. Every fleet-enabled plugind runs
// one; they elect one leader in etcd (concurrency.Election on P/election)
// and only the leader advances rollouts, each change guarded by its
// leadership in the same transaction. All progress is in the rollout
// record, so a new leader continues where the last one stopped.
//
// The leader lists what it steps from once and follows it by watch
// (informer.go): the rollout records, the node keys, and the reports of
// the plugins whose rollouts have work. A step reads nothing from etcd
// beyond a plugin's first list; an idle fleet costs the leader no read.
// It also collects the managed and detached keys of nodes gone for longer
// than ControllerConfig.NodeRetention.
//
// One step of a rollout (every StepInterval while leading):
//
//	current wave not started (nodes PENDING), RUNNING -> write the nodes'
//	    targets (new spec, bake); nodes UPDATING
//	UPDATING node: its lease gone          -> LOST (not a failure)
//	    no status (not yet republished)    -> unknown: stays UPDATING
//	    reports the new spec as failed     -> FAILED (candidate or bake revert)
//	    runs it UNHEALTHY                  -> FAILED
//	    ran it, runs another now           -> FAILED (reverted)
//	    runs it SERVING for the bake       -> UPDATED
//	LOST node: its lease back              -> UPDATING, its bake from scratch
//	failed nodes > max_failed             -> HALTED (manual_rollback) or
//	                                          ROLLED_BACK (targets deleted)
//	no node of the wave settled for the
//	  progress_deadline (some UPDATING
//	  or LOST)                             -> HALTED or ROLLED_BACK, likewise
//	wave done (none UPDATING or LOST),
//	  RUNNING                              -> next wave, or SUCCEEDED: the
//	                                          plugin's spec becomes the new
//	                                          one and the targets go
type Controller struct {
	cli       *clientv3.Client
	keys      keys
	node      string
	log       *slog.Logger
	ttl       time.Duration
	interval  time.Duration
	retention time.Duration

	mu    sync.Mutex      // guards stats (what Stats reports); never held during I/O
	stats ControllerStats // Rollouts: the active ones, as of the last step
}

// ControllerStats is what a controller knows, for metrics: whether it
// leads, the active rollouts as of its last step (when it leads), and its
// failed steps.
type ControllerStats struct {
	Leading bool
	// Rollouts are the active rollouts the leader stepped last (copies).
	Rollouts []*pb.Rollout
	// Steps counts the steps taken while leading (one every
	// StepInterval); StepErrors those that failed (etcd out of reach, a
	// write refused); LastStepError is when the last one failed (zero:
	// never).
	Steps         uint64
	StepErrors    uint64
	LastStepError time.Time
}

// Stats returns what the controller knows now.
func (c *Controller) Stats() ControllerStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Rollouts = slices.Clone(s.Rollouts)
	return s
}

func (c *Controller) setLeading(v bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Leading = v
	if !v {
		c.stats.Rollouts = nil
	}
}

// ControllerConfig configures a Controller.
type ControllerConfig struct {
	// Client, Prefix and Node as in AgentConfig.
	Client *clientv3.Client
	Prefix string
	Node   string
	Logger *slog.Logger
	// LeaseTTL of the election session: a dead leader is replaced after
	// about that long (default 10s).
	LeaseTTL time.Duration
	// StepInterval is how often the leader steps each rollout (default
	// 250ms).
	StepInterval time.Duration
	// NodeRetention is how long a node may be gone (its lease expired or
	// revoked) before the leader deletes its P/managed/NODE/ and
	// P/detached/NODE/ keys. 0: never. A node back after that writes them
	// again from its own memory (AgentConfig.Memory); one without it
	// finds its former fleet plugins unmanaged (refused as local
	// namesakes, not unloaded when the fleet deleted them meanwhile).
	NodeRetention time.Duration
}

// NewController returns a Controller.
func NewController(cfg ControllerConfig) *Controller {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 10 * time.Second
	}
	if cfg.StepInterval == 0 {
		cfg.StepInterval = 250 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Controller{cli: cfg.Client, keys: newKeys(cfg.Prefix), node: cfg.Node, ttl: cfg.LeaseTTL, interval: cfg.StepInterval, retention: cfg.NodeRetention,
		log: cfg.Logger.With("component", "fleet-controller", "node", cfg.Node)}
}

// Run campaigns for leadership and, while leading, drives the rollouts,
// until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	runSessions(ctx, c.log, "fleet controller session ended", c.lead)
	return nil
}

// lead is one session: campaign, then step rollouts while leading.
func (c *Controller) lead(ctx context.Context) error {
	sess, err := newSession(ctx, c.cli, c.ttl)
	if err != nil {
		return fmt.Errorf("election session: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_, _ = c.cli.Revoke(rctx, sess.Lease())
		sess.Orphan()
	}()
	e := concurrency.NewElection(sess, c.keys.election())
	if err := e.Campaign(ctx, c.node); err != nil {
		return fmt.Errorf("campaigning: %w", err)
	}
	c.log.Info("leading the fleet's rollouts")
	c.setLeading(true)
	defer c.setLeading(false)
	leader := clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev())
	// The times in the records are the previous leader's clock: each
	// active rollout's bakes and progress deadline start over on this
	// one's the first time it steps it (longer, never shorter, when the
	// clocks disagree).
	rebased := map[string]bool{}
	tick := time.NewTicker(c.interval)
	defer tick.Stop()
	// Leading ends when the election key goes (a wiped prefix), not only
	// with the lease: a leader without its key fails every guarded write
	// and would hold the rollouts forever.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	keyGone := c.cli.Watch(wctx, e.Key(), clientv3.WithRev(e.Rev()+1), clientv3.WithFilterPut())
	// What a step needs, each listed once and then followed by a watch
	// (see informer.go): the rollout records, the node keys and the
	// reports of the plugins whose rollouts have work.
	records := &followed[*rollouts]{what: "rollout records", list: func(ctx context.Context) (*rollouts, error) {
		return listRollouts(ctx, c.cli, c.keys)
	}}
	nodeKeys := &followed[*nodesView]{what: "node keys", list: func(ctx context.Context) (*nodesView, error) {
		return listNodes(ctx, c.cli, c.keys, time.Now())
	}}
	reports := &followed[*statusView]{what: "node reports", list: func(ctx context.Context) (*statusView, error) {
		// The watch starts now; each plugin is listed when a rollout
		// first needs it.
		resp, err := c.cli.Get(ctx, c.keys.schema())
		if err != nil {
			return nil, err
		}
		return newStatusView(c.keys, layoutOf(resp.Kvs), resp.Header.GetRevision()), nil
	}}
	defer func() { records.close(); nodeKeys.close(); reports.close() }()
	for {
		var ended error
		step := false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			return errors.New("the election lease was lost")
		case wr, ok := <-keyGone:
			if !ok || wr.Err() != nil || len(wr.Events) > 0 {
				return errors.New("the election key was deleted (or its watch ended): campaigning again")
			}
			continue
		case wr, ok := <-records.changes:
			ended = records.changed(wr, ok)
		case wr, ok := <-nodeKeys.changes:
			ended = nodeKeys.changed(wr, ok)
		case wr, ok := <-reports.changes:
			ended = reports.changed(wr, ok)
		case <-tick.C:
			step = true
		}
		if ended != nil {
			if ctx.Err() != nil {
				return ctx.Err() // the watches end with the leadership
			}
			c.log.Info("following the fleet", "error", ended)
		}
		if !step {
			continue
		}
		err := func() error {
			rs, err := records.ready(ctx, wctx, c.cli)
			if err != nil {
				return err
			}
			ns, err := nodeKeys.ready(ctx, wctx, c.cli)
			if err != nil {
				return err
			}
			ss, err := reports.ready(ctx, wctx, c.cli)
			if err != nil {
				return err
			}
			if err := c.stepAll(ctx, leader, rebased, rs, ns.live, ss); err != nil {
				return err
			}
			return c.collect(ctx, leader, ns)
		}()
		c.mu.Lock()
		c.stats.Steps++
		c.mu.Unlock()
		if err != nil {
			c.log.Debug("stepping rollouts", "error", err)
			c.mu.Lock()
			c.stats.StepErrors++
			c.stats.LastStepError = time.Now()
			c.mu.Unlock()
		}
	}
}

// stepAll steps every rollout of the view that has work (active, or its
// cleanup pending) once, given the live nodes and the nodes' reports. It
// reads nothing from etcd but a plugin's reports the first time its
// rollout needs them.
func (c *Controller) stepAll(ctx context.Context, leader clientv3.Cmp, rebased map[string]bool, view *rollouts, live map[string]bool, reports *statusView) (err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var seen []*pb.Rollout // the active rollouts after this step, for Stats (read-only from here)
	defer func() {
		if err == nil {
			c.mu.Lock()
			c.stats.Rollouts = seen
			c.mu.Unlock()
		}
	}()
	due := map[string]bool{} // the plugins whose reports the next step needs
	defer func() {
		if err == nil {
			reports.keep(due)
		}
	}()
	for _, w := range view.work() {
		r, key := w.r, w.key
		if !active(r) {
			// Ended, its targets not all deleted (a crash midway):
			// finish. Done, or rewritten meanwhile (a new rollout, which
			// the watch brings): nothing left here either way.
			if err := finishCleanup(ctx, c.cli, key, r, w.rev, targetDeletes(c.keys, r)); err != nil {
				return err
			}
			view.forget(key)
			continue
		}
		name := r.GetPlugin()
		due[name] = true
		statuses, selector, err := reports.of(ctx, c.cli, name, live)
		if err != nil {
			return err
		}
		before := encode(r)
		now := time.Now()
		if !rebased[name] {
			rebase(r, now)
		}
		writes := c.step(r, selector, live, statuses, now)
		if encode(r) == before && len(writes) == 0 {
			seen = append(seen, r)
			continue
		}
		r.UpdatedAt, r.Controller = timestamppb.Now(), c.node
		guards := []clientv3.Cmp{leader, clientv3.Compare(clientv3.ModRevision(key), "=", w.rev)}
		var ok bool
		var resp *clientv3.TxnResponse
		if active(r) {
			// A wave's targets first, then the record: a step cut short
			// is stepped again (target writes are idempotent), and an
			// abort meanwhile (its record first) fails the guard.
			ok, resp, err = commitChunked(ctx, c.cli, guards, writes, []clientv3.Op{clientv3.OpPut(key, encode(r))})
		} else {
			// The end: the record (and the plugin's new spec) first,
			// then the targets' deletes (commitEnded).
			var head, deletes []clientv3.Op
			for _, op := range writes {
				if op.IsDelete() {
					deletes = append(deletes, op)
				} else {
					head = append(head, op)
				}
			}
			ok, resp, err = commitEnded(ctx, c.cli, guards, key, r, head, deletes)
		}
		if ok {
			// Known now, not when the watch brings it back: the next
			// step is guarded by this write's revision.
			view.wrote(key, r, resp.Header.GetRevision())
		}
		if err != nil {
			return err
		}
		if ok {
			rebased[name] = true
			if active(r) {
				seen = append(seen, r)
			}
		}
		if ok && !active(r) {
			c.log.Info("rollout ended", "plugin", name, "state", r.GetState().String(), "reason", r.GetReason())
		}
	}
	return nil
}

// rebase restarts, on a new leader's clock (now), what r timed on the
// previous leader's: the bake of each node serving the new spec, and the
// progress deadline.
func rebase(r *pb.Rollout, now time.Time) {
	for _, n := range r.GetNodes() {
		if n.GetState() == pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATING && n.GetServingSince() != nil {
			n.ServingSince = timestamppb.New(now)
		}
	}
	if r.GetProgressedAt() != nil {
		r.ProgressedAt = timestamppb.New(now)
	}
}

// defaultProgressDeadline is RolloutStrategy.progress_deadline's default,
// beyond the bake (a node settles only after its bake).
const defaultProgressDeadline = 10 * time.Minute

// step advances r given the live nodes and their statuses, and returns the
// target writes and deletes that go with the change (see Controller).
func (c *Controller) step(r *pb.Rollout, selector map[string]string, live map[string]bool, statuses map[string]*pb.FleetPluginStatus, now time.Time) []clientv3.Op {
	bake := r.GetStrategy().GetBake().AsDuration()
	failed, progressed := 0, false
	current := []*pb.RolloutNode{}
	for _, n := range r.GetNodes() {
		if n.GetWave() == r.GetWave() {
			current = append(current, n)
		}
		if n.GetState() == pb.RolloutNodeState_ROLLOUT_NODE_STATE_LOST && live[n.GetNode()] {
			// Back: judged again from now on, its bake from scratch.
			n.State, n.Reason, n.ServingSince = pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATING, "", nil
		}
		if n.GetState() != pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATING {
			if n.GetState() == pb.RolloutNodeState_ROLLOUT_NODE_STATE_FAILED {
				failed++
			}
			continue
		}
		st, reported := statuses[n.GetNode()+"/"+r.GetPlugin()]
		switch {
		case !live[n.GetNode()]:
			n.State, n.Reason = pb.RolloutNodeState_ROLLOUT_NODE_STATE_LOST, "its lease expired (dead or cut off from etcd)"
		case !reported:
			// Live, but its status is not (yet) there: a new lease's
			// status is written after it registers. Unknown, not reverted.
		case st.GetFailedSpecDigest() == r.GetToDigest():
			n.State, n.Reason = pb.RolloutNodeState_ROLLOUT_NODE_STATE_FAILED, st.GetLastError()
			failed++
		case st.GetSpecDigest() == r.GetToDigest() && st.GetState() == pb.PluginState_PLUGIN_STATE_UNHEALTHY:
			n.State, n.Reason = pb.RolloutNodeState_ROLLOUT_NODE_STATE_FAILED, "UNHEALTHY on the new spec"
			failed++
		case n.GetServingSince() != nil && st.GetSpecDigest() != r.GetToDigest():
			n.State, n.Reason = pb.RolloutNodeState_ROLLOUT_NODE_STATE_FAILED, "no longer runs the new spec (reverted)"
			failed++
		case st.GetSpecDigest() == r.GetToDigest() && st.GetState() == pb.PluginState_PLUGIN_STATE_SERVING:
			if n.GetServingSince() == nil {
				n.ServingSince = timestamppb.New(now)
			}
			// Both clocks: the leader's (a node that loaded the plugin
			// afresh has no bake of its own) and, for a reload, the
			// node's own bake, which a leader whose clock runs ahead
			// cannot cut short.
			if now.Sub(n.GetServingSince().AsTime()) >= bake && !st.GetBaking() {
				n.State = pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATED
			}
		}
		if s := n.GetState(); s == pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATED || s == pb.RolloutNodeState_ROLLOUT_NODE_STATE_FAILED {
			progressed = true
		}
	}
	if progressed || r.GetProgressedAt() == nil {
		r.ProgressedAt = timestamppb.New(now)
	}
	halt := func(reason string) []clientv3.Op {
		if r.GetStrategy().GetManualRollback() {
			r.State, r.Reason = pb.RolloutState_ROLLOUT_STATE_HALTED, reason+"; the updated nodes stay (manual rollback)"
			return nil
		}
		return rollBack(c.keys, r, reason+"; rolled back")
	}
	if failed > int(r.GetStrategy().GetMaxFailed()) {
		return halt(fmt.Sprintf("%d node(s) failed (max_failed %d)", failed, r.GetStrategy().GetMaxFailed()))
	}
	busy, pending := 0, 0 // of the current wave: moving (UPDATING or LOST), not started
	var waiting []string
	for _, n := range current {
		switch n.GetState() {
		case pb.RolloutNodeState_ROLLOUT_NODE_STATE_PENDING:
			pending++
		case pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATING, pb.RolloutNodeState_ROLLOUT_NODE_STATE_LOST:
			busy++
			waiting = append(waiting, n.GetNode()+" "+strings.ToLower(strings.TrimPrefix(n.GetState().String(), "ROLLOUT_NODE_STATE_")))
		}
	}
	deadline := r.GetStrategy().GetProgressDeadline().AsDuration()
	if deadline == 0 {
		deadline = bake + defaultProgressDeadline
	}
	if r.GetState() != pb.RolloutState_ROLLOUT_STATE_RUNNING {
		return nil // paused: the current wave settles, no new one starts, no deadline runs
	}
	if busy > 0 && now.Sub(r.GetProgressedAt().AsTime()) > deadline {
		return halt(fmt.Sprintf("no progress for %s (progress_deadline): %s", deadline, strings.Join(waiting, ", ")))
	}
	// Start the wave's waiting nodes, as many as max_unavailable leaves
	// room for.
	limit := int(r.GetStrategy().GetMaxUnavailable())
	if pending > 0 && (limit == 0 || busy < limit) {
		r.ProgressedAt = timestamppb.New(now)
		return c.startWave(r, r.GetWave(), bake, limit-busy)
	}
	if busy > 0 || pending > 0 {
		return nil
	}
	if r.GetWave()+1 < r.GetWaves() {
		r.Wave++
		r.ProgressedAt = timestamppb.New(now)
		return c.startWave(r, r.GetWave(), bake, limit)
	}
	// The last wave is done: the new spec becomes the plugin's, and the
	// targets go (the nodes already run it).
	// The plugin's new spec comes first: with the targets deleted before
	// it (a commit in chunks), nodes would go back to the old one.
	stored := &pb.FleetPlugin{Spec: r.GetToSpec(), SpecDigest: r.GetToDigest(), Selector: selector}
	ops := []clientv3.Op{clientv3.OpPut(c.keys.plugin(r.GetPlugin()), encode(stored))}
	for _, n := range r.GetNodes() {
		ops = append(ops, clientv3.OpDelete(c.keys.target(n.GetNode(), r.GetPlugin())))
	}
	r.State, r.Reason = pb.RolloutState_ROLLOUT_STATE_SUCCEEDED, ""
	return ops
}

// startWave writes the targets of wave's PENDING nodes, at most room of
// them (0 or less: all), in the rollout's order, and marks them UPDATING.
func (c *Controller) startWave(r *pb.Rollout, wave uint32, bake time.Duration, room int) []clientv3.Op {
	target := encode(&pb.FleetTarget{Spec: r.GetToSpec(), SpecDigest: r.GetToDigest(), Bake: durationpb.New(bake)})
	var ops []clientv3.Op
	for _, n := range r.GetNodes() {
		if room > 0 && len(ops) == room {
			break
		}
		if n.GetWave() == wave && n.GetState() == pb.RolloutNodeState_ROLLOUT_NODE_STATE_PENDING {
			n.State = pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATING
			ops = append(ops, clientv3.OpPut(c.keys.target(n.GetNode(), r.GetPlugin()), target))
		}
	}
	return ops
}

// collect deletes the managed and detached keys of the nodes gone for at
// least the node retention (none when it is 0), each guarded by the
// leadership and by the node's key being absent (a node back meanwhile
// keeps them). A node that comes back later writes them again from its
// own memory (AgentConfig.Memory).
func (c *Controller) collect(ctx context.Context, leader clientv3.Cmp, nodes *nodesView) error {
	if c.retention <= 0 {
		return nil
	}
	now := time.Now()
	for _, node := range nodes.departed(now, c.retention) {
		resp, err := c.cli.Txn(ctx).If(leader, clientv3.Compare(clientv3.CreateRevision(c.keys.node(node)), "=", 0)).Then(
			clientv3.OpDelete(c.keys.managedOf(node), clientv3.WithPrefix()),
			clientv3.OpDelete(c.keys.detachedOf(node), clientv3.WithPrefix()),
		).Commit()
		if err != nil {
			return fmt.Errorf("collecting the keys of node %s: %w", node, err)
		}
		if !resp.Succeeded {
			continue // back (the watch brings its key), or no longer leading
		}
		delete(nodes.gone, node)
		managed := resp.Responses[0].GetResponseDeleteRange().GetDeleted()
		detached := resp.Responses[1].GetResponseDeleteRange().GetDeleted()
		if managed+detached > 0 {
			c.log.Info("collected the keys of a departed node", "departed_node", node, "gone_for_at_least", c.retention.String(), "managed", managed, "detached", detached)
		}
	}
	return nil
}
