package client

import (
	"context"
	"errors"
	"io"
	"maps"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// Reconnect backoff of Watch and WaitServing (Backoff): 100ms, doubling, ±20%, at most 5s;
// back to 100ms once a stream delivered an event. After a stream the daemon
// ended because it reloads in place, they reconnect after reloadRetry (the
// old image may still be draining; the new one serves within 100-200ms).
const (
	defaultBackoffInitial = 100 * time.Millisecond
	defaultBackoffMax     = 5 * time.Second
	defaultEventBuffer    = 64
	reloadRetry           = 10 * time.Millisecond
)

// Watcher follows the WatchHealth stream of a daemon: it delivers every
// event (on Events, or to a callback), keeps a View of the health of the
// watched plugins that converges to the daemon's, and reconnects with
// backoff after the stream breaks, resuming from the last revision it saw.
// A reset snapshot from the daemon (its history no longer holds that
// revision, or the daemon restarted) replaces the View, so a consumer never
// needs code of its own for either case. Create it with Client.Watch; stop
// it with Close or by cancelling the context given to Watch.
type Watcher struct {
	c      *Client
	names  []string
	opts   watchOptions
	cancel context.CancelFunc

	events  chan *plugincontrolv1.HealthEvent
	synced  chan struct{}
	changed chan struct{}
	done    chan struct{}

	mu         sync.Mutex
	view       map[string]*plugincontrolv1.PluginHealth
	rev        uint64
	err        error
	syncedOnce sync.Once
}

// Watch starts a Watcher for the plugins WithNames selects (all plugins
// without it). It returns at once; the first stream is opened in the background
// and retried while the daemon is unreachable. It stops when ctx ends, when
// Close is called, or on an error reconnecting cannot fix (a bad name,
// codes.Unauthenticated, a closed Client): then Done is closed and Err says
// why.
func (c *Client) Watch(ctx context.Context, opts ...WatchOption) (*Watcher, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	o := watchOptions{buffer: defaultEventBuffer}
	for _, opt := range opts {
		opt.applyWatch(&o)
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{
		c:       c,
		names:   o.names,
		opts:    o,
		cancel:  cancel,
		synced:  make(chan struct{}),
		changed: make(chan struct{}, 1),
		done:    make(chan struct{}),
		view:    map[string]*plugincontrolv1.PluginHealth{},
		rev:     o.since,
	}
	if o.callback == nil && !o.viewOnly {
		w.events = make(chan *plugincontrolv1.HealthEvent, max(o.buffer, 0))
	}
	go w.run(ctx)
	return w, nil
}

// Events returns the channel of events, in the order the daemon sent them
// (SNAPSHOT, SYNCED, CHANGED, REMOVED, BOOKMARK; after a reconnect, the
// replay or reset snapshot of the new stream). It is closed when the watcher
// stops. It is nil with WithCallback or WithViewOnly.
func (w *Watcher) Events() <-chan *plugincontrolv1.HealthEvent { return w.events }

// View returns a copy of the current health of every watched plugin, by
// name. A snapshot (the first stream's, or a reset) replaces the whole view
// when its SYNCED arrives; CHANGED updates a plugin; REMOVED deletes it.
// The records are shared: do not modify them.
func (w *Watcher) View() map[string]*plugincontrolv1.PluginHealth {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.view)
}

// Revision returns the daemon revision the watcher is at: a reconnect
// resumes after it.
func (w *Watcher) Revision() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rev
}

// Synced is closed when the first SYNCED event has been applied: from then
// on View is the daemon's state as of some revision.
func (w *Watcher) Synced() <-chan struct{} { return w.synced }

// Changed receives a value (without blocking the watcher: one slot,
// coalesced) each time View changed.
func (w *Watcher) Changed() <-chan struct{} { return w.changed }

// Done is closed when the watcher has stopped.
func (w *Watcher) Done() <-chan struct{} { return w.done }

// Err returns, once Done is closed, why the watcher stopped: nil after
// Close, the context's error when the context given to Watch ended, or the
// error reconnecting could not fix (typed like the errors of the other
// helpers: errors.Is(err, ErrUnauthenticated), ...).
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close stops the watcher and waits for its goroutine to end. It must not
// be called from a WithCallback function.
func (w *Watcher) Close() {
	w.mu.Lock()
	if w.err == nil {
		w.err = errClosed
	}
	w.mu.Unlock()
	w.cancel()
	<-w.done
}

