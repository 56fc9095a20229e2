package server

import (
	"errors"
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
	for {
		evs, ended := w.Poll()
		for _, e := range evs {
			if err := stream.Send(eventToProto(e)); err != nil {
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
				if err := stream.Send(eventToProto(manager.Event{Type: manager.EventBookmark, Revision: rev})); err != nil {
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
