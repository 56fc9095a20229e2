package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	"github.com/plugincontrol/plugincontrol/client"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// ansi matches SGR colour sequences.
var ansi = regexp.MustCompile("\x1b\\[[0-9;]*m")

func stripANSI(s string) string { return ansi.ReplaceAllString(s, "") }

// runCLIEnv runs pluginctl as on a terminal (or not) with the environment
// env.
func runCLIEnv(ctx context.Context, tty bool, env map[string]string, args ...string) result {
	var out, errb bytes.Buffer
	c := &cli{
		stdin: strings.NewReader(""), stdout: &out, stderr: &errb,
		getenv:     func(k string) string { return env[k] },
		isTerminal: func(io.Writer) bool { return tty },
		location:   time.UTC,
	}
	code := c.run(ctx, args)
	return result{code, out.String(), errb.String()}
}

const (
	serving   = plugincontrolv1.PluginState_PLUGIN_STATE_SERVING
	degraded  = plugincontrolv1.PluginState_PLUGIN_STATE_DEGRADED
	unhealthy = plugincontrolv1.PluginState_PLUGIN_STATE_UNHEALTHY
	starting  = plugincontrolv1.PluginState_PLUGIN_STATE_STARTING
	stopped   = plugincontrolv1.PluginState_PLUGIN_STATE_STOPPED

	evSnapshot = plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SNAPSHOT
	evSynced   = plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED
	evChanged  = plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_CHANGED
	evRemoved  = plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_REMOVED
	evBookmark = plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_BOOKMARK
)

// hev is a health event of plugin name.
func hev(typ plugincontrolv1.HealthEventType, rev uint64, name string, state plugincontrolv1.PluginState, gen uint64, reason string) *plugincontrolv1.WatchHealthResponse {
	e := &plugincontrolv1.HealthEvent{Type: typ, Revision: rev}
	if name != "" {
		e.Health = &plugincontrolv1.PluginHealth{Name: name, State: state, Generation: gen, Reason: reason, Revision: rev}
	}
	return &plugincontrolv1.WatchHealthResponse{Event: e}
}

func TestTableColors(t *testing.T) {
	plugins := []*plugincontrolv1.PluginStatus{
		{Name: "echo", Generation: 2, State: serving, Pid: 42, Binary: "echo"},
		{Name: "slow-starter", Generation: 0, State: starting, Binary: "slow"},
		{Name: "flaky", Generation: 3, State: degraded, Binary: "flaky"},
		{Name: "bad", Generation: 1, State: unhealthy, Binary: "bad", LastError: "3 panics"},
		{Name: "off", Generation: 1, State: stopped, Binary: "off"},
	}
	var plain, colored bytes.Buffer
	if err := renderStatuses(&plain, palette{}, plugins); err != nil {
		t.Fatal(err)
	}
	if err := renderStatuses(&colored, palette{on: true}, plugins); err != nil {
		t.Fatal(err)
	}
	if ansi.MatchString(plain.String()) {
		t.Errorf("plain table has colour codes:\n%q", plain.String())
	}
	// Padding comes before colouring: without the codes, the coloured table
	// is the plain one, column for column.
	if got := stripANSI(colored.String()); got != plain.String() {
		t.Errorf("coloured table misaligned:\n%s\nplain:\n%s", got, plain.String())
	}
	for _, want := range []string{
		"\x1b[32mSERVING\x1b[0m    ", "\x1b[36mSTARTING\x1b[0m   ", "\x1b[33mDEGRADED\x1b[0m   ",
		"\x1b[31mUNHEALTHY\x1b[0m  ", "\x1b[2mSTOPPED\x1b[0m    ",
	} {
		if !strings.Contains(colored.String(), want) {
			t.Errorf("coloured table lacks %q:\n%q", want, colored.String())
		}
	}
	// The watch line pads the state before colouring it too.
	ev := hev(evChanged, 12, "echo", unhealthy, 4, "3 panics").GetEvent()
	if got, want := stripANSI(formatEvent(ev, palette{on: true})), formatEvent(ev, palette{}); got != want {
		t.Errorf("coloured event line %q, plain %q", got, want)
	}
}

