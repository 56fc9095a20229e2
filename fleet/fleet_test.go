package fleet

import (
	"encoding/hex"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/spec"
)

func TestPlanWaves(t *testing.T) {
	nodes := []string{"a", "b", "c", "d", "e"}
	for _, tt := range []struct {
		s     *pb.RolloutStrategy
		want  string
		waves uint32
	}{
		{&pb.RolloutStrategy{}, "a0 b0 c0 d0 e0", 1},
		{&pb.RolloutStrategy{Canary: 1, WaveSize: 2}, "a0 b1 c1 d2 e2", 3},
		{&pb.RolloutStrategy{Canary: 2}, "a0 b0 c1 d1 e1", 2},
		{&pb.RolloutStrategy{WavePercent: 40}, "a0 b0 c1 d1 e2", 3},
		{&pb.RolloutStrategy{Canary: 1, WavePercent: 1}, "a0 b1 c2 d3 e4", 5},
		{&pb.RolloutStrategy{Canary: 9}, "a0 b0 c0 d0 e0", 1},
	} {
		got, waves := planWaves(nodes, tt.s)
		var b strings.Builder
		for i, n := range got {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(n.GetNode())
			b.WriteByte(byte('0' + n.GetWave()))
		}
		if b.String() != tt.want || waves != tt.waves {
			t.Errorf("%v: %s (%d waves), want %s (%d)", tt.s, b.String(), waves, tt.want, tt.waves)
		}
	}
}

func TestCheckStrategy(t *testing.T) {
	for _, s := range []*pb.RolloutStrategy{
		{WaveSize: 1, WavePercent: 10},
		{WavePercent: 101},
		{Bake: durationpb.New(-time.Second)},
		{Bake: durationpb.New(25 * time.Hour)},
		{ProgressDeadline: durationpb.New(-time.Second)},
		{Bake: durationpb.New(time.Minute), ProgressDeadline: durationpb.New(time.Minute)},
	} {
		if err := checkStrategy(s); err == nil {
			t.Errorf("%v accepted", s)
		}
	}
	if err := checkStrategy(&pb.RolloutStrategy{Canary: 1, WavePercent: 100, Bake: durationpb.New(time.Minute), ProgressDeadline: durationpb.New(2 * time.Minute)}); err != nil {
		t.Error(err)
	}
}

