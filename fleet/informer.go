package fleet

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// view is one of the leading controller's views of the fleet (rollouts,
// nodesView, statusView): kept current by a watch.
type view interface {
	// watch follows the view's keys from the revision it is current to.
	watch(ctx context.Context, cli *clientv3.Client) clientv3.WatchChan
	// apply brings the view up to a watch response; an error means the
	// watch is over.
	apply(resp clientv3.WatchResponse, ok bool) error
}

// followed is a view the leader keeps: listed when a step first needs it,
// then watched from the list's revision; a watch that ends drops it, to be
// listed again at the next step, in the same leadership. Only the lead
// goroutine uses it.
type followed[V view] struct {
	what    string
	list    func(ctx context.Context) (V, error)
	view    V                  // valid while changes is not nil
	changes clientv3.WatchChan // nil: not listed (a receive blocks)
	stop    context.CancelFunc // ends the watch
}

// ready returns the view, listing and watching it first when it is not;
// wctx bounds the watch (the leadership).
func (f *followed[V]) ready(ctx, wctx context.Context, cli *clientv3.Client) (V, error) {
	if f.changes == nil {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		v, err := f.list(lctx)
		if err != nil {
			return v, fmt.Errorf("listing %s: %w", f.what, err)
		}
		var fctx context.Context
		fctx, f.stop = context.WithCancel(wctx)
		f.view, f.changes = v, v.watch(clientv3.WithRequireLeader(fctx), cli)
	}
	return f.view, nil
}

// changed applies a response of the view's watch. A watch that ended drops
// the view, and the error says so.
func (f *followed[V]) changed(resp clientv3.WatchResponse, ok bool) error {
	if err := f.view.apply(resp, ok); err != nil {
		f.close()
		return fmt.Errorf("the watch of %s ended (listing them again): %w", f.what, err)
	}
	return nil
}

// close ends the watch and drops the view.
func (f *followed[V]) close() {
	if f.stop != nil {
		f.stop()
	}
	var none V
	f.view, f.changes, f.stop = none, nil, nil
}

// rollouts is the leading controller's view of P/rollouts/, in the shape
// of a Kubernetes informer: one list, then a watch from the list's
// revision that keeps it current; a watch that ends (compacted past, a
// lost leader, a closed stream) lists again.
//
// It keeps only the records a step has work in: active rollouts and ended
// ones whose cleanup is pending. An ended record stays in etcd as the
// rollout's history (FleetStatus, WatchFleet and the next StartRollout read
// it) but is not held here nor read again: an idle fleet costs the leader
// no etcd read beyond its watch, whatever the number of plugins and nodes
// (before this, each step read every record in full: about 2 MB a step at
// 1,000 nodes × 50 plugins; bench `fleet` measures both).
//
// Only the lead goroutine uses it: no lock.
type rollouts struct {
	k    keys
	due  map[string]cachedRollout // by key: the records a step has work in
	seen map[string]int64         // by key: the last revision of every record (ended ones too)
	rev  int64                    // the revision the view is current to
}

// cachedRollout is a record and its ModRevision (the guard of its next
// write).
type cachedRollout struct {
	r   *pb.Rollout
	rev int64
}

