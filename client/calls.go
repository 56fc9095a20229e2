package client

import (
	"context"
	"fmt"
	"time"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// Load launches a new plugin through the candidate pipeline and returns its
// status (generation 1). A candidate failure is a *CandidateError; a loaded
// name is ErrAlreadyExists; a bad spec is an *InvalidArgumentError. Load is
// never retried by the client (see Dial).
func (c *Client) Load(ctx context.Context, spec *plugincontrolv1.PluginSpec) (*plugincontrolv1.PluginStatus, error) {
	resp, err := c.LoadWithReport(ctx, spec)
	if err != nil {
		return nil, err
	}
	return resp.GetPlugin(), nil
}

// LoadWithReport is Load returning the whole response: the status and the
// report of each pipeline stage (durations, services described).
func (c *Client) LoadWithReport(ctx context.Context, spec *plugincontrolv1.PluginSpec) (*plugincontrolv1.LoadResponse, error) {
	resp, err := c.control.Load(ctx, &plugincontrolv1.LoadRequest{Spec: spec})
	if err != nil {
		return nil, wrapError(err)
	}
	return resp, nil
}

// Reload runs the candidate pipeline on a new generation of the named plugin
// and swaps to it only when it passes; otherwise the active generation keeps
// serving and the error is a *CandidateError. See WithSpec,
// WithExpectedGeneration, WithValidateOnly, WithDrainTimeout, WithBake and
// WithWaitHealthy.
// Reload is never retried by the client (see Dial).
func (c *Client) Reload(ctx context.Context, name string, opts ...ReloadOption) (*plugincontrolv1.ReloadResponse, error) {
	var o reloadOptions
	for _, opt := range opts {
		opt.applyReload(&o)
	}
	o.req.Name = name
	resp, err := c.control.Reload(ctx, &o.req)
	if err != nil {
		return nil, wrapError(err)
	}
	if o.waitHealthy > 0 && !o.req.ValidateOnly {
		wctx, cancel := context.WithTimeout(ctx, o.waitHealthy)
		defer cancel()
		if _, err := c.WaitServing(wctx, name, resp.GetPlugin().GetGeneration()); err != nil {
			return resp, err
		}
	}
	return resp, nil
}

// Unload drains and stops the named plugin, removes it from the daemon's
// desired state, and returns its last status (state STOPPED). An unknown
// name is ErrNotFound. Unload is never retried by the client.
func (c *Client) Unload(ctx context.Context, name string, opts ...UnloadOption) (*plugincontrolv1.PluginStatus, error) {
	var o unloadOptions
	for _, opt := range opts {
		opt.applyUnload(&o)
	}
	resp, err := c.control.Unload(ctx, &plugincontrolv1.UnloadRequest{Name: name, DrainTimeout: o.drain})
	if err != nil {
		return nil, wrapError(err)
	}
	return resp.GetPlugin(), nil
}

// List returns the status of the plugins WithNames selects (all plugins
// without it), sorted by name, following ListPlugins' pages to the last. An unknown
// name is ErrNotFound. Each page is retried on codes.Unavailable (see
// Dial).
func (c *Client) List(ctx context.Context, opts ...ListOption) ([]*plugincontrolv1.PluginStatus, error) {
	var o listOptions
	for _, opt := range opts {
		opt.applyList(&o)
	}
	req := &plugincontrolv1.ListPluginsRequest{View: o.view, Names: o.names}
	var out []*plugincontrolv1.PluginStatus
	for {
		resp, err := c.control.ListPlugins(ctx, req)
		if err != nil {
			return nil, wrapError(err)
		}
		out = append(out, resp.GetPlugins()...)
		if resp.GetNextPageToken() == "" {
			return out, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// Get returns the whole status of one plugin, spec included. An unknown
// name is ErrNotFound.
func (c *Client) Get(ctx context.Context, name string) (*plugincontrolv1.PluginStatus, error) {
	list, err := c.List(ctx, WithNames(name))
	if err != nil {
		return nil, err
	}
	if len(list) != 1 || list[0].GetName() != name {
		return nil, fmt.Errorf("plugincontrol: ListPlugins of %q returned %d other plugins", name, len(list))
	}
	return list[0], nil
}

// Health returns the current health of the plugins WithNames selects (all
// plugins without it), sorted by name, and the daemon-wide revision the view is
// consistent with (a Watch may resume from it). WithCompactView returns
// only each plugin's name, state, generation and revision. An unknown name is
// ErrNotFound. It is retried on codes.Unavailable (see Dial).
func (c *Client) Health(ctx context.Context, opts ...HealthOption) ([]*plugincontrolv1.PluginHealth, uint64, error) {
	var o healthOptions
	for _, opt := range opts {
		opt.applyHealth(&o)
	}
	req := &plugincontrolv1.HealthRequest{Names: o.names}
	if o.compact {
		req.View = plugincontrolv1.HealthView_HEALTH_VIEW_COMPACT
	}
	resp, err := c.control.Health(ctx, req)
	if err != nil {
		return nil, 0, wrapError(err)
	}
	return resp.GetPlugins(), resp.GetRevision(), nil
}

// Invoke calls method of the active generation of plugin with payload and
// returns the response payload and the generation that served the call. A
// handler panic is a *PanicError; other codes a plugin returns come back as
// a *StatusError with that code. Invoke is never retried by the client: the
// plugin method may not be idempotent.
func (c *Client) Invoke(ctx context.Context, plugin, method string, payload []byte) (response []byte, generation uint64, err error) {
	resp, err := c.gateway.Invoke(ctx, &plugincontrolv1.InvokeRequest{Plugin: plugin, Method: method, Payload: payload})
	if err != nil {
		return nil, 0, wrapError(err)
	}
	return resp.GetPayload(), resp.GetGeneration(), nil
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
