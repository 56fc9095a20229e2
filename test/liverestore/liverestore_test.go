// Package liverestore tests that plugind's own lifecycle is decoupled from
// its plugins': a reload (SIGHUP: re-exec in place) and a crash with
// --live-restore neither restart a plugin nor fail a call, while a stop
// still stops everything. Real plugind processes, real plugins (the
// native echo, the foreign ticker with all four gRPC kinds, go-plugin's
// own KV), real signals.
package liverestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/plugincontrol/plugincontrol/client"
	examplev1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/example/v1"
	handoverv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/handover/v1"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// bins holds plugind, pluginctl, the example plugins (bins/plugins, with
// the test plugins of test/plugins, chatter among them), and bins/alt/plugind, the same
// daemon stamped with another version.
var bins string

// altVersion is the version stamped into bins/alt/plugind.
const altVersion = "v9.9.9-reloadtest"

func TestMain(m *testing.M) {
	testbin.Main(m, &bins, func(dir string) error {
		if err := testbin.DaemonBinaries(dir); err != nil {
			return err
		}
		build := func(out string, args ...string) error {
			cmd := exec.Command("go", append([]string{"build", "-o", out}, args...)...)
			cmd.Dir = testbin.Root()
			if b, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go build %v: %v\n%s", args, err, b)
			}
			return nil
		}
		return build(filepath.Join(dir, "alt", "plugind"), "-ldflags", "-X github.com/plugincontrol/plugincontrol/internal/version.stamp="+altVersion, "./cmd/plugind")
	})
}

// tickerHandshake is the ticker example's go-plugin handshake.
var tickerHandshake = &pb.Handshake{ProtocolVersion: 1, MagicCookieKey: "TICKER_PLUGIN", MagicCookieValue: "tick"}

// rig is one plugind under test, run from a directory of its own (the
// binary a reload re-executes is the file at its path, which a test may
// replace as a package upgrade does), and a client of it.
type rig struct {
	t   *testing.T
	bin string // the daemon's own directory: plugind and pluginctl
	d   *testbin.Daemon
	c   *client.Client
}

// startRig copies plugind and pluginctl into a fresh directory and starts
// the daemon there with args.
func startRig(t *testing.T, state string, args ...string) *rig {
	t.Helper()
	dir := t.TempDir()
	for _, b := range []string{"plugind", "pluginctl"} {
		copyFile(t, filepath.Join(bins, b), filepath.Join(dir, b))
	}
	r := &rig{t: t, bin: dir}
	r.start(state, args...)
	return r
}

// start runs the rig's plugind (again) on state.
func (r *rig) start(state string, args ...string) {
	r.t.Helper()
	r.d = testbin.StartDaemon(r.t, testbin.DaemonOptions{Bin: r.bin, PluginDir: filepath.Join(bins, "plugins"), StateDir: state, Args: append([]string{"--log-level", "info"}, args...)})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, r.d.Addr())
	if err != nil {
		r.t.Fatal(err)
	}
	if r.c != nil {
		r.c.Close()
	}
	r.c = c
	r.t.Cleanup(func() { c.Close() })
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	// Written beside and renamed over, as a package manager does: the
	// running binary's file is replaced, not written into.
	tmp := to + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, to); err != nil {
		t.Fatal(err)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (r *rig) load(spec *pb.PluginSpec) *pb.PluginStatus {
	r.t.Helper()
	st, err := r.c.Load(ctxT(r.t), spec)
	if err != nil {
		r.t.Fatalf("load %s: %v", spec.GetName(), err)
	}
	return st
}

// processes maps each plugin to its pid and generation, once every one
// serves (a daemon that just started may still be restoring them).
func (r *rig) processes() map[string][2]uint64 {
	r.t.Helper()
	ps, err := r.c.List(ctxT(r.t))
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string][2]uint64{}
	for _, p := range ps {
		h, err := r.c.WaitServing(ctxT(r.t), p.GetName(), 0)
		if err != nil {
			r.t.Fatalf("%s does not serve: %v", p.GetName(), err)
		}
		st, err := r.c.Get(ctxT(r.t), p.GetName())
		if err != nil {
			r.t.Fatal(err)
		}
		if st.GetGeneration() != h.GetGeneration() {
			r.t.Fatalf("%s changed while being read: generation %d, then %d", p.GetName(), h.GetGeneration(), st.GetGeneration())
		}
		out[p.GetName()] = [2]uint64{uint64(st.GetPid()), st.GetGeneration()}
	}
	return out
}

