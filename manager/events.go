package manager

import (
	"cmp"
	"context"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
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
// watchers. Publishing never blocks: each watcher keeps at most one pending
// event per plugin (the latest), so a stalled watcher costs bounded memory.
type events struct {
	mu      sync.Mutex // guards every field
	rev     uint64
	latest  map[string]Health
	history []Event // the last events, oldest first, at most 2*size
	size    int     // history kept after compaction
	subs    map[*Watch]struct{}
	closed  bool
	// hwm is the durable revision high-water mark: revisions up to it may
	// be handed out; reaching it reserves another block first, so
	// revisions never go backwards across daemon restarts.
	hwm     uint64
	reserve func(upTo uint64) (uint64, error)
	log     func(error)
	// coalesced counts events replaced in a watcher's pending set before
	// it read them (a slow watcher's skipped intermediate states).
	coalesced atomic.Uint64
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
	if ev.reserve != nil && ev.rev+1 > ev.hwm {
		if _, err := ev.reserve(ev.rev + revisionBlock); err != nil {
			// Keep going in memory: health must not stop because the disk
			// did; a restart may then reuse revisions, which watchers
			// handle as a reset.
			ev.log(err)
		}
		ev.hwm = ev.rev + revisionBlock
	}
	ev.rev++
	h.Revision = ev.rev
	if t == EventRemoved {
		delete(ev.latest, h.Name)
	} else {
		ev.latest[h.Name] = h
	}
	e := Event{Type: t, Revision: ev.rev, Health: h}
	if len(ev.history) >= 2*ev.size {
		// Compact in bulk (amortized O(1) per event): keep the newest size.
		ev.history = append(ev.history[:0], ev.history[len(ev.history)-ev.size:]...)
	}
	ev.history = append(ev.history, e)
	for w := range ev.subs {
		w.offer(e)
	}
	return ev.rev
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
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, ev.rev
}

func (ev *events) close() {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	ev.closed = true
	for w := range ev.subs {
		w.end()
	}
	ev.subs = map[*Watch]struct{}{}
}

// Watch is a subscription to health events. Read it with Next; Close it when
// done.
type Watch struct {
	ev     *events
	filter map[string]bool

	mu      sync.Mutex // guards initial, pending, ended
	initial []Event    // snapshot or replay, then SYNCED
	pending map[string]Event
	ended   bool
	notify  chan struct{} // 1 slot: something is pending or ended
}

// offer queues e, replacing an older pending event of the same plugin;
// called with ev.mu held, never blocks.
func (w *Watch) offer(e Event) {
	if len(w.filter) > 0 && !w.filter[e.Health.Name] {
		return
	}
	w.mu.Lock()
	if _, dup := w.pending[e.Health.Name]; dup {
		w.ev.coalesced.Add(1)
	}
	w.pending[e.Health.Name] = e
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *Watch) end() {
	w.mu.Lock()
	w.ended = true
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// Watch subscribes to health events of the named plugins (all when names is
// empty). With since == 0 the watch starts with a snapshot of each plugin;
// with since > 0 it replays the events after since, or sends a snapshot
// flagged Reset when since is no longer in the history. Either way a
// SYNCED event follows, then live changes in revision order.
func (m *Manager) Watch(names []string, since uint64) (*Watch, error) {
	filter := make(map[string]bool, len(names))
	for _, n := range names {
		if err := ValidateName(n); err != nil {
			return nil, err
		}
		filter[n] = true
	}
	ev := m.events
	w := &Watch{ev: ev, filter: filter, pending: make(map[string]Event), notify: make(chan struct{}, 1)}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if ev.closed {
		return nil, ErrClosed
	}
	if len(ev.subs) >= m.cfg.MaxWatchers {
		return nil, &LimitError{Limit: "max_watchers", Value: m.cfg.MaxWatchers}
	}
	match := func(n string) bool { return len(filter) == 0 || filter[n] }
	oldest := ev.rev + 1
	if len(ev.history) > 0 {
		oldest = ev.history[0].Revision
	}
	switch {
	case since > 0 && since <= ev.rev && since+1 >= oldest:
		for _, e := range ev.history {
			if e.Revision > since && match(e.Health.Name) {
				w.initial = append(w.initial, e)
			}
		}
	default:
		reset := since > 0
		for n, h := range ev.latest {
			if match(n) {
				w.initial = append(w.initial, Event{Type: EventSnapshot, Revision: h.Revision, Health: h, Reset: reset})
			}
		}
		sort.Slice(w.initial, func(i, j int) bool { return w.initial[i].Health.Name < w.initial[j].Health.Name })
	}
	// SYNCED carries Reset too, so a watcher learns of a reset even when
	// no plugin matches (for example after a daemon restart with none
	// loaded, where since_revision is ahead of the new counter).
	reset := since > 0 && len(w.initial) > 0 && w.initial[0].Type == EventSnapshot
	if since > 0 && !(since <= ev.rev && since+1 >= oldest) {
		reset = true
	}
	w.initial = append(w.initial, Event{Type: EventSynced, Revision: ev.rev, Reset: reset})
	ev.subs[w] = struct{}{}
	return w, nil
}

// Next returns the next events in revision order, waiting for at least one.
// It returns ErrClosed when the manager shuts down, or ctx's error.
func (w *Watch) Next(ctx context.Context) ([]Event, error) {
	for {
		evs, ended := w.Poll()
		if len(evs) > 0 {
			return evs, nil
		}
		if ended {
			return nil, ErrClosed
		}
		select {
		case <-w.notify:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Poll returns the events ready now, in revision order, without waiting,
// and whether the watch has ended (the manager shut down).
func (w *Watch) Poll() (evs []Event, ended bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.initial != nil {
		evs, w.initial = w.initial, nil
		return evs, false
	}
	if len(w.pending) > 0 {
		evs = make([]Event, 0, len(w.pending))
		for _, e := range w.pending {
			evs = append(evs, e)
		}
		clear(w.pending)
		slices.SortFunc(evs, func(a, b Event) int { return cmp.Compare(a.Revision, b.Revision) })
		return evs, false
	}
	return nil, w.ended
}

// Ready is signalled when Poll may have something new.
func (w *Watch) Ready() <-chan struct{} { return w.notify }

// Bookmark returns the hub's current revision when nothing is pending for
// this watcher: everything up to that revision that matches the watch has
// already been returned by Poll or Next, so a client may resume from it.
func (w *Watch) Bookmark() (uint64, bool) {
	w.ev.mu.Lock()
	defer w.ev.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.initial != nil || len(w.pending) > 0 {
		return 0, false
	}
	return w.ev.rev, true
}

// Watchers returns the number of open watches (including the server's
// grpc.health.v1 mirror).
func (m *Manager) Watchers() int {
	m.events.mu.Lock()
	defer m.events.mu.Unlock()
	return len(m.events.subs)
}

// CoalescedEvents returns how many events slow watchers skipped because a
// newer state of the same plugin replaced them before they were read.
func (m *Manager) CoalescedEvents() uint64 { return m.events.coalesced.Load() }

// Revision is the hub's current revision (for bookmarks).
func (w *Watch) Revision() uint64 { return w.ev.revision() }

// Close ends the subscription.
func (w *Watch) Close() {
	w.ev.mu.Lock()
	delete(w.ev.subs, w)
	w.ev.mu.Unlock()
	w.end()
}

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
