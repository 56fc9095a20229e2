package testbin

import (
	"context"
	"log/slog"
	"sync"
)

// LogRecords is a slog.Handler that keeps every record, attributes
// included, for tests that assert what was logged.
type LogRecords struct {
	// Level is the lowest level kept; nil: every level.
	Level slog.Leveler

	mu   sync.Mutex // guards recs
	recs []slog.Record
}

// Enabled reports whether a record at l is kept.
func (h *LogRecords) Enabled(_ context.Context, l slog.Level) bool {
	return h.Level == nil || l >= h.Level.Level()
}
func (h *LogRecords) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *LogRecords) WithGroup(string) slog.Handler      { return h }

// Handle keeps a clone of r.
func (h *LogRecords) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}

// Find returns the records for which match holds; attrs are the record's
// attributes as strings by key.
func (h *LogRecords) Find(match func(r slog.Record, attrs map[string]string) bool) []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []slog.Record
	for _, r := range h.recs {
		attrs := map[string]string{}
		r.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
		if match(r, attrs) {
			out = append(out, r)
		}
	}
	return out
}
