// Package hub is the manager's health hub: a daemon-wide revision
// counter, the latest health record of each plugin, a bounded history for
// watchers that resume, and the watches. It owns its locks; publishing
// never blocks and never touches the disk.
package hub

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plugincontrol/plugincontrol/manager/record"
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
	Health   record.Health
	// Reset marks snapshot events sent because the watcher's revision was
	// no longer in the history.
	Reset bool
}

// defaultHistory bounds the replay history.
const defaultHistory = 4096

// Config configures a Hub.
type Config struct {
	// History is how many events are kept for watchers that resume
	// (default 4096).
	History int
	// LagLimit is how long a watch may leave events pending before it is
	// evicted (0: never; see Watch).
	LagLimit time.Duration
	// Reserve durably raises the revision mark to at least upTo and returns
	// the mark it had (Store.ReserveRevisions); nil: revisions are not
	// made durable.
	Reserve func(upTo uint64) (previous uint64, err error)
	// Log reports what the hub cannot return: a failed reservation.
	Log func(error)
}

// ErrClosed is what a watch of a closed hub ends with, and what Subscribe
// returns once it is closed.
var ErrClosed = errors.New("manager closed")

// ErrTooManyWatches is what Subscribe returns past its limit.
var ErrTooManyWatches = errors.New("too many health watches")

// Hub is the health hub: a daemon-wide revision counter, the latest
// record per plugin, a bounded history for resuming watchers, and the
// watchers. Publishing never blocks and never touches the disk: each
// watcher keeps at most one pending event per plugin (the latest), so a
// stalled watcher costs bounded memory, and the durable revision mark is
// raised in the background, half a block ahead of need.
type Hub struct {
	mu      sync.Mutex // guards every field but coalesced, evicted (atomic) and reserving's goroutine
	rev     uint64
	latest  map[string]record.Health
	history []Event // the last events, oldest first, at most 2*size
	size    int     // history kept after compaction
	subs    map[*Watch]struct{}
	counted int // watches in subs that are not Internal
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
	// evicted (Config.LagLimit; 0: never); evicted counts evictions.
	lagLimit time.Duration
	evicted  atomic.Uint64
}

// revisionBlock is how many revisions one durable reservation covers.
const revisionBlock = 1 << 20

// New returns a hub at revision 0; Start sets where it continues.
func New(cfg Config) *Hub {
	size := cfg.History
	if size <= 0 {
		size = defaultHistory
	}
	log := cfg.Log
	if log == nil {
		log = func(error) {}
	}
	return &Hub{latest: make(map[string]record.Health), subs: make(map[*Watch]struct{}), size: size,
		lagLimit: cfg.LagLimit, reserve: cfg.Reserve, log: log}
}

// Start sets where revisions continue: after rev, below mark, the durable
// mark an earlier run reserved (Reserve(0)); after a reload in place, with
// the history and latest records it handed over. When less than half a
// block of the mark is left it reserves the next block now, before any
// lock is held, and returns that reservation's error (revisions go on in
// memory all the same; the hub retries in the background). Call it before
// the first Publish.
func (ev *Hub) Start(rev, mark uint64, history []Event, latest []record.Health) error {
	ev.mu.Lock()
	ev.rev, ev.hwm = rev, max(mark, rev)
	ev.history = append([]Event(nil), history...)
	for _, h := range latest {
		ev.latest[h.Name] = h
	}
	need := ev.reserve != nil && ev.hwm <= ev.rev+revisionBlock/2
	upTo := ev.rev + revisionBlock
	ev.mu.Unlock()
	if !need {
		return nil
	}
	if _, err := ev.reserve(upTo); err != nil {
		return err
	}
	ev.mu.Lock()
	ev.hwm = max(ev.hwm, upTo)
	ev.mu.Unlock()
	return nil
}

// State returns what a reload in place hands over: the last revision, the
// history and every plugin's latest record (for Start).
func (ev *Hub) State() (rev uint64, history []Event, latest []record.Health) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	latest = make([]record.Health, 0, len(ev.latest))
	for _, h := range ev.latest {
		latest = append(latest, h)
	}
	return ev.rev, append([]Event(nil), ev.history...), latest
}

