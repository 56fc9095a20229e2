package server

import (
	"errors"
	"strconv"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errShuttingDown ends streams on shutdown; Unavailable tells clients to
// reconnect (to this daemon once it is back) with their last revision.
var errShuttingDown = status.Error(codes.Unavailable, "plugind is shutting down; reconnect with since_revision set to the last revision received")

// errReloading ends streams when plugind reloads in place: reconnect at once
// (the connection waits in the socket's backlog for the new image).
var errReloading = rpcerr.New(codes.Unavailable, rpcerr.ReasonReloading, "plugind is reloading in place; reconnect now with since_revision set to the last revision received", nil)

// ended is the status a stream ends with when the server drains.
func (s *Server) ended() error {
	if s.reloading.Load() {
		return errReloading
	}
	return errShuttingDown
}

// WatchHealth streams a snapshot or replay, SYNCED, then live events. A
// watch evicted for falling behind (manager.Watch) ends, once the events
// taken before are sent, with ResourceExhausted (reason WATCH_EVICTED):
// the client resumes from its last revision. One
// goroutine per stream does everything (poll, send, bookmark), so a bookmark
// can never overtake an event taken from the watch but not yet sent.
//
// The goroutine waits on the watch's Ready channel and the stream's
// context: the server's bookmark timer and Shutdown wake it through the
// watch (MarkBookmark, Wake), and it checks them after each wakeup. With
// 10,000 streams one change wakes 10,000 goroutines; a four-way select
// cost each of them about twice a one-channel receive (CPU profile of the
// fan-out, bench/NOTES.md item 4). The context stays in the select: waking
// through context.AfterFunc instead cost each stream about 375 bytes (the
// context's map of children), and the two-way select measured no slower
// (bench/NOTES.md item 7).
func (c *control) WatchHealth(req *pb.WatchHealthRequest, stream grpc.ServerStreamingServer[pb.WatchHealthResponse]) error {
	s := c.s
	compact, err := isCompact(req.GetView())
	if err != nil {
		return err
	}
	events := &s.events
	if compact {
		events = &s.compactEvents
	}
	if s.isDraining() {
		return s.ended()
	}
	w, err := s.m.Watch(req.GetNames(), req.GetSinceRevision())
	if err != nil {
		if errors.Is(err, manager.ErrClosed) {
			return s.ended()
		}
		return toStatus(err)
	}
	defer w.Close()
	if !s.track(w) {
		return s.ended()
	}
	defer s.untrack(w)

	ctx := stream.Context()
	// buf holds the pointers of one poll; it is cleared after the sends,
	// so that between changes a watcher keeps no event alive.
	var buf []*manager.Event
	for {
		evs, ended := w.PollInto(buf)
		for _, e := range evs {
			if err := sendEvent(stream, events, e); err != nil {
				return err
			}
		}
		clear(evs)
		if cap(evs) <= 8 {
			buf = evs // keep a small buffer for the next poll
		}
		if ended {
			var ev *manager.EvictedError
			if errors.As(w.Err(), &ev) {
				return rpcerr.New(codes.ResourceExhausted, rpcerr.ReasonWatchEvicted, ev.Error(),
					map[string]string{"last_revision": strconv.FormatUint(ev.LastRevision, 10), "lag_limit": ev.LagLimit.String()})
			}
			return s.ended()
		}
		select {
		case <-w.Ready():
		case <-ctx.Done():
		}
		if err := ctx.Err(); err != nil {
			return status.FromContextError(err).Err()
		}
		select {
		case <-s.shutdown:
			return s.ended()
		default:
		}
		// The server's bookmark timer marks every watch at once
		// (markBookmarks); a watch with events pending sends them first,
		// and its bookmark waits for the next mark.
		if w.BookmarkDue() {
			if rev, ok := w.Bookmark(); ok {
				if err := sendEvent(stream, events, &manager.Event{Type: manager.EventBookmark, Revision: rev}); err != nil {
					return err
				}
			}
		}
	}
}

// sendEvent sends e, encoded once (in the view of cache) for all the
// streams that send it.
func sendEvent(stream grpc.ServerStream, cache *eventCache, e *manager.Event) error {
	m, err := cache.encode(e)
	if err != nil {
		return status.Errorf(codes.Internal, "encoding event: %v", err)
	}
	return stream.SendMsg(m)
}
