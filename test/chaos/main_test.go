// Package chaos is the chaos and bad-input suite (issue 4, "Security and
// fault tolerance"): signals to plugins and to the daemon, misbehaving
// candidates, concurrent mutations, malformed requests and tampered
// binaries. Every case runs real plugin processes and asserts that nothing
// was lost (the active generation still serves) and nothing leaked
// (processes, socket directories, goroutines).
//
// The tests run one after another (no t.Parallel): several compare the set
// of running plugin processes with what the manager lists.
package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/server"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

var (
	// binDir holds plugind and pluginctl; pluginDir (binDir/plugins) the
	// example plugins.
	binDir    string
	pluginDir string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pc-chaos-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := testbin.DaemonBinaries(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	binDir, pluginDir = dir, filepath.Join(dir, "plugins")
	code := m.Run()
	// Plugins, their children (forker re-executes itself) and plugind all
	// run from dir: none may be left.
	if left := waitNoProcesses(dir, 5*time.Second); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: processes left running: %v\n", left)
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		code = 1
	}
	os.RemoveAll(dir)
	if err := goleak.Find(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: goroutines leaked: %v\n", err)
		code = 1
	}
	os.Exit(code)
}

// waitNoProcesses waits up to d for every process running from dir to go
// and returns those left.
func waitNoProcesses(dir string, d time.Duration) []int {
	deadline := time.Now().Add(d)
	for {
		left := testbin.ProcessesIn(dir)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(10 * time.Millisecond) // polls /proc: a process's exit has no event for one not our child
	}
}

// quiet is a logger that drops everything.
func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newManager returns a manager over cfg (PluginDir defaults to the built
// plugins, SocketDir to a fresh short directory, Logger to a quiet one),
// closed at cleanup; Close must leave no socket directory behind. It returns
// the socket directory.
func newManager(t *testing.T, cfg manager.Config) (*manager.Manager, string) {
	t.Helper()
	if cfg.PluginDir == "" {
		cfg.PluginDir = pluginDir
	}
	if cfg.SocketDir == "" {
		d, err := os.MkdirTemp("", "pcc-")
		if err != nil {
			t.Fatal(err)
		}
		cfg.SocketDir = d
	}
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	m, err := manager.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sock := cfg.SocketDir
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		start := time.Now()
		if err := m.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("Close took %v", d)
		}
		if left := sockDirs(sock); len(left) > 0 {
			t.Errorf("socket directories left after Close: %v", left)
		}
		os.RemoveAll(sock)
	})
	return m, sock
}

