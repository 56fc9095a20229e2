package manager

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// EventType says what an Event is.
type EventType int

// Event types, numbered as plugincontrol.v1.HealthEventType.
const (
	EventUnknown EventType = iota
	EventSnapshot
	EventSynced
	EventChanged
	EventRemoved
	EventBookmark
)

var eventNames = [...]string{"UNKNOWN", "SNAPSHOT", "SYNCED", "CHANGED", "REMOVED", "BOOKMARK"}

func (t EventType) String() string {
	if t < 0 || int(t) >= len(eventNames) {
		return "UNKNOWN"
	}
	return eventNames[t]
}

// Event is one item of a health watch.
type Event struct {
	Type     EventType
	Revision uint64
	Health   Health
	// Reset marks snapshot events sent because the watcher's revision was
	// no longer in the history.
	Reset bool
}

// defaultHistory bounds the replay history.
const defaultHistory = 4096

// events is the health hub: a daemon-wide revision counter, the latest
// record per plugin, a bounded history for resuming watchers, and the
// watchers. Publishing never blocks and never touches the disk: each
// watcher keeps at most one pending event per plugin (the latest), so a
// stalled watcher costs bounded memory, and the durable revision mark is
// raised in the background, half a block ahead of need.
type events struct {
	mu      sync.Mutex // guards every field but coalesced (atomic) and reserving's goroutine
	rev     uint64
	latest  map[string]Health
	history []Event // the last events, oldest first, at most 2*size
	size    int     // history kept after compaction
	subs    map[*Watch]struct{}
	counted int // watches in subs counted against Config.MaxWatchers
	closed  bool
	// hwm is the durable revision high-water mark: revisions up to it may
	// be handed out; reaching it reserves another block first, so
	// revisions never go backwards across daemon restarts.
	hwm     uint64
	reserve func(upTo uint64) (uint64, error)
	log     func(error)
	// reserving: a reservation runs (in reservations' goroutine); short:
	// revisions ran past the mark before one finished (logged once).
	reserving    bool
	short        bool
	reservations sync.WaitGroup
	// coalesced counts events replaced in a watcher's pending set before
	// it read them (a slow watcher's skipped intermediate states).
	coalesced atomic.Uint64
	// lagLimit is how long a watcher may leave events pending before it is
	// evicted (Config.WatchLagLimit; 0: never); evicted counts evictions.
	lagLimit time.Duration
	evicted  atomic.Uint64
}

// revisionBlock is how many revisions one durable reservation covers.
const revisionBlock = 1 << 20

func newEvents(size int) *events {
	if size <= 0 {
		size = defaultHistory
	}
	return &events{latest: make(map[string]Health), subs: make(map[*Watch]struct{}), size: size}
}

// publish assigns the next revision to h, records it and offers it to every
// watcher. It returns the revision.
func (ev *events) publish(t EventType, h Health) uint64 {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	ev.reserveAheadLocked()
	ev.rev++
	h.Revision = ev.rev
	if t == EventRemoved {
		delete(ev.latest, h.Name)
	} else {
		ev.latest[h.Name] = h
	}
	e := &Event{Type: t, Revision: ev.rev, Health: h}
	if len(ev.history) >= 2*ev.size {
		// Compact in bulk (amortized O(1) per event): keep the newest size.
		ev.history = append(ev.history[:0], ev.history[len(ev.history)-ev.size:]...)
	}
	ev.history = append(ev.history, *e)
	// Every watcher keeps a pointer to the one read-only copy.
	now := time.Now().UnixNano()
	for w := range ev.subs {
		w.offer(e, now)
	}
	return ev.rev
}

// reserveAheadLocked starts raising the durable revision mark by a block,
// in the background, once less than half a block of it is left: the store's
// fsync never runs under ev.mu, which every reader of health takes. Should
// revisions overtake the mark (a failed or very slow store), publishing
// goes on in memory all the same (health must not stop because the disk
// did): a restart may then reuse revisions, which watchers handle as a
// reset. ev.mu is held.
func (ev *events) reserveAheadLocked() {
	if ev.reserve == nil {
		return
	}
	if ev.rev+1 > ev.hwm && !ev.short {
		ev.short = true
		ev.log(fmt.Errorf("health revision %d passed the durable mark %d before the store raised it", ev.rev+1, ev.hwm))
	}
	if ev.reserving || ev.closed || ev.hwm > ev.rev+revisionBlock/2 {
		return
	}
	ev.reserving = true
	upTo := max(ev.hwm, ev.rev) + revisionBlock
	ev.reservations.Add(1)
	go func() {
		defer ev.reservations.Done()
		_, err := ev.reserve(upTo)
		ev.mu.Lock()
		defer ev.mu.Unlock()
		ev.reserving = false
		if err != nil {
			ev.log(err)
			return
		}
		ev.hwm, ev.short = max(ev.hwm, upTo), false
	}()
}

