package record

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"time"
)

// Store keeps the daemon's desired state and its audit log durably. Every
// method must be durable when it returns (the manager acknowledges a
// mutation only after it). Package store provides one on bbolt; a nil Store
// in Config keeps everything in memory.
type Store interface {
	// Commit makes one change of the desired state durable together with
	// its audit record, in one transaction: both or neither. Put records a
	// plugin (insert or replace by name), Delete forgets one; with
	// neither, only the audit record is written (an attempt that changed
	// nothing). Commit assigns the audit record's Sequence, PrevHash and
	// Hash.
	Commit(Change) error
	// Plugins returns every recorded plugin, sorted by name. A record that
	// cannot be read is returned with Name and Unreadable set, never
	// dropped.
	Plugins() ([]PluginRecord, error)
	// ReserveRevisions durably raises the revision high-water mark to at
	// least upTo and returns the mark it had before: revisions below the
	// old mark may have been handed out by an earlier run.
	ReserveRevisions(upTo uint64) (previous uint64, err error)
	// Audit returns a page of the audit log, newest first.
	Audit(AuditQuery) (AuditPage, error)
}

// Change is one change of the desired state and its audit record.
type Change struct {
	// Put, when set, records a plugin.
	Put *PluginRecord
	// Delete, when set, forgets a plugin.
	Delete string
	// Audit is the record of the change; required.
	Audit *AuditRecord
}

// PluginRecord is the durable desired state of one plugin.
type PluginRecord struct {
	// Name is the plugin's name, the record's key (Spec.Name when the
	// record could be read).
	Name string
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
	// Unreadable, when set, says why the stored record could not be read;
	// only Name is then known. Restore lists such a plugin UNHEALTHY.
	Unreadable string
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
	// PrevHash is the Hash of the record before (or of the checkpoint),
	// "" for the first record of a log; Hash chains this one to it (see
	// ChainHash).
	PrevHash string
	Hash     string
}

// ChainHash is the record's hash in the audit log's chain: the lowercase hex
// SHA-256 of PrevHash and the fields, each followed by a NUL byte, in the
// order of the API's AuditRecord.hash documentation. Stores set Hash to it.
func (r *AuditRecord) ChainHash() string {
	h := sha256.New()
	for _, f := range []string{
		r.PrevHash,
		strconv.FormatUint(r.Sequence, 10),
		r.Time.UTC().Format(time.RFC3339Nano),
		r.Caller, r.Action, r.Plugin,
		strconv.FormatUint(r.OldGeneration, 10), strconv.FormatUint(r.NewGeneration, 10),
		r.Binary, r.BinarySHA256, r.Outcome, r.Error,
	} {
		h.Write([]byte(f))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// AuditQuery selects a page of the audit log.
type AuditQuery struct {
	// Plugin filters by plugin name ("": all).
	Plugin string
	// Before returns records older than this sequence (0: from the
	// newest).
	Before uint64
	// Limit caps the records returned.
	Limit int
}

// AuditPage is a page of the audit log, newest first.
type AuditPage struct {
	Records []AuditRecord
	// More is set when older records match: continue with Before set to
	// the last record's Sequence.
	More bool
	// Checkpoint, when retention removed records, is the last one removed:
	// the oldest record kept chains to it.
	Checkpoint *AuditCheckpoint
}

// AuditCheckpoint is the last record retention removed from the log.
type AuditCheckpoint struct {
	Sequence uint64
	Hash     string
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

// ErrNoAudit is returned by a Store given a Change without an audit record.
var ErrNoAudit = errors.New("a change of the desired state needs its audit record")