var errClosed = errors.New("closed")

func (w *Watcher) run(ctx context.Context) {
	defer func() {
		w.mu.Lock()
		if w.err == errClosed {
			w.err = nil
		}
		w.mu.Unlock()
		if w.events != nil {
			close(w.events)
		}
		close(w.done)
	}()
	b := w.opts.backoff
	for {
		n, err := w.stream(ctx)
		if ctx.Err() != nil {
			w.stop(ctx.Err())
			return
		}
		if !watchRetryable(err) {
			w.stop(wrapError(err))
			return
		}
		if n > 0 {
			b.Reset()
		}
		if b.pause(ctx, err, w.opts.onReconnect) != nil {
			w.stop(ctx.Err())
			return
		}
	}
}

func (w *Watcher) stop(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
	}
}

// stream runs one WatchHealth stream from the current revision and returns
// how many events it delivered and why it ended.
func (w *Watcher) stream(ctx context.Context) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	since := w.Revision()
	req := &plugincontrolv1.WatchHealthRequest{Names: w.names, SinceRevision: since}
	if w.opts.compact {
		req.View = plugincontrolv1.HealthView_HEALTH_VIEW_COMPACT
	}
	s, err := w.c.control.WatchHealth(ctx, req)
	if err != nil {
		return 0, err
	}
	// staging collects a snapshot until its SYNCED: a stream from revision
	// 0 always starts with one; a resumed stream only on a reset.
	var staging map[string]*plugincontrolv1.PluginHealth
	if since == 0 {
		staging = map[string]*plugincontrolv1.PluginHealth{}
	}
	n := 0
	for {
		resp, err := s.Recv()
		if err != nil {
			return n, err
		}
		ev := resp.GetEvent()
		n++
		changed := w.apply(ev, &staging)
		if changed {
			select {
			case w.changed <- struct{}{}:
			default:
			}
		}
		if ev.GetType() == plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED {
			w.syncedOnce.Do(func() { close(w.synced) })
		}
		switch {
		case w.opts.callback != nil:
			w.opts.callback(ev)
		case w.events != nil:
			select {
			case w.events <- ev:
			case <-ctx.Done():
				return n, ctx.Err()
			}
		}
	}
}

// apply updates the view and revision with ev and reports whether the view
// changed.
func (w *Watcher) apply(ev *plugincontrolv1.HealthEvent, staging *map[string]*plugincontrolv1.PluginHealth) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.rev = advanceRevision(w.rev, ev)
	h := ev.GetHealth()
	switch ev.GetType() {
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SNAPSHOT:
		if *staging == nil && ev.GetReset_() {
			*staging = map[string]*plugincontrolv1.PluginHealth{}
		}
		if *staging != nil {
			(*staging)[h.GetName()] = h
			return false
		}
		w.view[h.GetName()] = h
		return true
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED:
		if *staging == nil && ev.GetReset_() {
			// A reset with an empty snapshot.
			*staging = map[string]*plugincontrolv1.PluginHealth{}
		}
		if *staging == nil {
			return false
		}
		w.view, *staging = *staging, nil
		return true
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_CHANGED:
		w.view[h.GetName()] = h
		return true
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_REMOVED:
		if _, ok := w.view[h.GetName()]; !ok {
			return false
		}
		delete(w.view, h.GetName())
		return true
	}
	return false
}

// advanceRevision returns the revision a watcher is at after ev. SYNCED and
// BOOKMARK carry exactly that revision, so they are trusted even when it
// went backwards (a restarted daemon whose revisions start over); other
// events only move it forward (a snapshot carries its record's revision,
// which may be older than the stream's).
func advanceRevision(last uint64, ev *plugincontrolv1.HealthEvent) uint64 {
	switch ev.GetType() {
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED, plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_BOOKMARK:
		return ev.GetRevision()
	default:
		return max(last, ev.GetRevision())
	}
}

// watchRetryable reports whether a stream that ended with err is worth
// reopening: the daemon went away, is restarting or shutting down
// (Unavailable), ended the stream, or failed transiently. Errors that a
// reconnect cannot fix (bad names, authentication, a closed connection:
// Canceled) are not.
func watchRetryable(err error) bool {
	if errors.Is(err, io.EOF) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.ResourceExhausted, codes.Internal, codes.Unknown, codes.Aborted, codes.DeadlineExceeded:
		return true
	}
	return false
}
