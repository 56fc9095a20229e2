package server

import (
	"testing"

	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/manager/record"
)

// TestEventCacheKeepsSnapshotAndSynced: a new watcher's SNAPSHOT of the
// plugin that changed last and its SYNCED share a revision; both stay
// cached, so the next watcher encodes neither (indexed by revision alone,
// they evicted each other and every watcher encoded both).
func TestEventCacheKeepsSnapshotAndSynced(t *testing.T) {
	for _, compact := range []bool{false, true} {
		c := &eventCache{compact: compact}
		const rev = 42
		evs := []manager.Event{
			{Type: manager.EventSnapshot, Revision: rev, Health: record.Health{Name: "echo", State: record.StateServing, Generation: 1, Revision: rev}},
			{Type: manager.EventSynced, Revision: rev},
			{Type: manager.EventSynced, Revision: rev, Reset: true},
			{Type: manager.EventBookmark, Revision: rev},
		}
		first := make([]*encodedMsg, len(evs))
		for i := range evs {
			m, err := c.encode(&evs[i])
			if err != nil {
				t.Fatal(err)
			}
			first[i] = m
		}
		for i := range evs {
			m, err := c.encode(&evs[i])
			if err != nil {
				t.Fatal(err)
			}
			if m != first[i] {
				t.Errorf("compact=%v: %v of revision %d (reset %v) was encoded again: its slot was taken", compact, evs[i].Type, rev, evs[i].Reset)
			}
		}
		if string(first[0].b) == string(first[1].b) || string(first[1].b) == string(first[2].b) {
			t.Errorf("compact=%v: different events share an encoding", compact)
		}
	}
}

// The events of the last cachedRevisions revisions, of every type and
// reset flag, never share a slot.
func TestSlotOfNoCollisions(t *testing.T) {
	used := map[uint64]manager.Event{}
	for rev := range uint64(cachedRevisions) {
		for typ := manager.EventUnknown; typ <= manager.EventBookmark; typ++ {
			for _, reset := range []bool{false, true} {
				e := manager.Event{Type: typ, Revision: 1000 + rev, Reset: reset}
				s := slotOf(&e)
				if s >= cachedRevisions<<4 {
					t.Fatalf("slot %d out of range", s)
				}
				if o, ok := used[s]; ok {
					t.Fatalf("%+v and %+v share slot %d", o, e, s)
				}
				used[s] = e
			}
		}
	}
}
