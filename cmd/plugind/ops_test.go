package main_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func (d *daemon) dial(t *testing.T) (pb.PluginControlServiceClient, pb.PluginGatewayServiceClient) {
	t.Helper()
	conn, err := grpc.NewClient(d.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewPluginControlServiceClient(conn), pb.NewPluginGatewayServiceClient(conn)
}

func statuses(t *testing.T, ctl pb.PluginControlServiceClient) map[string]*pb.PluginStatus {
	t.Helper()
	l, err := ctl.ListPlugins(context.Background(), &pb.ListPluginsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*pb.PluginStatus{}
	for _, p := range l.GetPlugins() {
		out[p.GetName()] = p
	}
	return out
}

// waitPlugins lists the plugins after every health event (WatchHealth)
// until ok accepts the list, for up to d.
func waitPlugins(t *testing.T, ctl pb.PluginControlServiceClient, d time.Duration, ok func(map[string]*pb.PluginStatus) bool) map[string]*pb.PluginStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	w, err := ctl.WatchHealth(ctx, &pb.WatchHealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		s := statuses(t, ctl)
		if ok(s) {
			return s
		}
		if _, err := w.Recv(); err != nil {
			t.Fatalf("plugins never reached the expected state (%v): %v", err, s)
		}
	}
}

// waitSynced starts a WatchHealth with req and reads it up to its SYNCED
// event, which it returns; an error fails the test. The watch stays open
// until ctx ends.
func waitSynced(t *testing.T, ctx context.Context, ctl pb.PluginControlServiceClient, req *pb.WatchHealthRequest) *pb.HealthEvent {
	t.Helper()
	st, err := ctl.WatchHealth(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ev.GetEvent().GetType() == pb.HealthEventType_HEALTH_EVENT_TYPE_SYNCED {
			return ev.GetEvent()
		}
	}
}

func TestRestartRestoresDesiredState(t *testing.T) {
	d := startDaemon(t) // in a fresh state directory, which the restart reuses
	ctl, _ := d.dial(t)
	ctx := context.Background()
	if _, err := ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "second", Binary: "echo", Config: []byte("c")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "crasher", Binary: "crasher", Config: []byte("crash_after=30ms"),
		HealthPolicy: &pb.HealthPolicy{RestartLimit: 1, BackoffInitial: durationpb.New(10 * time.Millisecond)}}}); err != nil {
		t.Fatal(err)
	}
	waitPlugins(t, ctl, 10*time.Second, func(s map[string]*pb.PluginStatus) bool {
		return s["crasher"].GetState() == pb.PluginState_PLUGIN_STATE_UNHEALTHY
	})
	h, _ := ctl.Health(ctx, &pb.HealthRequest{})
	revBefore := h.GetRevision()
	before := statuses(t, ctl)
	d.Stop(t)

	start := time.Now()
	d2 := startDaemonIn(t, d.StateDir)
	ctl2, _ := d2.dial(t)
	after := waitPlugins(t, ctl2, 10*time.Second, func(s map[string]*pb.PluginStatus) bool {
		return s["echo"].GetState() == pb.PluginState_PLUGIN_STATE_SERVING && s["second"].GetState() == pb.PluginState_PLUGIN_STATE_SERVING
	})
	t.Logf("restart with 3 plugins to restore: serving again after %v", time.Since(start))
	for _, n := range []string{"echo", "second"} {
		if after[n].GetGeneration() != before[n].GetGeneration()+1 {
			t.Errorf("%s: generation %d after restart, want %d (upward from %d)", n, after[n].GetGeneration(), before[n].GetGeneration()+1, before[n].GetGeneration())
		}
		if after[n].GetPid() == before[n].GetPid() {
			t.Errorf("%s: same pid across daemon restart", n)
		}
	}
	if string(after["second"].GetSpec().GetConfig()) != "c" {
		t.Errorf("spec not restored: %v", after["second"].GetSpec())
	}
	c := after["crasher"]
	if c.GetState() != pb.PluginState_PLUGIN_STATE_UNHEALTHY || !strings.Contains(c.GetLastError(), "restart limit") || c.GetPid() != 0 {
		t.Errorf("crasher after restart: %v", c)
	}
	h2, _ := ctl2.Health(ctx, &pb.HealthRequest{})
	if h2.GetRevision() <= revBefore {
		t.Errorf("revision went from %d to %d across the restart", revBefore, h2.GetRevision())
	}
	// A watcher resuming from before the restart gets a reset, not a replay
	// of unrelated revisions.
	if synced := waitSynced(t, ctx, ctl2, &pb.WatchHealthRequest{SinceRevision: revBefore}); !synced.GetReset_() {
		t.Errorf("resume across a restart: SYNCED without reset")
	}
	audit, err := ctl2.ListAudit(ctx, &pb.ListAuditRequest{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	actions := map[string]int{}
	for _, r := range audit.GetRecords() {
		actions[r.GetAction()]++
	}
	if actions["load"] < 3 || actions["reload"] != 1 || actions["restore"] != 2 || actions["restart"] < 1 {
		t.Errorf("audit actions: %v", actions)
	}
	// An operator reload brings the held plugin back.
	if _, err := ctl2.Reload(ctx, &pb.ReloadRequest{Name: "crasher", Spec: &pb.PluginSpec{Name: "crasher", Binary: "crasher", Config: []byte("crash_after=1h")}}); err != nil {
		t.Fatalf("operator reload of the held plugin: %v", err)
	}
}

// TestKill9DuringMutationBurst kills the daemon with SIGKILL while clients
// load, reload and unload plugins, restarts it, and checks that every
// acknowledged mutation is there.
func TestKill9DuringMutationBurst(t *testing.T) {
	d := startDaemon(t) // in a fresh state directory, which the restart reuses
	ctl, _ := d.dial(t)

	type ack struct {
		loaded bool
		gen    uint64
	}
	var mu sync.Mutex
	acked := map[string]ack{}      // guarded by mu
	uncertain := map[string]bool{} // guarded by mu: last call on the name was cut off
	acks := 0
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil && i < 200; i++ {
				name := fmt.Sprintf("b%d-%d", w, i%4)
				var gen uint64
				var loaded bool
				var err error
				switch i % 3 {
				case 0:
					var r *pb.LoadResponse
					if r, err = ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: name, Binary: "echo"}}); err == nil {
						gen, loaded = r.GetPlugin().GetGeneration(), true
					}
				case 1:
					var r *pb.ReloadResponse
					if r, err = ctl.Reload(ctx, &pb.ReloadRequest{Name: name}); err == nil {
						gen, loaded = r.GetPlugin().GetGeneration(), true
					}
				case 2:
					if i%6 == 5 {
						if _, err = ctl.Unload(ctx, &pb.UnloadRequest{Name: name}); err == nil {
							loaded = false
						}
					} else {
						continue
					}
				}
				if err != nil {
					switch status.Code(err) {
					case codes.AlreadyExists, codes.NotFound, codes.FailedPrecondition, codes.InvalidArgument:
						// Refused: nothing changed.
					default:
						// Cut off by the kill: it may or may not have
						// taken effect, so this name proves nothing.
						mu.Lock()
						uncertain[name] = true
						mu.Unlock()
					}
					continue
				}
				mu.Lock()
				acked[name] = ack{loaded: loaded, gen: gen}
				uncertain[name] = false
				acks++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond) // time is what is tested: the kill lands in the middle of the burst
	_ = d.Cmd.Process.Kill()
	<-d.Exited()
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if acks < 5 {
		t.Fatalf("only %d acknowledged mutations before the kill; the test proves nothing", acks)
	}
	// Every plugin process of the killed daemon died with it.
	deadline := time.Now().Add(5 * time.Second)
	for len(testbin.ProcessesIn(bins+"/plugins")) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // polls /proc: the processes are not our children
	}
	if left := testbin.ProcessesIn(bins + "/plugins"); len(left) > 0 {
		t.Fatalf("plugins outlived the SIGKILLed daemon: %v", left)
	}

	d2 := startDaemonIn(t, d.StateDir)
	ctl2, _ := d2.dial(t)
	got := statuses(t, ctl2)
	for name, a := range acked {
		if uncertain[name] {
			continue
		}
		p, present := got[name]
		switch {
		case a.loaded && !present:
			t.Errorf("acknowledged %s (generation %d) lost", name, a.gen)
		case a.loaded && p.GetGeneration() < a.gen:
			t.Errorf("%s: generation %d after restart, acknowledged %d", name, p.GetGeneration(), a.gen)
		case !a.loaded && present:
			t.Errorf("acknowledged unload of %s undone", name)
		}
	}
	t.Logf("%d acknowledged mutations over %d plugins; all present after kill -9 and restart", acks, len(acked))
}

