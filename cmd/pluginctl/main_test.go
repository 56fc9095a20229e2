package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if pluginDir != "" {
		if left := testbin.ProcessesIn(pluginDir); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "FAIL: plugin processes left running: %v\n", left)
			code = 1
		}
		os.RemoveAll(pluginDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: goroutines leaked: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// The example plugins, built once by the first test that needs them.
var (
	buildOnce  sync.Once
	pluginDir  string
	buildError error
)

func examplePlugins(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pctl-plugins-")
		if err != nil {
			buildError = err
			return
		}
		pluginDir = dir
		buildError = testbin.Plugins(dir)
	})
	if buildError != nil {
		t.Fatal(buildError)
	}
	return pluginDir
}

// markerWriter is a concurrency-safe buffer that closes seen once marker
// has been written.
type markerWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker string
	seen   chan struct{} // closed once marker was written
	closed bool
}

func (w *markerWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	if !w.closed && strings.Contains(w.buf.String(), w.marker) {
		close(w.seen)
		w.closed = true
	}
	return n, err
}

func (w *markerWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// result is the outcome of one pluginctl command line.
type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs pluginctl with args and stdin.
func runCLI(ctx context.Context, stdin string, args ...string) result {
	var out, errb bytes.Buffer
	c := &cli{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errb}
	code := c.run(ctx, args)
	return result{code, out.String(), errb.String()}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		r := runCLI(context.Background(), "", args...)
		if r.code != 0 || r.stderr != "" {
			t.Errorf("%q: exit %d, stderr %q", args, r.code, r.stderr)
		}
		for _, want := range []string{
			"load", "reload", "unload", "list", "invoke", "health", "watch", "audit", "get", "apply", "diff", "version", "completion",
			"--addr", "--token-file", "-o, --output", "--timeout", "--color", "--version",
			"$PLUGIND_ADDR", ".plugind/plugind.sock", "number of seconds",
			"Exit codes", "2  usage error", "3  cannot connect", "4  no such plugin", "5  the candidate failed", "6  generation mismatch",
			"7  not healthy", "8  reverted", "9  audit --verify", "10  diff --exit-code",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("%q: usage lacks %q", args, want)
			}
		}
	}
	for _, args := range [][]string{{"help", "reload"}, {"reload", "-h"}, {"reload", "echo", "--help"}} {
		r := runCLI(context.Background(), "", args...)
		if r.code != 0 || !strings.HasPrefix(r.stdout, "Start a new generation of NAME") || !strings.Contains(r.stdout, "pluginctl reload NAME [flags]") {
			t.Errorf("%q: exit %d, stdout %q", args, r.code, r.stdout)
		}
		for _, want := range []string{"--binary", "--sha256", "--arg", "--env", "--config", "--config-file", "--start-timeout", "--handshake",
			"--validate-only", "--expected-generation", "--drain-timeout", "--bake", "--wait", "--wait-healthy", "--wait-timeout", "--settle", "Exit codes"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("%q: reload's help lacks %q", args, want)
			}
		}
	}
	if r := runCLI(context.Background(), "", "help", "--help"); r.code != 0 || !strings.Contains(r.stdout, "pluginctl help [COMMAND]") {
		t.Errorf("help --help: %+v", r)
	}
	if r := runCLI(context.Background(), "", "--version"); r.code != 0 || !strings.HasPrefix(r.stdout, "pluginctl ") {
		t.Errorf("--version: %+v", r)
	}
}

