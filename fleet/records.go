package fleet

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/protobuf/proto"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// SchemaVersion is the layout of the keys a new fleet gets, stored at
// P/schema by its first Apply (an existing fleet keeps its own). This
// plugind reads and writes both layouts; they differ only in where a node
// reports:
//
//	layout "1"  P/status/NAME/NODE   plugin first
//	layout "2"  P/reports/NODE/NAME  node first: everything a node writes
//	                                 is under P/nodes/NODE, P/reports/NODE/,
//	                                 P/managed/NODE/ and P/detached/NODE/, so
//	                                 an etcd role can confine a node to its
//	                                 own keys (README: Access to etcd)
const SchemaVersion = "2"

// layouts are the values of P/schema this plugind knows.
var layouts = []string{"1", "2"}

// layoutOf is the layout that the schema key kvs (none, or the key) names:
// SchemaVersion when it is absent (a new fleet).
func layoutOf(kvs []*mvccpb.KeyValue) string {
	if len(kvs) == 0 {
		return SchemaVersion
	}
	return string(kvs[0].Value)
}

// DefaultPrefix is the default key prefix.
const DefaultPrefix = "/plugincontrol"

// keys builds the keys under a prefix.
type keys struct{ prefix string }

func newKeys(prefix string) keys { return keys{prefix: strings.TrimRight(prefix, "/")} }

func (k keys) schema() string                    { return k.prefix + "/schema" }
func (k keys) plugins() string                   { return k.prefix + "/plugins/" }
func (k keys) plugin(name string) string         { return k.plugins() + name }
func (k keys) nodes() string                     { return k.prefix + "/nodes/" }
func (k keys) node(node string) string           { return k.nodes() + node }
func (k keys) statuses() string                  { return k.prefix + "/status/" }
func (k keys) statusesOf(name string) string     { return k.statuses() + name + "/" }
func (k keys) status(node, name string) string   { return k.statusesOf(name) + node }
func (k keys) reports() string                   { return k.prefix + "/reports/" }
func (k keys) report(node, name string) string   { return k.reports() + node + "/" + name }
func (k keys) managedOf(node string) string      { return k.prefix + "/managed/" + node + "/" }
func (k keys) managed(node, name string) string  { return k.managedOf(node) + name }
func (k keys) targetsOf(node string) string      { return k.prefix + "/targets/" + node + "/" }
func (k keys) target(node, name string) string   { return k.targetsOf(node) + name }
func (k keys) rollouts() string                  { return k.prefix + "/rollouts/" }
func (k keys) rollout(name string) string        { return k.rollouts() + name }
func (k keys) election() string                  { return k.prefix + "/election" }
func (k keys) detachedOf(node string) string     { return k.prefix + "/detached/" + node + "/" }
func (k keys) detached(node, name string) string { return k.detachedOf(node) + name }

// reportKey is where node reports on plugin name in layout.
func (k keys) reportKey(layout, node, name string) string {
	if layout == "1" {
		return k.status(node, name)
	}
	return k.report(node, name)
}

// reportOf parses a report's key of either layout.
func (k keys) reportOf(key string) (node, name string, ok bool) {
	if rest, ok1 := strings.CutPrefix(key, k.statuses()); ok1 {
		name, node, ok = strings.Cut(rest, "/")
		return node, name, ok
	}
	if rest, ok1 := strings.CutPrefix(key, k.reports()); ok1 {
		node, name, ok = strings.Cut(rest, "/")
		return node, name, ok
	}
	return "", "", false
}

// base is the last element of a key.
func base(key string) string { return path.Base(key) }

// decode parses a record of key into m, naming the key when it fails.
func decode(key string, b []byte, m proto.Message) error {
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("fleet record %s is unreadable: %w", key, err)
	}
	return nil
}

// decodePlugin decodes a FleetPlugin record, with its revision.
func decodePlugin(kv *mvccpb.KeyValue) (*pb.FleetPlugin, error) {
	p := &pb.FleetPlugin{}
	if err := decode(string(kv.Key), kv.Value, p); err != nil {
		return nil, err
	}
	p.Revision = uint64(kv.ModRevision)
	return p, nil
}

// decodeTarget decodes a FleetTarget record.
func decodeTarget(kv *mvccpb.KeyValue) (*pb.FleetTarget, error) {
	t := &pb.FleetTarget{}
	return t, decode(string(kv.Key), kv.Value, t)
}

// watchEvents returns the events of a watch response (ok false: the
// channel closed), or why the watch of what ended.
func watchEvents(resp clientv3.WatchResponse, ok bool, what string) ([]*clientv3.Event, error) {
	if !ok {
		return nil, fmt.Errorf("the watch of %s ended", what)
	}
	if err := resp.Err(); err != nil {
		return nil, fmt.Errorf("watching %s: %w", what, err)
	}
	return resp.Events, nil
}

// encode serializes a record (deterministically: equal records are equal
// bytes, so that unchanged statuses are not written again).
func encode(m proto.Message) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("fleet: encoding %T: %v", m, err)) // only for messages that cannot be encoded: a bug
	}
	return string(b)
}

