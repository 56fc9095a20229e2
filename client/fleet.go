package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// WatchFleet follows FleetService.WatchFleet (a plugind started with
// --fleet-etcd): it calls fn with every event, in order, and when the
// stream breaks (the daemon or etcd unreachable) reopens it after the last
// revision received, with backoff (Backoff: 100ms doubling to 5s, ±20%), calling
// onReconnect (when not nil) before each wait. since 0 starts with a
// snapshot; plugin limits the events to one plugin's and the nodes'. It
// returns nil when ctx ends, fn's error when fn fails, and the stream's
// error when reconnecting cannot help (or the very first attempt fails:
// nothing answered at all).
func (c *Client) WatchFleet(ctx context.Context, since uint64, plugin string, fn func(*plugincontrolv1.FleetEvent) error, onReconnect func(err error, retryIn time.Duration)) error {
	var b Backoff
	got := false
	for {
		stream, err := c.fleet.WatchFleet(ctx, &plugincontrolv1.WatchFleetRequest{SinceRevision: since, Plugin: plugin})
		for err == nil {
			var resp *plugincontrolv1.WatchFleetResponse
			if resp, err = stream.Recv(); err != nil {
				break
			}
			got = true
			b.Reset()
			ev := resp.GetEvent()
			if ev.GetType() != plugincontrolv1.FleetEventType_FLEET_EVENT_TYPE_SNAPSHOT {
				since = max(since, ev.GetRevision())
			}
			if err := fn(ev); err != nil {
				return err
			}
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case !got || !watchRetryable(err):
			return wrapError(err)
		}
		if b.pause(ctx, err, onReconnect) != nil {
			return nil
		}
	}
}

// The FleetService calls (a plugind started with --fleet-etcd answers
// them; another answers FailedPrecondition, reason FLEET_DISABLED). Each
// returns the daemon's answer, or an error that wraps a *StatusError
// (errors.Is matches the sentinel of its code, as for every typed call).

// ListNodes lists the fleet's nodes.
func (c *Client) ListNodes(ctx context.Context) ([]*plugincontrolv1.FleetNode, error) {
	resp, err := c.fleet.ListNodes(ctx, &plugincontrolv1.ListNodesRequest{})
	return resp.GetNodes(), wrapError(err)
}

// FleetStatus returns the fleet plugins (all, or plugin's) and what each
// node reports of them.
func (c *Client) FleetStatus(ctx context.Context, plugin string) (*plugincontrolv1.FleetStatusResponse, error) {
	resp, err := c.fleet.FleetStatus(ctx, &plugincontrolv1.FleetStatusRequest{Plugin: plugin})
	return resp, wrapError(err)
}

// ApplyFleetPlugin stores the desired state of a fleet plugin (spec and
// selector); a spec without a sha256 pin needs allowUnpinned.
func (c *Client) ApplyFleetPlugin(ctx context.Context, p *plugincontrolv1.FleetPlugin, allowUnpinned bool) (*plugincontrolv1.FleetPlugin, error) {
	resp, err := c.fleet.ApplyFleetPlugin(ctx, &plugincontrolv1.ApplyFleetPluginRequest{Plugin: p, AllowUnpinned: allowUnpinned})
	return resp.GetPlugin(), wrapError(err)
}

// DeleteFleetPlugin removes a fleet plugin: every node unloads it.
func (c *Client) DeleteFleetPlugin(ctx context.Context, name string) error {
	_, err := c.fleet.DeleteFleetPlugin(ctx, &plugincontrolv1.DeleteFleetPluginRequest{Name: name})
	return wrapError(err)
}

// DetachFleetPlugin makes the node that answers stop following the fleet
// for plugin name (it keeps it as its own); AttachFleetPlugin undoes it.
func (c *Client) DetachFleetPlugin(ctx context.Context, name string) error {
	_, err := c.fleet.DetachFleetPlugin(ctx, &plugincontrolv1.DetachFleetPluginRequest{Name: name})
	return wrapError(err)
}

// AdoptFleetEtcd makes the node that answers accept the etcd it reaches
// now as its fleet's: a node fenced because its etcd changed cluster or went
// back in revisions converges to what that etcd holds.
func (c *Client) AdoptFleetEtcd(ctx context.Context) error {
	_, err := c.fleet.AdoptFleetEtcd(ctx, &plugincontrolv1.AdoptFleetEtcdRequest{})
	return wrapError(err)
}

