package fleet_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/plugincontrol/plugincontrol/fleet"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
)

// brokenWatcher is etcd's Watcher, except that the first fail watches it
// opens end at once with ErrCompacted, as a watch does when etcd compacted
// past it (a slow node) — the narrow fault this test needs, which a single
// member cannot be made to produce on cue. opened receives every watch.
type brokenWatcher struct {
	clientv3.Watcher
	mu     sync.Mutex
	fail   int
	opened chan string
}

func (w *brokenWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	w.mu.Lock()
	fail := w.fail > 0
	if fail {
		w.fail--
	}
	w.mu.Unlock()
	select {
	case w.opened <- key:
	default: // the test reads the first few only
	}
	if !fail {
		return w.Watcher.Watch(ctx, key, opts...)
	}
	ch := make(chan clientv3.WatchResponse, 1)
	ch <- clientv3.WatchResponse{CompactRevision: 1}
	close(ch)
	return ch
}

// waitServing waits, on the manager's health watch, until plugin serves
// generation gen.
func waitServing(ctx context.Context, t *testing.T, m *manager.Manager, plugin string, gen uint64) {
	t.Helper()
	w, err := m.Watch([]string{plugin}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for {
		evs, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for %s generation %d to serve: %v", plugin, gen, err)
		}
		for _, ev := range evs {
			if ev.Health.Name == plugin && ev.Health.Generation == gen && ev.Health.State == manager.StateServing {
				return
			}
		}
	}
}

// TestWatchErrorKeepsTheLease: a watch that ends (here, compacted) makes
// the node resync and watch again within the same lease; it never leaves
// the fleet for it (its node key is neither deleted nor re-registered under
// another lease) and it goes on following the fleet.
func TestWatchErrorKeepsTheLease(t *testing.T) {
	const prefix = "/agent"
	newClient := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dir := t.TempDir()
	build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, "plugins", "echo"), "./examples/plugins/echo")
	build.Dir = testbin.Root()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building echo: %v\n%s", err, out)
	}
	m, err := manager.New(manager.Config{PluginDir: filepath.Join(dir, "plugins"), SocketDir: filepath.Join(dir, "sock"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())

	admin := newClient()
	defer admin.Close()
	st := fleet.NewStore(admin, prefix)
	greet := func(v string) *pb.FleetPlugin {
		return &pb.FleetPlugin{Spec: &pb.PluginSpec{Name: "greet", Binary: "echo", Env: map[string]string{"VERSION": v}}}
	}
	if _, err := st.Apply(ctx, greet("1"), true); err != nil {
		t.Fatal(err)
	}

	cli := newClient()
	defer cli.Close()
	// The agent opens two watches (plugins, its targets) per follow: both
	// of the first follow end at once.
	bw := &brokenWatcher{Watcher: cli.Watcher, fail: 2, opened: make(chan string, 16)}
	cli.Watcher = bw
	agent, err := fleet.NewAgent(fleet.AgentConfig{Client: cli, Prefix: prefix, Node: "n1", Manager: m, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); agent.Run(actx) }()
	defer func() { stop(); <-done }()

	waitServing(ctx, t, m, "greet", 1)
	// Two broken watches, then two that work: the node resynced.
	for range 4 {
		select {
		case <-bw.opened:
		case <-ctx.Done():
			t.Fatal("the agent did not watch again after its watch ended")
		}
	}
	lease := agent.Lease()
	if lease == 0 {
		t.Fatal("no lease")
	}

	// It still follows the fleet.
	if _, err := st.Apply(ctx, greet("2"), true); err != nil {
		t.Fatal(err)
	}
	waitServing(ctx, t, m, "greet", 2)
	if s, err := m.Get("greet"); err != nil || s.Spec.Env["VERSION"] != "2" {
		t.Fatalf("greet after the change: %+v %v", s.Spec.Env, err)
	}

	// One registration, under the one lease, never deleted.
	resp, err := admin.Get(ctx, prefix+"/nodes/n1")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("node key: %v %v", resp, err)
	}
	if got := resp.Kvs[0].Lease; got != lease || resp.Kvs[0].Version != 1 {
		t.Errorf("node key under lease %x (version %d), want the agent's lease %x, written once", got, resp.Kvs[0].Version, lease)
	}
	if agent.Lease() != lease {
		t.Errorf("the agent's lease moved from %x to %x", lease, agent.Lease())
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	for wr := range admin.Watch(wctx, prefix+"/nodes/n1", clientv3.WithRev(1)) {
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				t.Errorf("the node's key was deleted at revision %d: the node left the fleet", ev.Kv.ModRevision)
			}
		}
		if wr.Header.Revision >= resp.Header.Revision {
			break
		}
	}
}
