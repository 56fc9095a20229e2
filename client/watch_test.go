package client

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// waitView waits until the watcher's view has exactly the names, each
// SERVING.
func waitView(t *testing.T, w *Watcher, names ...string) map[string]*plugincontrolv1.PluginHealth {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		v := w.View()
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		ok := slices.Equal(keys, names)
		for _, h := range v {
			ok = ok && h.GetState() == plugincontrolv1.PluginState_PLUGIN_STATE_SERVING
		}
		if ok {
			return v
		}
		select {
		case <-w.Changed():
		case <-w.Done():
			t.Fatalf("watcher stopped: %v (view %v)", w.Err(), keys)
		case <-deadline:
			t.Fatalf("view %v, want %v serving", keys, names)
		}
	}
}

func load(t *testing.T, c *Client, name string) {
	t.Helper()
	if _, err := c.Load(context.Background(), &plugincontrolv1.PluginSpec{Name: name, Binary: "echo"}); err != nil {
		t.Fatalf("Load %s: %v", name, err)
	}
}

// TestWatchConverges follows a daemon through loads, an unload and a daemon
// restart (revisions start over: the watcher gets a reset snapshot).
func TestWatchConverges(t *testing.T) {
	d := newDaemon(t, daemonConfig{})
	c := dial(t, d.addr())
	load(t, c, "a")
	load(t, c, "b")

	var mu sync.Mutex
	var reconnects []error
	w, err := c.Watch(context.Background(), WithViewOnly(), WithBackoff(20*time.Millisecond, 100*time.Millisecond),
		WithReconnectHook(func(err error, _ time.Duration) { mu.Lock(); reconnects = append(reconnects, err); mu.Unlock() }))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.Events() != nil {
		t.Fatal("ViewOnly watcher has an events channel")
	}
	select {
	case <-w.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("no SYNCED")
	}
	waitView(t, w, "a", "b")

	if _, err := c.Unload(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}
	waitView(t, w, "a")
	load(t, c, "c")
	waitView(t, w, "a", "c")
	before := w.Revision()

	// Restart the daemon with a different set of plugins: its revision
	// starts over, so the resume point is ahead of it and the daemon
	// answers with a reset snapshot, which must replace the view.
	d.stop()
	nd, err := startDaemon(daemonConfig{sock: d.sock})
	if err != nil {
		t.Fatal(err)
	}
	d.replace(nd)
	// Load is not retried; List is, so it waits out the reconnect.
	if _, err := c.List(context.Background()); err != nil {
		t.Fatal(err)
	}
	load(t, c, "z")
	waitView(t, w, "z")
	if w.Revision() >= before {
		t.Errorf("revision after the restart %d, want below %d (the new daemon's)", w.Revision(), before)
	}
	mu.Lock()
	n := len(reconnects)
	mu.Unlock()
	if n == 0 || !errors.Is(reconnects[0], ErrUnavailable) {
		t.Errorf("reconnects: %v", reconnects)
	}
	w.Close()
	if w.Err() != nil {
		t.Errorf("Err after Close: %v", w.Err())
	}
}