// sockDirs lists the per-generation socket directories under sock.
func sockDirs(sock string) []string {
	ents, _ := os.ReadDir(sock)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func load(t *testing.T, m *manager.Manager, spec manager.Spec) manager.Status {
	t.Helper()
	res, err := m.Load(context.Background(), spec)
	if err != nil {
		t.Fatalf("Load %s (%s): %v", spec.Name, spec.Binary, err)
	}
	if res.Status.State != manager.StateServing || res.Status.PID == 0 {
		t.Fatalf("Load %s: status %+v", spec.Name, res.Status)
	}
	return res.Status
}

// serves asserts that name's active generation is gen with pid pid (0: any),
// is SERVING, runs, and answers an echo call from that generation.
func serves(t *testing.T, m *manager.Manager, name string, gen uint64, pid int) manager.Status {
	t.Helper()
	st, err := m.Get(name)
	if err != nil {
		t.Fatalf("Get %s: %v", name, err)
	}
	if st.Generation != gen || (pid != 0 && st.PID != pid) || st.State != manager.StateServing {
		t.Fatalf("%s: generation %d pid %d state %s, want generation %d pid %d SERVING (last error %q)",
			name, st.Generation, st.PID, st.State, gen, pid, st.LastError)
	}
	if !testbin.Alive(st.PID) {
		t.Fatalf("%s: pid %d of the active generation is not running", name, st.PID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := m.Invoke(ctx, name, "echo", []byte("still here"))
	if err != nil || string(res.Payload) != "still here" || res.Generation != gen {
		t.Fatalf("%s: active generation does not serve: %v %+v", name, err, res)
	}
	return st
}

// waitFor polls cond every 5ms for up to d: for what has no event to wait
// on (a log line in a handler, a count of watches). A plugin's health has
// one: use waitHealth.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond) // polls: cond has no event (see above)
	}
}

// waitHealth follows name's health (Manager.WaitHealth) until ok accepts a
// record, for up to d, and returns it.
func waitHealth(t *testing.T, m *manager.Manager, name string, d time.Duration, what string, ok func(manager.Health) bool) manager.Health {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	h, err := m.WaitHealth(ctx, name, ok)
	if err != nil {
		t.Fatalf("%s: %s: not within %v (%v); last seen %+v", name, what, d, err, h)
	}
	return h
}

// serving reports whether h is generation gen, serving.
func serving(gen uint64) func(manager.Health) bool {
	return func(h manager.Health) bool { return h.Generation == gen && h.State == manager.StateServing }
}

// gone asserts pid is not running (waiting up to 5s for it to go).
func gone(t *testing.T, what string, pid int) {
	t.Helper()
	if pid <= 0 {
		t.Fatalf("%s: no pid", what)
	}
	if !testbin.WaitGone(pid, 5*time.Second) {
		t.Fatalf("%s: pid %d still running", what, pid)
	}
}

// onlyProcesses asserts that the processes running from dir are exactly
// want (after giving stopped ones up to 5s to go).
func onlyProcesses(t *testing.T, dir string, want []int) {
	t.Helper()
	want = slices.Clone(want)
	slices.Sort(want)
	var got []int
	deadline := time.Now().Add(5 * time.Second)
	for {
		got = testbin.ProcessesIn(dir)
		slices.Sort(got)
		if slices.Equal(got, want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // polls /proc: a process's exit has no event for one not our child
	}
	if !slices.Equal(got, want) {
		t.Fatalf("processes running from %s: %v, want exactly %v", dir, got, want)
	}
}

// loadStats is what invokeLoad's callers saw.
type loadStats struct {
	calls, failures int64
	errs            []error // the first 64 failures
	gens            map[uint64]int64
	maxLatency      time.Duration // of successful calls
}

// loadRun is invokeLoad's running load.
type loadRun struct {
	stop func() loadStats
	// until waits (at most 10s) until the calls made so far satisfy ok,
	// and reports whether they did.
	until func(ok func(loadStats) bool) bool
}

// invokeLoad runs callers goroutines that call method with payload on
// plugin in a loop, each call with its own timeout perCall, until stop is
// called; stop returns what they saw. It returns once callers calls have
// ended (whatever their outcome): the load runs.
func invokeLoad(t *testing.T, m *manager.Manager, plugin, method, payload string, callers int, perCall time.Duration) *loadRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	progress := make(chan struct{}, 1) // a call ended
	var (
		wg              sync.WaitGroup
		calls, failures atomic.Int64
		mu              sync.Mutex
		errs            []error
		gens            = map[uint64]int64{}
		maxLatency      time.Duration
	)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				cctx, ccancel := context.WithTimeout(context.Background(), perCall)
				start := time.Now()
				res, err := m.Invoke(cctx, plugin, method, []byte(payload))
				took := time.Since(start)
				ccancel()
				calls.Add(1)
				mu.Lock()
				if err != nil {
					failures.Add(1)
					if len(errs) < 64 {
						errs = append(errs, err)
					}
				} else {
					gens[res.Generation]++
					maxLatency = max(maxLatency, took)
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(time.Millisecond) // paces the load: no spinning on an unavailable plugin
				}
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		}()
	}
	stats := func() loadStats {
		mu.Lock()
		defer mu.Unlock()
		return loadStats{calls: calls.Load(), failures: failures.Load(), errs: slices.Clone(errs), gens: maps.Clone(gens), maxLatency: maxLatency}
	}
	l := &loadRun{
		stop: func() loadStats {
			cancel()
			wg.Wait()
			return stats()
		},
		until: func(ok func(loadStats) bool) bool {
			deadline := time.NewTimer(10 * time.Second)
			defer deadline.Stop()
			for !ok(stats()) {
				select {
				case <-progress:
				case <-deadline.C:
					return false
				}
			}
			return true
		},
	}
	if !l.until(func(s loadStats) bool { return s.calls >= int64(callers) }) {
		l.stop()
		t.Fatalf("invokeLoad: %d callers of %s made no calls within 10s", callers, plugin)
	}
	return l
}

// fixture is a manager behind a real gRPC server on a unix socket.
type fixture struct {
	m    *manager.Manager
	sock string // the manager's socket directory
	conn *grpc.ClientConn
	ctl  pb.PluginControlServiceClient
	gw   pb.PluginGatewayServiceClient
}

// startServer runs a manager (see newManager) and a server over it on a
// unix socket; the server shuts down and the manager closes at cleanup.
func startServer(t *testing.T, cfg manager.Config, opts ...server.Option) *fixture {
	t.Helper()
	m, sock := newManager(t, cfg)
	dir, err := os.MkdirTemp("", "pcs-")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "d.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(m, append([]server.Option{server.WithLogger(quiet())}, opts...)...)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	// Registered after newManager's cleanup, so it runs first: the server
	// stops before the manager closes.
	t.Cleanup(func() {
		conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		os.RemoveAll(dir)
	})
	return &fixture{m: m, sock: sock, conn: conn, ctl: pb.NewPluginControlServiceClient(conn), gw: pb.NewPluginGatewayServiceClient(conn)}
}

// serves is the gRPC form of serves: the plugin answers an Invoke through
// the gateway from generation gen, and ListPlugins shows pid.
func (f *fixture) serves(t *testing.T, name string, gen uint64, pid int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: name, Method: "echo", Payload: []byte("ping")})
	if err != nil || string(res.GetPayload()) != "ping" || res.GetGeneration() != gen {
		t.Fatalf("%s does not serve from generation %d: %v %v", name, gen, err, res)
	}
	list, err := f.ctl.ListPlugins(ctx, &pb.ListPluginsRequest{})
	if err != nil {
		t.Fatalf("ListPlugins: %v", err)
	}
	for _, p := range list.GetPlugins() {
		if p.GetName() == name {
			if p.GetPid() != int64(pid) || p.GetGeneration() != gen || p.GetState() != pb.PluginState_PLUGIN_STATE_SERVING {
				t.Fatalf("%s: %v, want generation %d pid %d SERVING", name, p, gen, pid)
			}
			if !testbin.Alive(pid) {
				t.Fatalf("%s: pid %d not running", name, pid)
			}
			return
		}
	}
	t.Fatalf("%s not listed: %v", name, list)
}

// killOurs SIGKILLs pid if it still runs one of the built binaries (and not
// some process that reused the pid).
func killOurs(pid int) {
	if slices.Contains(testbin.ProcessesIn(binDir), pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// isErr reports whether err matches any of targets (errors.Is).
func isErr(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