func TestMetricsMoveAfterReloadPanicAndCrash(t *testing.T) {
	d := startDaemon(t, "--metrics-listen", "127.0.0.1:0")
	re := regexp.MustCompile(`listen=http://(127\.0\.0\.1:\d+)/metrics`)
	var addr string
	for deadline := time.Now().Add(5 * time.Second); addr == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) { // polls the log for the line plugind writes when it listens
		if m := re.FindStringSubmatch(d.Stderr.String()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		t.Fatalf("no metrics address in the log:\n%s", d.Stderr)
	}
	ctl, gw := d.dial(t)
	ctx := context.Background()
	if _, err := ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo"}); err != nil {
		t.Fatal(err)
	}
	_, _ = ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo", Spec: &pb.PluginSpec{Name: "echo", Binary: "notready"}})
	if _, err := gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "panic", Payload: []byte("x")}); status.Code(err) != codes.Internal {
		t.Fatalf("panic: %v", err)
	}
	pid := int(statuses(t, ctl)["echo"].GetPid())
	_ = syscall.Kill(pid, syscall.SIGKILL)
	waitPlugins(t, ctl, 10*time.Second, func(s map[string]*pb.PluginStatus) bool {
		return s["echo"].GetRestarts() == 1 && s["echo"].GetState() == pb.PluginState_PLUGIN_STATE_SERVING
	})
	if _, err := gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "echo", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	st := statuses(t, ctl)["echo"]
	text := scrape(t, addr, "")
	for _, want := range []string{
		`plugincontrol_candidates_total{action="reload",plugin="echo",result="ok",stage="none"} 1`,
		`plugincontrol_candidates_total{action="reload",plugin="echo",result="failed",stage="ready"} 1`,
		`plugincontrol_candidates_total{action="restart",plugin="echo",result="ok",stage="none"} 1`,
		`plugincontrol_plugin_panics_total{plugin="echo"} 1`,
		`plugincontrol_plugin_crashes_total{plugin="echo"} 1`,
		`plugincontrol_plugin_restarts_total{plugin="echo"} 1`,
		`plugincontrol_plugin_failures_total{class="crash",plugin="echo"} 1`,
		`plugincontrol_plugin_failures_total{class="panic",plugin="echo"} 1`,
		`plugincontrol_plugin_baking{plugin="echo"} 0`,
		`plugincontrol_plugin_state{plugin="echo",state="SERVING"} 1`,
		`plugincontrol_candidate_duration_seconds_count{action="reload",result="ok"} 1`,
		`grpc_server_handled_total{grpc_code="Internal",grpc_method="Invoke"`,
		`plugincontrol_health_watchers 0`, // the grpc.health.v1 mirror is not counted
		`plugincontrol_plugin_calls_total{code="Internal",method="panic",plugin="echo"} 1`,
		`plugincontrol_plugin_calls_total{code="OK",method="echo",plugin="echo"} 1`,
		`plugincontrol_plugin_call_duration_seconds_count{method="echo",plugin="echo"} 1`,
		`plugincontrol_plugin_last_reload_success{plugin="echo"} 0`,
		`plugincontrol_plugin_last_reload_timestamp_seconds{plugin="echo"} `,
		fmt.Sprintf(`plugincontrol_plugin_info{binary="echo",plugin="echo",sha256="%s",version="1.0.0"} 1`, st.GetSha256()),
		`plugincontrol_build_info{date="",goversion="go`, // a checkout's build: no stamped date
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// WatchHealth is left out of the RPC metrics: no series stuck at 0.
	if strings.Contains(text, `grpc_method="WatchHealth"`) {
		t.Errorf("the RPC metrics have WatchHealth series")
	}
	if t.Failed() {
		for _, l := range strings.Split(text, "\n") {
			if strings.HasPrefix(l, "plugincontrol_") {
				t.Log(l)
			}
		}
	}
	// promtool's own lint of the exposition.
	promtool := testbin.Promtool(t)
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	// OpenMetrics when the scraper asks for it.
	om := scrape(t, addr, "application/openmetrics-text; version=1.0.0")
	if !strings.HasSuffix(om, "# EOF\n") || !strings.Contains(om, "plugincontrol_plugin_calls_total{") {
		t.Errorf("no OpenMetrics exposition for an OpenMetrics Accept header")
	}
	// An unloaded plugin's series go with it.
	if _, err := ctl.Unload(ctx, &pb.UnloadRequest{Name: "echo"}); err != nil {
		t.Fatal(err)
	}
	if text := scrape(t, addr, ""); strings.Contains(text, `plugin="echo"`) {
		t.Errorf("series of the unloaded echo are still exposed")
	}
	// The HTTP probes.
	for _, p := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + addr + p)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %v %v", p, resp, err)
		}
		if resp != nil {
			resp.Body.Close()
		}
	}
}

