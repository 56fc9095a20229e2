package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// WaitServing watches the health of the named plugin until generation is
// SERVING (and, WithSettle, stayed so), and returns its record. Records of
// older generations are waited through, as are STARTING and DEGRADED
// before the first SERVING. It fails with an *UnhealthyError at once when
// that generation is UNHEALTHY or STOPPED, when a newer generation
// replaced it (a supervisor restart after a crash, a revert), when the
// plugin is unloaded or not loaded, and when ctx ends first (give ctx a
// deadline; the error's Err is the context's cause). A generation of 0
// accepts whichever generation is SERVING. A broken stream is resumed from
// the last revision seen.
func (c *Client) WaitServing(ctx context.Context, name string, generation uint64, opts ...WaitOption) (*plugincontrolv1.PluginHealth, error) {
	var o waitOptions
	for _, opt := range opts {
		opt.applyWait(&o)
	}
	w := &waiter{c: c, name: name, generation: generation, opts: o}
	var serving time.Time // when generation was first seen SERVING
	var found *plugincontrolv1.PluginHealth
	err := w.run(ctx, func(h *plugincontrolv1.PluginHealth) (bool, string) {
		gen, state := h.GetGeneration(), h.GetState()
		withReason := func(s string) string {
			if r := firstLine(h.GetReason()); r != "" {
				return s + ": " + r
			}
			return s
		}
		switch {
		case generation != 0 && gen < generation:
			return false, "" // an older record; the new one follows
		case generation != 0 && gen > generation:
			return true, withReason(fmt.Sprintf("generation %d replaced it (%s)", gen, stateName(state)))
		}
		switch state {
		case plugincontrolv1.PluginState_PLUGIN_STATE_SERVING:
			found = h
			if serving.IsZero() {
				serving = time.Now()
				if o.settle <= 0 {
					return true, ""
				}
				w.settleUntil(serving.Add(o.settle))
			}
			return false, ""
		case plugincontrolv1.PluginState_PLUGIN_STATE_UNHEALTHY, plugincontrolv1.PluginState_PLUGIN_STATE_STOPPED:
			return true, withReason(stateName(state))
		}
		if !serving.IsZero() {
			return true, withReason(fmt.Sprintf("%s %s after it was SERVING (within the settle period of %s)",
				stateName(state), time.Since(serving).Round(time.Millisecond), o.settle))
		}
		return false, "" // STARTING or DEGRADED: wait for SERVING
	})
	if err != nil {
		if ue := (*UnhealthyError)(nil); errors.As(err, &ue) && ue.Err != nil && !serving.IsZero() {
			ue.Reason = "timed out within the settle period"
		}
		return nil, err
	}
	return found, nil
}

// WaitBake watches the health of the named plugin until the bake of
// generation (a Reload with WithBake) has ended, and returns it: Result
// BAKE_RESULT_KEPT when the generation passed, BAKE_RESULT_REVERTED when
// plugind went back to the previous generation's process (Reason says why,
// RevertedTo as which generation), BAKE_RESULT_CANCELLED when another
// reload, an unload or the daemon's shutdown ended it early. It fails with
// an *UnhealthyError when the plugin is unloaded or ctx ends first.
func (c *Client) WaitBake(ctx context.Context, name string, generation uint64) (*plugincontrolv1.Bake, error) {
	w := &waiter{c: c, name: name, generation: generation}
	var found *plugincontrolv1.Bake
	err := w.run(ctx, func(h *plugincontrolv1.PluginHealth) (bool, string) {
		b := h.GetBake()
		if b.GetGeneration() != generation || b.GetResult() == plugincontrolv1.BakeResult_BAKE_RESULT_BAKING {
			return false, ""
		}
		found = b
		return true, ""
	})
	if err != nil {
		return nil, err
	}
	return found, nil
}

// waiter follows the health records of one plugin, reconnecting and
// resuming when the stream breaks, until a judge says to stop.
type waiter struct {
	c          *Client
	name       string
	generation uint64
	opts       waitOptions

	settled  chan struct{} // closed when the settle period is over
	deadline time.Time     // of the settle period; zero when none runs
}

