package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/spec"
)

// Store reads and writes the fleet's keys: what FleetService serves. It
// holds no state of its own; every call is one etcd request (or one
// transaction), bounded by its context.
type Store struct {
	cli  *clientv3.Client
	keys keys
}

// NewStore returns a Store of the keys under prefix ("" is DefaultPrefix).
func NewStore(cli *clientv3.Client, prefix string) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Store{cli: cli, keys: newKeys(prefix)}
}

// ErrNotFound: no fleet plugin of that name.
var ErrNotFound = errors.New("fleet: no such fleet plugin")

// ErrUnpinned: a spec without sha256 applied without allowing it.
var ErrUnpinned = errors.New("fleet: the spec has no sha256")

// Nodes returns the live nodes, sorted by name.
func (s *Store) Nodes(ctx context.Context) ([]*pb.FleetNode, error) {
	resp, err := s.cli.Get(ctx, s.keys.nodes(), clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	var out []*pb.FleetNode
	for _, kv := range resp.Kvs {
		n := &pb.FleetNode{}
		if err := decode(string(kv.Key), kv.Value, n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b *pb.FleetNode) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out, nil
}

// Status returns the desired plugins (one when name is set), the live
// nodes' reports of them, the live nodes and the controller's leader, read
// at one revision.
func (s *Store) Status(ctx context.Context, name string) (*pb.FleetStatusResponse, error) {
	pluginKey, pluginOpts := s.keys.plugins(), []clientv3.OpOption{clientv3.WithPrefix()}
	statusKey := s.keys.statuses()
	if name != "" {
		pluginKey, pluginOpts, statusKey = s.keys.plugin(name), nil, s.keys.statusesOf(name)
	}
	txn, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(pluginKey, pluginOpts...),
		clientv3.OpGet(statusKey, clientv3.WithPrefix()), // layout 1
		clientv3.OpGet(s.keys.nodes(), clientv3.WithPrefix()),
		// The election's leader: its oldest key (concurrency.Election).
		clientv3.OpGet(s.keys.election()+"/", clientv3.WithFirstCreate()...),
		// Layout 2 keeps reports by node: one plugin's are among all.
		clientv3.OpGet(s.keys.reports(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, err
	}
	out := &pb.FleetStatusResponse{}
	if kvs := txn.Responses[3].GetResponseRange().GetKvs(); len(kvs) > 0 {
		out.Leader = string(kvs[0].Value)
	}
	for _, kv := range txn.Responses[0].GetResponseRange().GetKvs() {
		p, err := decodePlugin(kv)
		if err != nil {
			return nil, err
		}
		out.Plugins = append(out.Plugins, p)
	}
	if name != "" && len(out.Plugins) == 0 {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	reports := slices.Concat(txn.Responses[1].GetResponseRange().GetKvs(), txn.Responses[4].GetResponseRange().GetKvs())
	for _, kv := range reports {
		st := &pb.FleetPluginStatus{}
		if err := decode(string(kv.Key), kv.Value, st); err != nil {
			return nil, err
		}
		if name == "" || st.GetPlugin() == name {
			out.Statuses = append(out.Statuses, st)
		}
	}
	for _, kv := range txn.Responses[2].GetResponseRange().GetKvs() {
		n := &pb.FleetNode{}
		if err := decode(string(kv.Key), kv.Value, n); err != nil {
			return nil, err
		}
		out.Nodes = append(out.Nodes, n)
	}
	slices.SortFunc(out.Plugins, func(a, b *pb.FleetPlugin) int { return strings.Compare(a.GetSpec().GetName(), b.GetSpec().GetName()) })
	slices.SortFunc(out.Statuses, func(a, b *pb.FleetPluginStatus) int {
		if c := strings.Compare(a.GetPlugin(), b.GetPlugin()); c != 0 {
			return c
		}
		return strings.Compare(a.GetNode(), b.GetNode())
	})
	slices.SortFunc(out.Nodes, func(a, b *pb.FleetNode) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out, nil
}

// Apply stores the desired state of a fleet plugin: its spec as the nodes'
// managers hold it (a spec they would refuse is refused here, naming the
// field), its digest and selector. A spec without sha256 needs
// allowUnpinned. It returns the stored plugin with its revision.
func (s *Store) Apply(ctx context.Context, p *pb.FleetPlugin, allowUnpinned bool) (*pb.FleetPlugin, error) {
	want, err := spec.Canonical(p.GetSpec())
	if err != nil {
		return nil, err
	}
	if want.GetSha256() == "" && !allowUnpinned {
		return nil, fmt.Errorf("%w: every node would run whatever file %q is in its plugin directory; pin it (sha256) or allow an unpinned spec explicitly", ErrUnpinned, want.GetBinary())
	}
	r, rev, err := s.getRollout(ctx, want.GetName())
	switch {
	case errors.Is(err, ErrNoRollout):
	case err != nil:
		return nil, err
	case holding(r):
		return nil, errHolding(r)
	}
	stored := &pb.FleetPlugin{Spec: want, Selector: p.GetSelector(), SpecDigest: spec.Digest(want)}
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.keys.rollout(want.GetName())), "=", rev)).Then(
		// A new fleet gets this plugind's layout; an existing one keeps
		// its own.
		clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(s.keys.schema()), "=", 0)},
			[]clientv3.Op{clientv3.OpPut(s.keys.schema(), SchemaVersion)}, nil),
		clientv3.OpPut(s.keys.plugin(want.GetName()), encode(stored)),
	).Commit()
	if err != nil {
		return nil, err
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("%w: a rollout of %s started meanwhile", ErrRolloutActive, want.GetName())
	}
	stored.Revision = uint64(resp.Header.GetRevision())
	return stored, nil
}

// Delete removes a fleet plugin and its last rollout's targets; every node
// running it unloads it. A plugin whose rollout is under way or halted is
// not deleted (ErrRolloutActive).
func (s *Store) Delete(ctx context.Context, name string) error {
	r, rev, err := s.getRollout(ctx, name)
	switch {
	case errors.Is(err, ErrNoRollout):
	case err != nil:
		return err
	case holding(r):
		return errHolding(r)
	}
	// A finished rollout deleted its targets; one left by a crash between
	// steps must not outlive the plugin. The plugin's key goes last.
	var targets []clientv3.Op
	for _, n := range r.GetNodes() {
		targets = append(targets, clientv3.OpDelete(s.keys.target(n.GetNode(), name)))
	}
	ok, resp, err := commitChunked(ctx, s.cli, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.keys.rollout(name)), "=", rev)},
		targets, []clientv3.Op{clientv3.OpDelete(s.keys.plugin(name))})
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: a rollout of %s changed meanwhile; try again", ErrRolloutActive, name)
	}
	if resp.Responses[len(resp.Responses)-1].GetResponseDeleteRange().GetDeleted() == 0 {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return nil
}
