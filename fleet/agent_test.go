package fleet_test

import (
	"context"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

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

// logTap is a slog handler that lets a test wait for a message.
type logTap struct {
	mu   sync.Mutex
	msgs []string
	more chan struct{} // closed and replaced at every record
}

func newLogTap() *logTap { return &logTap{more: make(chan struct{})} }

func (h *logTap) Enabled(context.Context, slog.Level) bool { return true }
func (h *logTap) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logTap) WithGroup(string) slog.Handler            { return h }
func (h *logTap) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	close(h.more)
	h.more = make(chan struct{})
	return nil
}

// wait returns once a record's message starts with prefix.
func (h *logTap) wait(ctx context.Context, t *testing.T, prefix string) {
	t.Helper()
	for {
		h.mu.Lock()
		for _, m := range h.msgs {
			if strings.HasPrefix(m, prefix) {
				h.mu.Unlock()
				return
			}
		}
		more := h.more
		h.mu.Unlock()
		select {
		case <-more:
		case <-ctx.Done():
			t.Fatalf("no log record %q", prefix)
		}
	}
}

// agentFixture is one node: a real manager with the echo plugin, and its
// agent on a real etcd (its client's Watcher wrapped by brokenWatcher).
type agentFixture struct {
	m      *manager.Manager
	admin  *clientv3.Client
	store  *fleet.Store
	agent  *fleet.Agent
	bw     *brokenWatcher
	logs   *logTap
	prefix string
}

// newManager returns a real manager whose plugin directory holds the
// echo plugin, built for the test, and a directory for the test's own
// files.
func newManager(ctx context.Context, t *testing.T) (*manager.Manager, string) {
	t.Helper()
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
	t.Cleanup(func() { m.Close(context.Background()) })
	return m, dir
}

func startAgent(ctx context.Context, t *testing.T, failWatches int) *agentFixture {
	t.Helper()
	const prefix = "/agent"
	newClient := startEtcd(t)
	m, _ := newManager(ctx, t)
	admin := newClient()
	t.Cleanup(func() { admin.Close() })
	cli := newClient()
	t.Cleanup(func() { cli.Close() })
	bw := &brokenWatcher{Watcher: cli.Watcher, fail: failWatches, opened: make(chan string, 16)}
	cli.Watcher = bw
	logs := newLogTap()
	agent, err := fleet.NewAgent(fleet.AgentConfig{Client: cli, Prefix: prefix, Node: "n1", Manager: m, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); agent.Run(actx) }()
	t.Cleanup(func() { stop(); <-done })
	return &agentFixture{m: m, admin: admin, store: fleet.NewStore(admin, prefix), agent: agent, bw: bw, logs: logs, prefix: prefix}
}

func greet(v string) *pb.FleetPlugin {
	return &pb.FleetPlugin{Spec: &pb.PluginSpec{Name: "greet", Binary: "echo", Env: map[string]string{"VERSION": v}}}
}

// TestWatchErrorKeepsTheLease: a watch that ends (here, compacted) makes
// the node resync and watch again within the same lease; it never leaves
// the fleet for it (its node key is neither deleted nor re-registered under
// another lease) and it goes on following the fleet.
func TestWatchErrorKeepsTheLease(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The agent opens two watches (plugins, its targets) per follow: both
	// of the first follow end at once.
	f := startAgent(ctx, t, 2)
	if _, err := f.store.Apply(ctx, greet("1"), true); err != nil {
		t.Fatal(err)
	}
	waitServing(ctx, t, f.m, "greet", 1)
	// Two broken watches, then two that work: the node resynced.
	for range 4 {
		select {
		case <-f.bw.opened:
		case <-ctx.Done():
			t.Fatal("the agent did not watch again after its watch ended")
		}
	}
	f.logs.wait(ctx, t, "fleet watch ended; resyncing within the node's lease")
	lease := f.agent.Lease()
	if lease == 0 {
		t.Fatal("no lease")
	}

	// It still follows the fleet.
	if _, err := f.store.Apply(ctx, greet("2"), true); err != nil {
		t.Fatal(err)
	}
	waitServing(ctx, t, f.m, "greet", 2)
	if s, err := f.m.Get("greet"); err != nil || s.Spec.Env["VERSION"] != "2" {
		t.Fatalf("greet after the change: %+v %v", s.Spec.Env, err)
	}

	// One registration, under the one lease, never deleted.
	resp, err := f.admin.Get(ctx, f.prefix+"/nodes/n1")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("node key: %v %v", resp, err)
	}
	if got := resp.Kvs[0].Lease; got != lease || resp.Kvs[0].Version != 1 {
		t.Errorf("node key under lease %x (version %d), want the agent's lease %x, written once", got, resp.Kvs[0].Version, lease)
	}
	if f.agent.Lease() != lease {
		t.Errorf("the agent's lease moved from %x to %x", lease, f.agent.Lease())
	}
	if deletes := keyDeletes(ctx, t, f.admin, f.prefix+"/nodes/n1", resp.Header.Revision); len(deletes) > 0 {
		t.Errorf("the node's key was deleted at revision %v: the node left the fleet", deletes)
	}
}

// keyDeletes lists the revisions at which key was deleted, up to rev.
func keyDeletes(ctx context.Context, t *testing.T, cli *clientv3.Client, key string, rev int64) []int64 {
	t.Helper()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out []int64
	for wr := range cli.Watch(wctx, key, clientv3.WithRev(1)) {
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				out = append(out, ev.Kv.ModRevision)
			}
		}
		if wr.Header.Revision >= rev {
			break
		}
	}
	return out
}

