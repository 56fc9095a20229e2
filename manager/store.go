package manager

import (
	"errors"
	"sync"
	"syscall"

	"github.com/plugincontrol/plugincontrol/manager/record"
)

// StoreError is a change of the desired state the store could not make
// durable: nothing was changed. ResourceExhausted reports whether the
// store's disk is full (or over quota).
type StoreError struct {
	// Op says what was being recorded.
	Op  string
	Err error
}

func (e *StoreError) Error() string { return "recording " + e.Op + ": " + e.Err.Error() }

func (e *StoreError) Unwrap() error { return e.Err }

// ResourceExhausted reports whether the store failed for lack of space.
func (e *StoreError) ResourceExhausted() bool {
	return errors.Is(e.Err, syscall.ENOSPC) || errors.Is(e.Err, syscall.EDQUOT)
}

// memStore is the in-memory Store used when Config.Store is nil.
type memStore struct {
	mu      sync.Mutex // guards the fields below
	plugins map[string]PluginRecord
	audit   []AuditRecord
	cp      *AuditCheckpoint
	rev     uint64
}

func newMemStore() *memStore {
	return &memStore{plugins: map[string]PluginRecord{}}
}

func (s *memStore) Commit(c Change) error {
	if c.Audit == nil {
		return record.ErrNoAudit
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.Put != nil {
		r := *c.Put
		r.Spec = r.Spec.Clone()
		r.Name = r.Spec.Name
		s.plugins[r.Name] = r
	}
	if c.Delete != "" {
		delete(s.plugins, c.Delete)
	}
	r := c.Audit
	switch n := len(s.audit); {
	case n > 0:
		r.Sequence, r.PrevHash = s.audit[n-1].Sequence+1, s.audit[n-1].Hash
	case s.cp != nil:
		r.Sequence, r.PrevHash = s.cp.Sequence+1, s.cp.Hash
	default:
		r.Sequence, r.PrevHash = 1, ""
	}
	r.Hash = r.ChainHash()
	s.audit = append(s.audit, *r)
	if len(s.audit) > 2*maxMemAudit {
		drop := len(s.audit) - maxMemAudit
		last := s.audit[drop-1]
		s.cp = &AuditCheckpoint{Sequence: last.Sequence, Hash: last.Hash}
		s.audit = append(s.audit[:0], s.audit[drop:]...)
	}
	return nil
}

// maxMemAudit bounds the in-memory audit log.
const maxMemAudit = 10000

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

func (s *memStore) Audit(q AuditQuery) (AuditPage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var p AuditPage
	for i := len(s.audit) - 1; i >= 0; i-- {
		r := s.audit[i]
		if (q.Before != 0 && r.Sequence >= q.Before) || (q.Plugin != "" && r.Plugin != q.Plugin) {
			continue
		}
		if len(p.Records) == q.Limit {
			p.More = true
			break
		}
		p.Records = append(p.Records, r)
	}
	if s.cp != nil {
		cp := *s.cp
		p.Checkpoint = &cp
	}
	return p, nil
}
