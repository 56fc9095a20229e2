package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// ErrWatchEnded: the etcd watch ended (etcd unreachable, or its leader
// lost); resume from the last revision received.
var ErrWatchEnded = errors.New("fleet: the watch of etcd ended")

// recordOf decodes the fleet record kv into an event's record; ok false
// for keys that are not nodes, plugins, reports or rollouts (or not
// plugin's when plugin is set). A plugin's and a rollout's revision (output
// only: never stored in the value) is kv's ModRevision, as Get reports it.
func (s *Store) recordOf(kv *mvccpb.KeyValue, plugin string) (ev *pb.FleetEvent, ok bool, err error) {
	key, value := string(kv.Key), kv.Value
	ev = &pb.FleetEvent{}
	rel := strings.TrimPrefix(key, s.keys.prefix+"/")
	kind, rest, _ := strings.Cut(rel, "/")
	name := rest
	switch kind {
	case "nodes":
		m := &pb.FleetNode{}
		err, ev.Record = decode(key, value, m), &pb.FleetEvent_Node{Node: m}
		name = "" // nodes concern every plugin
	case "plugins":
		m := &pb.FleetPlugin{}
		err, ev.Record = decode(key, value, m), &pb.FleetEvent_Plugin{Plugin: m}
		m.Revision = uint64(kv.ModRevision)
	case "status", "reports": // layout 1, 2
		_, name, _ = s.keys.reportOf(key)
		m := &pb.FleetPluginStatus{}
		err, ev.Record = decode(key, value, m), &pb.FleetEvent_Status{Status: m}
	case "rollouts":
		m := &pb.Rollout{}
		err, ev.Record = decode(key, value, m), &pb.FleetEvent_Rollout{Rollout: m}
		m.Revision = uint64(kv.ModRevision)
	default:
		return nil, false, nil
	}
	if plugin != "" && name != "" && name != plugin {
		return nil, false, nil
	}
	return ev, true, err
}

// Watch sends the fleet's events (see FleetService.WatchFleet) to send
// until ctx ends (nil), send fails (its error), or etcd's watch ends
// (ErrWatchEnded, or the error reading the snapshot).
func (s *Store) Watch(ctx context.Context, since uint64, plugin string, send func(*pb.FleetEvent) error) error {
	snapshot := func(reset bool) (int64, error) {
		resp, err := s.cli.Get(ctx, s.keys.prefix+"/", clientv3.WithPrefix())
		if err != nil {
			return 0, err
		}
		rev := resp.Header.GetRevision()
		for _, kv := range resp.Kvs {
			ev, ok, err := s.recordOf(kv, plugin)
			if err != nil || !ok {
				continue // an unreadable record is skipped, as the agents skip it
			}
			ev.Type, ev.Revision, ev.Reset_ = pb.FleetEventType_FLEET_EVENT_TYPE_SNAPSHOT, uint64(rev), reset
			if err := send(ev); err != nil {
				return 0, err
			}
		}
		return rev, send(&pb.FleetEvent{Type: pb.FleetEventType_FLEET_EVENT_TYPE_SYNCED, Revision: uint64(rev), Reset_: reset})
	}
	rev := int64(since)
	if since == 0 {
		var err error
		if rev, err = snapshot(false); err != nil {
			return err
		}
	}
	for {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := s.cli.Watch(wctx, s.keys.prefix+"/", clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithPrevKV(), clientv3.WithProgressNotify())
		err := func() error {
			for resp := range wch {
				if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
					return rpctypes.ErrCompacted
				}
				if err := resp.Err(); err != nil {
					return fmt.Errorf("%w: %w", ErrWatchEnded, err)
				}
				if resp.IsProgressNotify() {
					rev = resp.Header.GetRevision()
					if err := send(&pb.FleetEvent{Type: pb.FleetEventType_FLEET_EVENT_TYPE_BOOKMARK, Revision: uint64(rev)}); err != nil {
						return err
					}
					continue
				}
				for _, e := range resp.Events {
					kv, typ := e.Kv, pb.FleetEventType_FLEET_EVENT_TYPE_PUT
					if e.Type == clientv3.EventTypeDelete {
						typ = pb.FleetEventType_FLEET_EVENT_TYPE_DELETE
						if e.PrevKv == nil {
							continue
						}
						kv = e.PrevKv
					}
					ev, ok, err := s.recordOf(kv, plugin)
					if err != nil || !ok {
						continue
					}
					ev.Type, ev.Revision = typ, uint64(e.Kv.ModRevision)
					if err := send(ev); err != nil {
						return err
					}
				}
				rev = resp.Header.GetRevision()
			}
			if ctx.Err() != nil {
				return nil
			}
			return ErrWatchEnded
		}()
		cancel()
		switch {
		case errors.Is(err, rpctypes.ErrCompacted):
			// The revision to resume from is gone: a snapshot replaces
			// what the watcher knew.
			if rev, err = snapshot(true); err != nil {
				return err
			}
			continue
		case err != nil:
			return err
		}
		return nil
	}
}