// TestWipedEtcdUnloadsNothing: "etcdctl del --prefix" of the fleet's keys
// under a running node deletes its plugins' keys and the schema key in one
// revision; the node keeps every plugin as it runs, says why (log,
// Fenced), and follows the fleet again once a fleet apply writes the schema
// back (registering again: the wipe took its node key).
func TestWipedEtcdUnloadsNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := startAgent(ctx, t, 0)
	if _, err := f.store.Apply(ctx, greet("1"), true); err != nil {
		t.Fatal(err)
	}
	waitServing(ctx, t, f.m, "greet", 1)
	w, err := f.m.Watch([]string{"greet"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	if _, err := f.admin.Delete(ctx, f.prefix+"/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	f.logs.wait(ctx, t, "refusing to act on the fleet's keys")
	if why := f.agent.Fenced(); !strings.Contains(why, "schema is missing") {
		t.Errorf("Fenced: %q", why)
	}
	if s, err := f.m.Get("greet"); err != nil || s.Generation != 1 {
		t.Fatalf("greet after the wipe: %+v %v", s, err)
	}

	// An operator applies the fleet's plugins again: the schema is back.
	if _, err := f.store.Apply(ctx, greet("1"), true); err != nil {
		t.Fatal(err)
	}
	f.logs.wait(ctx, t, "the fleet's schema key is back")
	if why := f.agent.Fenced(); why != "" {
		t.Errorf("still fenced: %q", why)
	}
	// It follows the fleet again: a new spec reloads it.
	if _, err := f.store.Apply(ctx, greet("2"), true); err != nil {
		t.Fatal(err)
	}
	waitServing(ctx, t, f.m, "greet", 2)
	// Never unloaded on the way: no REMOVED among its events.
	for {
		evs, ended := w.Poll()
		for _, ev := range evs {
			if ev.Type == manager.EventRemoved {
				t.Fatalf("greet was unloaded at revision %d", ev.Revision)
			}
		}
		if len(evs) == 0 || ended {
			break
		}
	}
	nodes, err := f.store.Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].GetName() != "n1" {
		t.Errorf("the node did not register again: %v %v", nodes, err)
	}
}

// runAgent runs an agent of node n1 with instance on cli until the
// returned stop is called.
func runAgent(ctx context.Context, t *testing.T, cli *clientv3.Client, m *manager.Manager, instance string) (*fleet.Agent, *logTap, func()) {
	t.Helper()
	logs := newLogTap()
	agent, err := fleet.NewAgent(fleet.AgentConfig{Client: cli, Prefix: "/twins", Node: "n1", Manager: m, Logger: slog.New(logs), Instance: instance, LeaseTTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); agent.Run(actx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return agent, logs, stop
}

// nodeKey returns the instance and lease of the node key of n1.
func nodeKey(ctx context.Context, t *testing.T, admin *clientv3.Client) (string, int64) {
	t.Helper()
	resp, err := admin.Get(ctx, "/twins/nodes/n1")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0
	}
	var n pb.FleetNode
	if err := proto.Unmarshal(resp.Kvs[0].Value, &n); err != nil {
		t.Fatal(err)
	}
	return n.GetInstance(), resp.Kvs[0].Lease
}

// TestTwinRefused: a second plugind with the same node name (a cloned VM)
// does not overwrite the first's keys: it says why, is fenced, and takes
// the name once the first is gone. The same instance after a crash (its
// previous lease still alive) takes its name back at once.
func TestTwinRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	newClient := startEtcd(t)
	m, err := manager.New(manager.Config{PluginDir: t.TempDir(), SocketDir: filepath.Join(t.TempDir(), "sock"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	admin := newClient()
	t.Cleanup(func() { admin.Close() })
	cliA, cliB := newClient(), newClient()
	t.Cleanup(func() { cliA.Close(); cliB.Close() })

	_, logsA, stopA := runAgent(ctx, t, cliA, m, "a")
	logsA.wait(ctx, t, "fleet node registered")
	b, logsB, stopB := runAgent(ctx, t, cliB, m, "b")
	logsB.wait(ctx, t, "not joining the fleet")
	if inst, _ := nodeKey(ctx, t, admin); inst != "a" {
		t.Fatalf("the node key is %q's, want a's: the twin overwrote it", inst)
	}
	if f := b.Fenced(); !strings.Contains(f, `holds node name "n1"`) {
		t.Fatalf("the twin's Fenced: %q", f)
	}
	stopA() // revokes a's lease
	logsB.wait(ctx, t, "the other plugind with this node name is gone")
	if inst, _ := nodeKey(ctx, t, admin); inst != "b" || b.Fenced() != "" {
		t.Fatalf("after a left: node key of %q, fenced %q", inst, b.Fenced())
	}

	// b "crashes": it ends without revoking its lease, which lives on
	// (30s) with nothing renewing it. The next run of b takes the name
	// back at once.
	b.Handover()
	stopB()
	_, oldLease := nodeKey(ctx, t, admin)
	if oldLease == 0 {
		t.Fatal("b's crash took its node key")
	}
	cliB2 := newClient()
	t.Cleanup(func() { cliB2.Close() })
	_, logsB2, _ := runAgent(ctx, t, cliB2, m, "b")
	logsB2.wait(ctx, t, "fleet node registered")
	if inst, lease := nodeKey(ctx, t, admin); inst != "b" || lease == oldLease || lease == 0 {
		t.Fatalf("b's next run: node key of %q under lease %x (old %x)", inst, lease, oldLease)
	}
}