// TestCommandLine: flags anywhere, suggestions for typos, durations with
// or without a unit.
func TestCommandLine(t *testing.T) {
	f := &fakeDaemon{plugins: []*plugincontrolv1.PluginStatus{{Name: "echo", Spec: &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo"}}}}
	addr := f.start(t)
	// Global flags after the command and its arguments.
	r := runCLI(context.Background(), "", "list", "-o", "json", "--addr", addr, "--timeout", "5")
	if r.code != 0 || !regexp.MustCompile(`"name":\s+"echo"`).MatchString(r.stdout) {
		t.Errorf("flags after the command: %+v", r)
	}
	r = runCLI(context.Background(), "", "get", "echo", "--addr="+addr, "-o", "yaml")
	if r.code != 0 || r.stdout != "binary: echo\nname: echo\n" {
		t.Errorf("get echo -o yaml: %+v", r)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"load", "echo", "--binray", "x"}, "unknown flag: --binray (did you mean --binary?)"},
		{[]string{"lsit"}, "Did you mean this?\n\tlist"},
		{[]string{"list", "--timeout", "5x"}, "want a duration such as 30s, 1m30s or 500ms, or a number of seconds"},
		{[]string{"list", "-o", "xml"}, "want table, json, yaml, raw"},
		{[]string{"list", "-o", "raw"}, "-o raw is for invoke only"},
	} {
		r := runCLI(context.Background(), "", append(tt.args, "--addr", addr)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("%q: exit %d, stderr %q; want %q", tt.args, r.code, r.stderr, tt.want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"help", "frobnicate"},
		{"-o", "xml", "list"},
		{"--color", "sometimes", "list"},
		{"--timeout", "-1s", "list"},
		{"--bogus", "list"},
		{"list", "extra"},
		{"load"},
		{"load", "a", "b"},
		{"load", "echo", "--config", "x", "--config-file", "y"},
		{"reload"},
		{"reload", "echo", "--expected-generation", "minus-one"},
		{"reload", "echo", "--drain-timeout", "-1s"},
		{"unload"},
		{"invoke", "echo"},
		{"invoke", "echo", "echo", "p", "extra"},
		{"invoke", "echo", "echo", "p", "--payload-file", "f"},
		{"watch", "--since", "x"},
		{"audit", "a", "b"},
		{"audit", "--limit", "20000"},
		{"audit", "--before", "-1"},
		{"completion", "tcsh"},
		{"completion", "bash", "zsh"},
		{"help", "__complete"},
		{"apply"},
		{"apply", "-f", "/nonexistent/plugins.yaml", "extra"},
		{"diff", "x"},
		{"version", "x"},
		{"reload", "echo", "--settle", "1s"},
		{"reload", "echo", "--wait-timeout", "1s"},
		{"reload", "echo", "--wait-healthy", "--validate-only"},
		{"reload", "echo", "--wait-healthy", "--settle", "30s"},
		{"reload", "echo", "--wait-healthy", "--wait-timeout", "0s"},
		{"load", "echo", "--wait-healthy", "--settle", "-1s"},
		{"--addr", "bogus", "list"},
		{"--addr", "tcp://nohost", "list"},
	} {
		r := runCLI(context.Background(), "", args...)
		if r.code != exitUsage {
			t.Errorf("%q: exit %d, want %d (stderr %q)", args, r.code, exitUsage, r.stderr)
		}
		if !strings.HasPrefix(r.stderr, "pluginctl: ") || r.stdout != "" {
			t.Errorf("%q: stdout %q, stderr %q", args, r.stdout, r.stderr)
		}
	}
}

func TestCannotConnect(t *testing.T) {
	dir := shortTempDir(t)
	addr := "unix://" + filepath.Join(dir, "missing.sock")
	for _, args := range [][]string{{"list"}, {"health"}, {"watch"}, {"invoke", "echo", "echo", "x"}, {"audit"}, {"get"}, {"version"}} {
		r := runCLI(context.Background(), "", append([]string{"--addr", addr}, args...)...)
		if r.code != exitUnavailable || !strings.Contains(r.stderr, "cannot connect to "+addr) {
			t.Errorf("%q: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}

// shortTempDir is a temporary directory with a short path (unix socket
// paths are limited to 107 bytes).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pctl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// fakeDaemon is a scripted plugind.
type fakeDaemon struct {
	plugincontrolv1.UnimplementedPluginControlServiceServer
	plugincontrolv1.UnimplementedPluginGatewayServiceServer

	plugins []*plugincontrolv1.PluginStatus
	// watch answers the n-th WatchHealth call (from 0).
	watch func(n int, req *plugincontrolv1.WatchHealthRequest, stream plugincontrolv1.PluginControlService_WatchHealthServer) error

	audit []*plugincontrolv1.AuditRecord

	mu      sync.Mutex
	loads   []*plugincontrolv1.LoadRequest
	audits  []*plugincontrolv1.ListAuditRequest
	reloads []*plugincontrolv1.ReloadRequest
	invokes []*plugincontrolv1.InvokeRequest
	watches []*plugincontrolv1.WatchHealthRequest
	auth    []string
}

func (f *fakeDaemon) record(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.auth = append(f.auth, strings.Join(md.Get("authorization"), ","))
	f.mu.Unlock()
}

// recordReq is record, then appends req to *reqs (one of f's fields)
// under f.mu.
func recordReq[T any](f *fakeDaemon, ctx context.Context, reqs *[]T, req T) {
	f.record(ctx)
	f.mu.Lock()
	*reqs = append(*reqs, req)
	f.mu.Unlock()
}

func (f *fakeDaemon) ListPlugins(ctx context.Context, req *plugincontrolv1.ListPluginsRequest) (*plugincontrolv1.ListPluginsResponse, error) {
	f.record(ctx)
	if len(req.GetNames()) == 0 {
		return &plugincontrolv1.ListPluginsResponse{Plugins: f.plugins}, nil
	}
	var out []*plugincontrolv1.PluginStatus
	for _, n := range req.GetNames() {
		i := slices.IndexFunc(f.plugins, func(p *plugincontrolv1.PluginStatus) bool { return p.GetName() == n })
		if i < 0 {
			return nil, status.Errorf(codes.NotFound, "plugin %q: not found", n)
		}
		out = append(out, f.plugins[i])
	}
	return &plugincontrolv1.ListPluginsResponse{Plugins: out}, nil
}

func (f *fakeDaemon) Load(ctx context.Context, req *plugincontrolv1.LoadRequest) (*plugincontrolv1.LoadResponse, error) {
	recordReq(f, ctx, &f.loads, req)
	return &plugincontrolv1.LoadResponse{Plugin: &plugincontrolv1.PluginStatus{Name: req.GetSpec().GetName(), Generation: 1, State: plugincontrolv1.PluginState_PLUGIN_STATE_SERVING}}, nil
}

func (f *fakeDaemon) ListAudit(ctx context.Context, req *plugincontrolv1.ListAuditRequest) (*plugincontrolv1.ListAuditResponse, error) {
	recordReq(f, ctx, &f.audits, req)
	return &plugincontrolv1.ListAuditResponse{Records: f.audit}, nil
}

func (f *fakeDaemon) Reload(ctx context.Context, req *plugincontrolv1.ReloadRequest) (*plugincontrolv1.ReloadResponse, error) {
	recordReq(f, ctx, &f.reloads, req)
	if req.GetExpectedGeneration() == 99 {
		return nil, status.Error(codes.Aborted, "generation 1 is active, not 99")
	}
	return &plugincontrolv1.ReloadResponse{Plugin: &plugincontrolv1.PluginStatus{Name: req.GetName(), Generation: 2}, PreviousGeneration: 1}, nil
}

func (f *fakeDaemon) Invoke(ctx context.Context, req *plugincontrolv1.InvokeRequest) (*plugincontrolv1.InvokeResponse, error) {
	recordReq(f, ctx, &f.invokes, req)
	return &plugincontrolv1.InvokeResponse{Payload: req.GetPayload(), Generation: 5}, nil
}

func (f *fakeDaemon) WatchHealth(req *plugincontrolv1.WatchHealthRequest, stream plugincontrolv1.PluginControlService_WatchHealthServer) error {
	f.mu.Lock()
	n := len(f.watches)
	f.watches = append(f.watches, req)
	f.mu.Unlock()
	return f.watch(n, req, stream)
}

// start serves f on a unix socket and returns its address.
func (f *fakeDaemon) start(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "d.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	plugincontrolv1.RegisterPluginControlServiceServer(srv, f)
	plugincontrolv1.RegisterPluginGatewayServiceServer(srv, f)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return "unix://" + sock
}

func TestReloadBuildsSpecFromCurrent(t *testing.T) {
	current := &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo", Args: []string{"-a"}, Sha256: pin, Config: []byte("c")}
	f := &fakeDaemon{plugins: []*plugincontrolv1.PluginStatus{{Name: "echo", Generation: 1, Spec: current}}}
	addr := f.start(t)
	ctx := context.Background()

	r := runCLI(ctx, "", "--addr", addr, "reload", "echo", "--binary", "echo-v2", "--sha256", "", "--drain-timeout", "2s", "--expected-generation", "1")
	if r.code != 0 {
		t.Fatalf("reload: exit %d, stderr %q", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "generation 1 -> 2") {
		t.Errorf("stdout %q", r.stdout)
	}
	// Without spec flags no spec is sent.
	if r := runCLI(ctx, "", "--addr", addr, "reload", "--validate-only", "echo"); r.code != 0 {
		t.Fatalf("reload --validate-only: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := runCLI(ctx, "", "--addr", addr, "reload", "echo", "--expected-generation", "99"); r.code != exitAborted {
		t.Errorf("reload --expected-generation 99: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := runCLI(ctx, "", "--addr", addr, "reload", "nope", "--arg", "x"); r.code != exitNotFound || !strings.Contains(r.stderr, `"nope" is not loaded`) {
		t.Errorf("reload of unknown plugin with spec flags: exit %d, stderr %q", r.code, r.stderr)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reloads) != 3 {
		t.Fatalf("%d reloads", len(f.reloads))
	}
	want := &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo-v2", Args: []string{"-a"}, Config: []byte("c")}
	got := f.reloads[0]
	if !proto.Equal(got.GetSpec(), want) || got.GetDrainTimeout().AsDuration() != 2*time.Second || got.GetExpectedGeneration() != 1 || got.GetValidateOnly() {
		t.Errorf("reload request %v", got)
	}
	if got := f.reloads[1]; got.GetSpec() != nil || !got.GetValidateOnly() || got.GetDrainTimeout() != nil {
		t.Errorf("reload request without spec flags %v", got)
	}
}

func TestInvokeAndToken(t *testing.T) {
	f := &fakeDaemon{}
	addr := f.start(t)
	dir := shortTempDir(t)
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	payloadFile := filepath.Join(dir, "payload")
	if err := os.WriteFile(payloadFile, []byte("from file"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	g := []string{"--addr", addr, "--token-file", tokenFile}

	if r := runCLI(ctx, "", append(g, "invoke", "echo", "echo", "hello")...); r.code != 0 || r.stdout != "hello" {
		t.Errorf("invoke arg: %+v", r)
	}
	if r := runCLI(ctx, "from stdin", append(g, "invoke", "echo", "echo", "-")...); r.code != 0 || r.stdout != "from stdin" {
		t.Errorf("invoke stdin: %+v", r)
	}
	if r := runCLI(ctx, "", append(g, "invoke", "--payload-file", payloadFile, "echo", "echo")...); r.code != 0 || r.stdout != "from file" {
		t.Errorf("invoke file: %+v", r)
	}
	r := runCLI(ctx, "", append(g, "-o", "json", "invoke", "echo", "echo", "hi")...)
	var resp struct {
		Payload    []byte `json:"payload"`
		Generation string `json:"generation"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &resp); err != nil || string(resp.Payload) != "hi" || resp.Generation != "5" {
		t.Errorf("invoke -o json: %+v (%v)", r, err)
	}
	f.mu.Lock()
	for i, a := range f.auth {
		if a != "Bearer s3cret" {
			t.Errorf("call %d: authorization %q", i, a)
		}
	}
	f.mu.Unlock()

	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(ctx, "", "--addr", addr, "--token-file", empty, "list"); r.code != exitError {
		t.Errorf("empty token file: %+v", r)
	}
}

// event is a health event of plugin name, generation 1 SERVING.
func event(typ plugincontrolv1.HealthEventType, rev uint64, name string) *plugincontrolv1.WatchHealthResponse {
	return hev(typ, rev, name, serving, 1, "")
}

func TestWatchReconnects(t *testing.T) {
	for _, output := range []string{"table", "json"} {
		t.Run(output, func(t *testing.T) {
			f := &fakeDaemon{}
			f.watch = func(n int, req *plugincontrolv1.WatchHealthRequest, stream plugincontrolv1.PluginControlService_WatchHealthServer) error {
				switch n {
				case 0:
					stream.Send(event(plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SNAPSHOT, 4, "echo"))
					stream.Send(event(plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED, 5, ""))
					return status.Error(codes.Unavailable, "daemon shutting down")
				case 1:
					// The daemon is still away: nothing arrives.
					return status.Error(codes.Unavailable, "daemon starting")
				case 2:
					stream.Send(event(plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_CHANGED, 6, "echo"))
					return nil // stream ended: resume as well
				default:
					stream.Send(event(plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_BOOKMARK, 7, ""))
					<-stream.Context().Done()
					return nil
				}
			}
			addr := f.start(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// The bookmark (revision 7) is the last event.
			stdout := &markerWriter{marker: "BOOKMARK", seen: make(chan struct{})}
			var stderr bytes.Buffer
			done := make(chan result, 1)
			go func() {
				c := &cli{stdin: strings.NewReader(""), stdout: stdout, stderr: &stderr}
				code := c.run(ctx, []string{"--addr", addr, "-o", output, "watch", "echo", "--since", "2"})
				done <- result{code, stdout.String(), stderr.String()}
			}()
			select {
			case <-stdout.seen:
			case <-time.After(10 * time.Second):
				t.Fatal("watch did not reconnect")
			}
			cancel() // SIGINT
			r := <-done
			if r.code != 0 {
				t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
			}
			f.mu.Lock()
			var since []uint64
			for _, w := range f.watches {
				since = append(since, w.GetSinceRevision())
				if strings.Join(w.GetNames(), ",") != "echo" {
					t.Errorf("names %q", w.GetNames())
				}
			}
			f.mu.Unlock()
			if want := []uint64{2, 5, 5, 6}; !slices.Equal(since, want) {
				t.Errorf("since_revision of the attempts = %v, want %v", since, want)
			}
			if n := strings.Count(r.stderr, "reconnecting in"); n != 3 {
				t.Errorf("stderr has %d reconnect notices:\n%s", n, r.stderr)
			}
			// Backoff: 100ms after the first stream (it delivered events),
			// then 200ms, then back to 100ms after a stream with events,
			// each ±20%, printed to the millisecond.
			delays := regexp.MustCompile(`reconnecting in (\d+)ms from revision (\d+)`).FindAllStringSubmatch(r.stderr, -1)
			want := []struct {
				lo, hi int
				rev    string
			}{{80, 120, "5"}, {160, 240, "5"}, {80, 120, "6"}}
			if len(delays) != len(want) {
				t.Fatalf("reconnect notices %v, want %d:\n%s", delays, len(want), r.stderr)
			}
			for i, w := range want {
				ms, _ := strconv.Atoi(delays[i][1])
				if ms < w.lo || ms > w.hi || delays[i][2] != w.rev {
					t.Errorf("notice %d: %sms from revision %s, want %d..%dms from revision %s", i, delays[i][1], delays[i][2], w.lo, w.hi, w.rev)
				}
			}
			lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
			if output == "table" {
				if len(lines) != 5 || lines[0] != watchHeader || !strings.HasPrefix(lines[1], "4         SNAPSHOT  echo") || !strings.HasPrefix(lines[4], "7         BOOKMARK") {
					t.Errorf("stdout:\n%s", r.stdout)
				}
				return
			}
			if len(lines) != 4 {
				t.Fatalf("stdout:\n%s", r.stdout)
			}
			for i, l := range lines {
				var m struct {
					Event struct {
						Type     string `json:"type"`
						Revision string `json:"revision"`
					} `json:"event"`
				}
				if err := json.Unmarshal([]byte(l), &m); err != nil {
					t.Errorf("line %d %q: %v", i, l, err)
				}
				if i == 1 && (m.Event.Type != "HEALTH_EVENT_TYPE_SYNCED" || m.Event.Revision != "5") {
					t.Errorf("line %d %q", i, l)
				}
			}
		})
	}
}

func TestWatchFatalError(t *testing.T) {
	f := &fakeDaemon{}
	f.watch = func(n int, _ *plugincontrolv1.WatchHealthRequest, stream plugincontrolv1.PluginControlService_WatchHealthServer) error {
		if n == 0 {
			stream.Send(event(plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED, 1, ""))
			return status.Error(codes.Unavailable, "bye")
		}
		return status.Error(codes.PermissionDenied, "token revoked")
	}
	addr := f.start(t)
	r := runCLI(context.Background(), "", "--addr", addr, "watch")
	if r.code != exitError || !strings.Contains(r.stderr, "pluginctl: token revoked") {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}
