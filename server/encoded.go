package server

import (
	"sync/atomic"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	protobuf "google.golang.org/protobuf/proto"
)

// encodedMsg is a message already in protobuf wire format. A health event is
// the same for every watcher that gets it, so WatchHealth encodes it once
// and sends the bytes to every stream instead of converting and marshalling
// it per watcher (10,000 times for one change with 10,000 watchers).
type encodedMsg struct{ b []byte }

// codec is grpc-go's proto codec that also sends encodedMsg as is, and the
// cached Health responses of all plugins (one per view) in the encodings
// made once for them.
// It keeps the name "proto", so clients see nothing different.
type codec struct {
	encoding.CodecV2
	s *Server
}

func newCodec(s *Server) codec { return codec{encoding.GetCodecV2(proto.Name), s} }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *encodedMsg:
		// SliceBuffer's Free is a no-op: the shared bytes are never
		// recycled or written to by the transport.
		return mem.BufferSlice{mem.SliceBuffer(m.b)}, nil
	case *pb.HealthResponse:
		for _, cache := range [...]*atomic.Pointer[healthAll]{&c.s.healthAll, &c.s.healthAllCompact} {
			if h := cache.Load(); h != nil && h.resp == m && h.enc != nil {
				return mem.BufferSlice{mem.SliceBuffer(h.enc)}, nil
			}
		}
	}
	return c.CodecV2.Marshal(v)
}

// cachedRevisions is how many recent revisions eventCache holds the
// events of (16 slots each: 16 KiB of pointers per view). One change is sent
// to every watcher long before 128 more happen.
const cachedRevisions = 128

// eventCache remembers the encodings of recent events. An event's content is
// fixed by its revision, type and reset flag (every revision is one
// published record; SYNCED and BOOKMARK carry only those three), so that is
// the key, and slotOf maps it to a slot; a collision is only a miss.
// (Indexed by revision alone, a new watcher's SNAPSHOT of the plugin that
// changed last and its SYNCED, which share a revision, took one slot in
// turn: every watcher encoded both again, about 1 KiB of garbage per
// stream opened, which left the heap fragmented; bench/NOTES.md item 7.)
//
// A cache holds one view: the zero value the full one, compact set
// HEALTH_VIEW_COMPACT.
type eventCache struct {
	compact bool                                              // fixed at construction
	slots   [cachedRevisions << 4]atomic.Pointer[cachedEvent] // see slotOf
}

type cachedEvent struct {
	rev   uint64
	typ   manager.EventType
	reset bool
	msg   *encodedMsg
}

func (c *eventCache) encode(e *manager.Event) (*encodedMsg, error) {
	slot := &c.slots[slotOf(e)]
	if ce := slot.Load(); ce != nil && ce.rev == e.Revision && ce.typ == e.Type && ce.reset == e.Reset {
		return ce.msg, nil
	}
	msg := eventToProto(*e)
	if c.compact {
		compactEvent(msg)
	}
	b, err := protobuf.Marshal(msg)
	if err != nil {
		return nil, err
	}
	m := &encodedMsg{b: b}
	slot.Store(&cachedEvent{rev: e.Revision, typ: e.Type, reset: e.Reset, msg: m})
	return m, nil
}

// slotOf is an event's slot in eventCache: the revision's low bits, then
// the type and the reset flag, so that the events of the last
// cachedRevisions revisions never share a slot, whatever their type.
func slotOf(e *manager.Event) uint64 {
	k := e.Revision<<4 | uint64(e.Type&7)<<1
	if e.Reset {
		k |= 1
	}
	return k % (cachedRevisions << 4)
}
