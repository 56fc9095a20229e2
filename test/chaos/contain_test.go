package chaos_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pluginpb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
)

// containModes are the two ways the manager keeps a plugin's descendants
// from outliving it; this machine (root, cgroup v2 mounted) has both, and
// both must work: the cgroup where plugind may create one, the subreaper
// where it may not (an unprivileged container).
var containModes = []struct {
	name string
	c    manager.Containment
	flag string
}{
	{"cgroup", manager.ContainAuto, "auto"},
	{"subreaper", manager.ContainSubreaper, "subreaper"},
}

// daemonized asserts that pid (a forker -daemon grandchild) runs outside
// its plugin's reach but for its containment: not its child, in a session
// of its own.
func daemonized(t *testing.T, pid, plugin int) {
	t.Helper()
	ppid, pgid := procStat(pid)
	if ppid == plugin || pgid == plugin || !testbin.Alive(pid) {
		t.Fatalf("grandchild %d: parent %d, group %d, alive %v; want a running daemon away from plugin %d", pid, ppid, pgid, testbin.Alive(pid), plugin)
	}
}

// TestDaemonizedGrandchildDies: a plugin that double-forks a grandchild
// into a session of its own with its stdio on /dev/null (forker -daemon)
// leaves nothing behind: the grandchild dies with its generation at
// Reload, at a crash restart and at Unload, in cgroup mode (cgroup.kill)
// and in subreaper mode (re-parented to the manager, killed by its mark).
func TestDaemonizedGrandchildDies(t *testing.T) {
	for _, mode := range containModes {
		t.Run(mode.name, func(t *testing.T) {
			m, _ := newManager(t, manager.Config{Containment: mode.c})
			if !strings.HasPrefix(m.Containment(), mode.name) {
				t.Fatalf("containment %q, want %s: this machine gives root a cgroup v2", m.Containment(), mode.name)
			}
			ctx := context.Background()
			spec := manager.Spec{Name: "fk", Binary: "forker", Args: []string{"-daemon"}, Policy: fastRestarts}
			st := load(t, m, spec)
			gc := childPID(t, m, "fk")
			t.Cleanup(func() { killOurs(gc) })
			daemonized(t, gc, st.PID)

			rr, err := m.Reload(ctx, manager.ReloadRequest{Name: "fk"})
			if err != nil {
				t.Fatal(err)
			}
			gone(t, "grandchild of the generation a Reload replaced", gc)
			gc2 := childPID(t, m, "fk")
			t.Cleanup(func() { killOurs(gc2) })
			daemonized(t, gc2, rr.Status.PID)

			if err := syscall.Kill(rr.Status.PID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			waitHealth(t, m, "fk", 10*time.Second, "the crash restart", serving(3))
			gone(t, "grandchild of the generation that crashed", gc2)
			gc3 := childPID(t, m, "fk")
			t.Cleanup(func() { killOurs(gc3) })
			now, _ := m.Get("fk")
			onlyProcesses(t, pluginDir, []int{now.PID, gc3})

			if _, err := m.Unload(ctx, "fk", 0); err != nil {
				t.Fatal(err)
			}
			gone(t, "grandchild of an unloaded plugin", gc3)
			onlyProcesses(t, pluginDir, nil)
		})
	}
}

// TestDaemonizedGrandchildDiesWithKilledDaemon: kill -9 of plugind takes
// the daemonized grandchildren of its plugins too (the reaper kills the
// cgroup subtree, or the processes carrying the daemon's mark), and a
// plugind restarted on the state directory comes back with nothing of the
// killed one left: no process, no cgroup, no socket directory.
func TestDaemonizedGrandchildDiesWithKilledDaemon(t *testing.T) {
	for _, mode := range containModes {
		t.Run(mode.name, func(t *testing.T) {
			state, err := os.MkdirTemp("", "pd-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(state) })
			args := []string{"--containment", mode.flag}
			d := startDaemonArgs(t, state, args, "fk=forker")
			if _, err := d.ctl.Reload(context.Background(), &pb.ReloadRequest{Name: "fk", Spec: &pb.PluginSpec{Name: "fk", Binary: "forker", Args: []string{"-daemon"}}}); err != nil {
				t.Fatal(err)
			}
			out, err := d.invoke("fk", "child")
			if err != nil {
				t.Fatal(err)
			}
			var gc int
			fmt.Sscan(string(out), &gc)
			t.Cleanup(func() { killOurs(gc) })
			ps, _ := d.list()
			daemonized(t, gc, int(ps[0].GetPid()))
			cg := cgroupsOf(d.cmd.Process.Pid, state)
			if (len(cg) == 1) != (mode.name == "cgroup") {
				t.Fatalf("cgroup subtrees of the daemon: %v", cg)
			}

			if err := d.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-d.done
			gone(t, "plugin of the SIGKILLed daemon", int(ps[0].GetPid()))
			gone(t, "daemonized grandchild of the SIGKILLed daemon's plugin", gc)

			d2 := startDaemonArgs(t, state, args, "fk=forker")
			ps2, err := d2.list()
			if err != nil || len(ps2) != 1 || ps2[0].GetGeneration() != 3 {
				t.Fatalf("restored: %v %v", ps2, err)
			}
			if err := d2.stop(t, syscall.SIGTERM); err != nil {
				t.Fatalf("plugind after SIGTERM: %v\n%s", err, d2.stderr)
			}
			onlyProcesses(t, pluginDir, nil)
			for _, dir := range cg {
				if _, err := os.Stat(dir); !os.IsNotExist(err) {
					t.Errorf("cgroup %s left after the restarted plugind stopped: %v", dir, err)
				}
			}
		})
	}
}

// cgroupsOf lists the cgroup subtree of the plugind of state (whose id is
// the start of the SHA-256 of the state directory) beside the daemon's own
// cgroup v2; empty in subreaper mode.
func cgroupsOf(pid int, state string) []string {
	sum := sha256.Sum256([]byte(state))
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			m, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/unified", p, "plugind-"+hex.EncodeToString(sum[:6])))
			return m
		}
	}
	return nil
}

