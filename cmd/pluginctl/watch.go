package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

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
	json    bool
	out     io.Writer // events
	log     io.Writer // reconnect notices

	backoffInitial, backoffMax time.Duration
}

// retryable reports whether a stream error is worth reconnecting after: the
// daemon shut down or restarted (Unavailable) or ended the stream.
func retryable(err error) bool {
	return errors.Is(err, io.EOF) || status.Code(err) == codes.Unavailable
}

// run streams until ctx is done (then it returns nil) or a stream fails
// with an error that reconnecting will not fix. When the very first attempt
// fails before any event arrived, its error is returned too: the daemon is
// not there at all (wrong address, not started).
func (w *watcher) run(ctx context.Context) error {
	if !w.json {
		if _, err := fmt.Fprintln(w.out, watchHeader); err != nil {
			return err
		}
	}
	last := w.since
	backoff := w.backoffInitial
	for attempt := 0; ; attempt++ {
		n, err := w.once(ctx, &last)
		if ctx.Err() != nil {
			return nil
		}
		if !retryable(err) || (attempt == 0 && n == 0) {
			return err
		}
		if n > 0 {
			backoff = w.backoffInitial
		}
		reason := "stream ended"
		if st, ok := status.FromError(err); ok && err != nil && !errors.Is(err, io.EOF) {
			reason = oneLine(st.Message())
		}
		fmt.Fprintf(w.log, "pluginctl: watch: %s; reconnecting in %s from revision %d\n", reason, backoff, last)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(backoff*2, w.backoffMax)
	}
}

// once runs one stream from *last, printing each event and advancing *last
// to the highest revision seen. It returns how many events arrived.
func (w *watcher) once(ctx context.Context, last *uint64) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := w.control.WatchHealth(ctx, &plugincontrolv1.WatchHealthRequest{Names: w.names, SinceRevision: *last})
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		resp, err := stream.Recv()
		if err != nil {
			return n, err
		}
		n++
		w.advance(resp.GetEvent(), last)
		if w.json {
			err = printJSON(w.out, jsonLineOptions, resp)
		} else {
			_, err = fmt.Fprintln(w.out, formatEvent(resp.GetEvent()))
		}
		if err != nil {
			// Not retryable: stdout is gone.
			return n, fmt.Errorf("writing output: %w", err)
		}
	}
}

// advance moves *last to the revision the watcher is at after ev. SYNCED
// and BOOKMARK carry exactly that revision, so they are trusted even when it
// went backwards (a restarted daemon whose revisions start over); other
// events only move it forward (a snapshot carries its record's revision,
// which may be older).
func (w *watcher) advance(ev *plugincontrolv1.HealthEvent, last *uint64) {
	r := ev.GetRevision()
	switch ev.GetType() {
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED, plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_BOOKMARK:
		if r < *last {
			fmt.Fprintf(w.log, "pluginctl: watch: the daemon's revision went back from %d to %d (was it restarted?)\n", *last, r)
		}
		*last = r
	default:
		*last = max(*last, r)
	}
}