// TestWatchCompactView: with WithCompactView the view holds only name,
// state, generation and revision, and follows loads and reloads.
func TestWatchCompactView(t *testing.T) {
	d := newDaemon(t, daemonConfig{})
	c := dial(t, d.addr())
	load(t, c, "a")
	w, err := c.Watch(context.Background(), WithViewOnly(), WithCompactView())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	h := waitView(t, w, "a")["a"]
	if h.GetSince() != nil || h.GetGeneration() != 1 || h.GetRevision() == 0 {
		t.Fatalf("compact view of a: %v", h)
	}
	if _, err := c.Reload(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.After(20 * time.Second); w.View()["a"].GetGeneration() != 2; {
		select {
		case <-w.Changed():
		case <-deadline:
			t.Fatalf("view of a after the reload: %v", w.View()["a"])
		}
	}
	if h := w.View()["a"]; h.GetSince() != nil || h.GetName() != "a" {
		t.Fatalf("compact view of a after the reload: %v", h)
	}
	if full, _, err := c.Health(context.Background(), WithNames("a")); err != nil || full[0].GetSince() == nil {
		t.Fatalf("Health of a: %v %v", full, err)
	}
	compact, _, err := c.Health(context.Background(), WithNames("a"), WithCompactView())
	if err != nil || len(compact) != 1 || compact[0].GetSince() != nil || compact[0].GetGeneration() != 2 || compact[0].GetName() != "a" {
		t.Fatalf("Health of a, compact view: %v %v", compact, err)
	}
}

// TestWatchCompactedResume: resuming from a revision the daemon's history
// no longer holds gives a reset snapshot; the view still converges.
func TestWatchCompactedResume(t *testing.T) {
	d := newDaemon(t, daemonConfig{healthHistory: 2})
	c := dial(t, d.addr())
	for _, n := range []string{"a", "b", "c"} {
		load(t, c, n)
	}
	if _, err := c.Unload(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []*plugincontrolv1.HealthEvent
	synced := make(chan struct{}, 1)
	w, err := c.Watch(context.Background(), WithSinceRevision(1), WithCallback(func(ev *plugincontrolv1.HealthEvent) {
		mu.Lock()
		got = append(got, ev)
		mu.Unlock()
		if ev.GetType() == plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED {
			select {
			case synced <- struct{}{}:
			default:
			}
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	waitView(t, w, "a", "c")
	// The view converges at SYNCED, before the callback sees it: wait for
	// the callback too.
	select {
	case <-synced:
	case <-time.After(5 * time.Second):
		t.Fatal("the callback saw no SYNCED within 5s")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) < 3 || !got[0].GetReset_() || got[0].GetType() != plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SNAPSHOT {
		t.Fatalf("events: %v", got)
	}
	last := got[len(got)-1]
	if last.GetType() != plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED || !last.GetReset_() {
		t.Fatalf("last event: %v", last)
	}
}

// TestWatchEvents: the channel delivers the snapshot, SYNCED, then live
// changes; bookmarks move the revision.
func TestWatchEvents(t *testing.T) {
	d := newDaemon(t, daemonConfig{bookmark: 50 * time.Millisecond})
	c := dial(t, d.addr())
	load(t, c, "echo")
	ctx, cancel := context.WithCancel(context.Background())
	w, err := c.Watch(ctx, WithNames("echo"))
	if err != nil {
		t.Fatal(err)
	}
	next := func() *plugincontrolv1.HealthEvent {
		t.Helper()
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("events closed: %v", w.Err())
			}
			return ev
		case <-time.After(10 * time.Second):
			t.Fatal("no event")
		}
		return nil
	}
	if ev := next(); ev.GetType() != plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SNAPSHOT || ev.GetHealth().GetName() != "echo" {
		t.Fatalf("first event: %v", ev)
	}
	if ev := next(); ev.GetType() != plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED {
		t.Fatalf("second event: %v", ev)
	}
	if _, _, err := c.Invoke(ctx, "echo", "panic", []byte("x")); !errors.Is(err, ErrPanic) {
		t.Fatal(err)
	}
	for {
		ev := next()
		if ev.GetType() == plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_CHANGED && ev.GetHealth().GetState() == plugincontrolv1.PluginState_PLUGIN_STATE_DEGRADED {
			if w.View()["echo"].GetState() != plugincontrolv1.PluginState_PLUGIN_STATE_DEGRADED {
				t.Fatal("view not updated before delivery")
			}
			break
		}
	}
	for ev := next(); ev.GetType() != plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_BOOKMARK; ev = next() {
	}
	cancel()
	<-w.Done()
	if !errors.Is(w.Err(), context.Canceled) {
		t.Fatalf("Err after cancel: %v", w.Err())
	}
	for range w.Events() {
	}
}

// TestWatchTerminalError: a bad name is not retried.
func TestWatchTerminalError(t *testing.T) {
	d := newDaemon(t, daemonConfig{})
	c := dial(t, d.addr())
	w, err := c.Watch(context.Background(), WithNames("Bad Name"), WithViewOnly())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("watcher did not stop")
	}
	if !errors.Is(w.Err(), ErrInvalidArgument) {
		t.Fatalf("Err: %v", w.Err())
	}
	w.Close()
}
