package hub

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/plugincontrol/plugincontrol/manager/record"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func rec(name string, gen uint64) record.Health {
	return record.Health{Name: name, State: record.StateServing, Generation: gen}
}

// watchAll returns a new hub and a watch of all its plugins, both closed
// at cleanup.
func watchAll(t *testing.T) (*Hub, *Watch) {
	t.Helper()
	h := New(Config{})
	w, err := h.Subscribe(nil, 0, 10)
	if err != nil {
		h.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		w.Close()
		h.Close()
	})
	return h, w
}

// A watch that does not read keeps one pending event per plugin, the
// latest; the replaced ones are counted as coalesced.
func TestSlowWatchCoalesces(t *testing.T) {
	h, w := watchAll(t)
	if evs, _ := w.Poll(); len(evs) != 1 || evs[0].Type != EventSynced {
		t.Fatalf("initial events %+v, want SYNCED alone", evs)
	}
	for gen := range uint64(100) {
		h.Publish(EventChanged, rec("a", gen))
		h.Publish(EventChanged, rec("b", gen))
	}
	evs, _ := w.Poll()
	if len(evs) != 2 || evs[0].Health.Name != "a" || evs[1].Health.Name != "b" || evs[1].Health.Generation != 99 || evs[1].Revision != 200 {
		t.Fatalf("pending %+v, want a and b at generation 99, in revision order", evs)
	}
	if h.Coalesced() != 198 {
		t.Fatalf("coalesced %d, want 198", h.Coalesced())
	}
}

// A watch resumes from a revision in the history with a replay, and from
// one past it with a reset snapshot.
func TestResumeReplaysOrResets(t *testing.T) {
	h := New(Config{History: 4})
	defer h.Close()
	for gen := range uint64(3) {
		h.Publish(EventChanged, rec("a", gen))
	}
	w, _ := h.Subscribe(nil, 1, 10)
	evs, _ := w.Poll()
	w.Close()
	if len(evs) != 3 || evs[0].Revision != 2 || evs[1].Revision != 3 || evs[2].Type != EventSynced || evs[2].Reset {
		t.Fatalf("replay from 1: %+v", evs)
	}
	for gen := range uint64(20) {
		h.Publish(EventChanged, rec("b", gen))
	}
	w, _ = h.Subscribe(nil, 1, 10)
	evs, _ = w.Poll()
	w.Close()
	if len(evs) != 3 || evs[0].Type != EventSnapshot || !evs[0].Reset || evs[2].Type != EventSynced || !evs[2].Reset || evs[2].Revision != 23 {
		t.Fatalf("resume from a compacted revision: %+v", evs)
	}
}

// Past the limit Subscribe refuses; Internal watches do not count; Close
// ends every watch with ErrClosed.
func TestLimitAndClose(t *testing.T) {
	h := New(Config{})
	a, _ := h.Subscribe(nil, 0, 1)
	if _, err := h.Subscribe(nil, 0, 1); !errors.Is(err, ErrTooManyWatches) {
		t.Fatalf("second watch past a limit of 1: %v", err)
	}
	in, err := h.Subscribe(nil, 0, 1, Internal())
	if err != nil || h.Watchers() != 1 {
		t.Fatalf("internal watch: %v, %d counted", err, h.Watchers())
	}
	h.Close()
	for _, w := range []*Watch{a, in} {
		w.Poll() // the initial SYNCED
		if _, err := w.Next(context.Background()); !errors.Is(err, ErrClosed) {
			t.Fatalf("Next after Close: %v", err)
		}
	}
	if _, err := h.Subscribe(nil, 0, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Subscribe after Close: %v", err)
	}
}

// A watch whose oldest pending event waited past the lag limit when
// another arrives is evicted; Next says so, with the last revision it
// returned.
func TestLaggingWatchIsEvicted(t *testing.T) {
	h := New(Config{LagLimit: 50 * time.Millisecond})
	defer h.Close()
	w, _ := h.Subscribe(nil, 0, 10)
	defer w.Close()
	w.Poll()
	h.Publish(EventChanged, rec("a", 1))
	time.Sleep(60 * time.Millisecond) // time is what is tested: the pending event ages past the limit
	h.Publish(EventChanged, rec("a", 2))
	_, err := w.Next(context.Background())
	var ev *EvictedError
	if !errors.As(err, &ev) || ev.LastRevision != 0 || h.Evicted() != 1 {
		t.Fatalf("Next of a lagging watch: %v (evicted %d)", err, h.Evicted())
	}
}

// Start continues the revisions an earlier run handed out and reserves a
// block ahead when less than half of one is left; with a block ahead,
// publishing reserves nothing more.
func TestStartReservesAhead(t *testing.T) {
	var mu sync.Mutex
	var marks []uint64
	reserved := make(chan struct{}, 4)
	h := New(Config{Reserve: func(upTo uint64) (uint64, error) {
		mu.Lock()
		marks = append(marks, upTo)
		mu.Unlock()
		reserved <- struct{}{}
		return 0, nil
	}})
	if err := h.Start(7, 7, nil, nil); err != nil {
		t.Fatal(err)
	}
	<-reserved
	if rev := h.Publish(EventChanged, rec("a", 1)); rev != 8 {
		t.Fatalf("first revision after Start(7): %d", rev)
	}
	h.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(marks) != 1 || marks[0] != 7+revisionBlock {
		t.Fatalf("reservations %v, want one up to %d", marks, 7+revisionBlock)
	}
}

// PollInto hands every watcher the one published copy of an event, in the
// caller's buffer; Poll copies.
func TestPollIntoSharesEvents(t *testing.T) {
	h := New(Config{})
	defer h.Close()
	h.Publish(EventChanged, rec("a", 1))
	var ws [2]*Watch
	for i := range ws {
		w, err := h.Subscribe([]string{"a"}, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		ws[i] = w
	}
	buf := make([]*Event, 0, 4)
	evs, _ := ws[0].PollInto(buf)
	if len(evs) != 2 || evs[0].Type != EventSnapshot || evs[1].Type != EventSynced || &evs[0] != &buf[:1][0] {
		t.Fatalf("initial events %v, want SNAPSHOT and SYNCED in the caller's buffer", evs)
	}
	ws[1].Poll()
	h.Publish(EventChanged, rec("a", 2))
	e0, _ := ws[0].PollInto(buf)
	e1, _ := ws[1].PollInto(nil)
	if len(e0) != 1 || len(e1) != 1 || e0[0] != e1[0] || e0[0].Health.Generation != 2 {
		t.Fatalf("pending %v and %v, want one shared event of generation 2", e0, e1)
	}
	if evs, ended := ws[0].PollInto(buf); len(evs) != 0 || ended {
		t.Fatalf("second poll %v, %v; want nothing", evs, ended)
	}
}

// MarkBookmark wakes the watch and is taken once by BookmarkDue.
func TestMarkBookmark(t *testing.T) {
	_, w := watchAll(t)
	w.Poll()
	select {
	case <-w.Ready():
	default:
	}
	if w.BookmarkDue() {
		t.Fatal("BookmarkDue before MarkBookmark")
	}
	w.MarkBookmark()
	select {
	case <-w.Ready():
	default:
		t.Fatal("MarkBookmark did not signal Ready")
	}
	if !w.BookmarkDue() || w.BookmarkDue() {
		t.Fatal("BookmarkDue did not report the mark exactly once")
	}
}