// pathOfLen returns a directory path of exactly n bytes under base (not
// created).
func pathOfLen(t *testing.T, base string, n int) string {
	t.Helper()
	if len(base)+2 > n {
		t.Fatalf("base %s is longer than %d", base, n)
	}
	return base + "/" + strings.Repeat("s", n-len(base)-1)
}

// TestLongestNameUnderLongStateDir: every name the validator accepts
// loads, reloads and restarts: a 63-character name under a 60-character
// state directory, with its endpoint served (the socket paths depend on
// neither: short random ids under a short root, a hashed endpoint name
// where NAME.sock would not fit).
func TestLongestNameUnderLongStateDir(t *testing.T) {
	base, err := os.MkdirTemp("", "pd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	state := pathOfLen(t, base, 60)
	name := "n" + strings.Repeat("0123456789", 6) + "-z"
	if len(name) != 63 || manager.ValidateName(name) != nil {
		t.Fatalf("name %q (%d)", name, len(name))
	}
	d := startDaemon(t, state)
	ctx := context.Background()
	spec := &pb.PluginSpec{Name: name, Binary: "echo", HealthPolicy: &pb.HealthPolicy{BackoffInitial: durationpb.New(10 * time.Millisecond)}}
	if _, err := d.ctl.Load(ctx, &pb.LoadRequest{Spec: spec}); err != nil {
		t.Fatalf("Load of a 63-character name under a 60-character state directory: %v", err)
	}
	for i := 0; i < 3; i++ {
		if _, err := d.ctl.Reload(ctx, &pb.ReloadRequest{Name: name}); err != nil {
			t.Fatalf("Reload %d: %v", i, err)
		}
	}
	ps, _ := d.list()
	if err := syscall.Kill(int(ps[0].GetPid()), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the crash restart", func() bool {
		ps, _ := d.list()
		return len(ps) == 1 && ps[0].GetGeneration() == 5 && ps[0].GetState() == pb.PluginState_PLUGIN_STATE_SERVING
	})
	ps, _ = d.list()
	ep := ps[0].GetEndpoint()
	if path := strings.TrimPrefix(ep, "unix://"); len(path) > 107 || !strings.HasPrefix(path, state) {
		t.Fatalf("endpoint %q: want a unix socket path of at most 107 bytes in the state directory", ep)
	}
	conn, err := grpc.NewClient(ep, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := pluginpb.NewPluginServiceClient(conn).Invoke(cctx, &pluginpb.InvokeRequest{Method: "echo", Payload: []byte("long")})
	if err != nil || string(res.GetPayload()) != "long" {
		t.Fatalf("Invoke through the endpoint %s: %v %v", ep, res, err)
	}
}

// TestSocketDirsOfKilledDaemonsRemoved: with a state directory too long
// for plugin socket paths, the sockets go to one directory of this state
// directory's own under $TMPDIR; three kill -9s of plugind leave no more
// than the running daemon's, and a clean stop leaves none.
func TestSocketDirsOfKilledDaemonsRemoved(t *testing.T) {
	base, err := os.MkdirTemp("", "pd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	state := pathOfLen(t, base, 90)
	tmp := filepath.Join(base, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	env := []string{"TMPDIR=" + tmp}
	for i := 0; i < 3; i++ {
		d := startDaemonEnv(t, state, env, nil, "echo")
		if ents, _ := os.ReadDir(tmp); len(ents) != 1 {
			t.Fatalf("run %d: %s holds %v, want the running daemon's directory alone", i, tmp, ents)
		}
		if err := d.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-d.done
	}
	d := startDaemonEnv(t, state, env, nil, "echo")
	ents, _ := os.ReadDir(tmp)
	if len(ents) != 1 {
		t.Fatalf("after three kill -9s %s holds %v, want one directory", tmp, ents)
	}
	if err := d.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Fatalf("after a clean stop %s holds %v", tmp, ents)
	}
	onlyProcesses(t, pluginDir, nil)
}

// TestResourceLimitsWhereNotDelegated: a spec with resource limits on a
// host that does not give plugind the controllers (this one: cgroup v2
// beside v1 controllers, so its cgroup2 offers none of memory, pids, cpu)
// fails at stage start, naming what is missing, and nothing is left; the
// same spec without limits loads.
func TestResourceLimitsWhereNotDelegated(t *testing.T) {
	for _, mode := range containModes {
		t.Run(mode.name, func(t *testing.T) {
			m, sock := newManager(t, manager.Config{Containment: mode.c})
			want := map[string]string{
				"cgroup":    "memory.max needs the memory controller in cgroup v2, which this host does not give plugind",
				"subreaper": "resource limits need cgroup containment, and this manager contains plugins with subreaper",
			}[mode.name]
			spec := manager.Spec{Name: "lim", Binary: "echo", Resources: manager.Resources{MemoryMax: 64 << 20, PidsMax: 64}}
			_, err := m.Load(context.Background(), spec)
			var ce *manager.CandidateError
			if !errors.As(err, &ce) || ce.Stage != manager.StageStart || !strings.Contains(err.Error(), want) {
				t.Fatalf("Load with limits: %v, want stage start and %q", err, want)
			}
			if _, err := m.Get("lim"); !errors.Is(err, manager.ErrNotFound) {
				t.Fatalf("the failed Load left the plugin: %v", err)
			}
			if d := sockDirs(sock); len(d) != 0 {
				t.Fatalf("socket directories %v", d)
			}
			spec.Resources = manager.Resources{}
			load(t, m, spec)
		})
	}
}