// listRollouts reads every record (once per leadership, and again after
// a watch ends) and returns the view as of that read.
func listRollouts(ctx context.Context, cli *clientv3.Client, k keys) (*rollouts, error) {
	resp, err := cli.Get(ctx, k.rollouts(), clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	v := &rollouts{k: k, due: map[string]cachedRollout{}, seen: map[string]int64{}, rev: resp.Header.GetRevision()}
	for _, kv := range resp.Kvs {
		v.put(string(kv.Key), kv.Value, kv.ModRevision)
	}
	return v, nil
}

// watch follows the records from the view's revision on.
func (v *rollouts) watch(ctx context.Context, cli *clientv3.Client) clientv3.WatchChan {
	return cli.Watch(ctx, v.k.rollouts(), clientv3.WithPrefix(), clientv3.WithRev(v.rev+1))
}

// apply brings the view up to a watch response; an error means the watch
// is over (list again).
func (v *rollouts) apply(resp clientv3.WatchResponse, ok bool) error {
	evs, err := watchEvents(resp, ok, "rollout records")
	if err != nil {
		return err
	}
	for _, ev := range evs {
		if ev.Type == clientv3.EventTypeDelete {
			delete(v.due, string(ev.Kv.Key))
			v.seen[string(ev.Kv.Key)] = ev.Kv.ModRevision
			continue
		}
		v.put(string(ev.Kv.Key), ev.Kv.Value, ev.Kv.ModRevision)
	}
	v.rev = max(v.rev, resp.Header.GetRevision())
	return nil
}

// put records the record stored at key as of rev (undecodable: not ours
// to step).
func (v *rollouts) put(key string, value []byte, rev int64) {
	r := &pb.Rollout{}
	if decode(key, value, r) != nil {
		r = nil
	}
	v.set(key, r, rev)
}

// wrote records the controller's own write of r at rev, as soon as it
// committed: the next step is guarded by that revision, and the watch's
// copy of the same write (or of an older one still on its way) then
// changes nothing.
func (v *rollouts) wrote(key string, r *pb.Rollout, rev int64) {
	v.set(key, proto.Clone(r).(*pb.Rollout), rev)
}

func (v *rollouts) set(key string, r *pb.Rollout, rev int64) {
	if v.seen[key] >= rev {
		return
	}
	v.seen[key] = rev
	if r == nil || !(active(r) || r.GetCleanupPending()) {
		delete(v.due, key) // ended (history from now on)
		return
	}
	v.due[key] = cachedRollout{r: r, rev: rev}
}

// forget drops key's record until the watch brings a newer one (its
// cleanup is done).
func (v *rollouts) forget(key string) { delete(v.due, key) }

// work returns the records a step has work in, in key order, each a copy
// the step may change.
func (v *rollouts) work() []keyedRollout {
	out := make([]keyedRollout, 0, len(v.due))
	for key, c := range v.due {
		out = append(out, keyedRollout{key: key, r: proto.Clone(c.r).(*pb.Rollout), rev: c.rev})
	}
	slices.SortFunc(out, func(a, b keyedRollout) int { return cmp.Compare(a.key, b.key) })
	return out
}

// keyedRollout is a record to step: a copy, its key and ModRevision.
type keyedRollout struct {
	key string
	r   *pb.Rollout
	rev int64
}

// nodesView is the leading controller's view of P/nodes/ (names only): the
// nodes that hold a lease now, and since when each node that left has been
// gone (on this leader's clock: a new leader starts them over, which only
// ever lengthens the retention). Listed once with the owners of
// P/managed/ and P/detached/ keys (a node gone before this leader led),
// then watched, like rollouts.
//
// Only the lead goroutine uses it: no lock.
type nodesView struct {
	k    keys
	live map[string]bool
	gone map[string]time.Time
	rev  int64
}

// listNodes reads the node names and the owners of managed and detached
// keys (keys only) at one revision.
func listNodes(ctx context.Context, cli *clientv3.Client, k keys, now time.Time) (*nodesView, error) {
	managed, detached := k.prefix+"/managed/", k.prefix+"/detached/"
	txn, err := cli.Txn(ctx).Then(
		clientv3.OpGet(k.nodes(), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		clientv3.OpGet(managed, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		clientv3.OpGet(detached, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return nil, err
	}
	v := &nodesView{k: k, live: map[string]bool{}, gone: map[string]time.Time{}, rev: txn.Header.GetRevision()}
	for _, kv := range txn.Responses[0].GetResponseRange().GetKvs() {
		v.live[base(string(kv.Key))] = true
	}
	for i, p := range []string{managed, detached} {
		for _, kv := range txn.Responses[i+1].GetResponseRange().GetKvs() {
			owner, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), p), "/")
			if !v.live[owner] {
				v.gone[owner] = now
			}
		}
	}
	return v, nil
}

// watch follows the node keys from the view's revision on.
func (v *nodesView) watch(ctx context.Context, cli *clientv3.Client) clientv3.WatchChan {
	return cli.Watch(ctx, v.k.nodes(), clientv3.WithPrefix(), clientv3.WithRev(v.rev+1))
}

// apply brings the view up to a watch response (received now: a node
// that left is gone from now on); an error means the watch is over (list
// again).
func (v *nodesView) apply(resp clientv3.WatchResponse, ok bool) error {
	evs, err := watchEvents(resp, ok, "node keys")
	if err != nil {
		return err
	}
	now := time.Now()
	for _, ev := range evs {
		node := base(string(ev.Kv.Key))
		if ev.Type == clientv3.EventTypeDelete {
			delete(v.live, node)
			v.gone[node] = now
			continue
		}
		v.live[node] = true
		delete(v.gone, node)
	}
	v.rev = max(v.rev, resp.Header.GetRevision())
	return nil
}

// departed returns the nodes gone for at least retention at now, sorted.
func (v *nodesView) departed(now time.Time, retention time.Duration) []string {
	var out []string
	for node, since := range v.gone {
		if now.Sub(since) >= retention {
			out = append(out, node)
		}
	}
	slices.Sort(out)
	return out
}

// statusView is the leading controller's view of the reports of the
// plugins whose rollouts have work, with each plugin's selector: a plugin
// is listed when its rollout first needs it and dropped when the rollout
// no longer has work; one watch of every report, from the leadership's
// start, keeps the listed ones current. A step reads nothing from etcd.
//
// Reports are where the fleet's layout puts them (SchemaVersion): by
// plugin (layout 1: one plugin's are one range) or by node (layout 2: one
// plugin's are read key by key, one per live node, in transactions of
// maxTxnOps).
//
// The watch may deliver, after a plugin's list, events the list already
// holds (the watch runs from before it): each key's revision tells them
// apart. Only the lead goroutine uses it: no lock.
type statusView struct {
	k        keys
	layout   string                                      // P/schema as of the view's start
	rev      int64                                       // the watch starts after it
	reports  map[string]map[string]*pb.FleetPluginStatus // by plugin, then NODE/PLUGIN (what step reads)
	selector map[string]map[string]string                // by plugin
	seen     map[string]int64                            // by report key: its last revision
}

func newStatusView(k keys, layout string, rev int64) *statusView {
	return &statusView{k: k, layout: layout, rev: rev, reports: map[string]map[string]*pb.FleetPluginStatus{},
		selector: map[string]map[string]string{}, seen: map[string]int64{}}
}

// watch follows every plugin's reports, and P/schema, from the view's
// revision on: one key range holds both (layout 1: [P/schema,
// P/status/...]; layout 2: [P/reports/, P/schema], the rollout records
// between, which apply skips). A schema that changes (an older plugind's
// Apply writes "1") ends the watch: the view is listed again in the new
// layout.
func (v *statusView) watch(ctx context.Context, cli *clientv3.Client) clientv3.WatchChan {
	if v.layout == "1" {
		return cli.Watch(ctx, v.k.schema(), clientv3.WithRange(clientv3.GetPrefixRangeEnd(v.k.statuses())), clientv3.WithRev(v.rev+1))
	}
	return cli.Watch(ctx, v.k.reports(), clientv3.WithRange(v.k.schema()+"\x00"), clientv3.WithRev(v.rev+1))
}

// of returns plugin's reports and selector, listing them first when the
// view does not hold them yet (the reports of the live nodes; the others
// report when they are back, and the watch brings it).
func (v *statusView) of(ctx context.Context, cli *clientv3.Client, plugin string, live map[string]bool) (map[string]*pb.FleetPluginStatus, map[string]string, error) {
	if r, ok := v.reports[plugin]; ok {
		return r, v.selector[plugin], nil
	}
	gets := []clientv3.Op{clientv3.OpGet(v.k.plugin(plugin))}
	if v.layout == "1" {
		gets = append(gets, clientv3.OpGet(v.k.statusesOf(plugin), clientv3.WithPrefix()))
	} else {
		for _, node := range slices.Sorted(maps.Keys(live)) {
			gets = append(gets, clientv3.OpGet(v.k.report(node, plugin)))
		}
	}
	var kvs []*mvccpb.KeyValue
	for len(gets) > 0 {
		n := min(len(gets), maxTxnOps)
		txn, err := cli.Txn(ctx).Then(gets[:n]...).Commit()
		if err != nil {
			return nil, nil, err
		}
		for _, r := range txn.Responses {
			kvs = append(kvs, r.GetResponseRange().GetKvs()...)
		}
		gets = gets[n:]
	}
	v.reports[plugin] = map[string]*pb.FleetPluginStatus{}
	for _, kv := range kvs {
		if string(kv.Key) == v.k.plugin(plugin) {
			if p, err := decodePlugin(kv); err == nil {
				// Fixed while the rollout holds the plugin: Apply waits
				// for it.
				v.selector[plugin] = p.GetSelector()
			}
			continue
		}
		v.put(plugin, kv)
	}
	return v.reports[plugin], v.selector[plugin], nil
}

// keep drops the plugins not in due (their rollouts have no work left).
func (v *statusView) keep(due map[string]bool) {
	for plugin := range v.reports {
		if !due[plugin] {
			delete(v.reports, plugin)
			delete(v.selector, plugin)
		}
	}
	for key := range v.seen {
		if _, plugin, _ := v.k.reportOf(key); !due[plugin] {
			delete(v.seen, key)
		}
	}
}

// apply brings the listed plugins up to a watch response; an error means
// the watch is over (list again).
func (v *statusView) apply(resp clientv3.WatchResponse, ok bool) error {
	evs, err := watchEvents(resp, ok, "node reports")
	if err != nil {
		return err
	}
	for _, ev := range evs {
		key := string(ev.Kv.Key)
		if key == v.k.schema() {
			return fmt.Errorf("the fleet's schema key changed (it was %q)", v.layout)
		}
		node, plugin, ok := v.k.reportOf(key)
		if _, listed := v.reports[plugin]; !ok || !listed {
			continue
		}
		if ev.Type == clientv3.EventTypeDelete {
			if v.seen[key] < ev.Kv.ModRevision {
				v.seen[key] = ev.Kv.ModRevision
				delete(v.reports[plugin], node+"/"+plugin)
			}
			continue
		}
		v.put(plugin, ev.Kv)
	}
	v.rev = max(v.rev, resp.Header.GetRevision())
	return nil
}

// put records a report of plugin (kv, from a list or the watch) unless
// the view holds that key at a later revision; another plugin's (a list
// of every node's reports) is skipped.
func (v *statusView) put(plugin string, kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	node, of, ok := v.k.reportOf(key)
	if !ok || of != plugin || v.seen[key] >= kv.ModRevision {
		return
	}
	v.seen[key] = kv.ModRevision
	st := &pb.FleetPluginStatus{}
	if decode(key, kv.Value, st) == nil {
		v.reports[plugin][node+"/"+plugin] = st
	}
}