// revision returns the current revision.
func (ev *events) revision() uint64 {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return ev.rev
}

// snapshot returns the latest record of the named plugins (all when names
// is empty) and the revision they are consistent with.
func (ev *events) snapshot(names map[string]bool) ([]Health, uint64) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	out := make([]Health, 0, len(ev.latest))
	for n, h := range ev.latest {
		if len(names) == 0 || names[n] {
			out = append(out, h)
		}
	}
	slices.SortFunc(out, func(a, b Health) int { return strings.Compare(a.Name, b.Name) })
	return out, ev.rev
}

func (ev *events) close() {
	ev.mu.Lock()
	ev.closed = true
	for w := range ev.subs {
		w.end()
	}
	ev.subs = map[*Watch]struct{}{}
	ev.counted = 0
	ev.mu.Unlock()
	ev.reservations.Wait()
}

// Watch is a subscription to health events. Read it with Next; Close it when
// done.
//
// Slow watchers. A watch keeps at most one pending event per plugin (the
// latest: a slow reader skips intermediate states, never the last), so
// what it holds is bounded by the plugins it watches. A watch whose oldest
// pending event has waited longer than Config.WatchLagLimit when another
// event arrives is evicted: its pending events are dropped, it takes no
// more, and Next returns an *EvictedError once the reader has taken what
// it had (the server ends the stream with ResourceExhausted, telling the
// client to resume from its last revision, which replays what it missed).
// A reader stuck in a blocking send (a stalled gRPC client) learns of the
// eviction when the send returns; until then the bytes grpc-go queued for
// it are bounded by its per-stream write quota (64 KiB).
//
// Memory matters here (a daemon may hold 10,000 watches): a watch of one
// plugin keeps its name rather than a map, and the pending set is a short
// slice of pointers to the published events (shared by every watcher) until
// it outgrows smallPending.
type Watch struct {
	ev       *events
	internal bool            // not counted against Config.MaxWatchers
	only     string          // the one plugin watched, or ""
	filter   map[string]bool // the plugins watched when more than one; nil: all

	mu      sync.Mutex // guards initial, pending, pendingMap, pendingSince, taken, evicted, ended
	initial []Event    // snapshot or replay, then SYNCED
	pending []*Event   // latest per plugin, at most smallPending
	// pendingMap replaces pending when a slow watcher of many plugins has
	// more than smallPending of them pending.
	pendingMap map[string]*Event
	// pendingSince is when the oldest pending event arrived (unix ns; 0:
	// none pending); taken the revision of the last event Poll returned.
	pendingSince int64
	taken        uint64
	evicted      bool
	ended        bool
	notify       chan struct{} // 1 slot: something is pending or ended
}

// EvictedError is what Next returns for a watch evicted for falling
// behind (see Watch).
type EvictedError struct {
	// LagLimit is the limit it passed.
	LagLimit time.Duration
	// LastRevision is the revision of the last event the watch returned:
	// a watcher that received it resumes from it.
	LastRevision uint64
}

func (e *EvictedError) Error() string {
	return fmt.Sprintf("health watch evicted: its oldest undelivered event waited longer than the watch lag limit (%v); resume with since_revision set to the last revision received (the last event sent was revision %d)", e.LagLimit, e.LastRevision)
}

const smallPending = 8

// wants reports whether the watch covers plugin name.
func (w *Watch) wants(name string) bool {
	switch {
	case w.only != "":
		return name == w.only
	case w.filter != nil:
		return w.filter[name]
	}
	return true
}

