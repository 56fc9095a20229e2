package main

import (
	"flag"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/manager"
)

//go:noinline
func withManagerRecover(m *manager.Manager) {
	defer m.Recover("echo", "bench")
}

//go:noinline
func withBareRecover() {
	defer func() { _ = recover() }()
}

// runRecover compares the panic tracker's Recover helper, deferred in a
// function that does not panic, with a bare deferred recover, using
// testing.Benchmark (ns/op and allocs/op). Both functions are kept out of
// line so each iteration pays one call and one deferred call. Short rounds
// of the two alternate; noise on a shared machine only ever adds time, so
// the fastest round of each is compared (the medians are reported too).
func runRecover(e *env) ([]row, error) {
	rounds, bt := 15, "100ms"
	if e.short {
		rounds, bt = 5, "50ms"
	}
	if err := flag.Set("test.benchtime", bt); err != nil {
		return nil, err
	}
	m, err := manager.New(manager.Config{PluginDir: e.pluginDir, SocketDir: e.tmp + "/rs", Logger: e.log})
	if err != nil {
		return nil, err
	}
	defer func() {
		ctx, cancel := ctxT(10 * time.Second)
		defer cancel()
		_ = m.Close(ctx)
	}()
	nsPerOp := func(r testing.BenchmarkResult) float64 { return float64(r.T.Nanoseconds()) / float64(max(r.N, 1)) }
	var hm, hb []float64
	var allocs int64
	for range rounds {
		r := testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				withManagerRecover(m)
			}
		})
		hm = append(hm, nsPerOp(r))
		allocs = max(allocs, r.AllocsPerOp())
		r = testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				withBareRecover()
			}
		})
		hb = append(hb, nsPerOp(r))
	}
	best := func(xs []float64) float64 { return slices.Min(xs) }
	over := best(hm) - best(hb)
	return []row{{
		scenario: "panic tracker Recover, no panic", measure: fmt.Sprintf("ns/op, fastest of %d rounds (median); allocs/op", rounds),
		plugind: fmt.Sprintf("%.2f ns (%.2f), %d allocs", best(hm), medianF(hm), allocs), ref: fmt.Sprintf("bare defer/recover %.2f ns (%.2f)", best(hb), medianF(hb)),
		ratio: ratio(best(hm), best(hb)), target: "≤ +2 ns, 0 allocs", ok: okIf(over <= 2 && allocs == 0),
		note: fmt.Sprintf("%+.2f ns over; medians %+.2f ns", over, medianF(hm)-medianF(hb)),
	}}, nil
}