// Publish assigns the next revision to h, records it and offers it to every
// watcher. It returns the revision.
func (ev *Hub) Publish(t EventType, h record.Health) uint64 {
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
func (ev *Hub) reserveAheadLocked() {
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

// Revision returns the current revision.
func (ev *Hub) Revision() uint64 {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return ev.rev
}

// Snapshot returns the latest record of the named plugins (all when names
// is empty) and the revision they are consistent with.
func (ev *Hub) Snapshot(names map[string]bool) ([]record.Health, uint64) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	out := make([]record.Health, 0, len(ev.latest))
	for n, h := range ev.latest {
		if len(names) == 0 || names[n] {
			out = append(out, h)
		}
	}
	slices.SortFunc(out, func(a, b record.Health) int { return strings.Compare(a.Name, b.Name) })
	return out, ev.rev
}

// Close ends every watch (they end with ErrClosed) and waits for a
// reservation under way.
func (ev *Hub) Close() {
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
// pending event has waited longer than Config.LagLimit when another
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
	ev       *Hub
	internal bool            // not counted against Subscribe's limit
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
	// bookmarkDue is set by MarkBookmark and taken by BookmarkDue.
	bookmarkDue atomic.Bool
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
func (w *Watch) Poll() (evs []Event, ended bool) {
	ptrs, ended := w.PollInto(nil)
	if len(ptrs) == 0 {
		return nil, ended
	}
	evs = make([]Event, len(ptrs))
	for i, e := range ptrs {
		evs[i] = *e
	}
	return evs, ended
}

// PollInto is Poll for a reader that loops on a watch: it appends to
// buf[:0], so one buffer serves every poll, and returns pointers to the
// events, which are read-only (a published event is shared by every
// watcher). The reader should clear the buffer once it is done with the
// events, so that it keeps none of them alive: a buffer of pointers costs
// a long-lived watcher 8 bytes per slot where a buffer of events cost it
// the size of a health record per slot (bench/NOTES.md item 7).
func (w *Watch) PollInto(buf []*Event) (evs []*Event, ended bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.initial != nil {
		initial := w.initial
		w.initial = nil
		evs = buf[:0]
		for i := range initial {
			evs = append(evs, &initial[i])
		}
		if n := len(initial); n > 0 {
			w.taken = max(w.taken, initial[n-1].Revision)
		}
		return evs, false
	}
	if w.evicted {
		return nil, true
	}
	if w.hasPending() {
		evs = append(buf[:0], w.pending...)
		for _, e := range w.pendingMap {
			evs = append(evs, e)
		}
		clear(w.pending)
		w.pending = w.pending[:0]
		// A watch that outgrew the slice keeps its map: it watches many
		// plugins and will need it again.
		clear(w.pendingMap)
		slices.SortFunc(evs, func(a, b *Event) int { return cmp.Compare(a.Revision, b.Revision) })
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

// MarkBookmark asks the watch's reader for a bookmark: it sets the flag
// BookmarkDue takes and wakes Ready. It never blocks. One timer for every
// watch calls it (a timer per watch cost each watcher about 190 bytes;
// bench/NOTES.md item 7).
func (w *Watch) MarkBookmark() {
	w.bookmarkDue.Store(true)
	w.Wake()
}

// BookmarkDue reports whether MarkBookmark was called since the last
// BookmarkDue, and clears the flag.
func (w *Watch) BookmarkDue() bool { return w.bookmarkDue.Swap(false) }

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

// WatchOption configures a watch.
type WatchOption func(*Watch)

// Internal marks a watch the daemon makes for itself (the server's
// grpc.health.v1 mirror, WaitHealth): Subscribe's limit and Watchers
// count only the others, so the limit is the number of client streams it
// says.
func Internal() WatchOption { return func(w *Watch) { w.internal = true } }

// Subscribe starts a watch of the named plugins (all when names is empty).
// With since == 0 the watch starts with a snapshot of each plugin; with
// since > 0 it replays the events after since, or sends a snapshot
// flagged Reset when since is no longer in the history. Either way a
// SYNCED event follows, then live changes in revision order. Past limit
// open watches (Internal ones aside) it returns ErrTooManyWatches; once
// the hub is closed, ErrClosed.
func (ev *Hub) Subscribe(names []string, since uint64, limit int, opts ...WatchOption) (*Watch, error) {
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
		if ev.counted >= limit {
			return nil, ErrTooManyWatches
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
		// Sized once: the events are garbage as soon as they are sent, and
		// growing the slice made twice the garbage per new watcher.
		size := len(ev.latest)
		switch {
		case w.only != "":
			size = 1
		case w.filter != nil:
			size = min(size, len(w.filter))
		}
		w.initial = make([]Event, 0, size+1) // the snapshot and SYNCED
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

// Watchers returns the number of open watches that are not Internal.
func (ev *Hub) Watchers() int {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return ev.counted
}

// Coalesced returns how many events slow watchers skipped because a newer
// state of the same plugin replaced them before they were read.
func (ev *Hub) Coalesced() uint64 { return ev.coalesced.Load() }

// Evicted returns how many watches were evicted for falling behind.
func (ev *Hub) Evicted() uint64 { return ev.evicted.Load() }

// Revision is the hub's current revision (for bookmarks).
func (w *Watch) Revision() uint64 { return w.ev.Revision() }

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
