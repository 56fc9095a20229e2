package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// Defaults of --wait-timeout, and the reconnect backoff of the wait.
const (
	defaultWaitTimeout = 30 * time.Second
	waitBackoffInitial = 100 * time.Millisecond
	waitBackoffMax     = 2 * time.Second
)

// waitFlags are --wait-healthy, --wait-timeout and --settle of load and
// reload.
type waitFlags struct {
	fs      *flag.FlagSet
	enabled bool
	timeout time.Duration
	settle  time.Duration
}

func (w *waitFlags) register(fs *flag.FlagSet) {
	w.fs = fs
	fs.BoolVar(&w.enabled, "wait-healthy", false, "wait until the new generation is SERVING")
	fs.DurationVar(&w.timeout, "wait-timeout", defaultWaitTimeout, "give up waiting after this long")
	fs.DurationVar(&w.settle, "settle", 0, "the new generation must stay SERVING this long")
}

// validate checks the flags; validateOnly is reload's --validate-only.
func (w *waitFlags) validate(validateOnly bool) error {
	if !w.enabled {
		for _, n := range []string{"wait-timeout", "settle"} {
			if isSet(w.fs, n) {
				return usagef("--%s needs --wait-healthy", n)
			}
		}
		return nil
	}
	switch {
	case validateOnly:
		return usagef("--wait-healthy and --validate-only are mutually exclusive (a dry run starts no generation)")
	case w.timeout <= 0:
		return usagef("--wait-timeout must be positive")
	case w.settle < 0:
		return usagef("--settle must not be negative")
	case w.settle >= w.timeout:
		return usagef("--settle (%s) must be shorter than --wait-timeout (%s)", w.settle, w.timeout)
	}
	return nil
}

// notHealthyError says the generation awaited with --wait-healthy did not
// become (or stay) SERVING. It exits with exitNotHealthy.
type notHealthyError struct {
	name       string
	generation uint64
	reason     string
	last       *plugincontrolv1.PluginHealth // the last record seen, nil if none
}

func (e *notHealthyError) Error() string {
	return fmt.Sprintf("%s generation %d is not healthy: %s", e.name, e.generation, e.reason)
}

// healthWaiter decides from a plugin's health events whether a generation
// is healthy: healthy means a record of exactly that generation in state
// SERVING was seen and, with a settle period, no record other than SERVING
// of that generation followed within it. It fails at once when that
// generation is UNHEALTHY or STOPPED, when a newer generation replaced it
// (a supervisor restart after a crash), when the plugin was unloaded or is
// not loaded, and, during the settle period, on any state but SERVING.
// STARTING and DEGRADED before the first SERVING are waited through.
type healthWaiter struct {
	control    plugincontrolv1.PluginControlServiceClient
	name       string
	generation uint64
	settle     time.Duration
	log        io.Writer // reconnect notices

	last    *plugincontrolv1.PluginHealth
	seen    bool      // a record of the plugin arrived on the current stream
	serving time.Time // when the generation was first seen SERVING; zero before
}

// errHealthy ends the event loop with success.
var errHealthy = errors.New("healthy")

func (h *healthWaiter) fail(format string, a ...any) error {
	return &notHealthyError{name: h.name, generation: h.generation, reason: fmt.Sprintf(format, a...), last: h.last}
}