// TestStep walks the controller's transitions from one rollout state.
func TestStep(t *testing.T) {
	const to, from = "new", "old"
	now := time.Unix(1000, 0)
	mk := func(states ...pb.RolloutNodeState) *pb.Rollout {
		r := &pb.Rollout{Plugin: "p", ToDigest: to, FromDigest: from, State: pb.RolloutState_ROLLOUT_STATE_RUNNING, Waves: 2,
			Strategy: &pb.RolloutStrategy{Canary: 1, Bake: durationpb.New(time.Second)}}
		for i, s := range states {
			w := uint32(0)
			if i > 0 {
				w = 1
			}
			r.Nodes = append(r.Nodes, &pb.RolloutNode{Node: string(rune('a' + i)), Wave: w, State: s})
		}
		return r
	}
	const (
		pending  = pb.RolloutNodeState_ROLLOUT_NODE_STATE_PENDING
		updating = pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATING
		updated  = pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATED
	)
	serving := func(digest string) *pb.FleetPluginStatus {
		return &pb.FleetPluginStatus{SpecDigest: digest, State: pb.PluginState_PLUGIN_STATE_SERVING}
	}
	live := map[string]bool{"a": true, "b": true, "c": true}
	c := NewController(ControllerConfig{Prefix: "/x", Node: "ctl"})
	states := func(r *pb.Rollout) string {
		var out []string
		for _, n := range r.GetNodes() {
			out = append(out, strings.TrimPrefix(n.GetState().String(), "ROLLOUT_NODE_STATE_"))
		}
		return strings.TrimPrefix(r.GetState().String(), "ROLLOUT_STATE_") + " " + strings.Join(out, ",")
	}

	for _, tt := range []struct {
		name     string
		r        *pb.Rollout
		statuses map[string]*pb.FleetPluginStatus
		live     map[string]bool
		want     string
		ops      int // target writes and deletes
	}{
		{"a new rollout starts its first wave", mk(pending, pending, pending), nil, live, "RUNNING UPDATING,PENDING,PENDING", 1},
		{"serving the new spec, bake not over", mk(updating, pending, pending), map[string]*pb.FleetPluginStatus{"a/p": serving(to)}, live, "RUNNING UPDATING,PENDING,PENDING", 0},
		// A rollback deletes every planned node's target, PENDING ones too.
		{"a failed candidate halts and rolls back", mk(updating, pending, pending), map[string]*pb.FleetPluginStatus{"a/p": {SpecDigest: from, FailedSpecDigest: to, LastError: "stage ready"}}, live, "ROLLED_BACK FAILED,PENDING,PENDING", 3},
		{"UNHEALTHY on the new spec fails", mk(updating, pending, pending), map[string]*pb.FleetPluginStatus{"a/p": {SpecDigest: to, State: pb.PluginState_PLUGIN_STATE_UNHEALTHY}}, live, "ROLLED_BACK FAILED,PENDING,PENDING", 3},
		// LOST holds its wave: it is judged when it comes back.
		{"a dead node is lost and holds its wave", mk(updating, pending, pending), nil, map[string]bool{"b": true, "c": true}, "RUNNING LOST,PENDING,PENDING", 0},
		{"a lost node back is updating again", mk(pb.RolloutNodeState_ROLLOUT_NODE_STATE_LOST, pending, pending), nil, live, "RUNNING UPDATING,PENDING,PENDING", 0},
		{"a lost canary past the progress deadline halts", func() *pb.Rollout {
			r := mk(pb.RolloutNodeState_ROLLOUT_NODE_STATE_LOST, pending, pending)
			r.Strategy.ProgressDeadline = durationpb.New(time.Minute)
			r.ProgressedAt = timestamppb.New(now.Add(-time.Minute - time.Second))
			return r
		}(), nil, map[string]bool{"b": true, "c": true}, "ROLLED_BACK LOST,PENDING,PENDING", 3},
		{"within the progress deadline it waits", func() *pb.Rollout {
			r := mk(pb.RolloutNodeState_ROLLOUT_NODE_STATE_LOST, pending, pending)
			r.Strategy.ProgressDeadline = durationpb.New(time.Minute)
			r.ProgressedAt = timestamppb.New(now.Add(-time.Minute + time.Second))
			return r
		}(), nil, map[string]bool{"b": true, "c": true}, "RUNNING LOST,PENDING,PENDING", 0},
		// A live node with no status (a new lease, not yet republished)
		// is unknown, not reverted.
		{"no status yet is not a revert", func() *pb.Rollout {
			r := mk(updating, pending, pending)
			r.Nodes[0].ServingSince = timestamppb.New(now)
			return r
		}(), nil, live, "RUNNING UPDATING,PENDING,PENDING", 0},
		{"a settled wave starts the next", mk(updated, pending, pending), nil, live, "RUNNING UPDATED,UPDATING,UPDATING", 2},
		// max_unavailable: a wave's nodes move that many at a time.
		{"max_unavailable starts part of a wave", func() *pb.Rollout {
			r := mk(updated, pending, pending)
			r.Strategy.MaxUnavailable = 1
			return r
		}(), nil, live, "RUNNING UPDATED,UPDATING,PENDING", 1},
		{"max_unavailable: a moving node holds the rest", func() *pb.Rollout {
			r := mk(updated, updating, pending)
			r.Wave, r.Strategy.MaxUnavailable = 1, 1
			return r
		}(), nil, live, "RUNNING UPDATED,UPDATING,PENDING", 0},
		{"max_unavailable: a lost node counts as moving", func() *pb.Rollout {
			r := mk(updated, updating, pending)
			r.Wave, r.Strategy.MaxUnavailable = 1, 1
			return r
		}(), nil, map[string]bool{"a": true, "c": true}, "RUNNING UPDATED,LOST,PENDING", 0},
		{"max_unavailable: the next starts once one settles", func() *pb.Rollout {
			r := mk(updated, updated, pending)
			r.Wave, r.Strategy.MaxUnavailable = 1, 1
			return r
		}(), nil, live, "RUNNING UPDATED,UPDATED,UPDATING", 1},
		{"max_unavailable: the last wave settles", func() *pb.Rollout {
			r := mk(updated, updated, updated)
			r.Wave, r.Strategy.MaxUnavailable = 1, 1
			return r
		}(), nil, live, "SUCCEEDED UPDATED,UPDATED,UPDATED", 4},
		{"the last wave done: succeeded", func() *pb.Rollout { r := mk(updated, updated, updated); r.Wave = 1; return r }(), nil, live, "SUCCEEDED UPDATED,UPDATED,UPDATED", 4},
		{"paused: no new wave", func() *pb.Rollout {
			r := mk(updated, pending, pending)
			r.State = pb.RolloutState_ROLLOUT_STATE_PAUSED
			return r
		}(), nil, live, "PAUSED UPDATED,PENDING,PENDING", 0},
		{"manual rollback halts and keeps the nodes", func() *pb.Rollout {
			r := mk(updating, pending, pending)
			r.Strategy.ManualRollback = true
			return r
		}(), map[string]*pb.FleetPluginStatus{"a/p": {FailedSpecDigest: to}}, live, "HALTED FAILED,PENDING,PENDING", 0},
		{"max_failed tolerates a failure", func() *pb.Rollout {
			r := mk(updating, pending, pending)
			r.Strategy.MaxFailed = 1
			return r
		}(), map[string]*pb.FleetPluginStatus{"a/p": {FailedSpecDigest: to}}, live, "RUNNING FAILED,UPDATING,UPDATING", 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ops := c.step(tt.r, map[string]string{"role": "web"}, tt.live, tt.statuses, now)
			if got := states(tt.r); got != tt.want || len(ops) != tt.ops {
				t.Errorf("%s with %d ops, want %s with %d", got, len(ops), tt.want, tt.ops)
			}
		})
	}

	// The bake: UPDATED once the node served the new spec for it.
	r := mk(updating, pending, pending)
	st := map[string]*pb.FleetPluginStatus{"a/p": serving(to)}
	c.step(r, nil, live, st, now)
	c.step(r, nil, live, st, now.Add(999*time.Millisecond))
	if r.GetNodes()[0].GetState() != updating {
		t.Fatalf("updated before its bake: %s", states(r))
	}
	c.step(r, nil, live, st, now.Add(time.Second))
	if r.GetNodes()[0].GetState() != updated {
		t.Fatalf("not updated after its bake: %s", states(r))
	}
	// A node still baking by its own clock is not updated, whatever the
	// leader's clock says.
	r = mk(updating, pending, pending)
	r.Nodes[0].ServingSince = timestamppb.New(now.Add(-time.Hour))
	bakingSt := serving(to)
	bakingSt.Baking = true
	c.step(r, nil, live, map[string]*pb.FleetPluginStatus{"a/p": bakingSt}, now)
	if r.GetNodes()[0].GetState() != updating {
		t.Fatalf("updated while the node bakes: %s", states(r))
	}
	c.step(r, nil, live, st, now)
	if r.GetNodes()[0].GetState() != updated {
		t.Fatalf("not updated once the node's bake ended: %s", states(r))
	}
	// A new leader times the bakes and the progress deadline on its own
	// clock: a leader whose clock runs an hour ahead does not cut them.
	r = mk(updating, pending, pending)
	r.Nodes[0].ServingSince = timestamppb.New(now)
	r.ProgressedAt = timestamppb.New(now)
	ahead := now.Add(time.Hour)
	rebase(r, ahead)
	c.step(r, nil, live, st, ahead)
	if r.GetNodes()[0].GetState() != updating || !r.GetProgressedAt().AsTime().Equal(ahead) {
		t.Fatalf("a leader with its clock ahead: %s, progressed at %v", states(r), r.GetProgressedAt().AsTime())
	}
	// A node that served the new spec and runs the old one again reverted.
	r = mk(updating, pending, pending)
	r.Nodes[0].ServingSince = timestamppb.New(now)
	c.step(r, nil, live, map[string]*pb.FleetPluginStatus{"a/p": serving(from)}, now)
	if got := states(r); got != "ROLLED_BACK FAILED,PENDING,PENDING" || !strings.Contains(r.GetNodes()[0].GetReason(), "reverted") {
		t.Fatalf("a reverted node: %s (%s)", got, r.GetNodes()[0].GetReason())
	}
	// A node lost while serving and back starts its bake over.
	r = mk(updating, pending, pending)
	c.step(r, nil, live, st, now)
	c.step(r, nil, map[string]bool{"b": true, "c": true}, st, now.Add(500*time.Millisecond))
	c.step(r, nil, live, st, now.Add(time.Second))
	if n := r.GetNodes()[0]; n.GetState() != updating || !n.GetServingSince().AsTime().Equal(now.Add(time.Second)) {
		t.Fatalf("a node back from LOST: %s serving since %v, want UPDATING from its return", states(r), n.GetServingSince().AsTime())
	}
	// The deadline message names the waiting nodes.
	r = mk(pb.RolloutNodeState_ROLLOUT_NODE_STATE_LOST, pending, pending)
	r.Strategy.ManualRollback = true
	r.ProgressedAt = timestamppb.New(now.Add(-11 * time.Minute))
	c.step(r, nil, map[string]bool{"b": true, "c": true}, nil, now)
	if got := states(r); got != "HALTED LOST,PENDING,PENDING" || !strings.Contains(r.GetReason(), "no progress for 10m1s") || !strings.Contains(r.GetReason(), "a lost") {
		t.Fatalf("the default deadline: %s (%s)", got, r.GetReason())
	}
}