// reload sends SIGHUP and waits for the log line of the n-th reload done.
func (r *rig) reload(n int) {
	r.t.Helper()
	if err := r.d.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		r.t.Fatal(err)
	}
	if !r.d.Stderr.WaitFor("plugind reloaded in place", n, 20*time.Second) {
		r.t.Fatalf("reload %d did not complete:\n%s", n, r.d.Stderr)
	}
}

// kill9 SIGKILLs plugind and waits for it to be gone.
func (r *rig) kill9() {
	r.t.Helper()
	_ = r.d.Cmd.Process.Kill()
	select {
	case <-r.d.Exited():
	case <-time.After(10 * time.Second):
		r.t.Fatal("plugind did not die")
	}
}

// version asks the daemon for its version (the plugincontrol-version
// response header, as pluginctl version reads it).
func (r *rig) version() string {
	r.t.Helper()
	out, err := exec.Command(filepath.Join(r.bin, "pluginctl"), "--addr", r.d.Addr(), "version").CombinedOutput()
	if err != nil {
		r.t.Fatalf("pluginctl version: %v\n%s", err, out)
	}
	return string(out)
}

// revisions records what a health watcher received: the revision of every
// CHANGED or REMOVED event, and every reset.
type revisions struct {
	mu     sync.Mutex
	revs   []uint64
	resets int
}

func (v *revisions) add(e *pb.HealthEvent) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if e.GetReset_() {
		v.resets++
	}
	switch e.GetType() {
	case pb.HealthEventType_HEALTH_EVENT_TYPE_CHANGED, pb.HealthEventType_HEALTH_EVENT_TYPE_REMOVED:
		v.revs = append(v.revs, e.GetRevision())
	}
}

