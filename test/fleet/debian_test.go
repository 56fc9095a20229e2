package fleet

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// debianEtcd is a single-member etcd run from Debian's etcd-server package
// (3.4): an etcd this project did not build, the one a Debian host runs.
type debianEtcd struct {
	bin, ctl       string
	dir            string
	client, peer   string // host:port on 127.0.0.1
	cmd            *exec.Cmd
	done           chan struct{}
	out            *testbin.Buffer
	name, clusterT string
}

func newDebianEtcd(t *testing.T) *debianEtcd {
	t.Helper()
	bin, ctl := testbin.DebianEtcd(t)
	return &debianEtcd{bin: bin, ctl: ctl, dir: filepath.Join(t.TempDir(), "data"), client: freePort(t), peer: freePort(t), name: "d0", clusterT: "plugincontrol-test"}
}

func (d *debianEtcd) endpoint() string { return "http://" + d.client }

// start runs etcd on d.dir and waits until it answers.
func (d *debianEtcd) start(t *testing.T) {
	t.Helper()
	d.out = &testbin.Buffer{}
	d.cmd = exec.Command(d.bin, "--name", d.name, "--data-dir", d.dir,
		"--listen-client-urls", d.endpoint(), "--advertise-client-urls", d.endpoint(),
		"--listen-peer-urls", "http://"+d.peer, "--initial-advertise-peer-urls", "http://"+d.peer,
		"--initial-cluster", d.name+"=http://"+d.peer, "--initial-cluster-token", d.clusterT, "--logger", "zap")
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(d.stop)
	eventually(t, 20*time.Second, "Debian's etcd answers", func() error {
		select {
		case <-d.done:
			t.Fatalf("etcd exited:\n%s", d.out)
		default:
		}
		_, err := d.etcdctl("endpoint", "health")
		return err
	})
}

// stop ends etcd (SIGTERM) and waits for it.
func (d *debianEtcd) stop() {
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	d.cmd = nil
}

// etcdctl runs Debian's etcdctl (API v3) against d.
func (d *debianEtcd) etcdctl(args ...string) (string, error) {
	cmd := exec.Command(d.ctl, append([]string{"--endpoints", d.endpoint(), "--dial-timeout", "2s"}, args...)...)
	cmd.Env = append(cmd.Environ(), "ETCDCTL_API=3")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("etcdctl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// TestDebianEtcd: on Debian's etcd 3.4 (an etcd we did not build), the
// fleet's basics (apply, a reload to a new spec), and the two ways an
// operator can pull the fleet's keys from under a node:
//   - etcd restored from a snapshot older than what the node saw (the same
//     cluster, its revision gone back) does not take the node back in
//     time: it keeps the spec it runs, is fenced saying why, and follows
//     the restored etcd only once an operator adopts it;
//   - etcdctl del --prefix of the fleet's keys unloads nothing: the node
//     is fenced until the fleet's plugins are applied again.
func TestDebianEtcd(t *testing.T) {
	etcd := newDebianEtcd(t)
	etcd.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n := startNodeAt(t, etcd.endpoint(), "", "n")
	greet := func(v string) *pb.FleetPlugin {
		return &pb.FleetPlugin{Spec: &pb.PluginSpec{Name: "greet", Binary: "echo", Env: map[string]string{"VERSION": v}}}
	}
	if _, err := n.c.ApplyFleetPlugin(ctx, greet("1"), true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "n runs greet 1", func() error { return runs(ctx, n, "greet", "1", 1) })
	snap := filepath.Join(t.TempDir(), "fleet.db")
	if _, err := etcd.etcdctl("snapshot", "save", snap); err != nil {
		t.Fatal(err)
	}
	// Writes elsewhere move etcd's revision on: the node sees a revision
	// well past the snapshot's with greet 2.
	cli := etcdClient(t, clientv3.Config{Endpoints: []string{etcd.endpoint()}})
	for i := range 50 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/elsewhere/%d", i), "x"); err != nil {
			t.Fatal(err)
		}
	}
	cli.Close()
	if _, err := n.c.ApplyFleetPlugin(ctx, greet("2"), true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "n runs greet 2", func() error { return runs(ctx, n, "greet", "2", 2) })

	// The etcd is restored from the snapshot: same member, same cluster
	// token (so the same cluster id), its revision back before greet 2.
	etcd.stop()
	restore := exec.Command(etcd.ctl, "snapshot", "restore", snap, "--name", etcd.name, "--data-dir", etcd.dir+"-restored",
		"--initial-cluster", etcd.name+"=http://"+etcd.peer, "--initial-advertise-peer-urls", "http://"+etcd.peer, "--initial-cluster-token", etcd.clusterT)
	restore.Env = append(restore.Environ(), "ETCDCTL_API=3")
	if out, err := restore.CombinedOutput(); err != nil {
		t.Fatalf("etcdctl snapshot restore: %v\n%s", err, out)
	}
	etcd.dir += "-restored"
	etcd.start(t)

	eventually(t, 30*time.Second, "n fenced: the etcd's revision went back", func() error {
		st, err := n.c.FleetStatus(ctx, "")
		if err != nil {
			return err
		}
		if !strings.Contains(st.GetFenced(), "behind") || !strings.Contains(st.GetFenced(), "pluginctl fleet adopt") {
			return fmt.Errorf("fenced %q", st.GetFenced())
		}
		return nil
	})
	if err := runs(ctx, n, "greet", "2", 2); err != nil {
		t.Fatalf("a fenced node changed greet: %v", err)
	}
	adoptedAt := len(n.d.Stderr.String())
	out, err := exec.Command(filepath.Join(bins, "pluginctl"), "--addr", n.d.Addr(), "fleet", "adopt").CombinedOutput()
	if err != nil {
		t.Fatalf("pluginctl fleet adopt: %v\n%s", err, out)
	}
	// Adopted, the node converges to what the restored etcd holds.
	eventually(t, 30*time.Second, "n runs greet 1 again", func() error { return runs(ctx, n, "greet", "1", 3) })

	// An operator empties the fleet's prefix with Debian's etcdctl: not
	// "unload everything". The node keeps greet and says why, until the
	// fleet's plugins are applied again.
	if _, err := etcd.etcdctl("del", "--prefix", "/plugincontrol/"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "n fenced: the schema key is gone", func() error {
		st, err := n.c.FleetStatus(ctx, "")
		if err != nil {
			return err
		}
		if !strings.Contains(st.GetFenced(), "schema is missing") {
			return fmt.Errorf("fenced %q", st.GetFenced())
		}
		return nil
	})
	if err := runs(ctx, n, "greet", "1", 3); err != nil {
		t.Fatalf("after etcdctl del --prefix: %v", err)
	}
	if _, err := n.c.ApplyFleetPlugin(ctx, greet("3"), true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "n follows the fleet again", func() error { return runs(ctx, n, "greet", "3", 4) })
	// Adopted, the revisions of the etcd before are forgotten: the
	// keep-alives of the restored one are not taken for a revision gone
	// back again and again.
	time.Sleep(2 * time.Second) // time is what is tested: the node checks each keep-alive answer, one every third of its 2s lease TTL; this lets several arrive
	if after := n.d.Stderr.String()[adoptedAt:]; strings.Contains(after, "behind the") {
		t.Fatalf("after the adopt, the node still checks the restored etcd's revision against the old one:\n%s", after)
	}
}