// scrape GETs /metrics, with an Accept header when accept is set.
func scrape(t *testing.T, addr, accept string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/metrics", nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// TestStartupAndMemoryWith20Plugins measures the figures the operations
// notes report: start-up time with 20 plugins to restore, and the daemon's
// RSS with 20 plugins and 100 watchers.
func TestStartupAndMemoryWith20Plugins(t *testing.T) {
	d := startDaemon(t) // in a fresh state directory, which the restart reuses
	ctl, _ := d.dial(t)
	for i := range 19 {
		if _, err := ctl.Load(context.Background(), &pb.LoadRequest{Spec: &pb.PluginSpec{Name: fmt.Sprintf("p%02d", i), Binary: "echo"}}); err != nil {
			t.Fatal(err)
		}
	}
	d.Stop(t)
	start := time.Now()
	d2 := startDaemonIn(t, d.StateDir)
	ctl2, _ := d2.dial(t)
	waitPlugins(t, ctl2, 20*time.Second, func(s map[string]*pb.PluginStatus) bool {
		n := 0
		for _, p := range s {
			if p.GetState() == pb.PluginState_PLUGIN_STATE_SERVING {
				n++
			}
		}
		return n == 20
	})
	t.Logf("start-up with 20 plugins to restore: all SERVING %v after exec", time.Since(start))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range 100 {
		waitSynced(t, ctx, ctl2, &pb.WatchHealthRequest{})
	}
	t.Logf("plugind RSS with 20 plugins and 100 watchers: %d KiB", rssKiB(t, d2.Cmd.Process.Pid))
}

func rssKiB(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			n, _ := strconv.Atoi(strings.Fields(l)[1])
			return n
		}
	}
	return 0
}