// TestReloadUnderLoad reloads plugind 20 times while callers invoke a
// native plugin through the gateway and a foreign one through its
// endpoint (unary calls and bidirectional streams), and two SDK watchers
// follow the health stream: no call fails, every plugin keeps its pid and
// generation, and each watcher sees every change, with contiguous
// revisions and no reset.
func TestReloadUnderLoad(t *testing.T) {
	r := startRig(t, t.TempDir(), "--load", "echo")
	r.load(&pb.PluginSpec{Name: "ticker", Binary: "ticker", Handshake: tickerHandshake})
	// churn is reloaded (as a plugin) between daemon reloads: health
	// changes the watchers must all see.
	r.load(&pb.PluginSpec{Name: "churn", Binary: "echo"})
	before := r.processes()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var watchers [2]revisions
	for i := range watchers {
		w, err := r.c.Watch(ctx, client.WithCallback(watchers[i].add), client.WithBackoff(10*time.Millisecond, 100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		select {
		case <-w.Synced():
		case <-time.After(10 * time.Second):
			t.Fatal("watcher not synced")
		}
	}
	tickConn, err := r.c.DialPlugin(ctx, "ticker")
	if err != nil {
		t.Fatal(err)
	}
	defer tickConn.Close()
	ticker := examplev1.NewTickerServiceClient(tickConn)
	gateway := testbin.StartLoop(4, func() error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		got, _, err := r.c.Invoke(cctx, "echo", "echo", []byte("hello"))
		if err == nil && string(got) != "hello" {
			err = fmt.Errorf("echo answered %q", got)
		}
		return err
	})
	endpoint := testbin.StartLoop(4, func() error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := ticker.Echo(cctx, &examplev1.EchoRequest{Payload: []byte("hi")})
		return err
	})
	// A bidirectional stream at a time, five messages each way.
	chats := testbin.StartLoop(1, func() error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		s, err := ticker.Chat(cctx)
		if err != nil {
			return err
		}
		for i := range 5 {
			if err := s.Send(&examplev1.ChatRequest{Text: strconv.Itoa(i)}); err != nil {
				return fmt.Errorf("send %d: %w", i, err)
			}
			m, err := s.Recv()
			if err != nil {
				return fmt.Errorf("recv %d: %w", i, err)
			}
			if m.GetText() != strconv.Itoa(i) {
				return fmt.Errorf("chat echoed %q for %d", m.GetText(), i)
			}
		}
		if err := s.CloseSend(); err != nil {
			return err
		}
		if _, err := s.Recv(); !errors.Is(err, io.EOF) {
			return fmt.Errorf("end of chat: %v", err)
		}
		return nil
	})
	loops := []*testbin.Loop{gateway, endpoint, chats}
	stopped := false
	stopLoops := func() {
		if stopped {
			return
		}
		stopped = true
		for i, l := range loops {
			calls, failed, first := l.Stop()
			t.Logf("callers %d: %d calls, %d failed", i, calls, failed)
			if failed > 0 {
				t.Errorf("callers %d: %d of %d calls failed across the reloads; first: %v", i, failed, calls, first)
			}
			if calls == 0 {
				t.Errorf("callers %d made no call", i)
			}
		}
	}
	defer stopLoops()

	const reloads = 20
	churnGen := before["churn"][1]
	for i := 1; i <= reloads; i++ {
		// Calls in flight on every path as the signal lands.
		for _, l := range loops {
			l.WaitCalls(l.Calls()+2, 10*time.Second)
		}
		r.reload(i)
		if _, err := r.c.Reload(ctxT(t), "churn"); err != nil {
			t.Fatalf("reload of plugin churn after daemon reload %d: %v", i, err)
		}
		churnGen++
	}
	for _, l := range loops {
		l.WaitCalls(l.Calls()+2, 10*time.Second)
	}
	stopLoops()

	after := r.processes()
	for _, name := range []string{"echo", "ticker"} {
		if after[name] != before[name] {
			t.Errorf("%s: pid and generation %v before the reloads, %v after", name, before[name], after[name])
		}
	}
	if after["churn"][1] != churnGen {
		t.Errorf("churn is generation %d, want %d", after["churn"][1], churnGen)
	}
	// Every watcher saw every churn reload, revisions contiguous.
	_, rev, err := r.c.Health(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := range watchers {
		w := &watchers[i]
		deadline := time.Now().Add(10 * time.Second)
		for {
			w.mu.Lock()
			n := len(w.revs)
			last := uint64(0)
			if n > 0 {
				last = w.revs[n-1]
			}
			w.mu.Unlock()
			if last >= rev || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond) // the watcher's stream delivers asynchronously
		}
		w.mu.Lock()
		if w.resets > 0 {
			t.Errorf("watcher %d got %d reset snapshots", i, w.resets)
		}
		if len(w.revs) < reloads {
			t.Errorf("watcher %d saw %d changes, want at least %d", i, len(w.revs), reloads)
		}
		for j := 1; j < len(w.revs); j++ {
			if w.revs[j] != w.revs[j-1]+1 {
				t.Errorf("watcher %d: revision %d follows %d", i, w.revs[j], w.revs[j-1])
			}
		}
		if n := len(w.revs); n > 0 && w.revs[n-1] != rev {
			t.Errorf("watcher %d is at revision %d, the daemon at %d", i, w.revs[n-1], rev)
		}
		w.mu.Unlock()
	}
	if n := strings.Count(r.d.Stderr.String(), "plugin adopted"); n != 0 {
		t.Errorf("a reload logged %d crash adoptions", n)
	}
	if strings.Contains(r.d.Stderr.String(), "reattach-failed") || strings.Contains(r.d.Stderr.String(), "not adopted") {
		t.Errorf("a plugin was relaunched by a reload:\n%s", r.d.Stderr)
	}
	r.d.Stop(t)
	assertNothingLeft(t, r)
}

