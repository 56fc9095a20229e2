package client

import (
	"context"
	"time"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// WatchFleet follows FleetService.WatchFleet (a plugind started with
// --fleet-etcd): it calls fn with every event, in order, and when the
// stream breaks (the daemon or etcd unreachable) reopens it after the last
// revision received, with backoff (100ms doubling to 5s), calling
// onReconnect (when not nil) before each wait. since 0 starts with a
// snapshot; plugin limits the events to one plugin's and the nodes'. It
// returns nil when ctx ends, fn's error when fn fails, and the stream's
// error when reconnecting cannot help (or the very first attempt fails:
// nothing answered at all).
func (c *Client) WatchFleet(ctx context.Context, since uint64, plugin string, fn func(*plugincontrolv1.FleetEvent) error, onReconnect func(err error, retryIn time.Duration)) error {
	backoff, got := defaultBackoffInitial, false
	for {
		stream, err := c.fleet.WatchFleet(ctx, &plugincontrolv1.WatchFleetRequest{SinceRevision: since, Plugin: plugin})
		for err == nil {
			var resp *plugincontrolv1.WatchFleetResponse
			if resp, err = stream.Recv(); err != nil {
				break
			}
			got, backoff = true, defaultBackoffInitial
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
		if onReconnect != nil {
			onReconnect(wrapError(err), backoff)
		}
		if sleepCtx(ctx, backoff) != nil {
			return nil
		}
		backoff = min(2*backoff, defaultBackoffMax)
	}
}
