package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// Reconnect backoff of watch: 100ms, doubling, at most 5s; back to 100ms
// once a stream delivered an event.
const (
	watchBackoffInitial = 100 * time.Millisecond
	watchBackoffMax     = 5 * time.Second
)

// watcher prints the WatchHealth stream and resumes it after the daemon
// went away.
type watcher struct {
	control plugincontrolv1.PluginControlServiceClient
	names   []string
	since   uint64
	output  string // table, json or yaml
	pal     palette
	out     io.Writer // events
	log     io.Writer // reconnect notices

	// live, in table mode, redraws a view of every plugin's state in place
	// instead of printing a line per event (stdout is a terminal); width,
	// when set, is the terminal's width at each redraw.
	live  *liveView
	width func() int
}

// retryable reports whether a stream error is worth reconnecting after: the
// daemon shut down or restarted (Unavailable) or ended the stream.
func retryable(err error) bool {
	return errors.Is(err, io.EOF) || status.Code(err) == codes.Unavailable
}

// reconnectReason is what a reconnect notice says ended the stream: the
// status message of err, or "stream ended" when the daemon closed it.
func reconnectReason(err error) string {
	if st, ok := status.FromError(err); ok && err != nil && !errors.Is(err, io.EOF) {
		return oneLine(st.Message())
	}
	return "stream ended"
}

// sleepCtx waits d and reports true, or returns false as soon as ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// notice reports a reconnect or an anomaly: on stderr, or in the live view.
func (w *watcher) notice(msg string) {
	if w.live != nil {
		w.live.status = msg
		w.redraw()
		return
	}
	fmt.Fprintf(w.log, "pluginctl: watch: %s\n", msg)
}

func (w *watcher) redraw() error {
	width := 0
	if w.width != nil {
		width = w.width()
	}
	_, err := io.WriteString(w.out, fitWidth(w.live.render(w.pal), width))
	return err
}

// fitWidth cuts every line of s that is wider than width (when width > 0)
// to width-1 characters and an ellipsis, so that lines never wrap and the
// frame is redrawn in place. Escape sequences take no width; a cut line
// ends with a colour reset.
func fitWidth(s string, width int) string {
	if width <= 0 {
		return s
	}
	lines := strings.Split(s, "\n")
	for i, line := range lines {
		if utf8.RuneCountInString(escapeSeq.ReplaceAllString(line, "")) <= width {
			continue
		}
		var b strings.Builder
		n := 0
		for n < width-1 && line != "" {
			if loc := escapeSeq.FindStringIndex(line); loc != nil && loc[0] == 0 {
				b.WriteString(line[:loc[1]])
				line = line[loc[1]:]
				continue
			}
			_, size := utf8.DecodeRuneInString(line)
			b.WriteString(line[:size])
			line = line[size:]
			n++
		}
		b.WriteString("…" + ansiReset)
		lines[i] = b.String()
	}
	return strings.Join(lines, "\n")
}

// escapeSeq matches a CSI escape sequence (colours, cursor moves).
var escapeSeq = regexp.MustCompile("\x1b\\[[0-9;?]*[@-~]")

// run streams until ctx is done (then it returns nil) or a stream fails
// with an error that reconnecting will not fix. When the very first attempt
// fails before any event arrived, its error is returned too: the daemon is
// not there at all (wrong address, not started).
func (w *watcher) run(ctx context.Context) error {
	switch {
	case w.live != nil:
		if err := w.redraw(); err != nil {
			return err
		}
	case w.output == "table":
		if _, err := fmt.Fprintln(w.out, w.pal.paint(ansiBold, watchHeader)); err != nil {
			return err
		}
	}
	last := w.since
	backoff := watchBackoffInitial
	for attempt := 0; ; attempt++ {
		n, err := w.once(ctx, &last)
		if ctx.Err() != nil {
			return nil
		}
		if !retryable(err) || (attempt == 0 && n == 0) {
			return err
		}
		if n > 0 {
			backoff = watchBackoffInitial
		}
		w.notice(fmt.Sprintf("%s; reconnecting in %s from revision %d", reconnectReason(err), backoff, last))
		if !sleepCtx(ctx, backoff) {
			return nil
		}
		backoff = min(backoff*2, watchBackoffMax)
	}
}

// once runs one stream from *last, printing each event (or, live, redrawing
// the view after each batch of events) and advancing *last to the revision
// the watcher is at. It returns how many events arrived.
func (w *watcher) once(ctx context.Context, last *uint64) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fresh := *last == 0 // the stream starts with a full snapshot
	stream, err := w.control.WatchHealth(ctx, &plugincontrolv1.WatchHealthRequest{Names: w.names, SinceRevision: *last})
	if err != nil {
		return 0, err
	}
	if w.live != nil {
		return w.onceLive(ctx, stream, last, fresh)
	}
	n := 0
	for {
		resp, err := stream.Recv()
		if err != nil {
			return n, err
		}
		n++
		w.advance(resp.GetEvent(), last)
		switch w.output {
		case "json":
			err = printJSON(w.out, jsonLineOptions, resp)
		case "yaml":
			err = printYAML(w.out, resp, true)
		default:
			_, err = fmt.Fprintln(w.out, formatEvent(resp.GetEvent(), w.pal))
		}
		if err != nil {
			// Not retryable: stdout is gone.
			return n, fmt.Errorf("writing output: %w", err)
		}
	}
}

