package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/spec"
	"github.com/plugincontrol/plugincontrol/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
)

// fixtureState copies the schema-1 store written by plugind b97b77a
// (store/testdata/v1) into a fresh state directory.
func fixtureState(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pd-v1-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b, err := os.ReadFile(filepath.Join(testbin.Root(), "store", "testdata", "v1", store.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, store.FileName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// An upgrade: today's plugind on a store of plugind b97b77a restores every
// plugin with its whole spec, keeps the audit history (and chains it), and
// moves no generation or revision backwards.
func TestUpgradeFromSchema1(t *testing.T) {
	state := fixtureState(t)
	var before struct {
		Plugins []json.RawMessage `json:"plugins"`
	}
	b, _ := os.ReadFile(filepath.Join(testbin.Root(), "store", "testdata", "v1", "list.json"))
	if err := json.Unmarshal(b, &before); err != nil {
		t.Fatal(err)
	}
	wantSpecs := map[string]*pb.PluginSpec{}
	wantGen := map[string]uint64{}
	for _, raw := range before.Plugins {
		var st pb.PluginStatus
		if err := protojson.Unmarshal(raw, &st); err != nil {
			t.Fatal(err)
		}
		wantSpecs[st.GetName()], wantGen[st.GetName()] = st.GetSpec(), st.GetGeneration()
	}
	var health struct {
		Revision string `json:"revision"`
	}
	b, _ = os.ReadFile(filepath.Join(testbin.Root(), "store", "testdata", "v1", "health.json"))
	_ = json.Unmarshal(b, &health)
	var oldRev uint64
	fmt.Sscan(health.Revision, &oldRev)

	d := &daemon{testbin.StartDaemon(t, testbin.DaemonOptions{Bin: bins, StateDir: state})}
	ctl, _ := d.dial(t)
	got := waitPlugins(t, ctl, 15*time.Second, func(s map[string]*pb.PluginStatus) bool {
		return s["beta"].GetState() == pb.PluginState_PLUGIN_STATE_SERVING && s["alpha"].GetState() == pb.PluginState_PLUGIN_STATE_UNHEALTHY
	})
	if len(got) != 3 {
		t.Fatalf("restored %d plugins, want 3: %v", len(got), got)
	}
	for name, want := range wantSpecs {
		st := got[name]
		// The specs the old daemon listed, the same plugins (the new
		// fields empty; package spec decides what is the same: the old
		// daemon spelled "no unhealthy action" NONE).
		if !spec.Equal(st.GetSpec(), want) {
			t.Errorf("%s: spec after the upgrade differs: %v", name, spec.Diff(want, st.GetSpec()))
		}
		if st.GetGeneration() < wantGen[name] {
			t.Errorf("%s: generation %d, was %d", name, st.GetGeneration(), wantGen[name])
		}
	}
	// alpha is pinned to the echo binary of the day the fixture was made:
	// it stays listed, UNHEALTHY at stage checksum, its generation kept.
	if a := got["alpha"]; a.GetGeneration() != 3 || !strings.Contains(a.GetLastError(), "checksum") {
		t.Errorf("alpha: %v", a)
	}
	if b := got["beta"]; b.GetGeneration() != 3 {
		t.Errorf("beta: %v", b)
	}
	if dl := got["delta"]; dl.GetState() != pb.PluginState_PLUGIN_STATE_UNHEALTHY || dl.GetGeneration() != 2 || !strings.Contains(dl.GetLastError(), "restart limit reached") {
		t.Errorf("delta stays held: %v", dl)
	}
	h, _ := ctl.Health(context.Background(), &pb.HealthRequest{})
	if h.GetRevision() <= oldRev {
		t.Errorf("revision %d after the upgrade, was %d", h.GetRevision(), oldRev)
	}
	out, code := run(t, "pluginctl", "--addr", d.Addr(), "audit", "--verify")
	if code != 0 || !strings.Contains(out, "audit chain verified") {
		t.Fatalf("audit --verify after the upgrade: exit %d\n%s", code, out)
	}
	audit, err := ctl.ListAudit(context.Background(), &pb.ListAuditRequest{PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	recs := audit.GetRecords()
	old := recs[len(recs)-11:]
	if old[10].GetSequence() != 1 || old[10].GetAction() != "load" || old[10].GetPlugin() != "alpha" || old[0].GetSequence() != 11 || old[0].GetAction() != "restart" {
		t.Fatalf("the old audit history: %v", old)
	}
}

// A damaged store never makes plugind panic: it refuses to start, naming
// the file and the problem and the way out (exit 3); plugind store check
// says the same; plugind store recover brings the newest snapshot back.
func TestDamagedStoreRefusedAndRecovered(t *testing.T) {
	d := startDaemon(t)
	ctl, _ := d.dial(t)
	if _, err := ctl.Load(context.Background(), &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "second", Binary: "echo"}}); err != nil {
		t.Fatal(err)
	}
	d.Stop(t)
	// The next start snapshots the state with both plugins; stop again.
	d2 := startDaemonIn(t, d.StateDir)
	d2.Stop(t)
	path := filepath.Join(d.StateDir, store.FileName)
	used := store.Check(path)
	if used.Problem != "" || used.Plugins != 2 {
		t.Fatalf("before the damage: %+v", used)
	}
	fi, _ := os.Stat(path)
	if err := os.Truncate(path, fi.Size()/3); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(filepath.Join(bins, "plugind"), "--plugin-dir", filepath.Join(bins, "plugins"), "--state-dir", d.StateDir)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("plugind on a truncated store: %v\n%s", err, out)
	}
	mustContain(t, "refusal", string(out), path, "is damaged", "plugind store recover --state-dir "+d.StateDir)
	if strings.Contains(string(out), "panic:") || strings.Contains(string(out), "goroutine ") {
		t.Fatalf("plugind panicked:\n%s", out)
	}
	out2, code := run(t, "plugind", "store", "check", "--state-dir", d.StateDir)
	if code != 3 || !strings.Contains(out2, "is damaged") {
		t.Fatalf("store check: exit %d\n%s", code, out2)
	}
	// The same configuration as the daemon's: the state directory from
	// the --config file, or from PLUGIND_STATE_DIR.
	conf := filepath.Join(t.TempDir(), "plugind.yaml")
	if err := os.WriteFile(conf, []byte("state-dir: "+d.StateDir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out2, code = run(t, "plugind", "store", "check", "--config", conf); code != 3 || !strings.Contains(out2, path) {
		t.Fatalf("store check --config: exit %d (want 3: the configured store is damaged)\n%s", code, out2)
	}
	env := exec.Command(filepath.Join(bins, "plugind"), "store", "check")
	env.Env = append(os.Environ(), "PLUGIND_STATE_DIR="+d.StateDir)
	if out, err := env.CombinedOutput(); !strings.Contains(string(out), path) {
		t.Fatalf("store check with PLUGIND_STATE_DIR: %v\n%s", err, out)
	}
	out2, code = run(t, "plugind", "store", "recover", "--state-dir", d.StateDir)
	if code != 0 || !strings.Contains(out2, "recovered from snapshot") {
		t.Fatalf("store recover: exit %d\n%s", code, out2)
	}
	d3 := startDaemonIn(t, d.StateDir)
	ctl3, _ := d3.dial(t)
	waitPlugins(t, ctl3, 10*time.Second, func(s map[string]*pb.PluginStatus) bool {
		return s["echo"].GetState() == pb.PluginState_PLUGIN_STATE_SERVING && s["second"].GetState() == pb.PluginState_PLUGIN_STATE_SERVING
	})
}

// kill -9 in a loop, in the middle of mutations: every restart opens the
// store (never damaged) and the audit chain verifies.
func TestKill9Loop(t *testing.T) {
	d := startDaemon(t)
	state := d.StateDir
	for round := range 5 {
		ctl, _ := d.dial(t)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; ctx.Err() == nil; i++ {
				name := fmt.Sprintf("k%d", i%3)
				if _, err := ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: name, Binary: "echo"}}); status.Code(err) == codes.AlreadyExists {
					_, _ = ctl.Unload(ctx, &pb.UnloadRequest{Name: name})
				}
			}
		}()
		time.Sleep(time.Duration(200+100*round) * time.Millisecond) // time is what is tested: each round's kill lands at another point of the burst
		_ = d.Cmd.Process.Signal(syscall.SIGKILL)
		<-d.Exited()
		cancel()
		<-done
		if rep := store.Check(filepath.Join(state, store.FileName)); rep.Problem != "" || rep.ChainBroken != "" {
			t.Fatalf("round %d: the store after kill -9: %+v", round, rep)
		}
		d = startDaemonIn(t, state)
	}
	out, code := run(t, "pluginctl", "--addr", d.Addr(), "audit", "--verify")
	if code != 0 {
		t.Fatalf("audit --verify after 5 kills: exit %d\n%s", code, out)
	}
	t.Log(strings.TrimSpace(out))
}

