// Package fleet tests plugind's fleet mode end to end: a real etcd
// (go.etcd.io/etcd/server/v3/embed) on loopback and real plugind
// processes with their own state directories and node names, each running
// real plugin processes.
package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plugincontrol/plugincontrol/client"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/etcdtest"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

var bins string

func TestMain(m *testing.M) {
	testbin.Main(m, &bins, func(dir string) error { return testbin.DaemonBinaries(dir) },
		// Closing a member of an embedded etcd cluster leaves its peers'
		// HTTP keep-alive connections (rafthttp) to time out: net/http's,
		// created by etcd. Nothing in these tests uses net/http otherwise.
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"))
}

// etcdServer is one member of an embedded etcd cluster on loopback; stop
// and start keep its data and URLs.
type etcdServer struct {
	name               string
	dir                string
	clientURL, peerURL url.URL
	cluster            string             // the initial cluster: name=peerURL,...
	tls                *transport.TLSInfo // clients must present a certificate of this CA (nil: plaintext)
	e                  *embed.Etcd
}

func freePort(t *testing.T) string {
	t.Helper()
	addr, err := etcdtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// startCluster starts an etcd cluster of n members and waits until it
// serves.
func startCluster(t *testing.T, n int) []*etcdServer {
	t.Helper()
	members := make([]*etcdServer, n)
	var peers []string
	for i := range members {
		m := &etcdServer{name: fmt.Sprintf("m%d", i), dir: t.TempDir()}
		m.clientURL = url.URL{Scheme: "http", Host: freePort(t)}
		m.peerURL = url.URL{Scheme: "http", Host: freePort(t)}
		members[i] = m
		peers = append(peers, m.name+"="+m.peerURL.String())
	}
	errs := make(chan error, n)
	for _, m := range members {
		m.cluster = strings.Join(peers, ",")
		go func() { errs <- m.launch() }()
		t.Cleanup(m.stop)
	}
	for range members {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	return members
}

func startEtcd(t *testing.T) *etcdServer { return startCluster(t, 1)[0] }

// launch starts the member and waits until it is ready (a member of a
// cluster is ready once a quorum is up).
func (s *etcdServer) launch() error {
	e, err := (&etcdtest.Member{Name: s.name, Dir: s.dir, ClientURL: s.clientURL, PeerURL: s.peerURL, Cluster: s.cluster, TLS: s.tls}).Start()
	if err != nil {
		return err
	}
	s.e = e
	return nil
}

func (s *etcdServer) start(t *testing.T) {
	t.Helper()
	if err := s.launch(); err != nil {
		t.Fatal(err)
	}
}

func (s *etcdServer) stop() {
	if s.e != nil {
		s.e.Close()
		s.e = nil
	}
}

func (s *etcdServer) endpoint() string { return s.clientURL.String() }

// etcdClient is a client of the test's etcd (cfg with a quiet logger),
// closed when t ends.
func etcdClient(t *testing.T, cfg clientv3.Config) *clientv3.Client {
	t.Helper()
	cfg.Logger = zap.NewNop()
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// node is a fleet-enabled plugind.
type node struct {
	name string
	d    *testbin.Daemon
	c    *client.Client
}

func startNode(t *testing.T, etcd *etcdServer, name string, labels ...string) *node {
	t.Helper()
	return startNodeAt(t, etcd.endpoint(), "", name, labels...)
}

// startNodeAt starts a node on the etcd endpoints (comma-separated), with
// pluginDir as its plugin directory ("": the built plugins).
func startNodeAt(t *testing.T, endpoints, pluginDir, name string, labels ...string) *node {
	t.Helper()
	args := []string{"--fleet-etcd", endpoints, "--node-name", name, "--fleet-lease-ttl", "2s", "--log-level", "info"}
	for _, l := range labels {
		args = append(args, "--node-label", l)
	}
	return dialNode(t, name, testbin.StartDaemon(t, testbin.DaemonOptions{Bin: bins, PluginDir: pluginDir, Args: args}))
}

// dialNode is the node of a started daemon, with a client to it.
func dialNode(t *testing.T, name string, d *testbin.Daemon) *node {
	t.Helper()
	c, err := client.Dial(context.Background(), d.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &node{name: name, d: d, c: c}
}

// eventually polls cond every 50ms until it returns nil, or fails with its
// last error after d. Its conditions span several daemons and etcd (what
// each node runs, what the fleet records): no one event stream covers
// them. A rollout's progress has one: follow waits on it.
func eventually(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(50 * time.Millisecond) // polls: no one event covers the condition (see above)
	}
}

// runs checks that n runs plugin name SERVING with env VERSION=version
// ("" means absent) at generation gen (0: any), or, with version "-",
// that n does not run it.
func runs(ctx context.Context, n *node, name, version string, gen uint64) error {
	st, err := n.c.Get(ctx, name)
	if version == "-" {
		if errors.Is(err, client.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("%s still runs %s (%v)", n.name, name, err)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", n.name, err)
	}
	if st.GetState() != pb.PluginState_PLUGIN_STATE_SERVING || st.GetSpec().GetEnv()["VERSION"] != version || (gen != 0 && st.GetGeneration() != gen) {
		return fmt.Errorf("%s: %s generation %d %s VERSION=%q", n.name, name, st.GetGeneration(), st.GetState(), st.GetSpec().GetEnv()["VERSION"])
	}
	return nil
}

func reason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetReason()
		}
	}
	return ""
}

func sha256Of(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestFleet: desired plugins in etcd reach the nodes their selector picks,
// local mutations of them are refused, changes roll to every node, etcd
// going away changes nothing on the nodes, a dead node leaves the node list
// after its lease, a late node converges, and a deleted plugin is unloaded.
func TestFleet(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	etcd := startEtcd(t)
	a := startNode(t, etcd, "a", "role=web")
	b := startNode(t, etcd, "b", "role=web")
	c := startNode(t, etcd, "c", "role=db")
	fleetc := c.c.Fleet() // any node serves FleetService

	eventually(t, 10*time.Second, "three nodes registered", func() error {
		resp, err := fleetc.ListNodes(ctx, &pb.ListNodesRequest{})
		if err != nil {
			return err
		}
		var names []string
		for _, n := range resp.GetNodes() {
			names = append(names, n.GetName()+":"+n.GetLabels()["role"])
		}
		if got := strings.Join(names, ","); got != "a:web,b:web,c:db" {
			return fmt.Errorf("nodes %s", got)
		}
		return nil
	})

	// A watcher of the whole test: WatchFleet from the start (resumed after
	// its last revision if the stream breaks; etcd goes away below, which
	// the etcd client rides out without ending the stream).
	w := watchFleet(ctx, t, c.c, 0)

	pin := sha256Of(t, filepath.Join(bins, "plugins", "echo"))
	spec := func(version string) *pb.PluginSpec {
		return &pb.PluginSpec{Name: "greet", Binary: "echo", Sha256: pin, Env: map[string]string{"VERSION": version}}
	}
	// Refused: unpinned without allowing it, a bad spec, a viewer's typo.
	_, err := fleetc.ApplyFleetPlugin(ctx, &pb.ApplyFleetPluginRequest{Plugin: &pb.FleetPlugin{Spec: &pb.PluginSpec{Name: "greet", Binary: "echo"}}})
	if status.Code(err) != codes.FailedPrecondition || reason(err) != "FLEET_UNPINNED" {
		t.Fatalf("unpinned spec: %v", err)
	}
	_, err = fleetc.ApplyFleetPlugin(ctx, &pb.ApplyFleetPluginRequest{Plugin: &pb.FleetPlugin{Spec: &pb.PluginSpec{Name: "greet", Binary: "../echo", Sha256: pin}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "binary") {
		t.Fatalf("bad binary: %v", err)
	}

	applied, err := fleetc.ApplyFleetPlugin(ctx, &pb.ApplyFleetPluginRequest{Plugin: &pb.FleetPlugin{Spec: spec("1"), Selector: map[string]string{"role": "web"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(applied.GetPlugin().GetSpecDigest()) != 64 || applied.GetPlugin().GetRevision() == 0 {
		t.Fatalf("applied: %v", applied)
	}
	for _, n := range []*node{a, b} {
		eventually(t, 15*time.Second, n.name+" runs greet VERSION=1", func() error { return runs(ctx, n, "greet", "1", 1) })
	}
	if err := runs(ctx, c, "greet", "-", 0); err != nil {
		t.Fatalf("the selector picks web nodes only: %v", err)
	}
	eventually(t, 10*time.Second, "statuses reported with the plugin's digest", func() error {
		st, err := fleetc.FleetStatus(ctx, &pb.FleetStatusRequest{Plugin: "greet"})
		if err != nil {
			return err
		}
		var got []string
		for _, s := range st.GetStatuses() {
			got = append(got, fmt.Sprintf("%s:%d:%s:%v", s.GetNode(), s.GetGeneration(), s.GetState(), s.GetSpecDigest() == applied.GetPlugin().GetSpecDigest()))
		}
		if want := "a:1:PLUGIN_STATE_SERVING:true,b:1:PLUGIN_STATE_SERVING:true"; strings.Join(got, ",") != want {
			return fmt.Errorf("statuses %q, want %q", got, want)
		}
		return nil
	})

	// Marked: its status names its fleet key.
	if st, err := a.c.Get(ctx, "greet"); err != nil || st.GetFleetKey() != "/plugincontrol/plugins/greet" {
		t.Fatalf("the status of a fleet plugin: fleet_key %q (%v)", st.GetFleetKey(), err)
	}
	// Local mutations of a fleet plugin are refused, naming its key.
	_, err = a.c.Unload(ctx, "greet")
	if status.Code(err) != codes.FailedPrecondition || reason(err) != "FLEET_MANAGED" || !strings.Contains(err.Error(), "/plugincontrol/plugins/greet") {
		t.Fatalf("local unload of a fleet plugin: %v", err)
	}
	out, err := exec.Command(filepath.Join(bins, "pluginctl"), "--addr", a.d.Addr(), "reload", "greet").CombinedOutput()
	if code := exitCode(err); code != 5 || !strings.Contains(string(out), "managed by the fleet") {
		t.Fatalf("pluginctl reload of a fleet plugin: exit %d\n%s", code, out)
	}
	// A local plugin of the same node is the node's own business.
	if st, err := a.c.Load(ctx, &pb.PluginSpec{Name: "local", Binary: "echo"}); err != nil || st.GetFleetKey() != "" {
		t.Fatalf("a local plugin: %v (fleet_key %q)", err, st.GetFleetKey())
	}

	// A new spec reaches every selected node through its pipeline.
	if _, err := fleetc.ApplyFleetPlugin(ctx, &pb.ApplyFleetPluginRequest{Plugin: &pb.FleetPlugin{Spec: spec("2"), Selector: map[string]string{"role": "web"}}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*node{a, b} {
		eventually(t, 15*time.Second, n.name+" runs greet VERSION=2", func() error { return runs(ctx, n, "greet", "2", 2) })
	}

	// etcd gone: the nodes keep serving; FleetService says Unavailable.
	etcd.stop()
	for _, n := range []*node{a, b} {
		if _, _, err := n.c.Invoke(ctx, "greet", "echo", []byte("hi")); err != nil {
			t.Fatalf("%s without etcd: %v", n.name, err)
		}
	}
	_, err = fleetc.ListNodes(ctx, &pb.ListNodesRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("ListNodes without etcd: %v", err)
	}
	time.Sleep(3 * time.Second) // longer than the lease TTL
	for _, n := range []*node{a, b} {
		if err := runs(ctx, n, "greet", "2", 2); err != nil {
			t.Fatalf("after 3s without etcd: %v", err)
		}
	}
	etcd.start(t)
	// The first calls may find c's etcd connection still reconnecting
	// (Unavailable: nothing changed); an operator retries.
	eventually(t, 10*time.Second, "apply after etcd came back", func() error {
		_, err := fleetc.ApplyFleetPlugin(ctx, &pb.ApplyFleetPluginRequest{Plugin: &pb.FleetPlugin{Spec: spec("3"), Selector: map[string]string{"role": "web"}}})
		if err != nil && status.Code(err) != codes.Unavailable {
			t.Fatalf("apply after etcd came back: %v", err)
		}
		return err
	})
	for _, n := range []*node{a, b} {
		eventually(t, 30*time.Second, n.name+" caught up to VERSION=3", func() error { return runs(ctx, n, "greet", "3", 3) })
	}

	// The same through pluginctl: nodes, apply -f, status, a rollout
	// followed to its end, delete.
	ctl := func(args ...string) (string, int) {
		t.Helper()
		out, err := exec.Command(filepath.Join(bins, "pluginctl"), append([]string{"--addr", a.d.Addr()}, args...)...).CombinedOutput()
		return string(out), exitCode(err)
	}
	if out, code := ctl("fleet", "nodes"); code != 0 || !strings.Contains(out, "role=db") || strings.Count(out, "\n") != 4 {
		t.Fatalf("fleet nodes: exit %d\n%s", code, out)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(file, []byte("spec: {name: greet2, binary: echo, sha256: "+pin+"}\nselector: {role: db}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := ctl("fleet", "apply", "-f", file); code != 0 || !strings.Contains(out, "applied greet2") {
		t.Fatalf("fleet apply: exit %d\n%s", code, out)
	}
	eventually(t, 15*time.Second, "c runs greet2", func() error { return runs(ctx, c, "greet2", "", 1) })
	if out, code := ctl("fleet", "status", "greet2", "-o", "json"); code != 0 || !strings.Contains(out, `"node": "c"`) && !strings.Contains(out, `"node":  "c"`) {
		t.Fatalf("fleet status -o json: exit %d\n%s", code, out)
	}
	if err := os.WriteFile(file, []byte("spec: {name: greet, binary: echo, sha256: "+pin+", env: {VERSION: \"4\"}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := ctl("fleet", "rollout", "start", "-f", file, "--canary", "1", "--bake", "200ms", "--wait"); code != 0 || !strings.Contains(out, "SUCCEEDED") {
		t.Fatalf("fleet rollout start --wait: exit %d\n%s", code, out)
	}
	for _, n := range []*node{a, b} {
		if err := runs(ctx, n, "greet", "4", 0); err != nil {
			t.Fatalf("after the rollout: %v", err)
		}
	}
	if out, code := ctl("fleet", "rollout", "status", "greet"); code != 0 || !strings.Contains(out, "rollout of greet: SUCCEEDED") {
		t.Fatalf("fleet rollout status: exit %d\n%s", code, out)
	}
	if out, code := ctl("fleet", "rollout", "pause", "greet"); code != 5 || !strings.Contains(out, "cannot pause a rollout that is SUCCEEDED") {
		t.Fatalf("fleet rollout pause of a finished one: exit %d\n%s", code, out)
	}
	watch := exec.Command(filepath.Join(bins, "pluginctl"), "--addr", a.d.Addr(), "fleet", "watch", "greet")
	var wout testbin.Buffer
	watch.Stdout = &wout
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "fleet watch printed the snapshot", func() error {
		if !strings.Contains(wout.String(), "SYNCED") || !strings.Contains(wout.String(), "rollout  greet") {
			return errors.New(wout.String())
		}
		return nil
	})
	_ = watch.Process.Signal(os.Interrupt)
	if err := watch.Wait(); err != nil {
		t.Fatalf("fleet watch after SIGINT: %v\n%s", err, wout.String())
	}
	if out, code := ctl("fleet", "delete", "greet2"); code != 0 {
		t.Fatalf("fleet delete: exit %d\n%s", code, out)
	}
	eventually(t, 15*time.Second, "c unloaded greet2", func() error { return runs(ctx, c, "greet2", "-", 0) })

	// A node killed with -9 leaves the node list when its lease expires.
	if err := b.d.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-b.d.Exited()
	eventually(t, 15*time.Second, "b gone from the node list", func() error {
		resp, err := fleetc.ListNodes(ctx, &pb.ListNodesRequest{})
		if err != nil {
			return err
		}
		if slices.ContainsFunc(resp.GetNodes(), func(n *pb.FleetNode) bool { return n.GetName() == "b" }) {
			return errors.New("b is still listed")
		}
		return nil
	})

	// A node that joins late converges to the current spec.
	d := startNode(t, etcd, "d", "role=web")
	eventually(t, 15*time.Second, "d runs greet VERSION=4", func() error { return runs(ctx, d, "greet", "4", 1) })

	// Detached on d: d keeps greet as its own (a local reload works, its
	// report goes); attached again: d follows the fleet again.
	if out, code := exec.Command(filepath.Join(bins, "pluginctl"), "--addr", d.d.Addr(), "fleet", "detach", "greet").CombinedOutput(); code != nil {
		t.Fatalf("fleet detach: %v\n%s", code, out)
	}
	if st, err := d.c.Reload(ctx, "greet"); err != nil || st.GetPlugin().GetFleetKey() != "" {
		t.Fatalf("a local reload of a detached plugin: %v", err)
	}
	eventually(t, 10*time.Second, "d's report of greet removed", func() error {
		st, err := fleetc.FleetStatus(ctx, &pb.FleetStatusRequest{Plugin: "greet"})
		if err != nil {
			return err
		}
		if slices.ContainsFunc(st.GetStatuses(), func(s *pb.FleetPluginStatus) bool { return s.GetNode() == "d" }) {
			return errors.New("d still reports greet")
		}
		return nil
	})
	if _, err := d.c.Fleet().AttachFleetPlugin(ctx, &pb.AttachFleetPluginRequest{Name: "greet"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.Fleet().AttachFleetPlugin(ctx, &pb.AttachFleetPluginRequest{Name: "greet"}); reason(err) != "FLEET_NOT_MANAGED" {
		t.Fatalf("attaching twice: %v", err)
	}
	if _, err := d.c.Unload(ctx, "greet"); reason(err) != "FLEET_MANAGED" {
		t.Fatalf("a local unload after attach: %v", err)
	}

	// What the watcher saw, across the etcd outage: the snapshot, the
	// plugin's versions, the reports, the rollout, and b leaving.
	evs := w.stop()
	seen := map[string]bool{}
	for _, ev := range evs {
		seen[formatEvent(ev)] = true
	}
	for _, want := range []string{
		"SNAPSHOT node a", "SYNCED", "PUT plugin greet VERSION=1", "PUT plugin greet VERSION=2", "PUT plugin greet VERSION=3",
		"PUT status greet@a", "PUT status greet@b", "PUT rollout greet ROLLOUT_STATE_SUCCEEDED", "DELETE node b", "PUT node d",
	} {
		if !seen[want] {
			t.Errorf("WatchFleet: no %q among %d events", want, len(evs))
		}
	}
	t.Logf("WatchFleet: %d events, %d resumes across the etcd outage", len(evs), w.resumed)
	// A plugin's and a rollout's revision is that of their change, as
	// GetRollout and ListFleetPlugins report it (FollowRollout resumes by it).
	for _, ev := range evs {
		if r := ev.GetRollout(); r != nil && ev.GetType() == pb.FleetEventType_FLEET_EVENT_TYPE_PUT && r.GetRevision() != ev.GetRevision() {
			t.Errorf("rollout %s in an event of revision %d says revision %d", r.GetPlugin(), ev.GetRevision(), r.GetRevision())
		}
		if p := ev.GetPlugin(); p != nil && ev.GetType() == pb.FleetEventType_FLEET_EVENT_TYPE_PUT && p.GetRevision() != ev.GetRevision() {
			t.Errorf("plugin %s in an event of revision %d says revision %d", p.GetSpec().GetName(), ev.GetRevision(), p.GetRevision())
		}
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].GetType() != pb.FleetEventType_FLEET_EVENT_TYPE_SNAPSHOT && evs[i].GetRevision() < evs[i-1].GetRevision() {
			t.Fatalf("revisions went back: %d after %d", evs[i].GetRevision(), evs[i-1].GetRevision())
		}
	}
	// Resuming from a compacted revision gets a reset snapshot.
	ecli := etcdClient(t, clientv3.Config{Endpoints: []string{etcd.endpoint()}})
	cur, err := ecli.Get(ctx, "/plugincontrol/schema")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ecli.Compact(ctx, cur.Header.GetRevision()); err != nil {
		t.Fatal(err)
	}
	stream, err := fleetc.WatchFleet(ctx, &pb.WatchFleetRequest{SinceRevision: 2})
	if err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("a compacted resume: %v", err)
		}
		if !resp.GetEvent().GetReset_() {
			t.Fatalf("a compacted resume: %v, want a reset snapshot", resp.GetEvent())
		}
		if resp.GetEvent().GetType() == pb.FleetEventType_FLEET_EVENT_TYPE_SYNCED {
			break
		}
	}

	// Deleted: every node unloads it; local plugins stay.
	if _, err := fleetc.DeleteFleetPlugin(ctx, &pb.DeleteFleetPluginRequest{Name: "greet"}); err != nil {
		t.Fatal(err)
	}
	if _, err := fleetc.DeleteFleetPlugin(ctx, &pb.DeleteFleetPluginRequest{Name: "greet"}); status.Code(err) != codes.NotFound {
		t.Fatalf("deleting twice: %v", err)
	}
	for _, n := range []*node{a, d} {
		eventually(t, 15*time.Second, n.name+" unloaded greet", func() error { return runs(ctx, n, "greet", "-", 0) })
	}
	if _, err := a.c.Get(ctx, "local"); err != nil {
		t.Fatalf("the local plugin: %v", err)
	}
}

// TestFleetTLS: a node reaches etcd with a client certificate
// (--fleet-etcd-ca, -cert, -key); without one etcd refuses it, and the
// node says so and keeps serving.
func TestFleetTLS(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key, err := testbin.TLSFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := &etcdServer{name: "tls", dir: t.TempDir(), tls: &transport.TLSInfo{CertFile: cert, KeyFile: key, TrustedCAFile: ca, ClientCertAuth: true}}
	s.clientURL = url.URL{Scheme: "https", Host: freePort(t)}
	s.peerURL = url.URL{Scheme: "http", Host: freePort(t)}
	s.cluster = s.name + "=" + s.peerURL.String()
	s.start(t)
	t.Cleanup(s.stop)
	start := func(name string, extra ...string) *node {
		args := append([]string{"--fleet-etcd", s.endpoint(), "--node-name", name, "--fleet-lease-ttl", "2s", "--log-level", "warn"}, extra...)
		d := testbin.StartDaemon(t, testbin.DaemonOptions{Bin: bins, Args: args})
		c, err := client.Dial(context.Background(), d.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return &node{name: name, d: d, c: c}
	}
	ctx := context.Background()
	good := start("certified", "--fleet-etcd-ca", ca, "--fleet-etcd-cert", filepath.Join(dir, "client.pem"), "--fleet-etcd-key", filepath.Join(dir, "client-key.pem"))
	eventually(t, 15*time.Second, "the certified node registered", func() error {
		resp, err := good.c.Fleet().ListNodes(ctx, &pb.ListNodesRequest{})
		if err != nil {
			return err
		}
		if len(resp.GetNodes()) != 1 || resp.GetNodes()[0].GetName() != "certified" {
			return fmt.Errorf("nodes %v", resp.GetNodes())
		}
		return nil
	})
	bad := start("uncertified", "--fleet-etcd-ca", ca)
	_, err = bad.c.Fleet().ListNodes(ctx, &pb.ListNodesRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a node without a client certificate: %v", err)
	}
	if _, _, err := bad.c.Invoke(ctx, "echo", "echo", nil); status.Code(err) != codes.NotFound {
		t.Fatalf("the uncertified node still serves its own API: %v", err)
	}
	eventually(t, 20*time.Second, "the uncertified node says why it is not in the fleet", func() error {
		if !strings.Contains(bad.d.Stderr.String(), "refused this node's TLS client certificate") {
			return errors.New(bad.d.Stderr.String())
		}
		return nil
	})
}

// TestFleetDisabled: without --fleet-etcd FleetService says so, and the
// fleet flags need it.
func TestFleetDisabled(t *testing.T) {
	d := testbin.StartDaemon(t, testbin.DaemonOptions{Bin: bins})
	c, err := client.Dial(context.Background(), d.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Fleet().ListNodes(context.Background(), &pb.ListNodesRequest{})
	if status.Code(err) != codes.FailedPrecondition || reason(err) != "FLEET_DISABLED" {
		t.Fatalf("ListNodes without a fleet: %v", err)
	}
	out, err := exec.Command(filepath.Join(bins, "plugind"), "--node-label", "role=web", "--state-dir", t.TempDir()).CombinedOutput()
	if exitCode(err) == 0 || !strings.Contains(string(out), "--node-label needs --fleet-etcd") {
		t.Fatalf("--node-label without --fleet-etcd: %v\n%s", err, out)
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func grpcCode(err error) codes.Code { return status.Code(err) }

// fleetWatcher follows WatchFleet with client.WatchFleet (which resumes
// after the last revision).
type fleetWatcher struct {
	mu      sync.Mutex // guards events and resumed
	events  []*pb.FleetEvent
	resumed int
	cancel  context.CancelFunc
	done    chan struct{}
}

func watchFleet(ctx context.Context, t *testing.T, c *client.Client, since uint64) *fleetWatcher {
	ctx, cancel := context.WithCancel(ctx)
	w := &fleetWatcher{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		_ = c.WatchFleet(ctx, since, "", func(ev *pb.FleetEvent) error {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.events = append(w.events, ev)
			return nil
		}, func(error, time.Duration) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.resumed++
		})
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	return w
}

// stop ends the watch and returns its events.
func (w *fleetWatcher) stop() []*pb.FleetEvent {
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.events
}

// formatEvent is "TYPE kind name[ detail]" of a fleet event, for matching.
func formatEvent(ev *pb.FleetEvent) string {
	typ := strings.TrimPrefix(ev.GetType().String(), "FLEET_EVENT_TYPE_")
	switch r := ev.GetRecord().(type) {
	case *pb.FleetEvent_Node:
		return typ + " node " + r.Node.GetName()
	case *pb.FleetEvent_Plugin:
		return typ + " plugin " + r.Plugin.GetSpec().GetName() + " VERSION=" + r.Plugin.GetSpec().GetEnv()["VERSION"]
	case *pb.FleetEvent_Status:
		return typ + " status " + r.Status.GetPlugin() + "@" + r.Status.GetNode()
	case *pb.FleetEvent_Rollout:
		return typ + " rollout " + r.Rollout.GetPlugin() + " " + r.Rollout.GetState().String()
	}
	return typ
}

// TestWipedPrefix: an etcdctl del --prefix of the fleet's keys under
// running nodes (or an etcd rebuilt empty) is not "unload everything":
// every node keeps its fleet plugins in the same process, says it is fenced
// (FleetStatus, pluginctl fleet status), and follows the fleet again once an
// apply writes the keys back, adopting what it runs.
func TestWipedPrefix(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	etcd := startEtcd(t)
	nodes := []*node{startNode(t, etcd, "a", "role=web"), startNode(t, etcd, "b", "role=web")}
	fleetc := nodes[0].c.Fleet()
	pin := sha256Of(t, filepath.Join(bins, "plugins", "echo"))
	greet := &pb.FleetPlugin{Spec: &pb.PluginSpec{Name: "greet", Binary: "echo", Sha256: pin, Env: map[string]string{"VERSION": "1"}}, Selector: map[string]string{"role": "web"}}
	if _, err := fleetc.ApplyFleetPlugin(ctx, &pb.ApplyFleetPluginRequest{Plugin: greet}); err != nil {
		t.Fatal(err)
	}
	pids := map[string]int64{}
	for _, n := range nodes {
		eventually(t, 15*time.Second, n.name+" runs greet", func() error { return runs(ctx, n, "greet", "1", 1) })
		st, err := n.c.Get(ctx, "greet")
		if err != nil {
			t.Fatal(err)
		}
		pids[n.name] = st.GetPid()
	}

	ecli := etcdClient(t, clientv3.Config{Endpoints: []string{etcd.endpoint()}})
	del, err := ecli.Delete(ctx, "/plugincontrol", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if del.Deleted < 5 {
		t.Fatalf("deleted %d keys, want the schema, plugin, nodes, statuses and managed records", del.Deleted)
	}
	for _, n := range nodes {
		eventually(t, 15*time.Second, n.name+" fenced", func() error {
			st, err := n.c.Fleet().FleetStatus(ctx, &pb.FleetStatusRequest{})
			if err != nil {
				return err
			}
			if !strings.Contains(st.GetFenced(), "schema") {
				return fmt.Errorf("fenced %q", st.GetFenced())
			}
			return nil
		})
		// Fenced once it has seen the deletes: it acted on none of them.
		st, err := n.c.Get(ctx, "greet")
		if err != nil || st.GetPid() != pids[n.name] || st.GetGeneration() != 1 || st.GetState() != pb.PluginState_PLUGIN_STATE_SERVING {
			t.Fatalf("%s after the wipe: %v (%v), want greet generation 1 pid %d serving", n.name, st, err, pids[n.name])
		}
	}
	out, err := exec.Command(filepath.Join(bins, "pluginctl"), "--addr", nodes[1].d.Addr(), "fleet", "status").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "FENCED:") || !strings.Contains(string(out), "rollouts led by: ") {
		t.Fatalf("pluginctl fleet status of a fenced node: %v\n%s", err, out)
	}

	// The operator restores the desired state: the nodes follow again and
	// adopt the plugin they kept.
	if _, err := fleetc.ApplyFleetPlugin(ctx, &pb.ApplyFleetPluginRequest{Plugin: greet}); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		eventually(t, 15*time.Second, n.name+" follows the fleet again", func() error {
			st, err := n.c.Fleet().FleetStatus(ctx, &pb.FleetStatusRequest{Plugin: "greet"})
			if err != nil {
				return err
			}
			if st.GetFenced() != "" {
				return fmt.Errorf("still fenced: %s", st.GetFenced())
			}
			for _, s := range st.GetStatuses() {
				if s.GetNode() == n.name && s.GetState() == pb.PluginState_PLUGIN_STATE_SERVING {
					return nil
				}
			}
			return fmt.Errorf("no report of %s in %v", n.name, st.GetStatuses())
		})
		st, err := n.c.Get(ctx, "greet")
		if err != nil || st.GetPid() != pids[n.name] || st.GetGeneration() != 1 {
			t.Fatalf("%s after the restore: %v (%v), want greet generation 1 pid %d", n.name, st, err, pids[n.name])
		}
	}
	// The wipe took the controllers' election too: one campaigned again
	// and leads.
	eventually(t, 30*time.Second, "a controller leads again", func() error {
		st, err := fleetc.FleetStatus(ctx, &pb.FleetStatusRequest{})
		if err != nil {
			return err
		}
		if l := st.GetLeader(); l != "a" && l != "b" {
			return fmt.Errorf("leader %q", l)
		}
		return nil
	})
}