// TestPluginctlWatchRidesThrough: pluginctl watch follows the health stream
// across reloads of the daemon without a word on its stderr, and prints
// the changes that come after them.
func TestPluginctlWatchRidesThrough(t *testing.T) {
	r := startRig(t, t.TempDir(), "--load", "echo")
	cmd := exec.Command(filepath.Join(r.bin, "pluginctl"), "--addr", r.d.Addr(), "watch", "echo")
	out, errOut := &testbin.Buffer{}, &testbin.Buffer{}
	cmd.Stdout, cmd.Stderr = out, errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if !out.WaitFor("echo", 1, 10*time.Second) {
		t.Fatalf("pluginctl watch printed nothing: %s %s", out, errOut)
	}
	r.reload(1)
	r.reload(2)
	if _, err := r.c.Reload(ctxT(t), "echo"); err != nil {
		t.Fatal(err)
	}
	// The plugin reload (generation 2) reaches the watch: it resumed.
	if !out.WaitFor("SERVING", 2, 10*time.Second) || !strings.Contains(out.String(), " 2 ") {
		t.Fatalf("pluginctl watch did not print the change after the reloads:\n%s\nstderr:\n%s", out, errOut)
	}
	if s := errOut.String(); s != "" {
		t.Errorf("pluginctl watch said, across the reloads: %s", s)
	}
	if cmd.ProcessState != nil {
		t.Fatalf("pluginctl watch exited: %v", cmd.ProcessState)
	}
}

// TestReloadKeepsBake: a bake in progress survives a reload in place: the
// previous generation's process is still kept warm by the new image, the
// bake still runs, and an unload stops both processes.
func TestReloadKeepsBake(t *testing.T) {
	r := startRig(t, t.TempDir(), "--load", "echo")
	first := r.processes()["echo"]
	if _, err := r.c.Reload(ctxT(t), "echo", client.WithBake(5*time.Minute)); err != nil {
		t.Fatal(err)
	}
	second := r.processes()["echo"]
	r.reload(1)
	hs, _, err := r.c.Health(ctxT(t), client.WithNames("echo"))
	if err != nil {
		t.Fatal(err)
	}
	b := hs[0].GetBake()
	if b.GetResult() != pb.BakeResult_BAKE_RESULT_BAKING || b.GetGeneration() != second[1] || b.GetPreviousGeneration() != first[1] {
		t.Fatalf("after the reload the bake is %v", b)
	}
	if after := r.processes()["echo"]; after != second {
		t.Fatalf("echo: %v before the reload, %v after", second, after)
	}
	if !testbin.Alive(int(first[0])) {
		t.Fatalf("the process kept warm by the bake (pid %d) is gone", first[0])
	}
	if _, err := r.c.Unload(ctxT(t), "echo"); err != nil {
		t.Fatal(err)
	}
	for _, pid := range []uint64{first[0], second[0]} {
		if !testbin.WaitGone(int(pid), 10*time.Second) {
			t.Errorf("process %d outlived the unload", pid)
		}
	}
	r.d.Stop(t)
	assertNothingLeft(t, r)
}