// onceLive feeds the live view: events are received on their own goroutine
// so that everything that arrived together is applied before one redraw.
func (w *watcher) onceLive(ctx context.Context, stream plugincontrolv1.PluginControlService_WatchHealthClient, last *uint64, fresh bool) (int, error) {
	type item struct {
		resp *plugincontrolv1.WatchHealthResponse
		err  error
	}
	items := make(chan item, 256)
	recvDone := make(chan struct{})
	ctx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); <-recvDone }()
	go func() {
		defer close(recvDone)
		for {
			resp, err := stream.Recv()
			select {
			case items <- item{resp, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	w.live.startStream(fresh)
	n := 0
	for {
		var it item
		select {
		case it = <-items:
		case <-ctx.Done():
			return n, ctx.Err()
		}
		// A batch: this event and every one already waiting. A notice
		// (a reconnect) stays until events arrive again.
		if it.err == nil {
			w.live.status = ""
		}
		var streamErr error
		for batch := true; batch; {
			if it.err != nil {
				streamErr = it.err
				break
			}
			n++
			w.advance(it.resp.GetEvent(), last)
			w.live.apply(it.resp.GetEvent(), time.Now())
			select {
			case it = <-items:
			default:
				batch = false
			}
		}
		if err := w.redraw(); err != nil {
			return n, fmt.Errorf("writing output: %w", err)
		}
		if streamErr != nil {
			return n, streamErr
		}
	}
}

// nextRevision is the revision a watcher is at after ev, coming from last.
// SYNCED and BOOKMARK carry exactly that revision, so they are trusted even
// when it went backwards (a restarted daemon whose revisions start over);
// other events only move it forward (a snapshot carries its record's
// revision, which may be older).
func nextRevision(last uint64, ev *plugincontrolv1.HealthEvent) uint64 {
	switch ev.GetType() {
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED, plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_BOOKMARK:
		return ev.GetRevision()
	default:
		return max(last, ev.GetRevision())
	}
}

// advance moves *last to the revision the watcher is at after ev, and says
// so when the daemon's revision went back.
func (w *watcher) advance(ev *plugincontrolv1.HealthEvent, last *uint64) {
	next := nextRevision(*last, ev)
	if next < *last {
		w.notice(fmt.Sprintf("the daemon's revision went back from %d to %d (was it restarted?)", *last, next))
	}
	*last = next
}

// liveRecentEvents is how many recent events the live view shows.
const liveRecentEvents = 10

// liveView is the state the live watch view draws: the current health of
// every watched plugin, the revision, and the recent events.
type liveView struct {
	title string // first line: what is watched, where

	plugins   map[string]*plugincontrolv1.PluginHealth
	revision  uint64
	synced    bool
	lastEvent time.Time // when the last event other than a bookmark arrived
	recent    []*plugincontrolv1.HealthEvent
	status    string // a reconnect notice, cleared by the next event

	// replacing is set while a snapshot that replaces the whole view
	// arrives (a fresh stream, or a reset): the old view is dropped at its
	// first record, or at its SYNCED when it has none.
	replacing, replaced bool
}

func newLiveView(title string) *liveView {
	return &liveView{title: title, plugins: map[string]*plugincontrolv1.PluginHealth{}}
}

// startStream prepares for a new stream; fresh streams begin with a full
// snapshot that replaces the view.
func (v *liveView) startStream(fresh bool) {
	v.replacing, v.replaced = fresh, false
}

// apply updates the view with one event received at now.
func (v *liveView) apply(ev *plugincontrolv1.HealthEvent, now time.Time) {
	typ := ev.GetType()
	if typ != plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_BOOKMARK {
		v.lastEvent = now
		v.recent = append(v.recent, ev)
		if len(v.recent) > liveRecentEvents {
			v.recent = slices.Delete(v.recent, 0, len(v.recent)-liveRecentEvents)
		}
	}
	if ev.GetReset_() && !v.replacing {
		v.replacing, v.replaced = true, false
	}
	replace := func() {
		if v.replacing && !v.replaced {
			clear(v.plugins)
			v.replaced = true
		}
	}
	v.revision = nextRevision(v.revision, ev)
	h := ev.GetHealth()
	switch typ {
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SNAPSHOT:
		replace()
		v.plugins[h.GetName()] = h
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_CHANGED:
		v.plugins[h.GetName()] = h
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_REMOVED:
		delete(v.plugins, h.GetName())
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED:
		replace()
		v.replacing, v.synced = false, true
	}
}

// liveClear moves the cursor home and clears the screen.
const liveClear = "\x1b[H\x1b[2J"

// render is one frame of the view, starting with the clear sequence.
func (v *liveView) render(p palette) string {
	var b strings.Builder
	b.WriteString(liveClear)
	b.WriteString(p.paint(ansiBold, v.title))
	b.WriteByte('\n')
	last := "-"
	if !v.lastEvent.IsZero() {
		last = v.lastEvent.Format("15:04:05")
	}
	state := ""
	if !v.synced {
		state = ", waiting for the snapshot"
	}
	fmt.Fprintf(&b, "revision %d, last event %s, %d plugin(s)%s\n\n", v.revision, last, len(v.plugins), state)

	names := make([]string, 0, len(v.plugins))
	for n := range v.plugins {
		names = append(names, n)
	}
	slices.Sort(names)
	hs := make([]*plugincontrolv1.PluginHealth, 0, len(names))
	for _, n := range names {
		hs = append(hs, v.plugins[n])
	}
	b.WriteString(healthTable(hs).render(p))

	fmt.Fprintf(&b, "\nRecent events:\n%s\n", watchHeader)
	for _, ev := range v.recent {
		b.WriteString(formatEvent(ev, p))
		b.WriteByte('\n')
	}
	if v.status != "" {
		fmt.Fprintf(&b, "\n%s\n", p.paint(ansiYellow, v.status))
	}
	return b.String()
}
