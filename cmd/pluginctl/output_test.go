package main

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// rendered returns what render writes; an error fails the test.
func rendered(t *testing.T, render func(w io.Writer) error) string {
	t.Helper()
	var buf bytes.Buffer
	if err := render(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestRenderStatuses(t *testing.T) {
	got := rendered(t, func(w io.Writer) error {
		return renderStatuses(w, palette{}, []*plugincontrolv1.PluginStatus{
			{Name: "echo", Generation: 2, State: plugincontrolv1.PluginState_PLUGIN_STATE_SERVING, Pid: 4242, Version: "1.0.0", Binary: "echo", Restarts: 1, Endpoint: "unix:///s/plugins/echo.sock"},
			{Name: "broken-one", Generation: 0, State: plugincontrolv1.PluginState_PLUGIN_STATE_UNHEALTHY, Binary: "broken", LastError: "candidate failed\tat stage start:\nexit status 2"},
		})
	})
	want := "" +
		"NAME        GEN  STATE      PID   VERSION  BINARY  RESTARTS  ENDPOINT                     LAST ERROR\n" +
		"echo        2    SERVING    4242  1.0.0    echo    1         unix:///s/plugins/echo.sock  -\n" +
		"broken-one  0    UNHEALTHY  -     -        broken  0         -                            candidate failed at stage start: exit status 2\n"
	if got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
}

func TestRenderHealth(t *testing.T) {
	got := rendered(t, func(w io.Writer) error {
		return renderHealth(w, palette{}, &plugincontrolv1.HealthResponse{
			Revision: 17,
			Plugins: []*plugincontrolv1.PluginHealth{
				{Name: "echo", State: plugincontrolv1.PluginState_PLUGIN_STATE_DEGRADED, Generation: 3, PanicsInWindow: 1, LifetimePanics: 4, Crashes: 2, Restarts: 1, Reason: "panic: boom"},
				{Name: "ok", State: plugincontrolv1.PluginState_PLUGIN_STATE_SERVING, Generation: 1},
			},
		})
	})
	want := "" +
		"NAME  STATE     GEN  PANICS(window)  CRASHES  RESTARTS  REASON\n" +
		"echo  DEGRADED  3    1               2        1         panic: boom\n" +
		"ok    SERVING   1    0               0        0         -\n" +
		"revision: 17\n"
	if got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
}

func TestRenderReload(t *testing.T) {
	resp := &plugincontrolv1.ReloadResponse{
		Plugin:             &plugincontrolv1.PluginStatus{Name: "echo", Generation: 2, State: plugincontrolv1.PluginState_PLUGIN_STATE_SERVING, Pid: 7, Version: "2", Binary: "echo"},
		PreviousGeneration: 1,
		Report: &plugincontrolv1.CandidateReport{
			Stages: []*plugincontrolv1.StageTiming{
				{Stage: plugincontrolv1.CandidateStage_CANDIDATE_STAGE_RESOLVE, Duration: durationpb.New(150 * time.Microsecond)},
				{Stage: plugincontrolv1.CandidateStage_CANDIDATE_STAGE_START, Duration: durationpb.New(21*time.Millisecond + 333*time.Nanosecond)},
			},
			Total:        durationpb.New(28 * time.Millisecond),
			CandidatePid: 7,
			Version:      "2",
			DrainedCalls: 3,
		},
	}
	got := rendered(t, func(w io.Writer) error { return renderReload(w, palette{}, resp, false) })
	want := "" +
		"NAME  GEN  STATE    PID  VERSION  BINARY  RESTARTS  ENDPOINT  LAST ERROR\n" +
		"echo  2    SERVING  7    2        echo    0         -         -\n" +
		"\n" +
		"STAGE    DURATION\n" +
		"resolve  150µs\n" +
		"start    21ms\n" +
		"total    28ms\n" +
		"candidate pid 7, version 2, 3 calls drained\n" +
		"generation 1 -> 2\n"
	if got != want {
		t.Errorf("output:\n%s\nwant:\n%s", got, want)
	}
	got = rendered(t, func(w io.Writer) error { return renderReload(w, palette{}, resp, true) })
	if !strings.HasSuffix(got, "validate only: the candidate passed and was discarded; generation 2 keeps serving\n") {
		t.Errorf("validate-only output:\n%s", got)
	}
}

func TestFormatEvent(t *testing.T) {
	tests := []struct {
		ev   *plugincontrolv1.HealthEvent
		want string
	}{
		{
			&plugincontrolv1.HealthEvent{Type: plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_CHANGED, Revision: 12, Health: &plugincontrolv1.PluginHealth{
				Name: "echo", State: plugincontrolv1.PluginState_PLUGIN_STATE_UNHEALTHY, Generation: 4, Reason: "3 panics in 1m0s",
			}},
			"12        CHANGED   echo                  UNHEALTHY  4     3 panics in 1m0s",
		},
		{
			&plugincontrolv1.HealthEvent{Type: plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED, Revision: 13},
			"13        SYNCED    -                     -          -     -",
		},
		{
			&plugincontrolv1.HealthEvent{Type: plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SNAPSHOT, Revision: 9, Reset_: true, Health: &plugincontrolv1.PluginHealth{
				Name: "echo", State: plugincontrolv1.PluginState_PLUGIN_STATE_SERVING, Generation: 1,
			}},
			"9         RESET     echo                  SERVING    1     -",
		},
	}
	for _, tt := range tests {
		if got := formatEvent(tt.ev, palette{}); got != tt.want {
			t.Errorf("formatEvent:\n got %q\nwant %q", got, tt.want)
		}
	}
}

func TestPrintJSON(t *testing.T) {
	var buf bytes.Buffer
	err := printJSON(&buf, jsonOptions, &plugincontrolv1.ListPluginsResponse{Plugins: []*plugincontrolv1.PluginStatus{
		{Name: "echo", Generation: 1, State: plugincontrolv1.PluginState_PLUGIN_STATE_SERVING, LastError: ""},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("%v in %s", err, buf.String())
	}
	p := got.Plugins[0]
	if p["name"] != "echo" || p["generation"] != "1" || p["state"] != "PLUGIN_STATE_SERVING" {
		t.Errorf("json = %v", p)
	}
	if _, ok := p["last_error"]; ok {
		t.Errorf("unpopulated field emitted: %v", p)
	}
	// One line per message for watch.
	buf.Reset()
	if err := printJSON(&buf, jsonLineOptions, &plugincontrolv1.WatchHealthResponse{Event: &plugincontrolv1.HealthEvent{Revision: 3, Health: &plugincontrolv1.PluginHealth{Name: "echo"}}}); err != nil {
		t.Fatal(err)
	}
	if strings.Count(buf.String(), "\n") != 1 || !strings.HasSuffix(buf.String(), "\n") {
		t.Errorf("watch json is not one line: %q", buf.String())
	}
}

func TestWatchAdvance(t *testing.T) {
	var log bytes.Buffer
	w := &watcher{log: &log, last: 10}
	steps := []struct {
		typ  plugincontrolv1.HealthEventType
		rev  uint64
		want uint64
	}{
		{plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SNAPSHOT, 4, 10},  // an old record
		{plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_CHANGED, 12, 12},  // forward
		{plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED, 12, 12},   // the current revision
		{plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_BOOKMARK, 15, 15}, // forward
		{plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED, 2, 2},     // a restarted daemon
	}
	for i, s := range steps {
		w.advance(&plugincontrolv1.HealthEvent{Type: s.typ, Revision: s.rev})
		if w.last != s.want {
			t.Errorf("step %d: last = %d, want %d", i, w.last, s.want)
		}
	}
	if !strings.Contains(log.String(), "went back from 15 to 2") {
		t.Errorf("log %q", log.String())
	}
}