// TestReloadOntoNewBinary replaces the daemon's binary (as a package
// upgrade does) and reloads: the version the daemon reports changes, its
// pid and its plugins' do not.
func TestReloadOntoNewBinary(t *testing.T) {
	r := startRig(t, t.TempDir(), "--load", "echo")
	r.load(&pb.PluginSpec{Name: "kv", Binary: "kv", Handshake: &pb.Handshake{ProtocolVersion: 1, MagicCookieKey: "BASIC_PLUGIN", MagicCookieValue: "hello"}})
	before := r.processes()
	if v := r.version(); strings.Contains(v, altVersion) {
		t.Fatalf("the daemon reports %s before the upgrade:\n%s", altVersion, v)
	}
	pid := r.d.Cmd.Process.Pid
	copyFile(t, filepath.Join(bins, "alt", "plugind"), filepath.Join(r.bin, "plugind"))
	r.reload(1)
	if v := r.version(); !strings.Contains(v, altVersion) {
		t.Errorf("after the reload the daemon does not report %s:\n%s", altVersion, v)
	}
	if r.d.Cmd.Process.Pid != pid {
		t.Errorf("the daemon's pid changed")
	}
	if after := r.processes(); !mapsEqual(before, after) {
		t.Errorf("plugins before %v, after %v", before, after)
	}
	r.d.Stop(t)
	assertNothingLeft(t, r)
}

