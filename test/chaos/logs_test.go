package chaos_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
)

// TestPluginStderrRecords: a plugin's stderr becomes log records the way
// go-plugin parses it: its hclog JSON lines as records with their level and
// fields (not the JSON as a message), and a Go panic that kills it as one
// Error record whose stack is one attribute, not a record per line.
func TestPluginStderrRecords(t *testing.T) {
	h := &testbin.LogRecords{}
	m, _ := newManager(t, manager.Config{Logger: slog.New(h)})
	load(t, m, manager.Spec{Name: "crasher", Binary: "crasher", Config: []byte("crash_after=300ms"), Policy: manager.HealthPolicy{RestartLimit: 1, BackoffInitial: time.Minute}})

	// go-plugin's own line from inside the plugin, parsed.
	addr := h.Find(func(r slog.Record, a map[string]string) bool {
		return r.Message == "plugin address" && a["network"] == "unix"
	})
	if len(addr) == 0 || addr[0].Level != slog.LevelDebug {
		t.Fatalf("go-plugin's JSON \"plugin address\" line is not a Debug record with its fields: %v", addr)
	}
	if raw := h.Find(func(r slog.Record, _ map[string]string) bool { return strings.HasPrefix(r.Message, "{\"@level\"") }); len(raw) > 0 {
		t.Fatalf("JSON lines logged as messages: %v", raw[0].Message)
	}

	var panics []slog.Record
	waitFor(t, 10*time.Second, "the crash's panic record", func() bool {
		panics = h.Find(func(r slog.Record, a map[string]string) bool { return strings.HasPrefix(r.Message, "panic: ") })
		return len(panics) > 0
	})
	time.Sleep(300 * time.Millisecond) // time is what is tested: no second panic record follows within it
	panics = h.Find(func(r slog.Record, a map[string]string) bool { return strings.HasPrefix(r.Message, "panic: ") })
	stackOf := func(r slog.Record) (s string) {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "stack" {
				s = a.Value.String()
			}
			return true
		})
		return s
	}
	if len(panics) != 1 || panics[0].Level != slog.LevelError || !strings.Contains(stackOf(panics[0]), "goroutine ") {
		t.Fatalf("the crash: %d panic records, want one Error record with the stack attribute: %v", len(panics), panics)
	}
	if lines := h.Find(func(r slog.Record, _ map[string]string) bool {
		return strings.HasPrefix(r.Message, "goroutine ") || strings.Contains(r.Message, ".go:")
	}); len(lines) > 0 {
		t.Fatalf("stack lines logged as records of their own: %q", lines[0].Message)
	}
	if _, err := m.Unload(context.Background(), "crasher", 0); err != nil {
		t.Fatal(err)
	}
}
