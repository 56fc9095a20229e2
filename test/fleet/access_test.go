package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/plugincontrol/plugincontrol/client"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// TestEtcdAuth: against an etcd with auth enabled, a node logs in with
// --fleet-etcd-user and a password file and joins the fleet under a role
// confined to the fleet's prefix; with a wrong password plugind does not
// start, and says why (etcd's client logs in when it is made). A node
// started with --fleet-controller=false never leads: the one that may,
// does.
func TestEtcdAuth(t *testing.T) {
	etcd := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := etcdClient(t, clientv3.Config{Endpoints: []string{etcd.endpoint()}})
	const prefix = "/plugincontrol/"
	steps := []func() error{
		func() error { _, err := root.RoleAdd(ctx, "fleet-node"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "fleet-node", prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := root.UserAdd(ctx, "n1", "pw-of-n1"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "n1", "fleet-node"); return err },
	}
	enableAuth(ctx, t, root, steps...)
	dir := t.TempDir()
	pwFile := func(name, pw string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	start := func(name, pw string, more ...string) *node {
		args := append([]string{"--fleet-etcd", etcd.endpoint(), "--node-name", name, "--fleet-lease-ttl", "2s",
			"--fleet-etcd-user", "n1", "--fleet-etcd-password-file", pwFile(name, pw)}, more...)
		d := testbin.StartDaemon(t, testbin.DaemonOptions{Bin: bins, Args: args})
		return dialNode(t, name, d)
	}

	follower := start("follower", "pw-of-n1", "--fleet-controller=false")
	eventually(t, 20*time.Second, "the follower registered through its etcd login", func() error {
		return hasNodes(ctx, follower, "follower")
	})
	// No node may lead yet: the only one is not a controller.
	if st, err := follower.c.FleetStatus(ctx, ""); err != nil || st.GetLeader() != "" {
		t.Fatalf("leader with no controller node: %q %v", st.GetLeader(), err)
	}
	leader := start("leader", "pw-of-n1")
	eventually(t, 20*time.Second, "the controller node leads", func() error {
		st, err := follower.c.FleetStatus(ctx, "")
		if err != nil {
			return err
		}
		if st.GetLeader() != "leader" {
			return fmt.Errorf("leader %q", st.GetLeader())
		}
		return hasNodes(ctx, leader, "follower", "leader")
	})

	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	out, err := exec.CommandContext(wctx, filepath.Join(bins, "plugind"), "--plugin-dir", t.TempDir(), "--state-dir", t.TempDir(),
		"--fleet-etcd", etcd.endpoint(), "--node-name", "wrong", "--fleet-etcd-user", "n1",
		"--fleet-etcd-password-file", pwFile("wrong", "not-the-password")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--fleet-etcd: etcdserver: authentication failed") {
		t.Fatalf("plugind with a wrong etcd password: %v\n%s", err, out)
	}
	if err := hasNodes(ctx, leader, "wrong"); err == nil {
		t.Fatal("a node with a wrong password registered")
	}
	// The fleet's keys need the login: anonymous reads are refused.
	if _, err := root.Get(ctx, prefix, clientv3.WithPrefix()); err == nil {
		t.Fatal("an anonymous read of the fleet's keys passed with auth enabled")
	}
}

// enableAuth runs the steps that set up roles and users on root (a client
// of an etcd without auth), then adds the root user and enables auth.
func enableAuth(ctx context.Context, t *testing.T, root *clientv3.Client, steps ...func() error) {
	t.Helper()
	steps = append(steps,
		func() error { _, err := root.UserAdd(ctx, "root", "pw-of-root"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := root.AuthEnable(ctx); return err },
	)
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("setting up etcd auth: %v", err)
		}
	}
}

// hasNodes reports, through n's FleetService, whether every one of names
// is registered.
func hasNodes(ctx context.Context, n *node, names ...string) error {
	nodes, err := n.c.ListNodes(ctx)
	if err != nil {
		return err
	}
	var have []string
	for _, fn := range nodes {
		have = append(have, fn.GetName())
	}
	for _, name := range names {
		if !slices.Contains(have, name) {
			return fmt.Errorf("nodes %v, no %s", have, name)
		}
	}
	return nil
}

// TestFleetMetrics: the leading node's /metrics shows that it leads and
// each active rollout's state, wave and nodes per state; an aborted
// rollout's series go.
func TestFleetMetrics(t *testing.T) {
	etcd := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := testbin.StartDaemon(t, testbin.DaemonOptions{Bin: bins, Args: []string{"--fleet-etcd", etcd.endpoint(), "--node-name", "a",
		"--fleet-lease-ttl", "2s", "--metrics-listen", "127.0.0.1:0"}})
	n := dialNode(t, "a", d)
	re := regexp.MustCompile(`listen=http://(127\.0\.0\.1:\d+)/metrics`)
	var addr string
	eventually(t, 10*time.Second, "the metrics address in the log", func() error {
		if m := re.FindStringSubmatch(d.Stderr.String()); m != nil {
			addr = m[1]
			return nil
		}
		return fmt.Errorf("not logged yet")
	})
	scrape := func() string {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	spec := func(v string) *pb.PluginSpec {
		return &pb.PluginSpec{Name: "greet", Binary: "echo", Env: map[string]string{"VERSION": v}}
	}
	if _, err := n.c.ApplyFleetPlugin(ctx, &pb.FleetPlugin{Spec: spec("1")}, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "a runs greet", func() error { _, err := n.c.Get(ctx, "greet"); return err })
	if _, err := n.c.StartRollout(ctx, &pb.StartRolloutRequest{Spec: spec("2"), AllowUnpinned: true,
		Strategy: &pb.RolloutStrategy{Bake: durationpb.New(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"plugincontrol_fleet_leader 1",
		"plugincontrol_fleet_fenced 0",
		`plugincontrol_fleet_rollout_state{plugin="greet",state="running"} 1`,
		`plugincontrol_fleet_rollout_wave{plugin="greet"} 0`,
		`plugincontrol_fleet_rollout_nodes{plugin="greet",state="updating"} 1`,
	}
	eventually(t, 20*time.Second, "the rollout in the leader's metrics", func() error {
		body := scrape()
		for _, w := range want {
			if !strings.Contains(body, w+"\n") {
				return fmt.Errorf("no %q", w)
			}
		}
		return nil
	})
	if _, err := n.c.SetRollout(ctx, "greet", client.AbortRollout); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the aborted rollout's series gone", func() error {
		if body := scrape(); strings.Contains(body, "plugincontrol_fleet_rollout_state{") {
			return fmt.Errorf("still there")
		}
		return nil
	})
}

// TestLocalPluginNotTakenOver: a fleet plugin with the name of a plugin the
// node loaded itself is refused there (the status says so; the local plugin
// runs on untouched) until the local one is unloaded; a node started with
// --fleet-adopt-local reloads its own to the fleet's spec.
func TestLocalPluginNotTakenOver(t *testing.T) {
	etcd := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	keep := startNode(t, etcd, "keep")
	adopt := dialNode(t, "adopt", testbin.StartDaemon(t, testbin.DaemonOptions{Bin: bins, Args: []string{
		"--fleet-etcd", etcd.endpoint(), "--node-name", "adopt", "--fleet-lease-ttl", "2s", "--fleet-adopt-local"}}))
	local := &pb.PluginSpec{Name: "greet", Binary: "echo", Env: map[string]string{"WHO": "local"}}
	for _, n := range []*node{keep, adopt} {
		if _, err := n.c.Load(ctx, local); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := keep.c.Get(ctx, "greet")
	fleetSpec := &pb.PluginSpec{Name: "greet", Binary: "echo", Env: map[string]string{"WHO": "fleet"}}
	if _, err := keep.c.ApplyFleetPlugin(ctx, &pb.FleetPlugin{Spec: fleetSpec}, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "keep reports greet refused, adopt runs the fleet's spec", func() error {
		st, err := keep.c.FleetStatus(ctx, "greet")
		if err != nil {
			return err
		}
		refused := false
		for _, s := range st.GetStatuses() {
			refused = refused || (s.GetNode() == "keep" && strings.HasPrefix(s.GetLastError(), "refused: a plugin of this node's own"))
		}
		if !refused {
			return fmt.Errorf("statuses %v", st.GetStatuses())
		}
		if got, err := adopt.c.Get(ctx, "greet"); err != nil || got.GetSpec().GetEnv()["WHO"] != "fleet" {
			return fmt.Errorf("adopt runs %v (%v)", got.GetSpec().GetEnv(), err)
		}
		return nil
	})
	if now, _ := keep.c.Get(ctx, "greet"); now.GetGeneration() != before.GetGeneration() || now.GetSpec().GetEnv()["WHO"] != "local" {
		t.Fatalf("the local plugin was touched: %v", now)
	}
	if _, err := keep.c.Unload(ctx, "greet"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "keep loads the fleet's spec once its own is gone", func() error {
		got, err := keep.c.Get(ctx, "greet")
		if err != nil || got.GetSpec().GetEnv()["WHO"] != "fleet" {
			return fmt.Errorf("keep runs %v (%v)", got.GetSpec().GetEnv(), err)
		}
		return nil
	})
}

// TestAnotherEtcdFences: a node whose etcd is replaced by another cluster
// (rebuilt empty but for the fleet's schema) keeps what it runs and says
// FENCED, naming both clusters, instead of unloading; once an operator
// adopts the new etcd it converges to what that one holds.
func TestAnotherEtcdFences(t *testing.T) {
	first := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := startNode(t, first, "n")
	if _, err := n.c.ApplyFleetPlugin(ctx, &pb.FleetPlugin{Spec: &pb.PluginSpec{Name: "greet", Binary: "echo"}}, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "n runs greet", func() error { _, err := n.c.Get(ctx, "greet"); return err })

	// Another etcd cluster at the same address: a new member (another
	// peer URL, so another cluster id) with its own data.
	first.stop()
	second := &etcdServer{name: "m0", dir: t.TempDir(), clientURL: first.clientURL, peerURL: url.URL{Scheme: "http", Host: freePort(t)}}
	second.cluster = second.name + "=" + second.peerURL.String()
	second.start(t)
	t.Cleanup(second.stop)
	// The new etcd gets the fleet's schema (any apply writes it) and no
	// plugin for n.
	eventually(t, 20*time.Second, "an apply to the new etcd", func() error {
		_, err := n.c.ApplyFleetPlugin(ctx, &pb.FleetPlugin{Spec: &pb.PluginSpec{Name: "other", Binary: "echo"}, Selector: map[string]string{"role": "none"}}, true)
		return err
	})
	eventually(t, 30*time.Second, "n fenced for another etcd cluster", func() error {
		st, err := n.c.FleetStatus(ctx, "")
		if err != nil {
			return err
		}
		if !strings.Contains(st.GetFenced(), "is not") || !strings.Contains(st.GetFenced(), "pluginctl fleet adopt") {
			return fmt.Errorf("fenced %q", st.GetFenced())
		}
		return nil
	})
	if _, err := n.c.Get(ctx, "greet"); err != nil {
		t.Fatalf("a fenced node unloaded greet: %v", err)
	}
	out, err := exec.Command(filepath.Join(bins, "pluginctl"), "--addr", n.d.Addr(), "fleet", "adopt").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "follows the etcd it reaches now") {
		t.Fatalf("pluginctl fleet adopt: %v\n%s", err, out)
	}
	eventually(t, 30*time.Second, "n converges to the adopted etcd", func() error {
		if _, err := n.c.Get(ctx, "greet"); err == nil {
			return fmt.Errorf("n still runs greet")
		}
		st, err := n.c.FleetStatus(ctx, "")
		if err != nil || st.GetFenced() != "" {
			return fmt.Errorf("fenced %q (%v)", st.GetFenced(), err)
		}
		return nil
	})
}

// TestNodeRole: in a fleet of key layout 2, a node whose etcd user has
// only the role README gives (read the prefix, write its own keys) joins,
// runs and reports the fleet's plugin and follows a rollout; with its
// login, another node's report, the fleet's plugins and its rollouts
// cannot be written.
func TestNodeRole(t *testing.T) {
	etcd := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := etcdClient(t, clientv3.Config{Endpoints: []string{etcd.endpoint()}})
	const p = "/plugincontrol"
	grant := func(role, key string, prefix bool, perm clientv3.PermissionType) func() error {
		end := ""
		if prefix {
			end = clientv3.GetPrefixRangeEnd(key)
		}
		return func() error { _, err := root.RoleGrantPermission(ctx, role, key, end, perm); return err }
	}
	steps := []func() error{
		// The operator's node (it leads): the whole prefix.
		func() error { _, err := root.RoleAdd(ctx, "fleet-admin"); return err },
		grant("fleet-admin", p+"/", true, clientv3.PermissionType(clientv3.PermReadWrite)),
		func() error { _, err := root.UserAdd(ctx, "ctl", "pw-of-ctl"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "ctl", "fleet-admin"); return err },
		// n1: README's role.
		func() error { _, err := root.RoleAdd(ctx, "n1"); return err },
		grant("n1", p+"/", true, clientv3.PermissionType(clientv3.PermRead)),
		grant("n1", p+"/nodes/n1", false, clientv3.PermissionType(clientv3.PermReadWrite)),
		grant("n1", p+"/reports/n1/", true, clientv3.PermissionType(clientv3.PermReadWrite)),
		grant("n1", p+"/managed/n1/", true, clientv3.PermissionType(clientv3.PermReadWrite)),
		grant("n1", p+"/detached/n1/", true, clientv3.PermissionType(clientv3.PermReadWrite)),
		func() error { _, err := root.UserAdd(ctx, "n1", "pw-of-n1"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "n1", "n1"); return err },
	}
	enableAuth(ctx, t, root, steps...)
	dir := t.TempDir()
	start := func(name, user, pw string, more ...string) *node {
		pwf := filepath.Join(dir, name)
		if err := os.WriteFile(pwf, []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		args := append([]string{"--fleet-etcd", etcd.endpoint(), "--node-name", name, "--fleet-lease-ttl", "2s",
			"--fleet-etcd-user", user, "--fleet-etcd-password-file", pwf}, more...)
		return dialNode(t, name, testbin.StartDaemon(t, testbin.DaemonOptions{Bin: bins, Args: args}))
	}
	ctl := start("ctl", "ctl", "pw-of-ctl")
	n1 := start("n1", "n1", "pw-of-n1", "--fleet-controller=false")
	eventually(t, 20*time.Second, "both nodes registered", func() error { return hasNodes(ctx, ctl, "ctl", "n1") })

	pin := sha256Of(t, filepath.Join(bins, "plugins", "echo"))
	greet := func(v string) *pb.PluginSpec {
		return &pb.PluginSpec{Name: "greet", Binary: "echo", Sha256: pin, Env: map[string]string{"VERSION": v}}
	}
	if _, err := ctl.c.ApplyFleetPlugin(ctx, &pb.FleetPlugin{Spec: greet("1")}, false); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "n1 runs greet and reports it", func() error {
		if err := runs(ctx, n1, "greet", "1", 0); err != nil {
			return err
		}
		st, err := ctl.c.FleetStatus(ctx, "greet")
		if err != nil {
			return err
		}
		for _, s := range st.GetStatuses() {
			if s.GetNode() == "n1" && s.GetState() == pb.PluginState_PLUGIN_STATE_SERVING {
				return nil
			}
		}
		return fmt.Errorf("reports %v", st.GetStatuses())
	})
	f := ctl.c.Fleet()
	if _, err := f.StartRollout(ctx, &pb.StartRolloutRequest{Spec: greet("2"), Strategy: &pb.RolloutStrategy{Canary: 1, Bake: durationpb.New(0)}}); err != nil {
		t.Fatal(err)
	}
	if r, _ := follow(ctx, t, f, "greet", 60*time.Second, nil); r.GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout: %s %s (%s)", r.GetState(), r.GetReason(), nodeStates(r))
	}
	eventually(t, 20*time.Second, "n1 runs greet 2", func() error { return runs(ctx, n1, "greet", "2", 0) })

	// With n1's login: its own report's place, yes; anything else, no.
	as := etcdClient(t, clientv3.Config{Endpoints: []string{etcd.endpoint()}, Username: "n1", Password: "pw-of-n1"})
	if _, err := as.Put(ctx, p+"/reports/n1/scratch", "x"); err != nil {
		t.Fatalf("n1 writing under its own reports: %v", err)
	}
	if _, err := as.Delete(ctx, p+"/reports/n1/scratch"); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{p + "/reports/ctl/greet", p + "/plugins/greet", p + "/rollouts/greet", p + "/targets/ctl/greet", p + "/managed/ctl/greet", p + "/nodes/ctl", p + "/schema"} {
		if _, err := as.Put(ctx, key, "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("n1 writing %s: %v, want permission denied", key, err)
		}
	}
}