// AttachFleetPlugin undoes DetachFleetPlugin.
func (c *Client) AttachFleetPlugin(ctx context.Context, name string) error {
	_, err := c.fleet.AttachFleetPlugin(ctx, &plugincontrolv1.AttachFleetPluginRequest{Name: name})
	return wrapError(err)
}

// StartRollout starts a staged rollout of a fleet plugin to spec.
func (c *Client) StartRollout(ctx context.Context, req *plugincontrolv1.StartRolloutRequest) (*plugincontrolv1.Rollout, error) {
	resp, err := c.fleet.StartRollout(ctx, req)
	return resp.GetRollout(), wrapError(err)
}

// GetRollout returns the rollout of plugin.
func (c *Client) GetRollout(ctx context.Context, plugin string) (*plugincontrolv1.Rollout, error) {
	resp, err := c.fleet.GetRollout(ctx, &plugincontrolv1.GetRolloutRequest{Plugin: plugin})
	return resp.GetRollout(), wrapError(err)
}

// RolloutAction is what SetRollout does to a running rollout.
type RolloutAction int

// Rollout actions.
const (
	PauseRollout RolloutAction = iota + 1
	ResumeRollout
	AbortRollout
)

// SetRollout pauses, resumes or aborts the rollout of plugin and returns
// it as it is then.
func (c *Client) SetRollout(ctx context.Context, plugin string, action RolloutAction) (*plugincontrolv1.Rollout, error) {
	var r *plugincontrolv1.Rollout
	var err error
	switch action {
	case PauseRollout:
		var resp *plugincontrolv1.PauseRolloutResponse
		resp, err = c.fleet.PauseRollout(ctx, &plugincontrolv1.PauseRolloutRequest{Plugin: plugin})
		r = resp.GetRollout()
	case ResumeRollout:
		var resp *plugincontrolv1.ResumeRolloutResponse
		resp, err = c.fleet.ResumeRollout(ctx, &plugincontrolv1.ResumeRolloutRequest{Plugin: plugin})
		r = resp.GetRollout()
	case AbortRollout:
		var resp *plugincontrolv1.AbortRolloutResponse
		resp, err = c.fleet.AbortRollout(ctx, &plugincontrolv1.AbortRolloutRequest{Plugin: plugin})
		r = resp.GetRollout()
	default:
		return nil, fmt.Errorf("client: unknown rollout action %d", action)
	}
	return r, wrapError(err)
}

// FollowRollout calls fn with the rollout of plugin as it is now, then
// with every change of it, through WatchFleet (resumed after a broken
// stream, see WatchFleet), until it ends (SUCCEEDED, HALTED or
// ROLLED_BACK: FollowRollout returns the last state), fn fails, or ctx
// ends (nil, nil).
func (c *Client) FollowRollout(ctx context.Context, plugin string, fn func(*plugincontrolv1.Rollout) error, onReconnect func(err error, retryIn time.Duration)) (*plugincontrolv1.Rollout, error) {
	r, err := c.GetRollout(ctx, plugin)
	if err != nil {
		return nil, err
	}
	if err := fn(r); err != nil {
		return nil, err
	}
	if rolloutOver(r) {
		return r, nil
	}
	errOver := errors.New("rollout over")
	last := r
	err = c.WatchFleet(ctx, r.GetRevision(), plugin, func(ev *plugincontrolv1.FleetEvent) error {
		nr := ev.GetRollout()
		if nr == nil || nr.GetPlugin() != plugin || nr.GetRevision() <= last.GetRevision() {
			return nil
		}
		last = nr
		if err := fn(nr); err != nil {
			return err
		}
		if rolloutOver(nr) {
			return errOver
		}
		return nil
	}, onReconnect)
	switch {
	case errors.Is(err, errOver):
		return last, nil
	case err != nil:
		return nil, err
	case ctx.Err() != nil:
		return nil, nil
	}
	return last, nil
}

func rolloutOver(r *plugincontrolv1.Rollout) bool {
	switch r.GetState() {
	case plugincontrolv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, plugincontrolv1.RolloutState_ROLLOUT_STATE_HALTED, plugincontrolv1.RolloutState_ROLLOUT_STATE_ROLLED_BACK:
		return true
	}
	return false
}