// offer queues e, replacing an older pending event of the same plugin, or
// evicts the watch when its oldest pending event is older than the lag
// limit (now is the publish time, unix ns); called with ev.mu held, never
// blocks.
func (w *Watch) offer(e *Event, now int64) {
	if !w.wants(e.Health.Name) {
		return
	}
	w.mu.Lock()
	switch lag := w.ev.lagLimit; {
	case w.evicted:
		w.mu.Unlock()
		return
	case w.pendingSince == 0:
		w.pendingSince = now
	case lag > 0 && !w.internal && now-w.pendingSince > int64(lag):
		w.evicted = true
		clear(w.pending)
		w.pending, w.pendingMap = nil, nil
		w.ev.evicted.Add(1)
		w.mu.Unlock()
		w.Wake()
		return
	}
	if w.put(e) {
		w.ev.coalesced.Add(1)
	}
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// put records e as the pending event of its plugin and reports whether it
// replaced one; w.mu is held.
func (w *Watch) put(e *Event) (replaced bool) {
	name := e.Health.Name
	if w.pendingMap != nil {
		_, replaced = w.pendingMap[name]
		w.pendingMap[name] = e
		return replaced
	}
	for i, p := range w.pending {
		if p.Health.Name == name {
			w.pending[i] = e
			return true
		}
	}
	if len(w.pending) < smallPending {
		w.pending = append(w.pending, e)
		return false
	}
	w.pendingMap = make(map[string]*Event, 2*smallPending)
	for _, p := range w.pending {
		w.pendingMap[p.Health.Name] = p
	}
	w.pendingMap[name] = e
	w.pending = nil
	return false
}

func (w *Watch) hasPending() bool { return len(w.pending) > 0 || len(w.pendingMap) > 0 }

func (w *Watch) end() {
	w.mu.Lock()
	w.ended = true
	w.mu.Unlock()
	w.Wake()
}

// Watch subscribes to health events of the named plugins (all when names is
// empty). With since == 0 the watch starts with a snapshot of each plugin;
// with since > 0 it replays the events after since, or sends a snapshot
// flagged Reset when since is no longer in the history. Either way a
// SYNCED event follows, then live changes in revision order.
//
// Past Config.MaxWatchers open watches (Internal ones aside) it returns a
// *LimitError.
func (m *Manager) Watch(names []string, since uint64, opts ...WatchOption) (*Watch, error) {
	for _, n := range names {
		if err := ValidateName(n); err != nil {
			return nil, err
		}
	}
	ev := m.events
	w := &Watch{ev: ev, notify: make(chan struct{}, 1)}
	for _, o := range opts {
		o(w)
	}
	switch {
	case len(names) == 1:
		w.only = names[0]
	case len(names) > 1:
		w.filter = make(map[string]bool, len(names))
		for _, n := range names {
			w.filter[n] = true
		}
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if ev.closed {
		return nil, ErrClosed
	}
	if !w.internal {
		if ev.counted >= m.cfg.MaxWatchers {
			return nil, &LimitError{Limit: "max_watchers", Value: m.cfg.MaxWatchers}
		}
		ev.counted++
	}
	oldest := ev.rev + 1
	if len(ev.history) > 0 {
		oldest = ev.history[0].Revision
	}
	replay := since > 0 && since <= ev.rev && since+1 >= oldest
	reset := since > 0 && !replay
	if replay {
		for _, e := range ev.history {
			if e.Revision > since && w.wants(e.Health.Name) {
				w.initial = append(w.initial, e)
			}
		}
	} else {
		for n, h := range ev.latest {
			if w.wants(n) {
				w.initial = append(w.initial, Event{Type: EventSnapshot, Revision: h.Revision, Health: h, Reset: reset})
			}
		}
		slices.SortFunc(w.initial, func(a, b Event) int { return strings.Compare(a.Health.Name, b.Health.Name) })
	}
	// SYNCED carries Reset too, so a watcher learns of a reset even when
	// no plugin matches (for example after a daemon restart with none
	// loaded, where since_revision is ahead of the new counter).
	w.initial = append(w.initial, Event{Type: EventSynced, Revision: ev.rev, Reset: reset})
	ev.subs[w] = struct{}{}
	return w, nil
}

// Next returns the next events in revision order, waiting for at least one.
// It returns ErrClosed when the manager shuts down, an *EvictedError when
// the watch fell behind, or ctx's error.
func (w *Watch) Next(ctx context.Context) ([]Event, error) {
	for {
		evs, ended := w.Poll()
		if len(evs) > 0 {
			return evs, nil
		}
		if ended {
			return nil, w.Err()
		}
		select {
		case <-w.notify:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Poll returns the events ready now, in revision order, without waiting,
// and whether the watch has ended (the manager shut down, or the watch was
// evicted: see Err).
func (w *Watch) Poll() (evs []Event, ended bool) { return w.PollInto(nil) }

// PollInto is Poll appending to buf[:0], so that a reader looping on a
// watch reuses one buffer.
func (w *Watch) PollInto(buf []Event) (evs []Event, ended bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.initial != nil {
		evs, w.initial = w.initial, nil
		if n := len(evs); n > 0 {
			w.taken = max(w.taken, evs[n-1].Revision)
		}
		return evs, false
	}
	if w.evicted {
		return nil, true
	}
	if w.hasPending() {
		evs = buf[:0]
		for _, e := range w.pending {
			evs = append(evs, *e)
		}
		for _, e := range w.pendingMap {
			evs = append(evs, *e)
		}
		clear(w.pending)
		w.pending = w.pending[:0]
		// A watch that outgrew the slice keeps its map: it watches many
		// plugins and will need it again.
		clear(w.pendingMap)
		slices.SortFunc(evs, func(a, b Event) int { return cmp.Compare(a.Revision, b.Revision) })
		w.pendingSince = 0
		w.taken = evs[len(evs)-1].Revision
		return evs, false
	}
	return nil, w.ended
}

// Err says why a watch ended: an *EvictedError when it fell behind, else
// ErrClosed (nil while it runs).
func (w *Watch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.evicted:
		return &EvictedError{LagLimit: w.ev.lagLimit, LastRevision: w.taken}
	case w.ended:
		return ErrClosed
	}
	return nil
}

// Ready is signalled when Poll may have something new, or Wake was called.
func (w *Watch) Ready() <-chan struct{} { return w.notify }

// Wake signals Ready without an event. A reader that waits on Ready alone
// (one channel, the cheapest wait for a daemon holding 10,000 watches) has
// whatever else it waits for (its context, a timer, a shutdown) call Wake,
// and checks those after each wakeup. It never blocks.
func (w *Watch) Wake() {
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// Bookmark returns the hub's current revision when nothing is pending for
// this watcher: everything up to that revision that matches the watch has
// already been returned by Poll or Next, so a client may resume from it.
func (w *Watch) Bookmark() (uint64, bool) {
	w.ev.mu.Lock()
	defer w.ev.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.initial != nil || w.hasPending() || w.evicted {
		return 0, false
	}
	return w.ev.rev, true
}

// Watchers returns the number of open watches counted against
// Config.MaxWatchers (Internal ones, like the server's grpc.health.v1
// mirror, are not).
func (m *Manager) Watchers() int {
	m.events.mu.Lock()
	defer m.events.mu.Unlock()
	return m.events.counted
}

// WatchOption configures Watch.
type WatchOption func(*Watch)

// Internal marks a watch the daemon makes for itself (the server's
// grpc.health.v1 mirror): Config.MaxWatchers and Watchers count only the
// others, so the limit is the number of client streams it says.
func Internal() WatchOption { return func(w *Watch) { w.internal = true } }

// CoalescedEvents returns how many events slow watchers skipped because a
// newer state of the same plugin replaced them before they were read.
func (m *Manager) CoalescedEvents() uint64 { return m.events.coalesced.Load() }

// EvictedWatches returns how many watches were evicted for falling behind
// (Config.WatchLagLimit).
func (m *Manager) EvictedWatches() uint64 { return m.events.evicted.Load() }

// Revision is the hub's current revision (for bookmarks).
func (w *Watch) Revision() uint64 { return w.ev.revision() }

// Close ends the subscription.
func (w *Watch) Close() {
	w.ev.mu.Lock()
	if _, open := w.ev.subs[w]; open {
		delete(w.ev.subs, w)
		if !w.internal {
			w.ev.counted--
		}
	}
	w.ev.mu.Unlock()
	w.end()
}

// Revision returns the current health revision: a cheap way to tell whether
// anything changed since a Health or Watch result.
func (m *Manager) Revision() uint64 { return m.events.revision() }

// Health returns the current health of the named plugins (all when names is
// empty) and the revision. An unknown name is ErrNotFound.
func (m *Manager) Health(names []string) ([]Health, uint64, error) {
	filter := make(map[string]bool, len(names))
	for _, n := range names {
		if _, err := m.lookup(n); err != nil {
			return nil, 0, err
		}
		filter[n] = true
	}
	hs, rev := m.events.snapshot(filter)
	return hs, rev, nil
}

// WaitHealth follows the health of plugin name (its current record, then
// every change: a Watch) until ok accepts a record, and returns that
// record. When ctx ends first it returns the last record seen and ctx's
// error. A plugin that is not loaded yet is waited for: its first record
// is the first one offered to ok.
func (m *Manager) WaitHealth(ctx context.Context, name string, ok func(Health) bool) (Health, error) {
	w, err := m.Watch([]string{name}, 0, Internal())
	if err != nil {
		return Health{}, err
	}
	defer w.Close()
	var last Health
	for {
		evs, err := w.Next(ctx)
		if err != nil {
			return last, err
		}
		for _, e := range evs {
			if e.Health.Name != name {
				continue
			}
			last = e.Health
			if ok(last) {
				return last, nil
			}
		}
	}
}