// TestReloadRefused reloads with a configuration file that does not parse,
// then with a binary that does not start: each time the running daemon
// carries on, unchanged, and says why.
func TestReloadRefused(t *testing.T) {
	state := t.TempDir()
	conf := filepath.Join(t.TempDir(), "plugind.yaml")
	if err := os.WriteFile(conf, []byte("log-level: info\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startRig(t, state, "--config", conf, "--load", "echo")
	before := r.processes()
	check := func(what string, n int) {
		t.Helper()
		if err := r.d.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if !r.d.Stderr.WaitFor("reload refused", n, 20*time.Second) {
			t.Fatalf("%s: no refusal logged:\n%s", what, r.d.Stderr)
		}
		if after := r.processes(); !mapsEqual(before, after) {
			t.Errorf("%s: plugins before %v, after %v", what, before, after)
		}
		if got, _, err := r.c.Invoke(ctxT(t), "echo", "echo", []byte("x")); err != nil || string(got) != "x" {
			t.Errorf("%s: the daemon does not serve: %q, %v", what, got, err)
		}
		if strings.Count(r.d.Stderr.String(), "plugind started") != 1 {
			t.Errorf("%s: a new image started", what)
		}
	}
	// A configuration the new image refuses.
	if err := os.WriteFile(conf, []byte("log-level: [not, a, level]\nno-such-flag: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	check("broken config", 1)
	if !strings.Contains(r.d.Stderr.String(), "no-such-flag") && !strings.Contains(r.d.Stderr.String(), "log-level") {
		t.Errorf("the refusal does not say what is wrong:\n%s", r.d.Stderr)
	}
	if err := os.WriteFile(conf, []byte("log-level: info\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A binary that does not start (a broken upgrade).
	good := filepath.Join(r.bin, "plugind.good")
	if err := os.Link(filepath.Join(r.bin, "plugind"), good); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.bin, "plugind.new"), []byte("\x7fELF garbage, not a program"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(r.bin, "plugind.new"), filepath.Join(r.bin, "plugind")); err != nil {
		t.Fatal(err)
	}
	check("broken binary", 2)
	if err := os.Rename(good, filepath.Join(r.bin, "plugind")); err != nil {
		t.Fatal(err)
	}
	// Fixed: the reload goes through.
	r.reload(1)
	if after := r.processes(); !mapsEqual(before, after) {
		t.Errorf("after the good reload: plugins before %v, after %v", before, after)
	}
	r.d.Stop(t)
	assertNothingLeft(t, r)
}

// TestCrashAdoption kills plugind with SIGKILL under --live-restore and
// starts it again: the plugins that kept running are adopted with their
// pids and generations; one that logged heavily meanwhile was neither
// blocked nor killed and lost no line; a record whose pid now belongs to
// another process is not adopted (and that process is left alone); a
// plugin killed while plugind was down is restarted.
func TestCrashAdoption(t *testing.T) {
	state := t.TempDir()
	r := startRig(t, state, "--live-restore", "--load", "echo")
	r.load(&pb.PluginSpec{Name: "ticker", Binary: "ticker", Handshake: tickerHandshake})
	r.load(&pb.PluginSpec{Name: "chatter", Binary: "chatter"})
	r.load(&pb.PluginSpec{Name: "victim", Binary: "echo"})
	r.load(&pb.PluginSpec{Name: "reused", Binary: "echo"})
	before := r.processes()
	old := r.d

	r.kill9()
	// The reaper drains the chatter while no plugind runs: wait until it
	// logged a good many of its lines (chatter writes one a millisecond,
	// so a 64 KiB pipe would be full in about two seconds).
	count := func() int { return len(chatterLines(old.Stderr.String())) }
	if !old.Stderr.WaitFor("draining their output", 1, 10*time.Second) {
		t.Fatalf("the reaper did not take over:\n%s", old.Stderr)
	}
	downAt := maxLine(chatterLines(old.Stderr.String()))
	if !old.Stderr.WaitFor("chatter "+strconv.Itoa(downAt+3000), 1, 20*time.Second) {
		t.Fatalf("the chatter's lines did not go on while plugind was down (last %d):\n%s", downAt, tail(old.Stderr.String()))
	}
	t.Logf("%d chatter lines logged by the reaper while plugind was down", count())
	// victim dies while plugind is down.
	victim := int(before["victim"][0])
	_ = syscall.Kill(victim, syscall.SIGKILL)
	testbin.WaitGone(victim, 5*time.Second)
	// reused's record now names a pid of another process (as after pid
	// reuse): that process must be neither adopted nor killed.
	other := exec.Command("sleep", "300")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Process.Kill(); _ = other.Wait() }()
	rewriteRecordPID(t, state, "reused", other.Process.Pid)
	reusedPID := int(before["reused"][0])

	r.start(state, "--live-restore")
	after := r.processes()
	for _, name := range []string{"echo", "ticker", "chatter"} {
		if after[name] != before[name] {
			t.Errorf("%s: pid and generation %v before the crash, %v after", name, before[name], after[name])
		}
	}
	if after["victim"][1] != before["victim"][1]+1 || after["victim"][0] == before["victim"][0] {
		t.Errorf("victim, killed while plugind was down: %v before, %v after (want a new process, the next generation)", before["victim"], after["victim"])
	}
	if after["reused"][1] != before["reused"][1]+1 {
		t.Errorf("reused, whose record names another process: %v before, %v after (want it relaunched)", before["reused"], after["reused"])
	}
	if !testbin.Alive(other.Process.Pid) {
		t.Error("the process that took the recorded pid was killed")
	}
	if !testbin.WaitGone(reusedPID, 5*time.Second) {
		t.Errorf("reused's original process %d, not adopted, was left running", reusedPID)
	}
	// The chatter went on (the adopted process answers with a count past
	// what it had written when plugind died) and no line was lost: the
	// crashed daemon's reaper logged the lines written while no daemon
	// ran, the new daemon the rest.
	got, _, err := r.c.Invoke(ctxT(t), "chatter", "count", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := strconv.Atoi(string(got)); n <= downAt+3000 {
		t.Errorf("chatter's count is %s, it was past %d while plugind was down", got, downAt+3000)
	}
	last := maxLine(chatterLines(old.Stderr.String()))
	if !r.d.Stderr.WaitFor("chatter "+strconv.Itoa(last+100), 1, 10*time.Second) {
		t.Fatalf("the new daemon does not log the chatter's lines past %d:\n%s", last, tail(r.d.Stderr.String()))
	}
	seen := map[int]bool{}
	for _, n := range chatterLines(old.Stderr.String() + r.d.Stderr.String()) {
		seen[n] = true
	}
	top := last + 100
	missing := 0
	for n := 1; n <= top; n++ {
		if !seen[n] {
			missing++
		}
	}
	// A line split across a handoff (half read by one reader, half by the
	// next) is logged in two pieces: at most two such lines.
	if missing > 2 {
		t.Errorf("%d of the chatter's first %d lines are missing from the logs", missing, top)
	}
	// Adopted plugins serve, and crash detection works on them (they are
	// not this plugind's children).
	if _, _, err := r.c.Invoke(ctxT(t), "echo", "echo", []byte("x")); err != nil {
		t.Error(err)
	}
	echoPID := int(after["echo"][0])
	_ = syscall.Kill(echoPID, syscall.SIGKILL)
	if _, err := r.c.WaitServing(ctxT(t), "echo", after["echo"][1]+1); err != nil {
		t.Errorf("an adopted plugin's crash was not noticed and restarted: %v\n%s", err, tail(r.d.Stderr.String()))
	}
	r.d.Stop(t)
	assertNothingLeft(t, r)
}

// TestCrashWithoutLiveRestore: without --live-restore a SIGKILLed plugind's
// plugins die with it, and the next one relaunches them (as before).
func TestCrashWithoutLiveRestore(t *testing.T) {
	state := t.TempDir()
	r := startRig(t, state, "--load", "echo")
	before := r.processes()
	r.kill9()
	pid := int(before["echo"][0])
	if !testbin.WaitGone(pid, 10*time.Second) {
		t.Errorf("plugin %d outlived a SIGKILLed plugind without --live-restore", pid)
	}
	r.start(state)
	after := r.processes()
	if after["echo"][1] != before["echo"][1]+1 || after["echo"][0] == before["echo"][0] {
		t.Errorf("echo: %v before, %v after (want relaunched as the next generation)", before["echo"], after["echo"])
	}
	r.d.Stop(t)
	assertNothingLeft(t, r)
}

// assertNothingLeft checks that a stopped plugind left no plugin process,
// no cgroup, and no socket or live-restore record.
func assertNothingLeft(t *testing.T, r *rig) {
	t.Helper()
	if left := testbin.ProcessesIn(filepath.Join(bins, "plugins")); len(left) > 0 {
		t.Errorf("plugin processes left running: %v", left)
	}
	if left := testbin.ProcessesIn(r.bin); len(left) > 0 {
		t.Errorf("plugind processes left running: %v", left)
	}
	var socks []string
	_ = filepath.WalkDir(r.d.StateDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && (d.Type()&os.ModeSocket != 0 || strings.HasSuffix(p, ".pb")) {
			socks = append(socks, p)
		}
		return nil
	})
	if len(socks) > 0 {
		t.Errorf("left in the state directory: %v", socks)
	}
	if cg := testbin.PluginCgroups(r.d.StateDir); len(cg) > 0 {
		t.Errorf("cgroups left: %v", cg)
	}
}

var chatterRE = regexp.MustCompile(`chatter (\d+)`)

// chatterLines are the numbers of the chatter's lines in a log.
func chatterLines(log string) []int {
	var out []int
	for _, m := range chatterRE.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

func maxLine(ns []int) int {
	if len(ns) == 0 {
		return 0
	}
	return slices.Max(ns)
}

func tail(s string) string {
	if len(s) > 4000 {
		return "…" + s[len(s)-4000:]
	}
	return s
}

func mapsEqual(a, b map[string][2]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// rewriteRecordPID points plugin name's live-restore record at pid,
// keeping the start time recorded: the pid was reused by another process.
func rewriteRecordPID(t *testing.T, state, name string, pid int) {
	t.Helper()
	path := filepath.Join(state, "run", name+".pb")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rec handoverv1.PluginRuntime
	if err := proto.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.GetActive().GetPid() == 0 {
		t.Fatalf("record %s names no process", path)
	}
	rec.Active.Pid = int32(pid)
	out, err := proto.Marshal(&rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(out, b) {
		t.Fatal("the record did not change")
	}
}
