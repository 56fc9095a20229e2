package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/spec"
)

// Rollout errors.
var (
	// ErrRolloutActive: a rollout of the plugin is running or paused.
	ErrRolloutActive = errors.New("fleet: a rollout of this plugin is under way")
	// ErrNoRollout: the plugin has had no rollout.
	ErrNoRollout = errors.New("fleet: no rollout of this plugin")
	// ErrRolloutState: the rollout is not in a state the operation applies
	// to (pausing a paused one, resuming a finished one).
	ErrRolloutState = errors.New("fleet: not possible in the rollout's state")
	// ErrNothingToRoll: the plugin selects no live node, or already has
	// the spec.
	ErrNothingToRoll = errors.New("fleet: nothing to roll out")
	// ErrStrategy: an invalid strategy; the message names the field.
	ErrStrategy = errors.New("fleet: invalid rollout strategy")
)

// active reports whether a rollout still moves nodes (the controller steps
// it).
func active(r *pb.Rollout) bool {
	return r.GetState() == pb.RolloutState_ROLLOUT_STATE_RUNNING || r.GetState() == pb.RolloutState_ROLLOUT_STATE_PAUSED
}

// holding reports whether a rollout still holds nodes on its targets: an
// active one, or a HALTED one (with manual_rollback its updated nodes stay
// on the new spec until it is aborted). Apply, Delete and a new rollout of
// the plugin wait for it to end: each would leave those nodes' targets
// behind, running a spec no record points at.
func holding(r *pb.Rollout) bool {
	return active(r) || r.GetState() == pb.RolloutState_ROLLOUT_STATE_HALTED || r.GetCleanupPending()
}

// errHolding is ErrRolloutActive for a rollout that holds nodes, saying
// what ends it.
func errHolding(r *pb.Rollout) error {
	if !active(r) && r.GetCleanupPending() {
		return fmt.Errorf("%w: the rollout of %s ended and its targets are still being removed (the controller finishes that within a step); try again", ErrRolloutActive, r.GetPlugin())
	}
	if r.GetState() == pb.RolloutState_ROLLOUT_STATE_HALTED {
		return fmt.Errorf("%w: the rollout of %s halted and keeps its updated nodes on its spec; abort it first (pluginctl fleet rollout abort %s rolls them back)", ErrRolloutActive, r.GetPlugin(), r.GetPlugin())
	}
	return fmt.Errorf("%w: it moves %s to another spec; abort it first (pluginctl fleet rollout abort %s)", ErrRolloutActive, r.GetPlugin(), r.GetPlugin())
}

// checkStrategy validates a strategy.
func checkStrategy(s *pb.RolloutStrategy) error {
	switch {
	case s.GetWaveSize() > 0 && s.GetWavePercent() > 0:
		return fmt.Errorf("%w: wave_size and wave_percent exclude each other", ErrStrategy)
	case s.GetWavePercent() > 100:
		return fmt.Errorf("%w: wave_percent %d: at most 100", ErrStrategy, s.GetWavePercent())
	case s.GetBake().AsDuration() < 0 || s.GetBake().AsDuration() > 24*time.Hour:
		return fmt.Errorf("%w: bake must be within 0..24h", ErrStrategy)
	case s.GetProgressDeadline().AsDuration() < 0 || s.GetProgressDeadline().AsDuration() > 7*24*time.Hour:
		return fmt.Errorf("%w: progress_deadline must be within 0..168h (0: 10m)", ErrStrategy)
	case s.GetProgressDeadline() != nil && s.GetProgressDeadline().AsDuration() > 0 && s.GetProgressDeadline().AsDuration() <= s.GetBake().AsDuration():
		return fmt.Errorf("%w: progress_deadline %s must be longer than the bake %s (a node settles only after its bake)", ErrStrategy, s.GetProgressDeadline().AsDuration(), s.GetBake().AsDuration())
	}
	return nil
}

