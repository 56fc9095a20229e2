package client

import (
	"context"
	"errors"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/retry"
)

// Backoff paces reconnects: attempt n after the last success waits
// Initial·2^(n-1), spread by ±Jitter of itself (go-grpc-middleware's
// retry.BackoffExponentialWithJitter), and at most Max. Reset after a
// stream or session that got somewhere starts again at Initial. Every
// reconnect loop of this package (Watch, WaitServing, WatchFleet, the
// direct connections' leases) and plugind's fleet agent use it. A zero
// field takes its default: 100ms, 5s, 0.2.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
	Jitter  float64

	attempt uint
}

// Next returns the delay before the next attempt and counts it.
func (b *Backoff) Next() time.Duration {
	initial, most, jitter := b.Initial, b.Max, b.Jitter
	if initial <= 0 {
		initial = defaultBackoffInitial
	}
	if most < initial {
		most = max(initial, defaultBackoffMax)
	}
	if jitter <= 0 {
		jitter = 0.2
	}
	b.attempt++
	if b.attempt > 62 { // 2^62 overflows any delay: Max it is
		b.attempt = 62
	}
	return min(retry.BackoffExponentialWithJitter(initial, jitter)(context.Background(), b.attempt), most)
}

// Reset starts the delays again at Initial.
func (b *Backoff) Reset() { b.attempt = 0 }

// Wait waits the next delay, or until ctx ends (then it returns ctx's
// error).
func (b *Backoff) Wait(ctx context.Context) error { return sleepCtx(ctx, b.Next()) }

// pause is what a stream loop does after its stream broke with the
// retryable err: for a daemon reloading in place it waits reloadRetry
// (the new image takes the stream within milliseconds); otherwise it tells
// hook (when set) the error and the delay, then waits it. It returns ctx's
// error when ctx ended first.
func (b *Backoff) pause(ctx context.Context, err error, hook func(error, time.Duration)) error {
	err = wrapError(err)
	if errors.Is(err, ErrReloading) {
		return sleepCtx(ctx, reloadRetry)
	}
	d := b.Next()
	if hook != nil {
		hook(err, d)
	}
	return sleepCtx(ctx, d)
}
