package manager

import (
	"context"
	"errors"

	"github.com/plugincontrol/plugincontrol/manager/hub"
)

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
	w, err := m.events.Subscribe(names, since, m.cfg.MaxWatchers, opts...)
	if errors.Is(err, hub.ErrTooManyWatches) {
		return nil, &LimitError{Limit: "max_watchers", Value: m.cfg.MaxWatchers}
	}
	return w, err
}

// Watchers returns the number of open watches counted against
// Config.MaxWatchers (Internal ones, like the server's grpc.health.v1
// mirror, are not).
func (m *Manager) Watchers() int { return m.events.Watchers() }

// CoalescedEvents returns how many events slow watchers skipped because a
// newer state of the same plugin replaced them before they were read.
func (m *Manager) CoalescedEvents() uint64 { return m.events.Coalesced() }

// EvictedWatches returns how many watches were evicted for falling behind
// (Config.WatchLagLimit).
func (m *Manager) EvictedWatches() uint64 { return m.events.Evicted() }

// Revision returns the current health revision: a cheap way to tell whether
// anything changed since a Health or Watch result.
func (m *Manager) Revision() uint64 { return m.events.Revision() }

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
	hs, rev := m.events.Snapshot(filter)
	return hs, rev, nil
}

// WaitHealth follows the health of plugin name (its current record, then
// every change: a Watch) until ok accepts a record, and returns that
// record. When ctx ends first it returns the last record seen and ctx's
// error. A plugin that is not loaded yet is waited for: its first record
// is the first one offered to ok.
func (m *Manager) WaitHealth(ctx context.Context, name string, ok func(Health) bool) (Health, error) {
	w, err := m.Watch([]string{name}, 0, hub.Internal())
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