// planWaves assigns the nodes (sorted by name) to waves: the canary
// first, then waves of wave_size, or wave_percent of all nodes rounded up,
// or all the rest. It returns the nodes and the number of waves.
func planWaves(nodes []string, s *pb.RolloutStrategy) ([]*pb.RolloutNode, uint32) {
	out := make([]*pb.RolloutNode, 0, len(nodes))
	wave, i := uint32(0), 0
	add := func(n int) {
		for ; n > 0 && i < len(nodes); n-- {
			out = append(out, &pb.RolloutNode{Node: nodes[i], Wave: wave, State: pb.RolloutNodeState_ROLLOUT_NODE_STATE_PENDING})
			i++
		}
		wave++
	}
	if c := int(s.GetCanary()); c > 0 {
		add(c)
	}
	size := int(s.GetWaveSize())
	if p := int(s.GetWavePercent()); p > 0 {
		size = (len(nodes)*p + 99) / 100
	}
	if size <= 0 {
		size = len(nodes)
	}
	for i < len(nodes) {
		add(size)
	}
	return out, wave
}

// StartRollout starts a rollout of the fleet plugin ps.name to ps.
func (s *Store) StartRollout(ctx context.Context, ps *pb.PluginSpec, strategy *pb.RolloutStrategy, allowUnpinned bool) (*pb.Rollout, error) {
	to, err := spec.Canonical(ps)
	if err != nil {
		return nil, err
	}
	if to.GetSha256() == "" && !allowUnpinned {
		return nil, fmt.Errorf("%w: every node would run whatever file %q is in its plugin directory; pin it (sha256) or allow an unpinned spec explicitly", ErrUnpinned, to.GetBinary())
	}
	if strategy == nil {
		strategy = &pb.RolloutStrategy{}
	}
	if err := checkStrategy(strategy); err != nil {
		return nil, err
	}
	name := to.GetName()
	txn, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.keys.plugin(name)),
		clientv3.OpGet(s.keys.rollout(name)),
		clientv3.OpGet(s.keys.nodes(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, err
	}
	pkvs := txn.Responses[0].GetResponseRange().GetKvs()
	if len(pkvs) == 0 {
		return nil, fmt.Errorf("%w: %q (apply it first)", ErrNotFound, name)
	}
	plugin, err := decodePlugin(pkvs[0])
	if err != nil {
		return nil, err
	}
	var rolloutRev int64
	if rkvs := txn.Responses[1].GetResponseRange().GetKvs(); len(rkvs) > 0 {
		prev := &pb.Rollout{}
		if err := decode(string(rkvs[0].Key), rkvs[0].Value, prev); err != nil {
			return nil, err
		}
		if holding(prev) {
			return nil, errHolding(prev)
		}
		rolloutRev = rkvs[0].ModRevision
	}
	toDigest := spec.Digest(to)
	if toDigest == plugin.GetSpecDigest() {
		return nil, fmt.Errorf("%w: the fleet plugin %q already has this spec", ErrNothingToRoll, name)
	}
	var names []string
	for _, kv := range txn.Responses[2].GetResponseRange().GetKvs() {
		n := &pb.FleetNode{}
		if err := decode(string(kv.Key), kv.Value, n); err != nil {
			return nil, err
		}
		if selects(plugin.GetSelector(), n.GetLabels()) {
			names = append(names, n.GetName())
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: no live node is selected by %q", ErrNothingToRoll, name)
	}
	slices.Sort(names)
	nodes, waves := planWaves(names, strategy)
	now := timestamppb.Now()
	r := &pb.Rollout{
		Plugin: name, FromSpec: plugin.GetSpec(), ToSpec: to, FromDigest: plugin.GetSpecDigest(), ToDigest: toDigest,
		Strategy: strategy, State: pb.RolloutState_ROLLOUT_STATE_RUNNING, Waves: waves, Nodes: nodes,
		StartedAt: now, UpdatedAt: now,
	}
	put, err := s.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(s.keys.plugin(name)), "=", pkvs[0].ModRevision),
		clientv3.Compare(clientv3.ModRevision(s.keys.rollout(name)), "=", rolloutRev),
	).Then(clientv3.OpPut(s.keys.rollout(name), encode(r))).Commit()
	if err != nil {
		return nil, err
	}
	if !put.Succeeded {
		return nil, fmt.Errorf("%w: %s changed meanwhile; try again", ErrRolloutActive, name)
	}
	r.Revision = uint64(put.Header.GetRevision())
	return r, nil
}

// getRollout reads the rollout of name and its revision.
func (s *Store) getRollout(ctx context.Context, name string) (*pb.Rollout, int64, error) {
	resp, err := s.cli.Get(ctx, s.keys.rollout(name))
	if err != nil {
		return nil, 0, err
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("%w: %q", ErrNoRollout, name)
	}
	r := &pb.Rollout{}
	if err := decode(string(resp.Kvs[0].Key), resp.Kvs[0].Value, r); err != nil {
		return nil, 0, err
	}
	r.Revision = uint64(resp.Kvs[0].ModRevision)
	return r, resp.Kvs[0].ModRevision, nil
}