func TestColorFlag(t *testing.T) {
	f := &fakeDaemon{plugins: []*plugincontrolv1.PluginStatus{{Name: "echo", Generation: 1, State: serving, Binary: "echo"}}}
	addr := f.start(t)
	ctx := context.Background()
	tests := []struct {
		tty   bool
		env   map[string]string
		color string
		want  bool
	}{
		{tty: false, color: "auto", want: false},
		{tty: true, color: "auto", want: true},
		{tty: true, env: map[string]string{"NO_COLOR": "1"}, color: "auto", want: false},
		{tty: true, env: map[string]string{"TERM": "dumb"}, color: "auto", want: false},
		{tty: false, color: "always", want: true},
		{tty: true, env: map[string]string{"NO_COLOR": "1"}, color: "always", want: true},
		{tty: true, color: "never", want: false},
	}
	for _, tt := range tests {
		r := runCLIEnv(ctx, tt.tty, tt.env, "--addr", addr, "--color", tt.color, "list")
		if r.code != 0 {
			t.Fatalf("%+v: exit %d, stderr %q", tt, r.code, r.stderr)
		}
		if got := strings.Contains(r.stdout, "\x1b[32mSERVING\x1b[0m"); got != tt.want {
			t.Errorf("tty=%v env=%v --color %s: coloured %v, want %v:\n%q", tt.tty, tt.env, tt.color, got, tt.want, r.stdout)
		}
	}
	// JSON is never coloured.
	if r := runCLIEnv(ctx, true, nil, "--addr", addr, "--color", "always", "-o", "json", "list"); r.code != 0 || ansi.MatchString(r.stdout) {
		t.Errorf("-o json with --color always: %+v", r)
	}
}