// selects reports whether labels satisfy selector (every selector label
// present with the same value).
func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// maxTxnOps is the most operations this package puts in one etcd
// transaction: etcd refuses more than --max-txn-ops (default 128), and a
// rollout's wave or rollback can touch more nodes than that.
const maxTxnOps = 100

// commitChunked commits ops, then final, each transaction guarded by
// guards: in one transaction when they fit, else ops in chunks of
// maxTxnOps and final last. ops must be idempotent (target writes and
// deletes, a plugin's spec): a guard that fails midway leaves some applied,
// which the next step (or retry) applies again. It reports whether every
// transaction's guards held.
func commitChunked(ctx context.Context, cli *clientv3.Client, guards []clientv3.Cmp, ops, final []clientv3.Op) (bool, *clientv3.TxnResponse, error) {
	if len(ops)+len(final) <= maxTxnOps {
		resp, err := cli.Txn(ctx).If(guards...).Then(append(ops, final...)...).Commit()
		if err != nil {
			return false, nil, err
		}
		return resp.Succeeded, resp, nil
	}
	for len(ops) > 0 {
		n := min(len(ops), maxTxnOps)
		resp, err := cli.Txn(ctx).If(guards...).Then(ops[:n]...).Commit()
		if err != nil || !resp.Succeeded {
			return false, resp, err
		}
		ops = ops[n:]
	}
	resp, err := cli.Txn(ctx).If(guards...).Then(final...).Commit()
	if err != nil {
		return false, nil, err
	}
	return resp.Succeeded, resp, nil
}

// commitEnded commits the end of a rollout (r, at key; !active(r)): the
// record first, with head (the plugin's new spec, on success), guarded by
// guards, then deletes (its targets). When they do not all fit in one
// transaction, the record is written with cleanup_pending, the deletes
// follow in chunks guarded by that record's revision (a new rollout
// rewriting it stops them: it deletes what it plans itself), and the
// record is written again without the flag. With the record first, a
// rollout's own writes (a wave's targets, in chunks) cannot land after its
// end: their guard is the record's previous revision. A crash midway
// leaves the flag, and the controller finishes the deletes. It reports
// whether the first transaction's guards held.
func commitEnded(ctx context.Context, cli *clientv3.Client, guards []clientv3.Cmp, key string, r *pb.Rollout, head, deletes []clientv3.Op) (bool, *clientv3.TxnResponse, error) {
	if len(head)+len(deletes)+1 <= maxTxnOps {
		r.CleanupPending = false
		resp, err := cli.Txn(ctx).If(guards...).Then(append(append(head, deletes...), clientv3.OpPut(key, encode(r)))...).Commit()
		if err != nil {
			return false, nil, err
		}
		return resp.Succeeded, resp, nil
	}
	r.CleanupPending = true
	first, err := cli.Txn(ctx).If(guards...).Then(append(head, clientv3.OpPut(key, encode(r)))...).Commit()
	if err != nil || !first.Succeeded {
		return false, first, err
	}
	return true, first, finishCleanup(ctx, cli, key, r, first.Header.GetRevision(), deletes)
}

// finishCleanup deletes an ended rollout's targets (deletes) in chunks
// while its record (at key) is still at revision rev, then clears its
// cleanup_pending.
func finishCleanup(ctx context.Context, cli *clientv3.Client, key string, r *pb.Rollout, rev int64, deletes []clientv3.Op) error {
	held := clientv3.Compare(clientv3.ModRevision(key), "=", rev)
	for len(deletes) > 0 {
		n := min(len(deletes), maxTxnOps)
		resp, err := cli.Txn(ctx).If(held).Then(deletes[:n]...).Commit()
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			return nil // rewritten meanwhile (a new rollout): its own
		}
		deletes = deletes[n:]
	}
	r.CleanupPending = false
	_, err := cli.Txn(ctx).If(held).Then(clientv3.OpPut(key, encode(r))).Commit()
	return err
}

// targetDeletes are the deletes of the targets of every node r planned.
func targetDeletes(k keys, r *pb.Rollout) []clientv3.Op {
	var ops []clientv3.Op
	for _, n := range r.GetNodes() {
		ops = append(ops, clientv3.OpDelete(k.target(n.GetNode(), r.GetPlugin())))
	}
	return ops
}

// grantTimeout bounds the grant of a session's lease: an etcd that cannot
// be reached (or refuses the client's certificate) is reported and retried
// rather than waited on forever.
const grantTimeout = 10 * time.Second

// newSession grants a lease of ttl within grantTimeout and keeps it alive
// until ctx ends (concurrency.Session).
func newSession(ctx context.Context, cli *clientv3.Client, ttl time.Duration) (*concurrency.Session, error) {
	gctx, cancel := context.WithTimeout(ctx, grantTimeout)
	lease, err := cli.Grant(gctx, int64(ttl/time.Second))
	cancel()
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("etcd at %s did not answer within %s (unreachable, or it refused this node's TLS client certificate): %w",
				strings.Join(cli.Endpoints(), ","), grantTimeout, err)
		}
		return nil, err
	}
	return concurrency.NewSession(cli, concurrency.WithLease(lease.ID), concurrency.WithContext(ctx))
}
