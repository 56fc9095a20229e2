// Package fleetsim simulates fleet nodes at the etcd level, for the tests
// and the benchmark of the fleet controller at a scale real plugind
// processes would not fit on one machine: a simulated node registers under
// a lease, reports a plugin's spec as SERVING, and reports every target the
// controller gives it as SERVING at once (what a real node reports after
// its reload; the reload itself is measured elsewhere).
package fleetsim

import (
	"context"
	"fmt"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/protobuf/proto"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// Counters count what simulated nodes saw and wrote.
type Counters struct {
	// Events are the watch events the nodes received.
	Events atomic.Int64
	// StatusWrites are the status records they wrote.
	StatusWrites atomic.Int64
}

// Node starts a simulated node: it registers node under a lease of cli
// (which it closes when ctx ends), reports plugin at digest as SERVING
// where the fleet's key layout puts reports ("1": P/status/PLUGIN/NODE,
// "2": P/reports/NODE/PLUGIN), and returns once both are written; then it
// follows its targets until ctx ends. done is closed when it has stopped.
func Node(ctx context.Context, cli *clientv3.Client, prefix, layout, node, plugin, digest string, c *Counters) (done <-chan struct{}, err error) {
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(10), concurrency.WithContext(ctx))
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("node %s: %w", node, err)
	}
	var rev int64 // of the last write: the watch starts after it
	put := func(key string, m proto.Message) error {
		b, err := proto.Marshal(m)
		if err != nil {
			return err
		}
		resp, err := cli.Put(ctx, key, string(b), clientv3.WithLease(sess.Lease()))
		if err == nil {
			rev = resp.Header.GetRevision()
		}
		return err
	}
	status := func(gen uint64, d string) error {
		c.StatusWrites.Add(1)
		key := prefix + "/reports/" + node + "/" + plugin
		if layout == "1" {
			key = prefix + "/status/" + plugin + "/" + node
		}
		return put(key, &pb.FleetPluginStatus{Node: node, Plugin: plugin, Generation: gen, State: pb.PluginState_PLUGIN_STATE_SERVING, SpecDigest: d})
	}
	if err := put(prefix+"/nodes/"+node, &pb.FleetNode{Name: node}); err != nil {
		sess.Close()
		cli.Close()
		return nil, err
	}
	if err := status(1, digest); err != nil {
		sess.Close()
		cli.Close()
		return nil, err
	}
	wch := cli.Watch(ctx, prefix+"/targets/"+node+"/", clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		defer cli.Close()
		defer sess.Close()
		gen := uint64(1)
		for resp := range wch {
			for _, ev := range resp.Events {
				c.Events.Add(1)
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				t := &pb.FleetTarget{}
				if proto.Unmarshal(ev.Kv.Value, t) == nil {
					gen++
					_ = status(gen, t.GetSpecDigest())
				}
			}
		}
	}()
	return ch, nil
}

// Group is a set of simulated nodes.
type Group []<-chan struct{}

// Wait waits until every node stopped (after their context ended).
func (g Group) Wait() {
	for _, d := range g {
		<-d
	}
}

// Nodes starts n simulated nodes named n000, n001, ..., each with a client
// of its own from newClient; on an error the nodes started so far are in
// the Group (end ctx and Wait).
func Nodes(ctx context.Context, n int, newClient func() (*clientv3.Client, error), prefix, layout, plugin, digest string, c *Counters) (Group, error) {
	var g Group
	for i := range n {
		cli, err := newClient()
		if err != nil {
			return g, err
		}
		done, err := Node(ctx, cli, prefix, layout, fmt.Sprintf("n%03d", i), plugin, digest, c)
		if err != nil {
			return g, err
		}
		g = append(g, done)
	}
	return g, nil
}