// settleUntil makes run succeed at t unless the judge stopped it before.
func (w *waiter) settleUntil(t time.Time) {
	w.deadline = t
	w.settled = make(chan struct{})
}

// run applies judge to every record of the plugin: stop with an empty
// reason is success, with a reason an *UnhealthyError about the last record
// seen. It also ends with one when the plugin is unloaded or not loaded or
// ctx ends, and with the stream's error when reconnecting cannot help.
func (w *waiter) run(ctx context.Context, judge func(*plugincontrolv1.PluginHealth) (stop bool, reason string)) error {
	var last *plugincontrolv1.PluginHealth
	fail := func(reason string, err error) error {
		return &UnhealthyError{Name: w.name, Generation: w.generation, Health: last, Reason: reason, Err: err}
	}
	var since uint64
	b := w.opts.backoff
	for {
		n, done, err := w.stream(ctx, &since, &last, judge)
		switch {
		case done && err == nil:
			return nil
		case done:
			return fail(err.Error(), nil)
		case ctx.Err() != nil:
			cause := context.Cause(ctx)
			if errors.Is(cause, context.Canceled) {
				return fail("interrupted while waiting", cause)
			}
			reason := "timed out before any health record arrived"
			if last != nil {
				reason = fmt.Sprintf("timed out; last seen generation %d %s", last.GetGeneration(), stateName(last.GetState()))
			}
			return fail(reason, cause)
		case !watchRetryable(err):
			return wrapError(err)
		}
		if n > 0 {
			b.Reset()
		}
		_ = b.pause(ctx, err, w.opts.onReconnect) // ctx's end is reported by the next turn
	}
}

// stream runs one WatchHealth stream from *since. done with a nil error is
// success, done with an error the reason of a failure; else err is why the
// stream ended.
func (w *waiter) stream(ctx context.Context, since *uint64, last **plugincontrolv1.PluginHealth,
	judge func(*plugincontrolv1.PluginHealth) (bool, string)) (n int, done bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var timer *time.Timer
	armed := false
	arm := func() {
		if w.settled != nil && !armed {
			armed = true
			settled := w.settled
			timer = time.AfterFunc(time.Until(w.deadline), func() { close(settled); cancel() })
		}
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	arm()
	snapshot := *since == 0 // this stream starts with a full snapshot
	seen := false           // a record of the plugin arrived on this stream
	s, err := w.c.control.WatchHealth(sctx, &plugincontrolv1.WatchHealthRequest{Names: []string{w.name}, SinceRevision: *since})
	for err == nil {
		var resp *plugincontrolv1.WatchHealthResponse
		if resp, err = s.Recv(); err != nil {
			break
		}
		n++
		ev := resp.GetEvent()
		*since = advanceRevision(*since, ev)
		h := ev.GetHealth()
		switch ev.GetType() {
		case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_REMOVED:
			*last = h
			return n, true, errors.New("unloaded")
		case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SYNCED:
			// A full snapshot (first stream, or a reset) without a record
			// of the plugin: it is not loaded.
			if (snapshot || ev.GetReset_()) && !seen {
				return n, true, errors.New("not loaded")
			}
			continue
		case plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_SNAPSHOT,
			plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_CHANGED:
		default:
			continue
		}
		*last, seen = h, true
		if stop, reason := judge(h); stop {
			if reason != "" {
				return n, true, errors.New(reason)
			}
			return n, true, nil
		}
		arm()
	}
	if w.settled != nil {
		select {
		case <-w.settled:
			return n, true, nil // stayed SERVING for the settle period
		default:
		}
	}
	return n, false, err
}

// stateName is a state without its enum prefix: SERVING.
func stateName(s plugincontrolv1.PluginState) string {
	return strings.TrimPrefix(s.String(), "PLUGIN_STATE_")
}

// firstLine is the first line of s.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
