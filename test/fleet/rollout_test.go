package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// pluginDirWith is a plugin directory holding hard links to the built
// plugins (symlinks out of a plugin directory are refused), with the files
// of overrides (name -> built plugin) in place of their own.
func pluginDirWith(t *testing.T, overrides map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(bins, "plugins")
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if err := os.Link(filepath.Join(src, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	for name, from := range overrides {
		_ = os.Remove(filepath.Join(dir, name))
		if err := os.Link(filepath.Join(src, from), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// proxy forwards TCP connections to an etcd member; block cuts every
// connection and refuses new ones (a partition), unblock heals it.
type proxy struct {
	l       net.Listener
	target  string
	mu      sync.Mutex // guards blocked and conns
	blocked bool
	conns   []net.Conn
	wg      sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		l.Close()
		p.block()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.blocked {
			p.mu.Unlock()
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); _, _ = io.Copy(u, c); u.Close() }()
		go func() { defer p.wg.Done(); _, _ = io.Copy(c, u); c.Close() }()
	}
}

func (p *proxy) block() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) unblock() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = false
}

func (p *proxy) endpoint() string { return "http://" + p.l.Addr().String() }

// rolloutOf reads the rollout of plugin.
func rolloutOf(ctx context.Context, t *testing.T, f pb.FleetServiceClient, plugin string) *pb.Rollout {
	t.Helper()
	resp, err := f.GetRollout(ctx, &pb.GetRolloutRequest{Plugin: plugin})
	if err != nil {
		t.Fatalf("GetRollout %s: %v", plugin, err)
	}
	return resp.GetRollout()
}

// follow reads the rollout of plugin on every fleet event about it
// (WatchFleet) until it ends (or d passes), checking on every read that no
// wave starts before the one before it has settled, and returns its last
// state and the order in which nodes were updated.
func follow(ctx context.Context, t *testing.T, f pb.FleetServiceClient, plugin string, d time.Duration, each func(*pb.Rollout)) (*pb.Rollout, []string) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	changed := make(chan struct{}, 1)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go func() {
		defer close(changed)
		for wctx.Err() == nil {
			s, err := f.WatchFleet(wctx, &pb.WatchFleetRequest{Plugin: plugin})
			for err == nil {
				if _, err = s.Recv(); err == nil {
					select {
					case changed <- struct{}{}:
					default:
					}
				}
			}
			if wctx.Err() == nil {
				time.Sleep(50 * time.Millisecond) // the watch broke (etcd or a daemon restarted by the test): open it again
			}
		}
	}()
	var order []string
	seen := map[string]bool{}
	for {
		resp, err := f.GetRollout(ctx, &pb.GetRolloutRequest{Plugin: plugin})
		if err == nil {
			r := resp.GetRollout()
			busy := map[uint32]bool{}
			for _, n := range r.GetNodes() {
				if n.GetState() == pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATING {
					busy[n.GetWave()] = true
				}
				if n.GetState() == pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATED && !seen[n.GetNode()] {
					seen[n.GetNode()] = true
					order = append(order, n.GetNode())
				}
			}
			for _, n := range r.GetNodes() {
				for w := range busy {
					if n.GetWave() > w && n.GetState() != pb.RolloutNodeState_ROLLOUT_NODE_STATE_PENDING && r.GetState() == pb.RolloutState_ROLLOUT_STATE_RUNNING {
						t.Fatalf("node %s of wave %d started while wave %d is updating: %v", n.GetNode(), n.GetWave(), w, r)
					}
				}
			}
			if each != nil {
				each(r)
			}
			if !active(r) {
				return r, order
			}
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("the rollout of %s did not end within %s (last: %v, %v)", plugin, d, resp.GetRollout(), err)
		}
	}
}

func active(r *pb.Rollout) bool {
	return r.GetState() == pb.RolloutState_ROLLOUT_STATE_RUNNING || r.GetState() == pb.RolloutState_ROLLOUT_STATE_PAUSED
}

func nodeStates(r *pb.Rollout) string {
	var out []string
	for _, n := range r.GetNodes() {
		out = append(out, fmt.Sprintf("%s:%s", n.GetNode(), strings.TrimPrefix(n.GetState().String(), "ROLLOUT_NODE_STATE_")))
	}
	return strings.Join(out, ",")
}

