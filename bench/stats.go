package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// dist is a set of latency samples.
type dist []time.Duration

// q returns the q-quantile (nearest rank) of d; 0 for no samples.
func (d dist) q(q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func (d dist) p50() time.Duration { return d.q(0.50) }
func (d dist) p99() time.Duration { return d.q(0.99) }

// medianF is the median of xs (mean of the middle two for an even count).
func medianF(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// fmtDur prints a duration with 3 significant digits.
func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "0"
	case d < time.Microsecond:
		return fmt.Sprintf("%d ns", d.Nanoseconds())
	case d < time.Millisecond:
		return sig3(float64(d)/float64(time.Microsecond)) + " µs"
	case d < time.Second:
		return sig3(float64(d)/float64(time.Millisecond)) + " ms"
	default:
		return sig3(float64(d)/float64(time.Second)) + " s"
	}
}

func sig3(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// fmtRate prints calls per second.
func fmtRate(r float64) string {
	switch {
	case r >= 1e6:
		return sig3(r/1e6) + "M/s"
	case r >= 1e3:
		return sig3(r/1e3) + "k/s"
	default:
		return sig3(r) + "/s"
	}
}

// fmtBytes prints a byte count.
func fmtBytes(b float64) string {
	switch {
	case b >= 1<<20:
		return sig3(b/(1<<20)) + " MiB"
	case b >= 1<<10:
		return sig3(b/(1<<10)) + " KiB"
	default:
		return fmt.Sprintf("%.0f B", b)
	}
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return math.Inf(1)
	}
	return a / b
}

// load is the result of a closed-loop load run.
type load struct {
	lat      dist
	calls    int
	failed   int
	elapsed  time.Duration
	firstErr error
}

func (l load) rate() float64 { return float64(l.calls) / l.elapsed.Seconds() }

// closedLoop runs n callers, each calling call back to back, until stop is
// done (and at most maxCalls calls per caller when maxCalls > 0). Failed
// calls are counted, not retried. Calls get their own context (see callCtx):
// stopping never fails a call in flight.
func closedLoop(stop context.Context, n, maxCalls int, call func(worker int) error) load {
	var (
		mu  sync.Mutex
		out load
		wg  sync.WaitGroup
	)
	start := time.Now()
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make(dist, 0, 4096)
			failed := 0
			var first error
			for i := 0; (maxCalls <= 0 || i < maxCalls) && stop.Err() == nil; i++ {
				t0 := time.Now()
				err := call(w)
				el := time.Since(t0)
				if err != nil {
					failed++
					if first == nil {
						first = err
					}
					continue
				}
				lat = append(lat, el)
			}
			mu.Lock()
			out.lat = append(out.lat, lat...)
			out.calls += len(lat)
			out.failed += failed
			if out.firstErr == nil {
				out.firstErr = first
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	out.elapsed = time.Since(start)
	return out
}

// forDuration runs closedLoop for d.
func forDuration(d time.Duration, n int, call func(worker int) error) load {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return closedLoop(ctx, n, 0, call)
}

// forCalls runs closedLoop for calls calls per caller (bounded by limit).
func forCalls(calls, n int, limit time.Duration, call func(worker int) error) load {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	return closedLoop(ctx, n, calls, call)
}

// contend measures the contenders fs side by side: a warm-up of each, then
// rounds in which each makes calls1 calls with 1 caller and runs dur16
// with 16 callers, the order rotating every round so that drift hits all
// alike. It returns each one's 1-caller and 16-caller latencies and its
// 16-caller rate per round; a failed call is an error.
func contend(fs []func(int) error, rounds, calls1 int, dur16 time.Duration) (one, many []dist, rates [][]float64, err error) {
	for _, f := range fs {
		if l := forCalls(300, 1, 30*time.Second, f); l.failed > 0 {
			return nil, nil, nil, fmt.Errorf("warm-up: %d failed calls: %v", l.failed, l.firstErr)
		}
	}
	one, many, rates = make([]dist, len(fs)), make([]dist, len(fs)), make([][]float64, len(fs))
	for i := range rounds {
		for j := range fs {
			k := (i + j) % len(fs)
			l := forCalls(calls1, 1, time.Minute, fs[k])
			if l.failed > 0 {
				return nil, nil, nil, fmt.Errorf("%d failed calls: %v", l.failed, l.firstErr)
			}
			one[k] = append(one[k], l.lat...)
		}
		for j := range fs {
			k := (i + j) % len(fs)
			l := forDuration(dur16, 16, fs[k])
			if l.failed > 0 {
				return nil, nil, nil, fmt.Errorf("%d failed calls at 16 callers: %v", l.failed, l.firstErr)
			}
			many[k] = append(many[k], l.lat...)
			rates[k] = append(rates[k], l.rate())
		}
	}
	return one, many, rates, nil
}