// TestRecordEncoding pins the bytes of the records kept in etcd: a change
// of a field number (which buf breaking also refuses) or of the encoding
// would strand every fleet's keys.
func TestRecordEncoding(t *testing.T) {
	p := &pb.FleetPlugin{Spec: &pb.PluginSpec{Name: "greet", Binary: "echo", Sha256: strings.Repeat("ab", 32)}, Selector: map[string]string{"role": "web"}}
	p.SpecDigest = spec.Digest(p.GetSpec())
	for _, tt := range []struct {
		name string
		got  string
		want string
	}{
		{"digest", p.GetSpecDigest(), "fd70aba4863060dd602a38c20e57a845eb8953b307d6e209dfd549cb17265f30"},
		{"FleetPlugin", hex.EncodeToString([]byte(encode(p))), "0a4f0a05677265657412046563686f2a4061626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162120b0a04726f6c651203776562224066643730616261343836333036306464363032613338633230653537613834356562383935336233303764366532303964666435343963623137323635663330"},
		{"FleetTarget", hex.EncodeToString([]byte(encode(&pb.FleetTarget{Spec: p.GetSpec(), SpecDigest: "d", Bake: durationpb.New(time.Second)}))), "0a4f0a05677265657412046563686f2a40616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261621201641a020801"},
		{"FleetPluginStatus", hex.EncodeToString([]byte(encode(&pb.FleetPluginStatus{Node: "n1", Plugin: "greet", Generation: 3, State: pb.PluginState_PLUGIN_STATE_SERVING, SpecDigest: "d", FailedSpecDigest: "f"}))), "0a026e3112056772656574180320022a0164420166"},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: %s\nwant %s", tt.name, tt.got, tt.want)
		}
	}
	if SchemaVersion != "2" || !slices.Equal(layouts, []string{"1", "2"}) {
		t.Errorf("SchemaVersion %q, layouts %v: a new layout needs its reader here first", SchemaVersion, layouts)
	}
	k := newKeys("/p")
	for _, tt := range []struct{ layout, key string }{{"1", "/p/status/greet/n1"}, {"2", "/p/reports/n1/greet"}} {
		if got := k.reportKey(tt.layout, "n1", "greet"); got != tt.key {
			t.Errorf("layout %s: report key %s, want %s", tt.layout, got, tt.key)
		}
		if node, name, ok := k.reportOf(tt.key); node != "n1" || name != "greet" || !ok {
			t.Errorf("%s: node %q, plugin %q, %v", tt.key, node, name, ok)
		}
	}
}

func TestSelects(t *testing.T) {
	labels := map[string]string{"role": "web", "zone": "a"}
	for sel, want := range map[string]bool{"": true, "role=web": true, "role=web,zone=a": true, "role=db": false, "rack=1": false} {
		m := map[string]string{}
		for _, kv := range strings.Split(sel, ",") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				m[k] = v
			}
		}
		if got := selects(m, labels); got != want {
			t.Errorf("selector %q: %v", sel, got)
		}
	}
}