// GetRollout returns the last rollout of name.
func (s *Store) GetRollout(ctx context.Context, name string) (*pb.Rollout, error) {
	r, _, err := s.getRollout(ctx, name)
	return r, err
}

// RolloutOp is an operator's action on a rollout.
type RolloutOp int

const (
	// Pause stops a running rollout from starting new waves.
	Pause RolloutOp = iota + 1
	// Resume continues a paused one.
	Resume
	// Abort ends a running, paused or halted one and rolls its nodes back.
	Abort
)

func (op RolloutOp) String() string {
	switch op {
	case Pause:
		return "pause"
	case Resume:
		return "resume"
	case Abort:
		return "abort"
	}
	return "unknown"
}

// ChangeRollout applies op to the rollout of name, atomically against the
// controller (which may be advancing it at the same time). An abort rolls
// the nodes back in the same transaction.
func (s *Store) ChangeRollout(ctx context.Context, name string, op RolloutOp) (*pb.Rollout, error) {
	for attempt := 0; attempt < 5; attempt++ {
		r, rev, err := s.getRollout(ctx, name)
		if err != nil {
			return nil, err
		}
		var ops []clientv3.Op
		switch {
		case op == Pause && r.GetState() == pb.RolloutState_ROLLOUT_STATE_RUNNING:
			r.State, r.Reason = pb.RolloutState_ROLLOUT_STATE_PAUSED, "paused by an operator"
		case op == Resume && r.GetState() == pb.RolloutState_ROLLOUT_STATE_PAUSED:
			// The progress deadline runs from the resume, not from before
			// the pause.
			r.State, r.Reason, r.ProgressedAt = pb.RolloutState_ROLLOUT_STATE_RUNNING, "", timestamppb.Now()
		case op == Abort && (active(r) || r.GetState() == pb.RolloutState_ROLLOUT_STATE_HALTED):
			ops = rollBack(s.keys, r, "aborted by an operator")
		default:
			return nil, fmt.Errorf("%w: cannot %s a rollout that is %s", ErrRolloutState, op, strings.TrimPrefix(r.GetState().String(), "ROLLOUT_STATE_"))
		}
		r.UpdatedAt = timestamppb.Now()
		guard := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.keys.rollout(name)), "=", rev)}
		var ok bool
		var resp *clientv3.TxnResponse
		if active(r) || r.GetState() == pb.RolloutState_ROLLOUT_STATE_HALTED {
			ok, resp, err = commitChunked(ctx, s.cli, guard, ops, []clientv3.Op{clientv3.OpPut(s.keys.rollout(name), encode(withoutRevision(r)))})
		} else {
			// Aborted: the record first, so that no wave of the controller
			// (its targets written in chunks) lands after it.
			ok, resp, err = commitEnded(ctx, s.cli, guard, s.keys.rollout(name), withoutRevision(r), nil, ops)
		}
		if err != nil {
			return nil, err
		}
		if ok {
			r.Revision = uint64(resp.Header.GetRevision())
			return r, nil
		}
	}
	return nil, fmt.Errorf("fleet: the rollout of %q kept changing; try again", name)
}

// withoutRevision is r without its output-only revision, as stored.
func withoutRevision(r *pb.Rollout) *pb.Rollout {
	if r.GetRevision() == 0 {
		return r
	}
	c := proto.Clone(r).(*pb.Rollout)
	c.Revision = 0
	return c
}

// rollBack marks r ROLLED_BACK and returns the deletes of its nodes'
// targets: they fall back to the fleet plugin's spec, still the previous
// one. Nodes told to update are marked ROLLED_BACK; failed and lost ones
// keep their state. Every planned node's target is deleted, PENDING ones
// too: none may be left from an earlier rollout.
func rollBack(k keys, r *pb.Rollout, reason string) []clientv3.Op {
	for _, n := range r.GetNodes() {
		if n.GetState() == pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATING || n.GetState() == pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATED {
			n.State = pb.RolloutNodeState_ROLLOUT_NODE_STATE_ROLLED_BACK
		}
	}
	r.State, r.Reason = pb.RolloutState_ROLLOUT_STATE_ROLLED_BACK, reason
	return targetDeletes(k, r)
}