// mountTmpfs mounts a tmpfs of size bytes on a fresh directory, unmounted
// at cleanup: a disk that fills up for real.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a tmpfs to fill a disk for real: it runs as root (CI does)")
	}
	dir, err := os.MkdirTemp("", "pd-full-")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", dir).CombinedOutput(); err != nil {
		os.Remove(dir)
		t.Fatalf("mount tmpfs: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
		os.Remove(dir)
	})
	return dir
}

// fill writes a file in dir until the disk is full, and returns it.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !strings.Contains(err.Error(), "no space left") {
				t.Fatalf("filling the disk: %v", err)
			}
			return p
		}
	}
}

// On a disk that is full for real, a mutation is either acknowledged and
// recorded with its audit record, or refused with ResourceExhausted and not
// done: Load and Unload in a loop, then every acknowledged one is in the
// audit log, every refused one changed nothing, and the chain verifies.
func TestFullDiskNothingLost(t *testing.T) {
	disk := mountTmpfs(t, 8<<20)
	state := filepath.Join(disk, "state")
	d := startDaemonIn(t, state)
	ctl, _ := d.dial(t)
	ctx := context.Background()
	auditLen := func() int {
		t.Helper()
		n, tok := 0, ""
		for {
			r, err := ctl.ListAudit(ctx, &pb.ListAuditRequest{PageSize: 10000, PageToken: tok})
			if err != nil {
				t.Fatal(err)
			}
			n += len(r.GetRecords())
			if tok = r.GetNextPageToken(); tok == "" {
				return n
			}
		}
	}
	before := auditLen()
	filler := fill(t, disk)
	// Leave a little room: the first mutations fit, then the disk fills.
	if fi, err := os.Stat(filler); err != nil || os.Truncate(filler, fi.Size()-256<<10) != nil {
		t.Fatalf("making room: %v", err)
	}
	acked, refused := 0, 0
	loaded := map[string]bool{}
	for i := range 60 {
		name := fmt.Sprintf("f%d", i%4)
		var err error
		if loaded[name] {
			_, err = ctl.Unload(ctx, &pb.UnloadRequest{Name: name})
		} else {
			_, err = ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: name, Binary: "echo", Config: []byte(strings.Repeat("x", 64<<10))}})
		}
		switch status.Code(err) {
		case codes.OK:
			acked++
			loaded[name] = !loaded[name]
		case codes.ResourceExhausted:
			refused++
			if !strings.Contains(err.Error(), "no space left") {
				t.Fatalf("refused without naming the disk: %v", err)
			}
		default:
			t.Fatalf("mutation %d: %v (neither done nor refused for the disk)", i, err)
		}
		st := statuses(t, ctl)
		for n, l := range loaded {
			if _, ok := st[n]; ok != l {
				t.Fatalf("after mutation %d: %s listed %v, recorded state says %v", i, n, ok, l)
			}
		}
	}
	if refused == 0 || acked == 0 {
		t.Fatalf("%d mutations acknowledged, %d refused: the test wants both", acked, refused)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	// Records of the refused attempts may be lost with the disk full; every
	// acknowledged mutation has its record.
	if got := auditLen() - before; got < acked {
		t.Fatalf("%d acknowledged mutations, %d new audit records", acked, got)
	}
	t.Logf("on the full disk: %d mutations acknowledged, %d refused with ResourceExhausted", acked, refused)
	if out, code := run(t, "pluginctl", "--addr", d.Addr(), "audit", "--verify"); code != 0 {
		t.Fatalf("audit --verify: exit %d\n%s", code, out)
	}
	want := statuses(t, ctl)
	d.Stop(t)
	d2 := startDaemonIn(t, state)
	ctl2, _ := d2.dial(t)
	got := waitPlugins(t, ctl2, 10*time.Second, func(s map[string]*pb.PluginStatus) bool { return len(s) == len(want) })
	for n := range want {
		if _, ok := got[n]; !ok {
			t.Fatalf("%s acknowledged but not restored", n)
		}
	}
}
