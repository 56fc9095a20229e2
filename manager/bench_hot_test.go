package manager

// Microbenchmarks of the manager's hot paths (run with -benchmem):
//
//	go test -run '^$' -bench . -benchmem ./manager
//
// The end-to-end figures, against raw go-plugin and grpc-go's health
// service, come from the benchmark program: go run ./bench.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"
)

// benchManager is a Manager with no plugins, for the hub and tracker.
func benchManager(b *testing.B) *Manager {
	b.Helper()
	m, err := New(Config{
		PluginDir:   b.TempDir(),
		SocketDir:   b.TempDir(),
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		MaxWatchers: 1 << 20,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

//go:noinline
func deferRecover(m *Manager) { defer m.Recover("echo", "bench") }

//go:noinline
func deferBareRecover() { defer func() { _ = recover() }() }

// BenchmarkRecover is the panic tracker's Recover helper when nothing
// panics, next to a bare deferred recover (the target: at most 2 ns more,
// no allocation).
func BenchmarkRecover(b *testing.B) {
	m := benchManager(b)
	b.Run("helper", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			deferRecover(m)
		}
	})
	b.Run("bare", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			deferBareRecover()
		}
	})
}

// BenchmarkTracker is one fault recorded in a plugin's sliding windows and
// the windows judged, and the counts of every class read (what a health
// record costs).
func BenchmarkTracker(b *testing.B) {
	p := HealthPolicy{}.WithDefaults()
	b.Run("count+judge", func(b *testing.B) {
		b.ReportAllocs()
		var t tracker
		now := time.Now()
		for i := 0; b.Loop(); i++ {
			at := now.Add(time.Duration(i) * time.Millisecond)
			t.windows[FailurePanic] = appendBounded(t.windows[FailurePanic], at)
			t.combined = appendBounded(t.combined, at)
			_ = t.exceeded(at, &p)
		}
	})
	b.Run("counts", func(b *testing.B) {
		b.ReportAllocs()
		var t tracker
		now := time.Now()
		for i := range 3 {
			t.windows[FailurePanic] = appendBounded(t.windows[FailurePanic], now.Add(time.Duration(i)*time.Millisecond))
		}
		for b.Loop() {
			_ = t.counts(now, &p)
		}
	})
}

func benchHealth(name string) Health {
	return Health{Name: name, State: StateServing, Generation: 3, Reason: "", Since: time.Now()}
}

// BenchmarkHubPublish is one health change published to N watchers that
// never read (each keeps only the latest per plugin: the coalescing path)
// and to N watchers that read everything after each publish.
func BenchmarkHubPublish(b *testing.B) {
	for _, n := range []int{0, 1, 100, 10000} {
		b.Run(fmt.Sprintf("idle-watchers=%d", n), func(b *testing.B) {
			m := benchManager(b)
			for range n {
				if _, err := m.Watch(nil, 0); err != nil {
					b.Fatal(err)
				}
			}
			h := benchHealth("echo")
			b.ReportAllocs()
			for b.Loop() {
				m.events.Publish(EventChanged, h)
			}
		})
	}
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("reading-watchers=%d", n), func(b *testing.B) {
			m := benchManager(b)
			ws := make([]*Watch, n)
			for i := range ws {
				w, err := m.Watch(nil, 0)
				if err != nil {
					b.Fatal(err)
				}
				w.Poll() // the SYNCED batch
				ws[i] = w
			}
			h := benchHealth("echo")
			b.ReportAllocs()
			for b.Loop() {
				m.events.Publish(EventChanged, h)
				for _, w := range ws {
					if evs, _ := w.Poll(); len(evs) != 1 {
						b.Fatalf("polled %d events", len(evs))
					}
				}
			}
		})
	}
}

// BenchmarkCoalesce is a slow watcher of P plugins: 8 changes of each are
// published before it reads, and it reads the latest of each.
func BenchmarkCoalesce(b *testing.B) {
	for _, p := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("plugins=%d", p), func(b *testing.B) {
			m := benchManager(b)
			w, err := m.Watch(nil, 0)
			if err != nil {
				b.Fatal(err)
			}
			w.Poll()
			hs := make([]Health, p)
			for i := range hs {
				hs[i] = benchHealth(fmt.Sprintf("plugin-%03d", i))
			}
			b.ReportAllocs()
			for b.Loop() {
				for range 8 {
					for _, h := range hs {
						m.events.Publish(EventChanged, h)
					}
				}
				if evs, _ := w.Poll(); len(evs) != p {
					b.Fatalf("polled %d events, want %d", len(evs), p)
				}
			}
		})
	}
}

// BenchmarkHealthSnapshot is Manager.Health of all plugins (the unary Health
// RPC without names) with P plugins.
func BenchmarkHealthSnapshot(b *testing.B) {
	for _, p := range []int{10, 100} {
		b.Run(fmt.Sprintf("plugins=%d", p), func(b *testing.B) {
			m := benchManager(b)
			for i := range p {
				m.events.Publish(EventChanged, benchHealth(fmt.Sprintf("plugin-%03d", i)))
			}
			b.ReportAllocs()
			for b.Loop() {
				if hs, _, _ := m.Health(nil); len(hs) != p {
					b.Fatalf("%d plugins", len(hs))
				}
			}
		})
	}
}

// BenchmarkSpecValidate is the validation of a typical full spec, and of an
// instance name alone (which every Invoke does).
func BenchmarkSpecValidate(b *testing.B) {
	spec := Spec{
		Name:         "echo-canary",
		Binary:       "echo",
		Args:         []string{"-mode", "fast", "-v"},
		Env:          map[string]string{"LOG_LEVEL": "debug", "REGION": "eu-west-1"},
		SHA256:       "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		Config:       []byte(`{"greeting":"hello"}`),
		StartTimeout: 5 * time.Second,
		Policy:       HealthPolicy{PanicThreshold: 5, PanicWindow: time.Minute, OnUnhealthy: ActionRestart},
	}
	b.Run("spec", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := spec.Validate(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("name", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := ValidateName("echo-canary"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