// apply judges one event of a stream that started with a snapshot when
// fresh. It returns errHealthy on success, a *notHealthyError on failure,
// nil to keep waiting.
func (h *healthWaiter) apply(ev *plugincontrolv1.HealthEvent, fresh bool) error {
	rec := ev.GetHealth()
	switch ev.GetType() {
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED:
		if (fresh || ev.GetReset_()) && !h.seen {
			return h.fail("%s is not loaded", h.name)
		}
		return nil
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_REMOVED:
		if rec.GetName() == h.name {
			h.last = rec
			return h.fail("%s was unloaded", h.name)
		}
		return nil
	case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SNAPSHOT, plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_CHANGED:
	default:
		return nil
	}
	if rec.GetName() != h.name {
		return nil
	}
	h.last, h.seen = rec, true
	gen, state := rec.GetGeneration(), rec.GetState()
	withReason := func(s string) string {
		if r := oneLine(rec.GetReason()); r != "" {
			return s + ": " + r
		}
		return s
	}
	switch {
	case gen < h.generation:
		return nil // an older record; the new one follows
	case gen > h.generation:
		return h.fail("%s", withReason(fmt.Sprintf("generation %d replaced it (%s)", gen, stateName(state))))
	}
	switch state {
	case plugincontrolv1.PluginState_PLUGIN_STATE_SERVING:
		if h.serving.IsZero() {
			h.serving = time.Now()
			if h.settle <= 0 {
				return errHealthy
			}
		}
		return nil
	case plugincontrolv1.PluginState_PLUGIN_STATE_UNHEALTHY, plugincontrolv1.PluginState_PLUGIN_STATE_STOPPED:
		return h.fail("%s", withReason(stateName(state)))
	}
	if !h.serving.IsZero() {
		return h.fail("%s", withReason(fmt.Sprintf("%s %s after it was SERVING (within --settle %s)",
			stateName(state), formatDuration(time.Since(h.serving)), h.settle)))
	}
	return nil // STARTING or DEGRADED: wait for SERVING
}

// wait watches the plugin's health until the generation is healthy (nil),
// is not (*notHealthyError), or ctx ends (a *notHealthyError saying it
// timed out when ctx's cause is errWaitTimeout or a deadline, else that it
// was interrupted). A stream that breaks is reopened from the last revision seen;
// other stream errors are returned as they are.
func (h *healthWaiter) wait(ctx context.Context) error {
	var since uint64
	backoff := waitBackoffInitial
	for {
		n, err := h.stream(ctx, &since)
		switch {
		case errors.Is(err, errHealthy):
			return nil
		case err != nil && errors.As(err, new(*notHealthyError)):
			return err
		case ctx.Err() != nil:
			return h.timedOut(ctx)
		case !retryable(err):
			return err
		}
		if n > 0 {
			backoff = waitBackoffInitial
		}
		fmt.Fprintf(h.log, "pluginctl: waiting for %s to be healthy: %s; reconnecting in %s\n", h.name, reconnectReason(err), backoff)
		if !sleepCtx(ctx, backoff) {
			return h.timedOut(ctx)
		}
		backoff = min(backoff*2, waitBackoffMax)
	}
}

// errWaitTimeout is the cause of the wait's context when --wait-timeout
// ran out.
var errWaitTimeout = errors.New("--wait-timeout ran out")

func (h *healthWaiter) timedOut(ctx context.Context) error {
	if cause := context.Cause(ctx); !errors.Is(cause, errWaitTimeout) && !errors.Is(cause, context.DeadlineExceeded) {
		return h.fail("interrupted while waiting")
	}
	if !h.serving.IsZero() {
		return h.fail("timed out within the settle period")
	}
	if h.last == nil {
		return h.fail("timed out before any health record arrived")
	}
	return h.fail("timed out; last seen generation %d %s", h.last.GetGeneration(), stateName(h.last.GetState()))
}

// stream runs one WatchHealth stream from *since. It returns the number of
// events, and errHealthy, a *notHealthyError or the stream's error. Once
// the generation is SERVING, the stream is cut when the settle period is
// over: the generation stayed SERVING and errHealthy is returned.
func (h *healthWaiter) stream(ctx context.Context, since *uint64) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var settled atomic.Bool
	var timer *time.Timer
	settleAfter := func(d time.Duration) {
		timer = time.AfterFunc(d, func() { settled.Store(true); cancel() })
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	if !h.serving.IsZero() {
		settleAfter(time.Until(h.serving.Add(h.settle)))
	}
	fresh := *since == 0
	h.seen = false
	stream, err := h.control.WatchHealth(ctx, &plugincontrolv1.WatchHealthRequest{Names: []string{h.name}, SinceRevision: *since})
	n := 0
	for err == nil {
		var resp *plugincontrolv1.WatchHealthResponse
		if resp, err = stream.Recv(); err != nil {
			break
		}
		n++
		ev := resp.GetEvent()
		*since = nextRevision(*since, ev)
		wasServing := !h.serving.IsZero()
		if err := h.apply(ev, fresh); err != nil {
			return n, err
		}
		if !wasServing && !h.serving.IsZero() {
			settleAfter(h.settle)
		}
	}
	if settled.Load() {
		return n, errHealthy
	}
	return n, err
}
