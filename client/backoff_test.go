package client

import (
	"context"
	"testing"
	"time"
)

// The delays double from Initial within ±Jitter, stop at Max, and start
// again after Reset; zero fields take the defaults.
func TestBackoff(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Jitter: 0.5}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for round := 0; round < 2; round++ {
		for i, w := range want {
			w *= time.Millisecond
			d := b.Next()
			lo, hi := w/2, w*3/2
			if w == time.Second {
				lo, hi = w/2, w // capped at Max
			}
			if d < lo || d > hi {
				t.Fatalf("round %d attempt %d: %v, want within [%v, %v]", round, i+1, d, lo, hi)
			}
		}
		b.Reset()
	}
	var zero Backoff
	if d := zero.Next(); d < 80*time.Millisecond || d > 120*time.Millisecond {
		t.Fatalf("zero Backoff's first delay %v, want 100ms ±20%%", d)
	}
	for range 100 {
		zero.Next()
	}
	if d := zero.Next(); d != 5*time.Second {
		t.Fatalf("zero Backoff after 100 attempts: %v, want the 5s cap", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := zero.Wait(ctx); err != context.Canceled {
		t.Fatalf("Wait on an ended context: %v", err)
	}
}
