package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"

	"github.com/plugincontrol/plugincontrol/client"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/spf13/cobra"
)

// watcher prints the health events of a client.Watcher, which reconnects
// and resumes after the daemon went away: a line (or JSON/YAML document)
// per event, or on a terminal a live view redrawn in place, with a banner
// while the connection is lost.
type watcher struct {
	names  []string
	since  uint64
	addr   string
	output string // table, json or yaml
	pal    palette
	out    io.Writer // events
	log    io.Writer // reconnect notices (not live)

	// live, in table mode, redraws a view of every plugin's state in place
	// instead of printing a line per event (stdout is a terminal); width,
	// when set, is the terminal's width at each redraw.
	live  *liveView
	width func() int

	mu   sync.Mutex // guards live and last: the watcher's goroutine applies, run draws
	last uint64     // the revision printed last, to notice a daemon restart
}

// reconnectReason is what a reconnect notice says ended the stream: the
// status message of err, or "stream ended" when the daemon closed it.
// retryText is a reconnect delay as the notices print it: to the
// millisecond (the delays are jittered; more digits say nothing).
func retryText(d time.Duration) string { return d.Round(time.Millisecond).String() }

func reconnectReason(err error) string {
	if st, ok := grpcStatus(err); ok && err != nil && !errors.Is(err, io.EOF) && st.Code() != codes.OK {
		return oneLine(st.Message())
	}
	return "stream ended"
}

// notice reports an anomaly on stderr (not live) or in the live view.
// w.mu is held.
func (w *watcher) notice(msg string) {
	if w.live != nil {
		w.live.status = msg
		return
	}
	fmt.Fprintf(w.log, "pluginctl: watch: %s\n", msg)
}

