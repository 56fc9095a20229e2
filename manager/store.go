package manager

import (
	"context"
	"sync"
	"time"
)

// Store keeps the daemon's desired state and audit record durably. Every
// method must be durable when it returns (the manager acknowledges a
// mutation only after it). Package store provides one on bbolt; a nil Store
// in Config keeps everything in memory.
type Store interface {
	// PutPlugin records a loaded plugin (insert or replace by name).
	PutPlugin(PluginRecord) error
	// DeletePlugin forgets a plugin.
	DeletePlugin(name string) error
	// Plugins returns every recorded plugin.
	Plugins() ([]PluginRecord, error)
	// ReserveRevisions durably raises the revision high-water mark to at
	// least upTo and returns the mark it had before: revisions below the
	// old mark may have been handed out by an earlier run.
	ReserveRevisions(upTo uint64) (previous uint64, err error)
	// AppendAudit appends a record, assigning its Sequence.
	AppendAudit(*AuditRecord) error
	// Audit returns records newest first, filtered by plugin name (empty:
	// all), older than before (0: from the newest), at most limit.
	Audit(name string, before uint64, limit int) ([]AuditRecord, error)
}

// AuditedStore is a Store that can write a plugin record and the audit
// record of the mutation in one durable transaction. Load and Reload use it
// when the Store has it: one fsync instead of two on their critical path.
type AuditedStore interface {
	PutPluginAudited(PluginRecord, *AuditRecord) error
}

// PluginRecord is the durable desired state of one plugin.
type PluginRecord struct {
	Spec Spec
	// Generation is the last good (serving) generation.
	Generation uint64
	// HeldUnhealthy is set when the supervisor gave up (restart limit): the
	// plugin stays UNHEALTHY across daemon restarts until an operator
	// reloads it. Reason says why.
	HeldUnhealthy bool
	Reason        string
	// PluginName is what the plugin described itself as.
	PluginName string
}

// AuditRecord is one mutation.
type AuditRecord struct {
	Sequence      uint64
	Time          time.Time
	Caller        string
	Action        string
	Plugin        string
	OldGeneration uint64
	NewGeneration uint64
	Binary        string
	BinarySHA256  string
	Outcome       string
	Error         string
}

// callerKey carries the caller's identity in a context.
type callerKey struct{}

// WithCaller returns a context naming the caller of a mutation, recorded in
// the audit log (the server sets it from the authenticated identity).
func WithCaller(ctx context.Context, caller string) context.Context {
	return context.WithValue(ctx, callerKey{}, caller)
}

// CallerFrom returns the caller named by WithCaller, or "plugind" (the
// daemon itself: restarts, policy actions, restore).
func CallerFrom(ctx context.Context) string {
	if c, ok := ctx.Value(callerKey{}).(string); ok && c != "" {
		return c
	}
	return "plugind"
}

// memStore is the in-memory Store used when Config.Store is nil.
type memStore struct {
	mu      sync.Mutex // guards the fields below
	plugins map[string]PluginRecord
	audit   []AuditRecord
	rev     uint64
}

func newMemStore() *memStore {
	return &memStore{plugins: map[string]PluginRecord{}}
}

func (s *memStore) PutPlugin(r PluginRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.Spec = r.Spec.clone()
	s.plugins[r.Spec.Name] = r
	return nil
}

func (s *memStore) DeletePlugin(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.plugins, name)
	return nil
}

func (s *memStore) Plugins() ([]PluginRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]PluginRecord, 0, len(s.plugins))
	for _, r := range s.plugins {
		out = append(out, r)
	}
	return out, nil
}

func (s *memStore) ReserveRevisions(upTo uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.rev
	s.rev = max(s.rev, upTo)
	return prev, nil
}

// maxMemAudit bounds the in-memory audit log.
const maxMemAudit = 10000

func (s *memStore) AppendAudit(r *AuditRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.audit); n > 0 {
		r.Sequence = s.audit[n-1].Sequence + 1
	} else {
		r.Sequence = 1
	}
	s.audit = append(s.audit, *r)
	if len(s.audit) > 2*maxMemAudit {
		s.audit = append(s.audit[:0], s.audit[len(s.audit)-maxMemAudit:]...)
	}
	return nil
}

func (s *memStore) Audit(name string, before uint64, limit int) ([]AuditRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []AuditRecord
	for i := len(s.audit) - 1; i >= 0 && len(out) < limit; i-- {
		r := s.audit[i]
		if (before == 0 || r.Sequence < before) && (name == "" || r.Plugin == name) {
			out = append(out, r)
		}
	}
	return out, nil
}