func TestYAMLOutput(t *testing.T) {
	f := &fakeDaemon{plugins: []*plugincontrolv1.PluginStatus{
		{Name: "echo", Generation: 7, State: serving, Binary: "echo", Spec: &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo", Config: []byte("x")}},
	}}
	f.watch = func(n int, _ *plugincontrolv1.WatchHealthRequest, stream plugincontrolv1.PluginControlService_WatchHealthServer) error {
		stream.Send(hev(evSnapshot, 4, "echo", serving, 7, ""))
		stream.Send(hev(evSynced, 5, "", 0, 0, ""))
		stream.Send(hev(evChanged, 6, "echo", degraded, 7, "panic: boom"))
		<-stream.Context().Done()
		return nil
	}
	addr := f.start(t)
	ctx := context.Background()

	r := runCLI(ctx, "", "--addr", addr, "-o", "yaml", "list")
	if r.code != 0 {
		t.Fatalf("list -o yaml: %+v", r)
	}
	var list struct {
		Plugins []struct {
			Name       string `json:"name"`
			Generation string `json:"generation"`
			State      string `json:"state"`
			Spec       struct {
				Config string `json:"config"`
			} `json:"spec"`
		} `json:"plugins"`
	}
	if err := yaml.Unmarshal([]byte(r.stdout), &list); err != nil || len(list.Plugins) != 1 {
		t.Fatalf("list -o yaml (%v):\n%s", err, r.stdout)
	}
	// The same values as -o json: proto names, 64-bit integers as strings,
	// enums by name, bytes in base64.
	if p := list.Plugins[0]; p.Name != "echo" || p.Generation != "7" || p.State != "PLUGIN_STATE_SERVING" || p.Spec.Config != "eA==" {
		t.Errorf("list -o yaml: %+v\n%s", p, r.stdout)
	}
	if strings.HasPrefix(r.stdout, "{") || strings.HasPrefix(r.stdout, "---") {
		t.Errorf("not block YAML of one document:\n%s", r.stdout)
	}
	r2 := runCLI(ctx, "", "--addr", addr, "-o", "json", "list")
	y, err := yaml.YAMLToJSON([]byte(r.stdout))
	if err != nil {
		t.Fatal(err)
	}
	var fromYAML, fromJSON any
	json.Unmarshal(y, &fromYAML)
	json.Unmarshal([]byte(r2.stdout), &fromJSON)
	if fmt.Sprint(fromYAML) != fmt.Sprint(fromJSON) {
		t.Errorf("yaml %v != json %v", fromYAML, fromJSON)
	}

	// watch -o yaml: one document per event, each after "---".
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stdout := &markerWriter{marker: "panic: boom", seen: make(chan struct{})}
	done := make(chan int, 1)
	go func() {
		c := &cli{stdin: strings.NewReader(""), stdout: stdout, stderr: io.Discard}
		done <- c.run(wctx, []string{"--addr", addr, "-o", "yaml", "watch"})
	}()
	select {
	case <-stdout.seen:
	case <-time.After(10 * time.Second):
		t.Fatalf("no events:\n%s", stdout.String())
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("watch exit %d", code)
	}
	docs := strings.Split(stdout.String(), "---\n")
	if docs[0] != "" || len(docs) != 4 {
		t.Fatalf("watch -o yaml: %d documents:\n%s", len(docs)-1, stdout.String())
	}
	for i, want := range []string{"HEALTH_EVENT_TYPE_SNAPSHOT", "HEALTH_EVENT_TYPE_SYNCED", "HEALTH_EVENT_TYPE_CHANGED"} {
		var m struct {
			Event struct {
				Type     string `json:"type"`
				Revision string `json:"revision"`
			} `json:"event"`
		}
		if err := yaml.Unmarshal([]byte(docs[i+1]), &m); err != nil || m.Event.Type != want || m.Event.Revision != fmt.Sprint(i+4) {
			t.Errorf("document %d (%v): %+v\n%s", i, err, m, docs[i+1])
		}
	}
}

func TestAudit(t *testing.T) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	f := &fakeDaemon{audit: []*plugincontrolv1.AuditRecord{
		{Sequence: 12, Time: timestamppb.New(at.Add(time.Minute)), Caller: "uid:1000", Action: "reload", Plugin: "echo", OldGeneration: 1, NewGeneration: 1,
			Outcome: "failed", Error: "candidate failed at stage ready:\nbackend database unreachable; generation 1 keeps serving", Binary: "notready"},
		{Sequence: 11, Time: timestamppb.New(at), Caller: "token:deploy", Action: "load", Plugin: "echo", OldGeneration: 0, NewGeneration: 1, Outcome: "ok", Binary: "echo"},
	}}
	addr := f.start(t)
	ctx := context.Background()

	r := runCLIEnv(ctx, false, nil, "--addr", addr, "audit", "echo", "--limit", "2", "--before", "13")
	if r.code != 0 {
		t.Fatalf("audit: %+v", r)
	}
	want := "" +
		"SEQ  TIME                 CALLER        ACTION  PLUGIN  GEN(old→new)  OUTCOME  ERROR\n" +
		"12   2026-03-04 05:07:07  uid:1000      reload  echo    1→1           failed   candidate failed at stage ready: backend database unreachable; generation 1 keeps serving\n" +
		"11   2026-03-04 05:06:07  token:deploy  load    echo    0→1           ok       -\n" +
		"older records: --before 11\n"
	if r.stdout != want {
		t.Errorf("audit table:\n%s\nwant:\n%s", r.stdout, want)
	}
	// Coloured outcomes keep the alignment.
	rc := runCLIEnv(ctx, false, nil, "--addr", addr, "--color", "always", "audit", "echo", "--limit", "2", "--before", "13")
	if !strings.Contains(rc.stdout, "\x1b[31mfailed\x1b[0m   ") || !strings.Contains(rc.stdout, "\x1b[32mok\x1b[0m       ") || stripANSI(rc.stdout) != want {
		t.Errorf("coloured audit:\n%q", rc.stdout)
	}
	// Not a full page: no paging hint. JSON and YAML carry the records.
	r = runCLIEnv(ctx, false, nil, "--addr", addr, "audit")
	if r.code != 0 || strings.Contains(r.stdout, "older records") || strings.Count(r.stdout, "\n") != 3 {
		t.Errorf("audit without flags:\n%s", r.stdout)
	}
	for _, o := range []string{"json", "yaml"} {
		r = runCLIEnv(ctx, false, nil, "--addr", addr, "-o", o, "audit")
		var resp struct {
			Records []struct {
				Sequence      string `json:"sequence"`
				OldGeneration string `json:"old_generation"`
				Outcome       string `json:"outcome"`
			} `json:"records"`
		}
		if err := yaml.Unmarshal([]byte(r.stdout), &resp); err != nil || len(resp.Records) != 2 || resp.Records[0].Sequence != "12" || resp.Records[0].Outcome != "failed" {
			t.Errorf("audit -o %s (%v):\n%s", o, err, r.stdout)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.audits) < 1 || f.audits[0].GetName() != "echo" || f.audits[0].GetLimit() != 2 || f.audits[0].GetBeforeSequence() != 13 {
		t.Errorf("ListAudit requests %v", f.audits)
	}
	if f.audits[2].GetName() != "" || f.audits[2].GetLimit() != 0 || f.audits[2].GetBeforeSequence() != 0 {
		t.Errorf("ListAudit request without flags %v", f.audits[2])
	}
}

func TestWaitHealthy(t *testing.T) {
	type script func(n int, stream plugincontrolv1.PluginControlService_WatchHealthServer) error
	block := func(stream plugincontrolv1.PluginControlService_WatchHealthServer) error {
		<-stream.Context().Done()
		return nil
	}
	send := func(stream plugincontrolv1.PluginControlService_WatchHealthServer, evs ...*plugincontrolv1.WatchHealthResponse) {
		for _, e := range evs {
			stream.Send(e)
		}
	}
	// sendThenBlock is the script of a daemon that sends evs and then
	// keeps the stream open.
	sendThenBlock := func(evs ...*plugincontrolv1.WatchHealthResponse) script {
		return func(_ int, s plugincontrolv1.PluginControlService_WatchHealthServer) error {
			send(s, evs...)
			return block(s)
		}
	}
	tests := []struct {
		name   string
		args   []string
		watch  script
		code   int
		stdout string // a substring
		stderr string // a substring
		min    time.Duration
	}{
		{
			name:  "serving at once",
			args:  []string{"reload", "echo", "--wait-healthy"},
			watch: sendThenBlock(hev(evSnapshot, 4, "echo", serving, 2, ""), hev(evSynced, 4, "", 0, 0, "")),
			code:  0, stdout: "echo generation 2 is SERVING (waited",
		},
		{
			name: "starting, then serving",
			args: []string{"reload", "echo", "--wait-healthy"},
			watch: func(_ int, s plugincontrolv1.PluginControlService_WatchHealthServer) error {
				send(s, hev(evSnapshot, 3, "echo", serving, 1, ""), hev(evSynced, 3, "", 0, 0, ""))
				time.Sleep(20 * time.Millisecond) // time is what is tested: the CLI waits across a gap between events
				send(s, hev(evChanged, 4, "echo", starting, 2, ""), hev(evChanged, 5, "echo", serving, 2, ""))
				return block(s)
			},
			code: 0, stdout: "echo generation 2 is SERVING",
		},
		{
			name:  "unhealthy",
			args:  []string{"reload", "echo", "--wait-healthy"},
			watch: sendThenBlock(hev(evSnapshot, 4, "echo", unhealthy, 2, "3 panics in 1m0s"), hev(evSynced, 4, "", 0, 0, "")),
			code:  exitNotHealthy, stderr: "pluginctl: echo generation 2 is not healthy: UNHEALTHY: 3 panics in 1m0s\n  last health: generation 2 UNHEALTHY\n",
		},
		{
			name:  "stopped",
			args:  []string{"reload", "echo", "--wait-healthy"},
			watch: sendThenBlock(hev(evSnapshot, 4, "echo", degraded, 2, "crashed"), hev(evSynced, 4, "", 0, 0, ""), hev(evChanged, 5, "echo", stopped, 2, "unhealthy action: stop")),
			code:  exitNotHealthy, stderr: "is not healthy: STOPPED: unhealthy action: stop",
		},
		{
			name:  "replaced by a restart",
			args:  []string{"reload", "echo", "--wait-healthy"},
			watch: sendThenBlock(hev(evSnapshot, 9, "echo", starting, 3, "crashed: exit status 2"), hev(evSynced, 9, "", 0, 0, "")),
			code:  exitNotHealthy, stderr: "echo generation 2 is not healthy: generation 3 replaced it (STARTING): crashed: exit status 2",
		},
		{
			name:  "unloaded",
			args:  []string{"reload", "echo", "--wait-healthy"},
			watch: sendThenBlock(hev(evSnapshot, 4, "echo", starting, 2, ""), hev(evSynced, 4, "", 0, 0, ""), hev(evRemoved, 5, "echo", stopped, 2, "")),
			code:  exitNotHealthy, stderr: "echo was unloaded",
		},
		{
			name:  "not loaded",
			args:  []string{"reload", "echo", "--wait-healthy"},
			watch: sendThenBlock(hev(evSynced, 4, "", 0, 0, "")),
			code:  exitNotHealthy, stderr: "echo is not loaded",
		},
		{
			name:  "timeout",
			args:  []string{"reload", "echo", "--wait-healthy", "--wait-timeout", "300ms"},
			watch: sendThenBlock(hev(evSnapshot, 4, "echo", degraded, 2, "panic: boom"), hev(evSynced, 4, "", 0, 0, "")),
			code:  exitNotHealthy, stderr: "is not healthy: timed out; last seen generation 2 DEGRADED\n  last health: generation 2 DEGRADED: panic: boom\n", min: 300 * time.Millisecond,
		},
		{
			name:  "settled",
			args:  []string{"reload", "echo", "--wait-healthy", "--settle", "300ms"},
			watch: sendThenBlock(hev(evSnapshot, 4, "echo", serving, 2, ""), hev(evSynced, 4, "", 0, 0, ""), hev(evBookmark, 4, "", 0, 0, "")),
			code:  0, stdout: "echo generation 2 is SERVING and stayed so for 300ms", min: 300 * time.Millisecond,
		},
		{
			name: "degraded within the settle period",
			args: []string{"reload", "echo", "--wait-healthy", "--settle", "5s"},
			watch: func(_ int, s plugincontrolv1.PluginControlService_WatchHealthServer) error {
				send(s, hev(evSnapshot, 4, "echo", serving, 2, ""), hev(evSynced, 4, "", 0, 0, ""))
				time.Sleep(50 * time.Millisecond) // time is what is tested: the CLI waits across a gap between events
				send(s, hev(evChanged, 5, "echo", degraded, 2, "crashed: panic: lost connection"))
				return block(s)
			},
			code: exitNotHealthy, stderr: "after it was SERVING (within the settle period of 5s): crashed: panic: lost connection",
		},
		{
			name: "reconnects and resumes",
			args: []string{"reload", "echo", "--wait-healthy"},
			watch: func(n int, s plugincontrolv1.PluginControlService_WatchHealthServer) error {
				if n == 0 {
					send(s, hev(evSnapshot, 4, "echo", starting, 2, ""), hev(evSynced, 5, "", 0, 0, ""))
					return status.Error(codes.Unavailable, "daemon shutting down")
				}
				send(s, hev(evChanged, 6, "echo", serving, 2, ""), hev(evSynced, 6, "", 0, 0, ""))
				return block(s)
			},
			code: 0, stdout: "echo generation 2 is SERVING", stderr: "pluginctl: waiting for echo to be healthy: daemon shutting down; reconnecting in ",
		},
		{
			name:  "load",
			args:  []string{"load", "echo", "--wait-healthy"},
			watch: sendThenBlock(hev(evSnapshot, 1, "echo", serving, 1, ""), hev(evSynced, 1, "", 0, 0, "")),
			code:  0, stdout: "echo generation 1 is SERVING",
		},
		{
			name:  "json output",
			args:  []string{"-o", "json", "reload", "echo", "--wait-healthy"},
			watch: sendThenBlock(hev(evSnapshot, 4, "echo", serving, 2, ""), hev(evSynced, 4, "", 0, 0, "")),
			code:  0, stdout: `"previous_generation"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeDaemon{plugins: []*plugincontrolv1.PluginStatus{{Name: "echo", Generation: 1}}}
			f.watch = func(n int, _ *plugincontrolv1.WatchHealthRequest, stream plugincontrolv1.PluginControlService_WatchHealthServer) error {
				return tt.watch(n, stream)
			}
			addr := f.start(t)
			start := time.Now()
			r := runCLI(context.Background(), "", append([]string{"--addr", addr}, tt.args...)...)
			took := time.Since(start)
			if r.code != tt.code || !strings.Contains(r.stdout, tt.stdout) || !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tt.code, r.stdout, r.stderr)
			}
			if took < tt.min {
				t.Errorf("returned after %s, before %s", took, tt.min)
			}
			if tt.args[0] == "-o" {
				var v map[string]any
				if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
					t.Errorf("stdout is not one JSON document: %v\n%s", err, r.stdout)
				}
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.watches) == 0 {
				t.Fatal("no WatchHealth")
			}
			for i, w := range f.watches {
				if strings.Join(w.GetNames(), ",") != "echo" {
					t.Errorf("watch %d: names %q", i, w.GetNames())
				}
			}
			if w := f.watches[0]; w.GetSinceRevision() != 0 {
				t.Errorf("first watch since_revision %d", w.GetSinceRevision())
			}
			if tt.name == "reconnects and resumes" && (len(f.watches) != 2 || f.watches[1].GetSinceRevision() != 5) {
				t.Errorf("resume: %v", f.watches)
			}
		})
	}
}

func TestLiveView(t *testing.T) {
	v := newLiveView("pluginctl watch: all plugins at unix:///x")
	now := time.Date(2026, 1, 2, 15, 4, 5, 0, time.Local)
	v.startStream(true)
	for _, r := range []*plugincontrolv1.WatchHealthResponse{
		hev(evSnapshot, 3, "zeta", degraded, 1, "panic: boom"),
		hev(evSnapshot, 4, "echo", serving, 2, ""),
		hev(evSynced, 5, "", 0, 0, ""),
	} {
		v.apply(r.GetEvent(), now)
	}
	frame := v.render(palette{})
	if !strings.HasPrefix(frame, liveClear+"pluginctl watch: all plugins at unix:///x\nrevision 5, last event 15:04:05, 2 plugin(s)\n\n") {
		t.Errorf("frame:\n%q", frame)
	}
	wantTable := "" +
		"NAME  STATE     GEN  PANICS(window)  CRASHES  RESTARTS  REASON\n" +
		"echo  SERVING   2    0               0        0         -\n" +
		"zeta  DEGRADED  1    0               0        0         panic: boom\n"
	if !strings.Contains(frame, wantTable) || !strings.Contains(frame, "\nRecent events:\n"+watchHeader+"\n3         SNAPSHOT  zeta") {
		t.Errorf("frame:\n%s", frame)
	}

	// Removals, more than 10 events, bookmarks (not listed as events).
	for i := range 12 {
		v.apply(hev(evChanged, uint64(6+i), "echo", serving, 2, "").GetEvent(), now)
	}
	v.apply(hev(evRemoved, 18, "zeta", stopped, 1, "").GetEvent(), now)
	v.apply(hev(evBookmark, 20, "", 0, 0, "").GetEvent(), now.Add(time.Hour))
	frame = v.render(palette{on: true})
	recent := frame[strings.Index(frame, "Recent events:"):]
	if n := strings.Count(recent, "\n") - 2; n != liveRecentEvents {
		t.Errorf("%d recent events:\n%s", n, recent)
	}
	if !strings.Contains(frame, "revision 20, last event 15:04:05, 1 plugin(s)") || strings.Contains(frame[:strings.Index(frame, "Recent")], "zeta") ||
		!strings.Contains(frame, "\x1b[32mSERVING\x1b[0m") || strings.Contains(recent, "BOOKMARK") || !strings.Contains(recent, "REMOVED") {
		t.Errorf("frame:\n%s", frame)
	}

	// A reset snapshot replaces the view: echo is gone, other is new.
	v.startStream(false)
	v.apply((&plugincontrolv1.WatchHealthResponse{Event: &plugincontrolv1.HealthEvent{Type: evSnapshot, Revision: 2, Reset_: true,
		Health: &plugincontrolv1.PluginHealth{Name: "other", State: starting, Generation: 1}}}).GetEvent(), now)
	v.apply(&plugincontrolv1.HealthEvent{Type: evSynced, Revision: 3, Reset_: true}, now)
	if len(v.plugins) != 1 || v.plugins["other"] == nil || v.revision != 3 {
		t.Errorf("after reset: %v, revision %d", v.plugins, v.revision)
	}
	// An empty reset snapshot: only SYNCED, flagged.
	v.apply(&plugincontrolv1.HealthEvent{Type: evSynced, Revision: 4, Reset_: true}, now)
	if len(v.plugins) != 0 {
		t.Errorf("after an empty reset: %v", v.plugins)
	}
}

func TestWatchLive(t *testing.T) {
	f := &fakeDaemon{}
	f.watch = func(n int, _ *plugincontrolv1.WatchHealthRequest, stream plugincontrolv1.PluginControlService_WatchHealthServer) error {
		if n == 0 {
			stream.Send(hev(evSnapshot, 4, "echo", serving, 1, ""))
			stream.Send(hev(evSnapshot, 3, "other", degraded, 2, "panic: boom"))
			stream.Send(hev(evSynced, 5, "", 0, 0, ""))
			time.Sleep(20 * time.Millisecond) // time is what is tested: the CLI waits across a gap between events
			stream.Send(hev(evChanged, 6, "echo", unhealthy, 1, "3 panics in 1m0s"))
			return status.Error(codes.Unavailable, "daemon shutting down")
		}
		stream.Send(hev(evChanged, 7, "other", serving, 2, "finally"))
		<-stream.Context().Done()
		return nil
	}
	addr := f.start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout := &markerWriter{marker: "finally", seen: make(chan struct{})}
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		c := &cli{stdin: strings.NewReader(""), stdout: stdout, stderr: &stderr,
			getenv: func(string) string { return "" }, isTerminal: func(io.Writer) bool { return true }}
		done <- c.run(ctx, []string{"--addr", addr, "watch"})
	}()
	select {
	case <-stdout.seen:
	case <-time.After(10 * time.Second):
		t.Fatalf("no live frame with the resumed event:\n%q", stdout.String())
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	out := stdout.String()
	frames := strings.Split(out, liveClear)
	if frames[0] != "" || len(frames) < 4 {
		t.Fatalf("%d frames:\n%q", len(frames)-1, out)
	}
	// The lost connection is a banner in the view, not on stderr, and the
	// rows under it are dimmed.
	banner := regexp.MustCompile(`CONNECTION LOST since \d\d:\d\d:\d\d \(\d+s ago\): daemon shutting down; retrying (in \d+ms|now)\. The rows below are the last known state\.`)
	if stderr.Len() != 0 || !banner.MatchString(out) {
		t.Errorf("reconnect banner: stderr %q\n%s", stderr.String(), out)
	}
	for _, fr := range frames {
		if strings.Contains(fr, "CONNECTION LOST") && !strings.Contains(fr, ansiDim+"NAME") {
			t.Errorf("rows not dimmed under the banner:\n%q", fr)
		}
	}
	last := stripANSI(frames[len(frames)-1])
	for _, want := range []string{
		"pluginctl watch: all plugins at " + addr, "revision 7, last event ", "2 plugin(s)",
		"echo   UNHEALTHY  1    0               0        0         3 panics in 1m0s\n",
		"other  SERVING    2    0               0        0         finally\n",
		"Recent events:\n" + watchHeader + "\n4         SNAPSHOT  echo",
	} {
		if !strings.Contains(last, want) {
			t.Errorf("last frame lacks %q:\n%s", want, last)
		}
	}
	if strings.Contains(last, "CONNECTION LOST") {
		t.Errorf("the banner outlived the reconnect:\n%s", last)
	}
	if !strings.Contains(frames[len(frames)-1], "\x1b[31mUNHEALTHY\x1b[0m  ") {
		t.Errorf("no colours in the live view:\n%q", frames[len(frames)-1])
	}

	// --plain, or a pipe, prints lines.
	f2 := &fakeDaemon{watch: func(_ int, _ *plugincontrolv1.WatchHealthRequest, stream plugincontrolv1.PluginControlService_WatchHealthServer) error {
		stream.Send(hev(evSynced, 5, "", 0, 0, ""))
		return status.Error(codes.PermissionDenied, "done")
	}}
	addr2 := f2.start(t)
	for _, tty := range []bool{false, true} {
		args := []string{"--addr", addr2, "--color", "never", "watch"}
		if tty {
			args = append(args, "--plain")
		}
		r := runCLIEnv(context.Background(), tty, nil, args...)
		if r.stdout != watchHeader+"\n5         SYNCED    -                     -          -     -\n" {
			t.Errorf("tty %v: %q", tty, r.stdout)
		}
	}
}

func TestFitWidth(t *testing.T) {
	p := palette{on: true}
	line := "echo  " + p.paint(ansiRed, "UNHEALTHY") + "  a long reason"
	for _, tt := range []struct {
		in    string
		width int
		want  string
	}{
		{"short\nlines", 10, "short\nlines"},
		{"exactly10!", 10, "exactly10!"},
		{"eleven-char", 10, "eleven-ch…" + ansiReset},
		{"über-lange Zeile", 6, "über-…" + ansiReset},
		{line, 0, line},
		{line, 100, line},
		{line, 12, "echo  \x1b[31mUNHEA…" + ansiReset},
		{line, 20, "echo  \x1b[31mUNHEALTHY\x1b[0m  a …" + ansiReset},
		{liveClear + "title that is long", 8, liveClear + "title t…" + ansiReset},
	} {
		if got := fitWidth(tt.in, tt.width); got != tt.want {
			t.Errorf("fitWidth(%q, %d) = %q, want %q", tt.in, tt.width, got, tt.want)
		}
	}
}

func TestNotHealthyError(t *testing.T) {
	err := &client.UnhealthyError{Name: "echo", Generation: 3, Reason: "UNHEALTHY: 3 panics in 1m0s",
		Health: &plugincontrolv1.PluginHealth{Name: "echo", Generation: 3, State: unhealthy, Reason: "3 panics in 1m0s"}}
	if got := exitCode(fmt.Errorf("wrapped: %w", err)); got != exitNotHealthy || exitNotHealthy != 7 {
		t.Errorf("exit code %d", got)
	}
	var buf bytes.Buffer
	if code := printError(&buf, "unix:///x", nil, err); code != 7 {
		t.Errorf("printError: %d", code)
	}
	if want := "pluginctl: echo generation 3 is not healthy: UNHEALTHY: 3 panics in 1m0s\n  last health: generation 3 UNHEALTHY\n"; buf.String() != want {
		t.Errorf("printError:\n%q\nwant\n%q", buf.String(), want)
	}
}