// redraw draws the live view. w.mu is not held.
func (w *watcher) redraw() error {
	width := 0
	if w.width != nil {
		width = w.width()
	}
	w.mu.Lock()
	frame := w.live.render(w.pal)
	w.mu.Unlock()
	_, err := io.WriteString(w.out, fitWidth(frame, width))
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

// run follows the stream with cl until ctx is done (then it returns nil)
// or the stream fails with an error reconnecting will not fix. When the
// very first attempt fails before any event arrived, its error is returned
// too: the daemon is not there at all (wrong address, not started).
func (w *watcher) run(ctx context.Context, cl *client.Client) error {
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
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dirty := make(chan struct{}, 1)
	var (
		gotAny   bool  // an event arrived (the daemon is there)
		firstErr error // the first attempt's failure, before any event
		outErr   error // writing stdout failed
	)
	w.last = w.since
	if w.live != nil {
		w.live.startStream(w.since == 0)
	}
	onEvent := func(ev *plugincontrolv1.HealthEvent) {
		gotAny = true
		w.mu.Lock()
		w.advance(ev)
		if w.live != nil {
			w.live.lost = time.Time{}
			w.live.status = ""
			w.live.apply(ev, time.Now())
			w.mu.Unlock()
			select {
			case dirty <- struct{}{}:
			default:
			}
			return
		}
		w.mu.Unlock()
		var err error
		resp := &plugincontrolv1.WatchHealthResponse{Event: ev}
		switch w.output {
		case "json":
			err = printJSON(w.out, jsonLineOptions, resp)
		case "yaml":
			err = printYAML(w.out, resp, true)
		default:
			_, err = fmt.Fprintln(w.out, formatEvent(ev, w.pal))
		}
		if err != nil && outErr == nil {
			outErr = fmt.Errorf("writing output: %w", err)
			cancel()
		}
	}
	onReconnect := func(err error, retryIn time.Duration) {
		if !gotAny {
			firstErr = err
			cancel()
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.live == nil {
			w.notice(fmt.Sprintf("connection lost: %s; reconnecting in %s from revision %d", reconnectReason(err), retryText(retryIn), w.last))
			return
		}
		if w.live.lost.IsZero() {
			w.live.lost = time.Now()
		}
		w.live.lostReason, w.live.retryAt = reconnectReason(err), time.Now().Add(retryIn)
		select {
		case dirty <- struct{}{}:
		default:
		}
	}
	opts := []client.WatchOption{client.WithCallback(onEvent), client.WithReconnectHook(onReconnect)}
	if w.since > 0 {
		opts = append(opts, client.WithSinceRevision(w.since))
	}
	cw, err := cl.Watch(wctx, append(opts, client.WithNames(w.names...))...)
	if err != nil {
		return err
	}
	defer cw.Close()
	// The banner counts the time since the connection was lost: redraw it
	// every second while it shows.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-cw.Done():
			switch {
			case firstErr != nil:
				return firstErr
			case outErr != nil:
				return outErr
			case ctx.Err() != nil:
				return nil
			}
			return cw.Err()
		case <-dirty:
		case <-tick.C:
			if w.live == nil {
				continue
			}
			w.mu.Lock()
			lost := !w.live.lost.IsZero()
			w.mu.Unlock()
			if !lost {
				continue
			}
		}
		if w.live != nil {
			if err := w.redraw(); err != nil {
				return fmt.Errorf("writing output: %w", err)
			}
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

// advance moves w.last to the revision after ev, and says so when the
// daemon's revision went back. w.mu is held.
func (w *watcher) advance(ev *plugincontrolv1.HealthEvent) {
	next := nextRevision(w.last, ev)
	if next < w.last {
		w.notice(fmt.Sprintf("the daemon's revision went back from %d to %d (was it restarted?)", w.last, next))
	}
	w.last = next
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
	status    string // a notice, cleared by the next event

	// While the connection is lost (set by the reconnect hook, cleared by
	// the next event): since when, why, and when the next attempt is.
	lost       time.Time
	lostReason string
	retryAt    time.Time

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

	if !v.lost.IsZero() {
		retry := "now"
		if d := time.Until(v.retryAt); d > 0 {
			retry = "in " + d.Round(100*time.Millisecond).String()
		}
		fmt.Fprintf(&b, "%s\n\n", p.paint(ansiRed+ansiBold, fmt.Sprintf("CONNECTION LOST since %s (%s ago): %s; retrying %s. The rows below are the last known state.",
			v.lost.Format("15:04:05"), time.Since(v.lost).Round(time.Second), v.lostReason, retry)))
	}
	names := make([]string, 0, len(v.plugins))
	for n := range v.plugins {
		names = append(names, n)
	}
	slices.Sort(names)
	hs := make([]*plugincontrolv1.PluginHealth, 0, len(names))
	for _, n := range names {
		hs = append(hs, v.plugins[n])
	}
	table := healthTable(hs).render(p)
	if !v.lost.IsZero() {
		// Dimmed: states the daemon may no longer have.
		table = strings.ReplaceAll(table, ansiReset, ansiReset+ansiDim)
		if p.on {
			table = ansiDim + table + ansiReset
		}
	}
	b.WriteString(table)

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

func (c *cli) watchCmd() *cobra.Command {
	var (
		since uint64
		plain bool
	)
	cmd := &cobra.Command{
		Use:     "watch [NAME...]",
		GroupID: "observe",
		Short:   "stream health events (a live view on a terminal)",
		Long: `Stream health events of the named plugins (all when none is named). A new
watch starts with a SNAPSHOT of each plugin and a SYNCED marker; then CHANGED
and REMOVED events and periodic BOOKMARKs follow. RESET is a snapshot that
replaces the whole view (the revision to resume from was no longer in the
daemon's history).

When standard output is a terminal (and -o table), a live view is redrawn in
place after each batch of events: the current state of every watched plugin,
the revision and the time of the last event, and the last 10 events. While
the connection is lost, a banner says since when and when the next attempt
is, and the rows are dimmed. Otherwise (piped, --plain, -o json or yaml) one
line per event: REVISION TYPE NAME STATE GEN REASON; with -o json one JSON
object per line, with -o yaml one YAML document per event, each starting with
"---"; a lost connection is reported on standard error.

When the daemon goes away the stream is reopened with backoff (100ms ±20% doubling
to 5s), resuming after the last revision seen. --timeout does not apply. Ends
with exit code 0 on SIGINT or SIGTERM.`,
		ValidArgsFunction: c.completeNames(-1),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, names []string) error {
			cl, err := c.connect(ctx)
			if err != nil {
				return err
			}
			defer cl.Close()
			w := &watcher{names: names, since: since, addr: c.addr, output: c.output, pal: c.pal, out: c.stdout, log: c.stderr}
			if c.output == "table" && !plain && c.terminal() {
				what := "all plugins"
				if len(names) > 0 {
					what = strings.Join(names, ", ")
				}
				w.live = newLiveView(fmt.Sprintf("pluginctl watch: %s at %s (Ctrl-C to quit)", what, c.addr))
				w.width = func() int { return terminalWidth(c.stdout) }
			}
			return w.run(ctx, cl)
		}),
	}
	cmd.Flags().Uint64Var(&since, "since", 0, "resume after revision N (default 0: start with a snapshot)")
	cmd.Flags().BoolVar(&plain, "plain", false, "one line per event even when standard output is a terminal")
	return cmd
}
