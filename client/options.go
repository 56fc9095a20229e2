package client

import (
	"crypto/tls"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// Every call of this package is configured one way: functional options,
// each made by a With… constructor. An option type is an interface, as
// grpc.DialOption is, so that an option several calls share is one value
// each of them accepts: WithNames selects plugins for List, Health and
// Watch; WithDrainTimeout bounds Reload and Unload; WithReconnectHook and
// WithBackoff tune the streams of Watch and WaitServing. Plugins are
// selected one way: a call about one plugin names it (Get, Reload,
// WaitServing, GetRollout), a call about several takes WithNames.

// Option configures Dial (and DialEndpoint).
type Option interface{ applyDial(*options) }

// ReloadOption configures Reload.
type ReloadOption interface{ applyReload(*reloadOptions) }

// UnloadOption configures Unload.
type UnloadOption interface{ applyUnload(*unloadOptions) }

// ListOption configures List.
type ListOption interface{ applyList(*listOptions) }

// HealthOption configures Health.
type HealthOption interface{ applyHealth(*healthOptions) }

// WatchOption configures Watch.
type WatchOption interface{ applyWatch(*watchOptions) }

// WaitOption configures WaitServing.
type WaitOption interface{ applyWait(*waitOptions) }

type (
	dialOption   func(*options)
	reloadOption func(*reloadOptions)
	listOption   func(*listOptions)
	watchOption  func(*watchOptions)
	waitOption   func(*waitOptions)
)

func (f dialOption) applyDial(o *options)           { f(o) }
func (f reloadOption) applyReload(o *reloadOptions) { f(o) }
func (f listOption) applyList(o *listOptions)       { f(o) }
func (f watchOption) applyWatch(o *watchOptions)    { f(o) }
func (f waitOption) applyWait(o *waitOptions)       { f(o) }

type reloadOptions struct {
	req         plugincontrolv1.ReloadRequest
	waitHealthy time.Duration
}

type unloadOptions struct {
	drain *durationpb.Duration
}

type listOptions struct {
	view  plugincontrolv1.PluginView
	names []string
}

type healthOptions struct {
	names   []string
	compact bool
}

type watchOptions struct {
	names       []string
	callback    func(*plugincontrolv1.HealthEvent)
	viewOnly    bool
	compact     bool
	since       uint64
	backoff     Backoff
	buffer      int
	onReconnect func(err error, retryIn time.Duration)
}

type waitOptions struct {
	settle      time.Duration
	backoff     Backoff
	onReconnect func(err error, retryIn time.Duration)
}

// Options of several calls.

// NamesOption is the option WithNames returns: List, Health and Watch
// accept it.
type NamesOption struct{ names []string }

// WithNames selects the named plugins (all plugins without it). An unknown
// name is ErrNotFound (for Watch: the watcher stops with it).
func WithNames(names ...string) NamesOption { return NamesOption{names: names} }

func (o NamesOption) applyList(l *listOptions)     { l.names = append(l.names, o.names...) }
func (o NamesOption) applyHealth(h *healthOptions) { h.names = append(h.names, o.names...) }
func (o NamesOption) applyWatch(w *watchOptions)   { w.names = append(w.names, o.names...) }

// DrainTimeoutOption is the option WithDrainTimeout returns: Reload and
// Unload accept it.
type DrainTimeoutOption struct{ d time.Duration }

// WithDrainTimeout bounds how long calls in flight on the old generation
// (Reload) or on the plugin (Unload) may run before it is stopped. Without
// it the daemon's default applies (30s unless plugind was configured
// otherwise).
func WithDrainTimeout(d time.Duration) DrainTimeoutOption { return DrainTimeoutOption{d: d} }

func (o DrainTimeoutOption) applyReload(r *reloadOptions) { r.req.DrainTimeout = durationpb.New(o.d) }
func (o DrainTimeoutOption) applyUnload(u *unloadOptions) { u.drain = durationpb.New(o.d) }

// StreamOption is an option of the health streams of Watch and
// WaitServing (WithReconnectHook, WithBackoff): both accept it.
type StreamOption struct {
	apply func(onReconnect *func(error, time.Duration), b *Backoff)
}

func (o StreamOption) applyWatch(w *watchOptions) { o.apply(&w.onReconnect, &w.backoff) }
func (o StreamOption) applyWait(w *waitOptions)   { o.apply(&w.onReconnect, &w.backoff) }

// WithReconnectHook calls fn, on the stream's goroutine, each time the
// health stream ended with a retryable error, before waiting retryIn and
// resuming it (for logging). A stream the daemon ended to reload itself in
// place (ErrReloading) is resumed at once, without a call: nothing went
// wrong.
func WithReconnectHook(fn func(err error, retryIn time.Duration)) StreamOption {
	return StreamOption{apply: func(h *func(error, time.Duration), _ *Backoff) { *h = fn }}
}

// WithBackoff sets the reconnect delay of the health stream: initial,
// doubling per consecutive failure, ±20%, up to max (defaults 100ms and
// 5s; see Backoff).
func WithBackoff(initial, max time.Duration) StreamOption {
	return StreamOption{apply: func(_ *func(error, time.Duration), b *Backoff) {
		b.Initial, b.Max = initial, max
	}}
}

// Dial.

// WithGRPCDialOptions adds grpc.DialOptions (interceptors, stats handlers,
// message size limits) after the client's own.
func WithGRPCDialOptions(opts ...grpc.DialOption) Option {
	return dialOption(func(o *options) { o.extra = append(o.extra, opts...) })
}

// WithTLS makes Dial use TLS with cfg (cloned) instead of plaintext. It is
// meant for tcp:// addresses; a nil cfg means the zero tls.Config (system
// roots, server name taken from the address).
func WithTLS(cfg *tls.Config) Option {
	return dialOption(func(o *options) {
		if cfg == nil {
			cfg = &tls.Config{}
		}
		o.tls = cfg.Clone()
	})
}

// WithToken sends "authorization: Bearer <token>" with every RPC. Over a
// unix socket the token is sent on the plaintext connection (the socket's
// file mode protects it). Over tcp:// it requires WithTLS, except to a
// loopback address; Dial refuses to send it in clear text across a network.
func WithToken(token string) Option {
	return dialOption(func(o *options) {
		o.token = token
		o.tokenSet = true
	})
}

// Reload.

// WithSpec makes Reload an upgrade to spec (binary, args, env, config, pin,
// policy); spec's name must be the reloaded name. Without it, Reload
// relaunches the current spec.
func WithSpec(spec *plugincontrolv1.PluginSpec) ReloadOption {
	return reloadOption(func(o *reloadOptions) { o.req.Spec = spec })
}

// WithExpectedGeneration makes Reload fail with ErrGenerationMismatch, and
// change nothing, unless generation is the active one: an optimistic
// concurrency check for callers that read the status first.
func WithExpectedGeneration(generation uint64) ReloadOption {
	return reloadOption(func(o *reloadOptions) { o.req.ExpectedGeneration = generation })
}

// WithValidateOnly makes Reload a dry run: the candidate runs the pipeline
// up to its readiness probe and is discarded; nothing changes.
// WithWaitHealthy has no effect on a dry run.
func WithValidateOnly() ReloadOption {
	return reloadOption(func(o *reloadOptions) { o.req.ValidateOnly = true })
}

// WithWaitHealthy makes Reload, after a successful swap, watch the plugin's
// health until the new generation is SERVING, for at most timeout. If it
// becomes UNHEALTHY or STOPPED, is unloaded, or the time runs out, Reload
// returns the ReloadResponse together with an *UnhealthyError carrying the
// last health record and its reason. Use WaitServing for the same after
// Load.
func WithWaitHealthy(timeout time.Duration) ReloadOption {
	return reloadOption(func(o *reloadOptions) { o.waitHealthy = timeout })
}

// WithBake keeps the previous generation's process warm for d after the
// swap: if the new generation becomes UNHEALTHY or crashes meanwhile,
// plugind reverts to it by itself (see WaitBake). 0 asks for no bake even
// when the daemon has a default (plugind --bake); without WithBake the
// daemon's default applies.
func WithBake(d time.Duration) ReloadOption {
	return reloadOption(func(o *reloadOptions) { o.req.Bake = durationpb.New(d) })
}

// List.

// WithBasicView lists the plugins without their specs
// (PLUGIN_VIEW_BASIC): what a table needs, a fraction of the bytes.
func WithBasicView() ListOption {
	return listOption(func(o *listOptions) { o.view = plugincontrolv1.PluginView_PLUGIN_VIEW_BASIC })
}

// Watch.

// WithCallback delivers every event to fn instead of the Events channel. fn
// runs on the watcher's goroutine, one event at a time, after the event was
// applied to the View; while it runs the watcher reads nothing (the daemon
// coalesces what piles up meanwhile). fn must not call Close.
func WithCallback(fn func(*plugincontrolv1.HealthEvent)) WatchOption {
	return watchOption(func(o *watchOptions) { o.callback = fn })
}

// WithViewOnly delivers no events at all: the caller reads View, waiting
// on Changed. Without it (and without WithCallback) the caller must drain
// Events, or the watcher stops reading the stream.
func WithViewOnly() WatchOption { return watchOption(func(o *watchOptions) { o.viewOnly = true }) }

// CompactViewOption is the option WithCompactView returns: Health and
// Watch accept it.
type CompactViewOption struct{}

// WithCompactView asks the daemon for HEALTH_VIEW_COMPACT: each
// PluginHealth carries only name, state, generation and revision (in
// Health's result; in Watch's events and View). For callers that follow
// states only: one change reaches many such watchers sooner, and a poll of
// Health costs less to decode. Health without it returns the full record.
func WithCompactView() CompactViewOption { return CompactViewOption{} }

func (CompactViewOption) applyHealth(h *healthOptions) { h.compact = true }
func (CompactViewOption) applyWatch(w *watchOptions)   { w.compact = true }

// WithSinceRevision starts the first stream after revision rev (from
// Health, or a revision saved by an earlier Watcher) instead of with a
// snapshot. The View then starts empty and only holds plugins that changed
// after rev, unless the daemon answers with a reset snapshot.
func WithSinceRevision(rev uint64) WatchOption {
	return watchOption(func(o *watchOptions) { o.since = rev })
}

// WithEventBuffer sets the capacity of the Events channel (default 64).
func WithEventBuffer(n int) WatchOption { return watchOption(func(o *watchOptions) { o.buffer = n }) }

// WaitServing.

// WithSettle makes WaitServing succeed only once the generation has stayed
// SERVING for d after it first was: any other state of it within d fails
// the wait (DEGRADED included).
func WithSettle(d time.Duration) WaitOption { return waitOption(func(o *waitOptions) { o.settle = d }) }