// TestRollouts drives staged rollouts across 5 plugind nodes on a 3-member
// etcd cluster.
func TestRollouts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	members := startCluster(t, 3)
	var eps []string
	for _, m := range members {
		eps = append(eps, m.endpoint())
	}
	endpoints := strings.Join(eps, ",")
	// n4 has a "v2" that never becomes ready; the others a working one.
	good := pluginDirWith(t, map[string]string{"v2": "echo"})
	bad := pluginDirWith(t, map[string]string{"v2": "notready"})
	// n5 reaches etcd through a proxy the test can cut.
	px := startProxy(t, members[0].clientURL.Host)
	nodes := map[string]*node{
		"n1": startNodeAt(t, endpoints, good, "n1", "role=web"),
		"n2": startNodeAt(t, endpoints, good, "n2", "role=web"),
		"n3": startNodeAt(t, endpoints, good, "n3", "role=web"),
		"n4": startNodeAt(t, endpoints, bad, "n4", "role=web"),
		"n5": startNodeAt(t, px.endpoint(), good, "n5", "role=web"),
	}
	all := func() []*node {
		var out []*node
		for _, n := range nodes {
			out = append(out, n)
		}
		slices.SortFunc(out, func(a, b *node) int { return strings.Compare(a.name, b.name) })
		return out
	}
	f := nodes["n1"].c.Fleet()
	pin := sha256Of(t, filepath.Join(bins, "plugins", "echo"))
	spec := func(name, version string) *pb.PluginSpec {
		return &pb.PluginSpec{Name: name, Binary: "echo", Sha256: pin, Env: map[string]string{"VERSION": version}}
	}
	apply := func(sp *pb.PluginSpec) {
		t.Helper()
		if _, err := f.ApplyFleetPlugin(ctx, &pb.ApplyFleetPluginRequest{Plugin: &pb.FleetPlugin{Spec: sp, Selector: map[string]string{"role": "web"}}}); err != nil {
			t.Fatal(err)
		}
		for _, n := range all() {
			eventually(t, 20*time.Second, n.name+" runs "+sp.GetName(), func() error { return runs(ctx, n, sp.GetName(), sp.GetEnv()["VERSION"], 0) })
		}
	}
	strategy := func(canary, wave uint32, bake time.Duration) *pb.RolloutStrategy {
		return &pb.RolloutStrategy{Canary: canary, WaveSize: wave, Bake: durationpb.New(bake)}
	}
	start := func(sp *pb.PluginSpec, s *pb.RolloutStrategy, unpinned bool) {
		t.Helper()
		if _, err := f.StartRollout(ctx, &pb.StartRolloutRequest{Spec: sp, Strategy: s, AllowUnpinned: unpinned}); err != nil {
			t.Fatalf("StartRollout %s: %v", sp.GetName(), err)
		}
	}
	eventually(t, 15*time.Second, "5 nodes registered", func() error {
		resp, err := f.ListNodes(ctx, &pb.ListNodesRequest{})
		if err != nil || len(resp.GetNodes()) != 5 {
			return fmt.Errorf("%d nodes (%v)", len(resp.GetNodes()), err)
		}
		return nil
	})

	t.Run("canary then waves, in order, with no failed call", func(t *testing.T) {
		apply(spec("p1", "1"))
		var next atomic.Int64
		list := all()
		loop := testbin.StartLoop(4, func() error {
			n := list[int(next.Add(1))%len(list)]
			_, _, err := n.c.Invoke(ctx, "p1", "echo", []byte("x"))
			return err
		})
		start(spec("p1", "2"), strategy(1, 2, 300*time.Millisecond), false)
		r, order := follow(ctx, t, f, "p1", 60*time.Second, nil)
		calls, failed, first := loop.Stop()
		if r.GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED || r.GetWaves() != 3 {
			t.Fatalf("rollout: %s %s (%s)", r.GetState(), r.GetReason(), nodeStates(r))
		}
		if len(order) != 5 || order[0] != "n1" || !slices.Equal(order[3:], []string{"n4", "n5"}) && !slices.Equal(order[3:], []string{"n5", "n4"}) {
			t.Errorf("updated in the order %v, want n1, then n2 and n3, then n4 and n5", order)
		}
		if failed != 0 || calls == 0 {
			t.Errorf("%d of %d calls failed during the rollout (first: %v)", failed, calls, first)
		}
		t.Logf("%d calls across 5 nodes during the rollout, %d failed", calls, failed)
		for _, n := range list {
			if err := runs(ctx, n, "p1", "2", 0); err != nil {
				t.Error(err)
			}
		}
		st, err := f.FleetStatus(ctx, &pb.FleetStatusRequest{Plugin: "p1"})
		if err != nil || st.GetPlugins()[0].GetSpec().GetEnv()["VERSION"] != "2" || st.GetPlugins()[0].GetSelector()["role"] != "web" {
			t.Errorf("the fleet plugin after the rollout: %v %v", st.GetPlugins(), err)
		}
	})

	t.Run("a node reloaded mid-rollout is not lost and the rollout goes on", func(t *testing.T) {
		apply(spec("p9", "1"))
		n3 := nodes["n3"]
		before, err := n3.c.Get(ctx, "p9")
		if err != nil {
			t.Fatal(err)
		}
		start(spec("p9", "2"), strategy(1, 2, 1500*time.Millisecond), false)
		reloaded := false
		r, _ := follow(ctx, t, f, "p9", 60*time.Second, func(r *pb.Rollout) {
			for _, n := range r.GetNodes() {
				if n.GetState() == pb.RolloutNodeState_ROLLOUT_NODE_STATE_LOST {
					t.Fatalf("node %s is LOST during the rollout (%s)", n.GetNode(), nodeStates(r))
				}
			}
			if !reloaded && r.GetWave() >= 1 {
				// n3 is in the wave being updated or baked: reload its
				// plugind in place (SIGHUP), as a package upgrade would.
				reloaded = true
				if err := n3.d.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
					t.Fatal(err)
				}
			}
		})
		if !reloaded {
			t.Fatal("the rollout ended before n3 was reloaded")
		}
		if !n3.d.Stderr.WaitFor("plugind reloaded in place", 1, 20*time.Second) {
			t.Fatalf("n3 did not reload:\n%s", n3.d.Stderr)
		}
		if r.GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			t.Fatalf("rollout: %s %s (%s)", r.GetState(), r.GetReason(), nodeStates(r))
		}
		for _, n := range all() {
			if err := runs(ctx, n, "p9", "2", 0); err != nil {
				t.Error(err)
			}
		}
		if before.GetPid() == 0 {
			t.Fatal("no pid")
		}
	})

	t.Run("a failed candidate halts and rolls back", func(t *testing.T) {
		apply(spec("p2", "1"))
		start(&pb.PluginSpec{Name: "p2", Binary: "v2", Env: map[string]string{"VERSION": "2"}}, strategy(1, 2, 200*time.Millisecond), true)
		r, _ := follow(ctx, t, f, "p2", 60*time.Second, nil)
		if r.GetState() != pb.RolloutState_ROLLOUT_STATE_ROLLED_BACK {
			t.Fatalf("rollout: %s %s (%s)", r.GetState(), r.GetReason(), nodeStates(r))
		}
		want := "n1:ROLLED_BACK,n2:ROLLED_BACK,n3:ROLLED_BACK,n4:FAILED,n5:ROLLED_BACK"
		if got := nodeStates(r); got != want {
			t.Errorf("nodes %s, want %s", got, want)
		}
		for _, n := range r.GetNodes() {
			if n.GetNode() == "n4" && !strings.Contains(n.GetReason(), "ready") {
				t.Errorf("n4's reason: %q", n.GetReason())
			}
		}
		for _, n := range all() {
			eventually(t, 20*time.Second, n.name+" back on p2 VERSION=1", func() error { return runs(ctx, n, "p2", "1", 0) })
		}
	})

	t.Run("a crash during the bake reverts and halts", func(t *testing.T) {
		apply(spec("p3", "1"))
		crashing := spec("p3", "2")
		crashing.Config = []byte("crash_after=300ms")
		start(crashing, strategy(1, 2, 3*time.Second), false)
		r, _ := follow(ctx, t, f, "p3", 60*time.Second, nil)
		if r.GetState() != pb.RolloutState_ROLLOUT_STATE_ROLLED_BACK || r.GetNodes()[0].GetState() != pb.RolloutNodeState_ROLLOUT_NODE_STATE_FAILED {
			t.Fatalf("rollout: %s %s (%s)", r.GetState(), r.GetReason(), nodeStates(r))
		}
		if reason := r.GetNodes()[0].GetReason(); !strings.Contains(reason, "revert") {
			t.Errorf("the canary's reason: %q", reason)
		}
		for _, n := range all() {
			if err := runs(ctx, n, "p3", "1", 0); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("pause, resume and abort", func(t *testing.T) {
		start(spec("p3", "3"), strategy(1, 2, 2*time.Second), false)
		if _, err := f.PauseRollout(ctx, &pb.PauseRolloutRequest{Plugin: "p3"}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second) // the canary settles; no new wave starts
		r := rolloutOf(ctx, t, f, "p3")
		if r.GetState() != pb.RolloutState_ROLLOUT_STATE_PAUSED || r.GetWave() != 0 {
			t.Fatalf("paused rollout: %s wave %d (%s)", r.GetState(), r.GetWave(), nodeStates(r))
		}
		if _, err := f.PauseRollout(ctx, &pb.PauseRolloutRequest{Plugin: "p3"}); codeReason(err) != "FailedPrecondition ROLLOUT_STATE" {
			t.Errorf("pausing twice: %v", err)
		}
		if _, err := f.ApplyFleetPlugin(ctx, &pb.ApplyFleetPluginRequest{Plugin: &pb.FleetPlugin{Spec: spec("p3", "9")}}); codeReason(err) != "FailedPrecondition ROLLOUT_ACTIVE" {
			t.Errorf("apply during a rollout: %v", err)
		}
		if _, err := f.ResumeRollout(ctx, &pb.ResumeRolloutRequest{Plugin: "p3"}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "wave 1 started", func() error {
			if w := rolloutOf(ctx, t, f, "p3").GetWave(); w < 1 {
				return fmt.Errorf("wave %d", w)
			}
			return nil
		})
		resp, err := f.AbortRollout(ctx, &pb.AbortRolloutRequest{Plugin: "p3"})
		if err != nil || resp.GetRollout().GetState() != pb.RolloutState_ROLLOUT_STATE_ROLLED_BACK {
			t.Fatalf("abort: %v %v", resp, err)
		}
		for _, n := range all() {
			eventually(t, 20*time.Second, n.name+" back on p3 VERSION=1", func() error { return runs(ctx, n, "p3", "1", 0) })
		}
	})

	t.Run("a partitioned node is lost, holds its wave, and is judged when back", func(t *testing.T) {
		start(spec("p1", "3"), strategy(1, 2, time.Second), false)
		eventually(t, 20*time.Second, "wave 1 started", func() error {
			if w := rolloutOf(ctx, t, f, "p1").GetWave(); w < 1 {
				return fmt.Errorf("wave %d", w)
			}
			return nil
		})
		px.block()
		eventually(t, 30*time.Second, "n5 LOST", func() error {
			if got := nodeStates(rolloutOf(ctx, t, f, "p1")); !strings.Contains(got, "n5:LOST") {
				return fmt.Errorf("nodes %s", got)
			}
			return nil
		})
		// n5's wave waits for it: the rollout neither succeeds nor fails
		// while n5 is away (n4, in the same wave, bakes meanwhile).
		eventually(t, 20*time.Second, "n4 UPDATED", func() error {
			if got := nodeStates(rolloutOf(ctx, t, f, "p1")); !strings.Contains(got, "n4:UPDATED") {
				return fmt.Errorf("nodes %s", got)
			}
			return nil
		})
		if r := rolloutOf(ctx, t, f, "p1"); r.GetState() != pb.RolloutState_ROLLOUT_STATE_RUNNING || !strings.Contains(nodeStates(r), "n5:LOST") {
			t.Fatalf("with n5 away: %s (%s), want RUNNING with n5 LOST", r.GetState(), nodeStates(r))
		}
		// Cut off, n5 serves what it had, untouched.
		if err := runs(ctx, nodes["n5"], "p1", "2", 0); err != nil {
			t.Errorf("the partitioned node: %v", err)
		}
		px.unblock()
		r, _ := follow(ctx, t, f, "p1", 60*time.Second, nil)
		if r.GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			t.Fatalf("rollout: %s %s (%s)", r.GetState(), r.GetReason(), nodeStates(r))
		}
		if got := nodeStates(r); got != "n1:UPDATED,n2:UPDATED,n3:UPDATED,n4:UPDATED,n5:UPDATED" {
			t.Errorf("nodes %s: want all UPDATED (n5 judged once back)", got)
		}
		eventually(t, 30*time.Second, "n5 converged after the partition healed", func() error { return runs(ctx, nodes["n5"], "p1", "3", 0) })
	})

	t.Run("a wave stuck on a lost node halts at the progress deadline; halted, the plugin is deleted only after the abort", func(t *testing.T) {
		apply(spec("p4", "1"))
		// n1 is the canary; n2-n5 the second wave. n5 is cut off while the
		// canary bakes: told to update, it never can, and goes LOST.
		s := strategy(1, 0, time.Second)
		s.ProgressDeadline, s.ManualRollback = durationpb.New(3*time.Second), true
		start(spec("p4", "2"), s, false)
		px.block()
		r, _ := follow(ctx, t, f, "p4", 90*time.Second, nil)
		if r.GetState() != pb.RolloutState_ROLLOUT_STATE_HALTED || !strings.Contains(r.GetReason(), "no progress for 3s") || !strings.Contains(r.GetReason(), "n5 lost") {
			t.Fatalf("rollout with n5 cut off: %s %q (%s), want HALTED at the progress deadline naming n5", r.GetState(), r.GetReason(), nodeStates(r))
		}
		if got := nodeStates(r); got != "n1:UPDATED,n2:UPDATED,n3:UPDATED,n4:UPDATED,n5:LOST" {
			t.Errorf("nodes %s", got)
		}
		// Halted, it holds its nodes on the new spec: delete and a new
		// rollout wait for the abort (which rolls them back).
		if _, err := f.DeleteFleetPlugin(ctx, &pb.DeleteFleetPluginRequest{Name: "p4"}); codeReason(err) != "FailedPrecondition ROLLOUT_ACTIVE" || !strings.Contains(err.Error(), "halted") {
			t.Errorf("deleting a plugin whose rollout halted: %v", err)
		}
		if _, err := f.StartRollout(ctx, &pb.StartRolloutRequest{Spec: spec("p4", "3"), Strategy: s}); codeReason(err) != "FailedPrecondition ROLLOUT_ACTIVE" {
			t.Errorf("a new rollout over a halted one: %v", err)
		}
		if resp, err := f.AbortRollout(ctx, &pb.AbortRolloutRequest{Plugin: "p4"}); err != nil || resp.GetRollout().GetState() != pb.RolloutState_ROLLOUT_STATE_ROLLED_BACK {
			t.Fatalf("abort: %v %v", resp, err)
		}
		px.unblock()
		if _, err := f.DeleteFleetPlugin(ctx, &pb.DeleteFleetPluginRequest{Name: "p4"}); err != nil {
			t.Fatalf("delete after the abort: %v", err)
		}
		// Nothing left anywhere: no node runs p4 (n5 included, once back).
		for _, n := range all() {
			eventually(t, 30*time.Second, n.name+" unloaded p4", func() error {
				if _, err := n.c.Get(ctx, "p4"); err == nil {
					return errors.New("still loaded")
				}
				return nil
			})
		}
	})

	t.Run("etcd down for 10s mid-rollout", func(t *testing.T) {
		start(spec("p1", "4"), strategy(1, 2, time.Second), false)
		eventually(t, 20*time.Second, "wave 1 started", func() error {
			if w := rolloutOf(ctx, t, f, "p1").GetWave(); w < 1 {
				return fmt.Errorf("wave %d", w)
			}
			return nil
		})
		for _, m := range members {
			m.stop()
		}
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(time.Second) { // time is what is tested: 10s without etcd
			for _, n := range all() {
				if _, _, err := n.c.Invoke(ctx, "p1", "echo", []byte("x")); err != nil {
					t.Fatalf("%s without etcd: %v", n.name, err)
				}
			}
		}
		errs := make(chan error, len(members))
		for _, m := range members {
			go func() { errs <- m.launch() }()
		}
		for range members {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		var r *pb.Rollout
		eventually(t, 30*time.Second, "GetRollout after etcd came back", func() error {
			_, err := f.GetRollout(ctx, &pb.GetRolloutRequest{Plugin: "p1"})
			return err
		})
		r, _ = follow(ctx, t, f, "p1", 90*time.Second, nil)
		if r.GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			t.Fatalf("rollout: %s %s (%s)", r.GetState(), r.GetReason(), nodeStates(r))
		}
		for _, n := range all() {
			eventually(t, 30*time.Second, n.name+" runs p1 VERSION=4", func() error { return runs(ctx, n, "p1", "4", 0) })
		}
	})

	t.Run("the controller dies mid-wave and another finishes", func(t *testing.T) {
		start(spec("p1", "5"), strategy(1, 1, 1500*time.Millisecond), false)
		var leader string
		eventually(t, 20*time.Second, "wave 1 started", func() error {
			r := rolloutOf(ctx, t, f, "p1")
			if r.GetWave() < 1 || r.GetController() == "" {
				return fmt.Errorf("wave %d, controller %q", r.GetWave(), r.GetController())
			}
			leader = r.GetController()
			return nil
		})
		dead := nodes[leader]
		if err := dead.d.Cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-dead.d.Exited()
		delete(nodes, leader)
		if leader == "n1" {
			f = nodes["n2"].c.Fleet()
		}
		r, _ := follow(ctx, t, f, "p1", 90*time.Second, nil)
		if r.GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED || r.GetController() == leader {
			t.Fatalf("rollout: %s %s, controller %s after %s died (%s)", r.GetState(), r.GetReason(), r.GetController(), leader, nodeStates(r))
		}
		t.Logf("%s led and was killed; %s finished the rollout (%s)", leader, r.GetController(), nodeStates(r))
		// A node that was not registered when the rollout started (n5
		// may still be re-registering after the etcd outage) converges to
		// the plugin's new spec on its own.
		for _, n := range all() {
			eventually(t, 30*time.Second, n.name+" runs p1 VERSION=5", func() error { return runs(ctx, n, "p1", "5", 0) })
		}
	})

	t.Run("the etcd leader member restarts mid-wave: no node is lost and the bake holds the next wave", func(t *testing.T) {
		ecli := etcdClient(t, clientv3.Config{Endpoints: eps})
		// Each node's lease: a node that lost it (LOST, even for a moment)
		// registers again under another.
		leases := func() map[string]int64 {
			t.Helper()
			resp, err := ecli.Get(ctx, "/plugincontrol/nodes/", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			out := map[string]int64{}
			for _, kv := range resp.Kvs {
				if name := filepath.Base(string(kv.Key)); nodes[name] != nil { // not the node killed above
					out[name] = kv.Lease
				}
			}
			return out
		}
		before := leases()
		start(spec("p1", "6"), strategy(1, 1, 2*time.Second), false)
		eventually(t, 20*time.Second, "wave 1 started", func() error {
			if w := rolloutOf(ctx, t, f, "p1").GetWave(); w < 1 {
				return fmt.Errorf("wave %d", w)
			}
			return nil
		})
		var leader *etcdServer
		for _, m := range members {
			if m.e.Server.Leader() == m.e.Server.MemberID() {
				leader = m
			}
		}
		if leader == nil {
			t.Fatal("no etcd member leads")
		}
		if leader == members[0] {
			// n5 reaches only members[0] (through its proxy): restarting
			// it would cut n5 off for as long, a partition (tested above),
			// not a leader restart. Leadership moves first.
			to := members[1].e.Server.MemberID()
			if err := leader.e.Server.MoveLeader(ctx, uint64(leader.e.Server.MemberID()), uint64(to)); err != nil {
				t.Fatal(err)
			}
			leader = members[1]
		}
		t.Logf("restarting the etcd leader %s", leader.name)
		leader.stop()
		if err := leader.launch(); err != nil {
			t.Fatal(err)
		}
		r, _ := follow(ctx, t, f, "p1", 90*time.Second, nil) // follow fails a wave that starts before the last one baked
		if r.GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			t.Fatalf("rollout: %s %s (%s)", r.GetState(), r.GetReason(), nodeStates(r))
		}
		if after := leases(); !maps.Equal(before, after) {
			t.Fatalf("node leases before the restart %v, after %v: a node was lost", before, after)
		}
	})
}

// codeReason is "Code REASON" of err.
func codeReason(err error) string {
	if err == nil {
		return "OK"
	}
	return fmt.Sprintf("%s %s", grpcCode(err), reason(err))
}
