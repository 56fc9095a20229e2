package server

import (
	"errors"
	"fmt"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errShuttingDown ends streams on shutdown; Unavailable tells clients to
// reconnect (to this daemon once it is back) with their last revision.
var errShuttingDown = status.Error(codes.Unavailable, "plugind is shutting down; reconnect with since_revision set to the last revision received")

// WatchHealth streams a snapshot or replay, SYNCED, then live events. One
// goroutine per stream does everything (poll, send, bookmark), so a bookmark
// can never overtake an event taken from the watch but not yet sent.
func (c *control) WatchHealth(req *pb.WatchHealthRequest, stream grpc.ServerStreamingServer[pb.WatchHealthResponse]) error {
	s := c.s
	if !s.addWatcher() {
		return errShuttingDown
	}
	defer s.watchers.Done()
	events := &s.events
	switch v := req.GetView(); v {
	case pb.HealthView_HEALTH_VIEW_UNSPECIFIED, pb.HealthView_HEALTH_VIEW_FULL:
	case pb.HealthView_HEALTH_VIEW_COMPACT:
		events = &s.compactEvents
	default:
		return toStatus(&manager.InvalidError{Field: "view", Reason: fmt.Sprintf("unknown health view %d", int32(v))})
	}
	w, err := s.m.Watch(req.GetNames(), req.GetSinceRevision())
	if err != nil {
		if errors.Is(err, manager.ErrClosed) {
			return errShuttingDown
		}
		return toStatus(err)
	}
	defer w.Close()

	bookmark := time.NewTicker(s.opts.bookmarkInterval)
	defer bookmark.Stop()
	ctx := stream.Context()
	var buf []manager.Event
	for {
		evs, ended := w.PollInto(buf)
		if cap(evs) <= 8 {
			buf = evs // keep a small buffer for the next poll
		}
		for _, e := range evs {
			if err := sendEvent(stream, events, e); err != nil {
				return err
			}
		}
		if ended {
			return errShuttingDown
		}
		select {
		case <-w.Ready():
		case <-bookmark.C:
			if rev, ok := w.Bookmark(); ok {
				if err := sendEvent(stream, events, manager.Event{Type: manager.EventBookmark, Revision: rev}); err != nil {
					return err
				}
			}
		case <-s.shutdown:
			return errShuttingDown
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// sendEvent sends e, encoded once (in the view of cache) for all the
// streams that send it.
func sendEvent(stream grpc.ServerStream, cache *eventCache, e manager.Event) error {
	m, err := cache.encode(e)
	if err != nil {
		return status.Errorf(codes.Internal, "encoding event: %v", err)
	}
	return stream.SendMsg(m)
}
