package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/plugincontrol/plugincontrol/client"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/wire"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/spec"
)

// AgentConfig configures an Agent.
type AgentConfig struct {
	// Client is the etcd client (required).
	Client *clientv3.Client
	// Prefix of the fleet's keys ("" is DefaultPrefix).
	Prefix string
	// Node is this node's name (required).
	Node string
	// Labels are this node's labels, matched by selectors.
	Labels map[string]string
	// Version is this node's plugind version, shown in ListNodes.
	Version string
	// Manager runs the plugins (required).
	Manager *manager.Manager
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// LeaseTTL is the node lease's TTL: a node that stops renewing it is
	// gone from ListNodes after about that long (default 10s; whole
	// seconds, at least 2).
	LeaseTTL time.Duration
	// StatusInterval is how often the local state is compared with what
	// was reported (default 1s); only changes are written.
	StatusInterval time.Duration
	// Instance identifies this plugind among processes that might use the
	// same node name (plugind: its state directory's id and the boot id).
	// A node key held under another lease by another instance is a twin:
	// the agent refuses to register over it (and says so) until it is
	// gone; held by the same instance (this plugind's previous run, whose
	// lease has not expired yet), the old lease is revoked and the name
	// taken back at once. "": no twin check (the key is overwritten).
	Instance string
	// InheritLease is the node lease of the plugind image this one
	// replaced (a reload in place, see Agent.Handover): the first session
	// keeps it, so the node never leaves the fleet. 0: grant a new one.
	InheritLease int64
	// AdoptLocal lets a fleet plugin take over a plugin of this node's own
	// with its name (reloading it to the fleet's spec). Without it the
	// node refuses that plugin, keeps its own, and says why in the
	// plugin's fleet status (its last error and failed digest).
	AdoptLocal bool
	// Memory is the file where the node remembers the etcd it follows (its
	// cluster id and the highest revision seen), so that a rebuilt etcd or
	// one restored from an older snapshot fences the node instead of
	// rewriting what it runs ("": nothing remembered; see AdoptFleetEtcd),
	// and the plugins it runs for the fleet and those detached, so that it
	// still knows them once the controller collected its keys
	// (ControllerConfig.NodeRetention).
	Memory string
}

// Agent makes one plugind converge to the fleet's desired plugins (see the
// package doc). Create it with NewAgent and run it with Run.
type Agent struct {
	cfg  AgentConfig
	keys keys
	log  *slog.Logger

	// mu guards desired, targets, managed, detached, refused, mem and fenced, which the
	// server reads (Managed, Fenced) while Run's goroutine changes them. No
	// I/O under it.
	mu       sync.Mutex
	fenced   string                     // why the node refuses to act on the fleet's keys ("": it follows them)
	desired  map[string]*pb.FleetPlugin // by name: the fleet plugins that select this node
	targets  map[string]*pb.FleetTarget // by name: this node's rollout targets
	managed  map[string]bool            // by name: the plugins this node runs for the fleet
	detached map[string]bool            // by name: the plugins this node no longer follows the fleet for
	// refused: fleet plugins refused here, a plugin of the node's own
	// having the name (AdoptLocal); written by Run's goroutine only.
	refused map[string]bool
	// mem is what the node remembers of its fleet (AgentConfig.Memory;
	// its plugin sets copied from managed and detached when saved); Adopt
	// clears its etcd.
	mem memory
	// memMu orders the writes of the memory file (Run's goroutine and
	// Detach/Attach both write it) and guards memSaved, when it was last
	// written. Held across the disk write; never by readers.
	memMu    sync.Mutex
	memSaved time.Time
	adopt    chan struct{} // 1 slot: an operator adopted the etcd (Adopt)

	kick chan string // names to reconcile on Run's goroutine (after Attach)

	// leaseMu guards lease and handover: the session's lease, and whether
	// the session ends for a handover (its lease is kept, not revoked).
	leaseMu  sync.Mutex
	lease    clientv3.LeaseID
	handover bool

	// Run's goroutine only:
	inherit   clientv3.LeaseID  // InheritLease, until the first session used it
	applied   map[string]string // by name: the digest last loaded or reloaded here
	failed    map[string]string // by name: the digest that failed here
	lastErr   map[string]string // by name: the last failure, for the status
	published map[string]string // by name: the status record last written (encoded)
	seenRev   int64             // the highest etcd revision a watch response carried
	layout    string            // the fleet's key layout (P/schema) as of the last resync
}

// want is what a node must run of a plugin.
type want struct {
	spec   *pb.PluginSpec
	digest string
	bake   time.Duration
}

// wantOf is the spec name must run here: the node's rollout target, else
// the fleet plugin's spec when it selects this node; ok false when none or
// when the node detached it. a.mu is held.
func (a *Agent) wantOf(name string) (want, bool) {
	if a.detached[name] {
		return want{}, false
	}
	if t := a.targets[name]; t != nil {
		return want{spec: t.GetSpec(), digest: t.GetSpecDigest(), bake: t.GetBake().AsDuration()}, true
	}
	if p := a.desired[name]; p != nil {
		return want{spec: p.GetSpec(), digest: p.GetSpecDigest()}, true
	}
	return want{}, false
}

// NewAgent checks cfg and returns an Agent.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("fleet: AgentConfig.Client is required")
	case cfg.Manager == nil:
		return nil, errors.New("fleet: AgentConfig.Manager is required")
	case cfg.Node == "" || strings.ContainsAny(cfg.Node, "/ \t\n"):
		return nil, fmt.Errorf("fleet: node name %q: want a non-empty name without '/' or spaces", cfg.Node)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 10 * time.Second
	}
	if cfg.LeaseTTL < 2*time.Second {
		return nil, fmt.Errorf("fleet: lease TTL %s: at least 2s", cfg.LeaseTTL)
	}
	if cfg.StatusInterval == 0 {
		cfg.StatusInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	mem, err := loadMemory(cfg.Memory)
	if err != nil {
		return nil, err
	}
	return &Agent{
		mem: mem, adopt: make(chan struct{}, 1),
		cfg: cfg, keys: newKeys(cfg.Prefix), log: cfg.Logger.With("component", "fleet", "node", cfg.Node),
		desired: map[string]*pb.FleetPlugin{}, targets: map[string]*pb.FleetTarget{}, managed: maps.Clone(mem.managed),
		detached: maps.Clone(mem.detached), kick: make(chan string, 16), inherit: clientv3.LeaseID(cfg.InheritLease),
		applied: map[string]string{}, failed: map[string]string{}, lastErr: map[string]string{}, published: map[string]string{},
		refused: map[string]bool{},
	}, nil
}

// Handover makes the session end without revoking the node's lease when
// Run's context ends next: a plugind reloading in place hands the lease to
// its next image (AgentConfig.InheritLease), so the node and its status
// stay in the fleet. It returns the lease (0 when no session holds one).
// Call it before cancelling Run's context, and read the lease again with
// Lease after Run returned.
func (a *Agent) Handover() int64 {
	a.leaseMu.Lock()
	defer a.leaseMu.Unlock()
	a.handover = true
	return int64(a.lease)
}

// Lease is the node's current lease (0: none).
func (a *Agent) Lease() int64 {
	a.leaseMu.Lock()
	defer a.leaseMu.Unlock()
	return int64(a.lease)
}

// Managed reports whether the fleet manages the plugin name on this node,
// and its fleet key: local Load, Reload and Unload of it are refused. A
// fleet plugin refused here (a plugin of the node's own has its name) is
// not managed: the node's own stays the node's to change.
func (a *Agent) Managed(name string) (key string, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.detached[name] && !a.refused[name] && (a.managed[name] || a.desired[name] != nil || a.targets[name] != nil) {
		return a.keys.plugin(name), true
	}
	return "", false
}

// ErrNotManaged: Detach of a plugin the fleet does not manage here, or
// Attach of one that is not detached.
var ErrNotManaged = errors.New("fleet: the fleet does not manage this plugin on this node")

// Detach makes this node stop following the fleet for plugin name: it
// keeps running it as its own (local Load, Reload and Unload work again)
// until Attach. Recorded in etcd, so it survives a restart; fails when etcd
// cannot be reached.
func (a *Agent) Detach(ctx context.Context, name string) error {
	if _, ok := a.Managed(name); !ok {
		return fmt.Errorf("%w: %q", ErrNotManaged, name)
	}
	if _, err := a.cfg.Client.Txn(ctx).Then(
		clientv3.OpPut(a.keys.detached(a.cfg.Node, name), "1"),
		clientv3.OpDelete(a.keys.managed(a.cfg.Node, name)),
	).Commit(); err != nil {
		return err
	}
	a.mu.Lock()
	a.detached[name] = true
	delete(a.managed, name)
	a.mu.Unlock()
	a.saveMemory(true, nil)
	a.log.Info("detached from the fleet: the node keeps it as its own", "plugin", name)
	return nil
}

// Attach undoes Detach: the node follows the fleet for name again (and
// converges to its spec). The plugin it kept as its own is the fleet's
// again at once: the operator's word, not a local namesake to refuse.
func (a *Agent) Attach(ctx context.Context, name string) error {
	a.mu.Lock()
	detached := a.detached[name]
	a.mu.Unlock()
	if !detached {
		return fmt.Errorf("%w: %q is not detached", ErrNotManaged, name)
	}
	if _, err := a.cfg.Client.Txn(ctx).Then(
		clientv3.OpDelete(a.keys.detached(a.cfg.Node, name)),
		clientv3.OpPut(a.keys.managed(a.cfg.Node, name), ""),
	).Commit(); err != nil {
		return err
	}
	a.mu.Lock()
	delete(a.detached, name)
	a.managed[name] = true
	a.mu.Unlock()
	a.saveMemory(true, nil)
	select {
	case a.kick <- name:
	default: // the next resync reconciles it
	}
	a.log.Info("attached to the fleet again", "plugin", name)
	return nil
}

// retries paces Run after a lost lease or an unreachable etcd, and a
// resync after a watch error: 500ms, doubling, at most 10s, each spread
// over ±50% of itself, so a thousand nodes cut off by one etcd blip do not
// all come back at the same instant.
func retries() client.Backoff {
	return client.Backoff{Initial: 500 * time.Millisecond, Max: 10 * time.Second, Jitter: 0.5}
}

// Run registers the node and reconciles until ctx ends. While etcd cannot
// be reached it retries with backoff and changes nothing locally (fail
// static). On return the node's lease is revoked when etcd is reachable
// (the node leaves ListNodes at once), else it expires.
func (a *Agent) Run(ctx context.Context) error {
	runSessions(ctx, a.log, "fleet session ended; the node keeps running what it has", a.session)
	return nil
}

// runSessions runs session until ctx ends: after it returns, it logs
// ended with the error and runs it again after a backoff (retries; back
// to its first delay after a session that lasted a minute).
func runSessions(ctx context.Context, log *slog.Logger, ended string, session func(context.Context) error) {
	b := retries()
	for {
		start := time.Now()
		err := session(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			b.Reset()
		}
		wait := b.Next()
		log.Warn(ended, "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// errLeaseLost ends a session whose lease expired or was revoked.
var errLeaseLost = errors.New("the node's lease was lost")

// session is one lease's lifetime: register, resync, then follow changes.
func (a *Agent) session(ctx context.Context) error {
	var sess *concurrency.Session
	var err error
	if inherit := a.inherit; inherit != 0 {
		// A reload in place: keep the lease of the image before.
		a.inherit = 0
		sess, err = concurrency.NewSession(a.cfg.Client, concurrency.WithLease(inherit), concurrency.WithContext(ctx))
		if err == nil {
			a.log.Info("fleet node lease kept across the reload", "lease", fmt.Sprintf("%x", int64(inherit)))
		}
	}
	if sess == nil {
		sess, err = newSession(ctx, a.cfg.Client, a.cfg.LeaseTTL)
	}
	if err != nil {
		return fmt.Errorf("granting the node lease: %w", err)
	}
	a.leaseMu.Lock()
	a.lease = sess.Lease()
	a.leaseMu.Unlock()
	defer func() {
		a.leaseMu.Lock()
		handover := a.handover
		if !handover {
			a.lease = 0
		}
		a.leaseMu.Unlock()
		if handover {
			sess.Orphan() // the next image keeps the lease alive
			return
		}
		// Revoke: a node that stops cleanly leaves at once.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_, _ = a.cfg.Client.Revoke(rctx, sess.Lease())
		sess.Orphan()
	}()
	if err := a.register(ctx, sess); err != nil {
		return err
	}
	clear(a.published) // this lease's status keys are new
	a.log.Info("fleet node registered", "lease_ttl", a.cfg.LeaseTTL)
	// Resync and follow the fleet's changes until the lease ends. A watch
	// that ends (a compaction past it, a lost leader, etcd out of reach for
	// a while) or a failed read is followed by a resync and a new watch in
	// the same lease: only the lease's end (or ctx's) ends the session, so
	// the node never drops out of the fleet for a watch error.
	b := retries()
	for {
		start := time.Now()
		rev, err := a.resync(ctx)
		if err == nil {
			err = a.follow(ctx, sess, rev)
		}
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, errLeaseLost):
			return err
		case errors.Is(err, errFenced):
			if err := a.fence(ctx, sess, err); err != nil {
				return err
			}
			continue // resync at once: the schema is back
		}
		if time.Since(start) > time.Minute {
			b.Reset()
		}
		wait := b.Next()
		a.log.Warn("fleet watch ended; resyncing within the node's lease", "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-sess.Done():
			t.Stop()
			return errLeaseLost
		case <-t.C:
		}
	}
}

// register writes the node key under the session's lease, unless another
// instance holds it (a twin: wait until it is gone, fenced meanwhile). A
// key of this instance under another lease is this plugind's previous run:
// its lease is revoked (its status keys go with it) and the name taken.
func (a *Agent) register(ctx context.Context, sess *concurrency.Session) error {
	lease := sess.Lease()
	key := a.keys.node(a.cfg.Node)
	node := &pb.FleetNode{Name: a.cfg.Node, Labels: a.cfg.Labels, Version: a.cfg.Version, RegisteredAt: timestamppb.Now(), Instance: a.cfg.Instance}
	twin := false
	for {
		resp, err := a.cfg.Client.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
		).Then(clientv3.OpPut(key, encode(node), clientv3.WithLease(lease))).Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			return fmt.Errorf("registering the node: %w", err)
		}
		if resp.Succeeded {
			if twin {
				a.setFenced("")
				a.log.Warn("the other plugind with this node name is gone: registered", "node", a.cfg.Node)
			}
			return nil
		}
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			continue // gone meanwhile
		}
		kv := kvs[0]
		var held pb.FleetNode
		_ = decode(key, kv.Value, &held)
		switch {
		case clientv3.LeaseID(kv.Lease) == lease || a.cfg.Instance == "":
			// Ours already (a reload in place), or no twin check.
			if _, err := a.cfg.Client.Put(ctx, key, encode(node), clientv3.WithLease(lease)); err != nil {
				return fmt.Errorf("registering the node: %w", err)
			}
			return nil
		case held.GetInstance() == a.cfg.Instance:
			a.log.Warn("this node's previous run still holds its name: revoking that lease", "node", a.cfg.Node, "lease", fmt.Sprintf("%x", kv.Lease))
			if _, err := a.cfg.Client.Revoke(ctx, clientv3.LeaseID(kv.Lease)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
				return fmt.Errorf("revoking the previous run's lease: %w", err)
			}
			continue
		}
		if !twin {
			twin = true
			why := fmt.Sprintf("another plugind (instance %s, version %s, registered %s) holds node name %q: two nodes with one name would overwrite each other's reports; give one a --node-name of its own", held.GetInstance(), held.GetVersion(), held.GetRegisteredAt().AsTime().Format(time.RFC3339), a.cfg.Node)
			a.setFenced(why)
			a.log.Error("not joining the fleet: "+why, "node", a.cfg.Node, "instance", a.cfg.Instance)
		}
		// Wait for the key to go (the other plugind stops or its lease
		// lapses), then try again.
		wctx, cancel := context.WithCancel(ctx)
		wch := a.cfg.Client.Watch(wctx, key, clientv3.WithRev(resp.Header.GetRevision()+1))
		gone := false
		for !gone {
			select {
			case wr, ok := <-wch:
				if !ok || wr.Err() != nil {
					gone = true // recheck
				}
				for _, ev := range wr.Events {
					if ev.Type == clientv3.EventTypeDelete {
						gone = true
					}
				}
			case <-sess.Done():
				cancel()
				return errLeaseLost
			case <-ctx.Done():
				cancel()
				return ctx.Err()
			}
		}
		cancel()
	}
}

// setFenced sets why the node refuses to act ("": it does not).
func (a *Agent) setFenced(why string) {
	a.mu.Lock()
	a.fenced = why
	a.mu.Unlock()
}

// follow watches the fleet's plugins and this node's targets from after
// rev and reconciles each change, publishing the status under the
// session's lease, until ctx ends, the lease is lost (errLeaseLost) or a
// watch ends (its error).
func (a *Agent) follow(ctx context.Context, sess *concurrency.Session, rev int64) error {
	lease := sess.Lease()
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := a.cfg.Client.Watch(wctx, a.keys.plugins(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	tch := a.cfg.Client.Watch(wctx, a.keys.targetsOf(a.cfg.Node), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	// The schema key: gone, or another layout (an older plugind's Apply
	// writes "1"), is for a resync to judge.
	sch := a.cfg.Client.Watch(wctx, a.keys.schema(), clientv3.WithRev(rev+1))
	// The lease's keep-alive answers (the session's own, every third of
	// the TTL) carry the cluster id and revision of the etcd that answers:
	// after an etcd restored from an older snapshot, or another cluster
	// at the same address, they are the only sign. The client resumes the
	// watches there silently, and a watch from a revision that etcd has
	// not reached yet just waits.
	kach, err := a.cfg.Client.KeepAlive(wctx, lease)
	if err != nil {
		return fmt.Errorf("following the node lease's keep-alives: %w", err)
	}
	tick := time.NewTicker(a.cfg.StatusInterval)
	defer tick.Stop()
	a.publish(ctx, lease)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			return errLeaseLost
		case resp, ok := <-wch:
			err := applyChanges(ctx, a, resp, ok, "the fleet's plugins", decodePlugin, func(name string, _ *mvccpb.KeyValue, p *pb.FleetPlugin) {
				a.setDesired(name, p)
			})
			if err != nil {
				return err
			}
			a.publish(ctx, lease)
		case resp, ok := <-tch:
			err := applyChanges(ctx, a, resp, ok, "the node's targets", decodeTarget, func(name string, kv *mvccpb.KeyValue, tg *pb.FleetTarget) {
				// The plugin's own key as of this change: the controller
				// writes a rollout's new spec to it and deletes the targets
				// in one transaction, but the two watches may deliver them
				// in either order; reconciling with a stale plugin key
				// would move the node back for a moment.
				a.refreshDesired(ctx, name, kv.ModRevision)
				a.mu.Lock()
				if tg != nil {
					a.targets[name] = tg
				} else {
					delete(a.targets, name)
				}
				a.mu.Unlock()
			})
			if err != nil {
				return err
			}
			a.publish(ctx, lease)
		case resp, ok := <-sch:
			evs, err := watchEvents(resp, ok, "the fleet's schema key")
			if err != nil {
				return err
			}
			if len(evs) > 0 {
				return errors.New("the fleet's schema key changed: resyncing")
			}
		case ka, ok := <-kach:
			if !ok {
				kach = nil // the lease is gone: sess.Done says so
				continue
			}
			if err := a.sameEtcd(ka.ResponseHeader.GetClusterId(), ka.ResponseHeader.GetRevision()); err != nil {
				return err // the resync's linearizable read decides
			}
		case name := <-a.kick:
			a.reconcile(ctx, name)
			a.publish(ctx, lease)
		case <-tick.C:
			a.remember(0, a.seenRev, false)
			// A refused plugin is looked at again: its local namesake
			// may be gone.
			a.mu.Lock()
			refused := slices.Collect(maps.Keys(a.refused))
			a.mu.Unlock()
			for _, name := range refused {
				a.reconcile(ctx, name)
			}
			a.publish(ctx, lease)
		}
	}
}

// sameEtcd says whether an answer from cluster id at revision rev can come
// from the etcd this node follows. Not a verdict: a follower may answer a
// few revisions behind what a watch delivered from the leader, so a
// mismatch only ends the watches, and the resync's linearizable read
// (always at or past every committed revision) checks again, fencing the
// node when the etcd really is another or went back.
func (a *Agent) sameEtcd(id uint64, rev int64) error {
	a.mu.Lock()
	remembered, seen := a.mem.clusterID, max(a.mem.revision, a.seenRev)
	a.mu.Unlock()
	switch {
	case remembered != 0 && id != remembered:
		return fmt.Errorf("etcd answers as cluster %x, not %x: checking it", id, remembered)
	case rev < seen:
		return fmt.Errorf("etcd answers at revision %d, behind the %d this node saw: checking it", rev, seen)
	}
	return nil
}

// errFenced: the fleet's keys look wiped or foreign (no P/schema, or
// another layout's): see fence.
var errFenced = errors.New("fleet: the fleet's etcd has lost its schema key")

// schemaOK checks the P/schema key as read (kvs: none, or the key).
func schemaOK(kvs []*mvccpb.KeyValue) error {
	switch {
	case len(kvs) == 0:
		return fmt.Errorf("%w: %s is missing (an etcdctl del --prefix, an etcd rebuilt or restored from a snapshot older than the fleet?)", errFenced, "schema")
	case !slices.Contains(layouts, string(kvs[0].Value)):
		return fmt.Errorf("%w: schema is %q, this plugind knows layouts %q", errFenced, kvs[0].Value, layouts)
	}
	return nil
}

// checkDeletes returns errFenced when evs delete keys at a revision where
// the schema key is gone too: a wiped prefix, not deleted plugins. Read at
// the deletes' revision (now, when etcd compacted it).
func (a *Agent) checkDeletes(ctx context.Context, evs []*clientv3.Event) error {
	var rev int64
	for _, ev := range evs {
		if ev.Type == clientv3.EventTypeDelete {
			rev = max(rev, ev.Kv.ModRevision)
		}
	}
	if rev == 0 {
		return nil
	}
	resp, err := a.cfg.Client.Get(ctx, a.keys.schema(), clientv3.WithRev(rev))
	if err != nil {
		if resp, err = a.cfg.Client.Get(ctx, a.keys.schema()); err != nil {
			return fmt.Errorf("reading the fleet's schema key: %w", err)
		}
	}
	return schemaOK(resp.Kvs)
}

// fence is the node's answer to an etcd whose fleet keys look wiped or
// foreign while it runs fleet plugins (why: the errFenced error): it keeps
// every plugin as it runs, acts on nothing, says so (an error log, Fenced,
// plugind's FleetStatus), and waits in its lease until the schema key is
// back, which the next "pluginctl fleet apply" writes: the operator's
// word that the fleet's desired state is what etcd holds. Then it
// registers again (the wipe took its node key) and resyncs.
func (a *Agent) fence(ctx context.Context, sess *concurrency.Session, why error) error {
	a.setFenced(why.Error())
	if errors.Is(why, errForeign) {
		a.log.Error("refusing to act on the fleet's keys: the node keeps every plugin as it runs until an operator adopts this etcd (pluginctl fleet adopt on this node)", "reason", why)
		for adopted := false; !adopted; {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-sess.Done():
				return errLeaseLost
			case <-a.adopt:
			}
			// An Adopt clears the memory before it signals; a signal
			// left from an Adopt before this etcd appeared finds it set
			// again, and is not this one's.
			a.mu.Lock()
			adopted = a.mem.clusterID == 0
			a.mu.Unlock()
		}
		a.setFenced("")
		a.seenRev = 0 // the revisions of the etcd before: this one's start over
		a.log.Info("the etcd was adopted: following the fleet it holds")
		return nil
	}
	a.log.Error("refusing to act on the fleet's keys: the node keeps every plugin as it runs until the schema key is back (pluginctl fleet apply writes it)", "reason", why)
	b := retries()
	for {
		err := a.waitSchema(ctx, sess)
		if err == nil {
			break
		}
		if ctx.Err() != nil || errors.Is(err, errLeaseLost) {
			return err
		}
		if b.Wait(ctx) != nil {
			return ctx.Err()
		}
	}
	a.setFenced("")
	if err := a.register(ctx, sess); err != nil {
		return fmt.Errorf("registering the node again: %w", err)
	}
	clear(a.published) // the wipe took the status keys
	a.log.Info("the fleet's schema key is back: following the fleet again")
	return nil
}

// waitSchema returns once the schema key holds this layout, errLeaseLost
// when the lease ends first, or a read or watch error.
func (a *Agent) waitSchema(ctx context.Context, sess *concurrency.Session) error {
	resp, err := a.cfg.Client.Get(ctx, a.keys.schema())
	if err != nil {
		return err
	}
	if schemaOK(resp.Kvs) == nil {
		return nil
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := a.cfg.Client.Watch(wctx, a.keys.schema(), clientv3.WithRev(resp.Header.GetRevision()+1))
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			return errLeaseLost
		case wr, ok := <-wch:
			evs, err := watchEvents(wr, ok, "the schema key")
			if err != nil {
				return err
			}
			for _, ev := range evs {
				if ev.Type == clientv3.EventTypePut && schemaOK([]*mvccpb.KeyValue{ev.Kv}) == nil {
					return nil
				}
			}
		}
	}
}

// Fenced says why the node refuses to act on the fleet's keys ("" when it
// follows them): see fence.
func (a *Agent) Fenced() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.fenced
}

// refreshDesired reads the fleet plugin name as of revision rev (now,
// when etcd compacted it) and records it.
func (a *Agent) refreshDesired(ctx context.Context, name string, rev int64) {
	resp, err := a.cfg.Client.Get(ctx, a.keys.plugin(name), clientv3.WithRev(rev))
	if err != nil {
		if resp, err = a.cfg.Client.Get(ctx, a.keys.plugin(name)); err != nil {
			return // the plugins watch delivers it
		}
	}
	var p *pb.FleetPlugin
	if len(resp.Kvs) > 0 {
		if p, err = decodePlugin(resp.Kvs[0]); err != nil {
			return
		}
	}
	a.setDesired(name, p)
}

// setDesired records p (nil: not desired) as the fleet plugin name, if it
// selects this node.
func (a *Agent) setDesired(name string, p *pb.FleetPlugin) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p != nil && selects(p.GetSelector(), a.cfg.Labels) {
		a.desired[name] = p
	} else {
		delete(a.desired, name)
	}
}

// resync reads the whole desired state and this node's managed records at
// one revision, reconciles every plugin concerned and returns the revision.
func (a *Agent) resync(ctx context.Context) (int64, error) {
	txn, err := a.cfg.Client.Txn(ctx).Then(
		clientv3.OpGet(a.keys.plugins(), clientv3.WithPrefix()),
		clientv3.OpGet(a.keys.managedOf(a.cfg.Node), clientv3.WithPrefix()),
		clientv3.OpGet(a.keys.targetsOf(a.cfg.Node), clientv3.WithPrefix()),
		clientv3.OpGet(a.keys.detachedOf(a.cfg.Node), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		clientv3.OpGet(a.keys.schema()),
	).Commit()
	if err != nil {
		return 0, fmt.Errorf("reading the fleet's plugins: %w", err)
	}
	a.mu.Lock()
	managing := len(a.managed) > 0 || len(txn.Responses[1].GetResponseRange().GetKvs()) > 0
	a.mu.Unlock()
	if err := schemaOK(txn.Responses[4].GetResponseRange().GetKvs()); err != nil && managing {
		return 0, err
	}
	if layout := layoutOf(txn.Responses[4].GetResponseRange().GetKvs()); layout != a.layout {
		// Reports move to where this layout keeps them.
		for name := range a.published {
			if _, err := a.cfg.Client.Delete(ctx, a.keys.reportKey(a.layout, a.cfg.Node, name)); err != nil {
				return 0, fmt.Errorf("moving the node's reports to layout %s: %w", layout, err)
			}
		}
		a.layout = layout
		clear(a.published)
	}
	hdr := txn.Header
	a.remember(0, a.seenRev, false) // the revisions this session saw count too
	a.mu.Lock()
	foreign := a.mem.check(hdr.GetClusterId(), hdr.GetRevision())
	a.mu.Unlock()
	if foreign != nil && managing {
		return 0, foreign
	}
	a.remember(hdr.GetClusterId(), hdr.GetRevision(), true)
	desired := map[string]*pb.FleetPlugin{}
	for _, kv := range txn.Responses[0].GetResponseRange().GetKvs() {
		p, err := decodePlugin(kv)
		if err != nil {
			a.log.Error("ignoring an unreadable fleet plugin", "error", err)
			continue
		}
		if selects(p.GetSelector(), a.cfg.Labels) {
			desired[base(string(kv.Key))] = p
		}
	}
	managed := map[string]bool{}
	for _, kv := range txn.Responses[1].GetResponseRange().GetKvs() {
		managed[base(string(kv.Key))] = true
	}
	targets := map[string]*pb.FleetTarget{}
	for _, kv := range txn.Responses[2].GetResponseRange().GetKvs() {
		tg, err := decodeTarget(kv)
		if err != nil {
			a.log.Error("ignoring an unreadable target", "error", err)
			continue
		}
		targets[base(string(kv.Key))] = tg
	}
	detached := map[string]bool{}
	for _, kv := range txn.Responses[3].GetResponseRange().GetKvs() {
		detached[base(string(kv.Key))] = true
	}
	// The node's own sets (remembered on disk) and etcd's are one: what
	// etcd lacks (collected while the node was gone past the retention)
	// is written again, what the node lacks (its memory file lost) is
	// taken from etcd.
	a.mu.Lock()
	var restore []clientv3.Op
	for n := range a.managed {
		if !managed[n] {
			restore = append(restore, clientv3.OpPut(a.keys.managed(a.cfg.Node, n), ""))
		}
	}
	for n := range a.detached {
		if !detached[n] {
			restore = append(restore, clientv3.OpPut(a.keys.detached(a.cfg.Node, n), "1"))
		}
	}
	a.mu.Unlock()
	if len(restore) > 0 {
		if _, err := a.cfg.Client.Txn(ctx).Then(restore...).Commit(); err != nil {
			return 0, fmt.Errorf("writing this node's managed and detached plugins again: %w", err)
		}
		a.log.Info("wrote this node's managed and detached plugins to etcd again (etcd had lost them: collected while the node was away, or deleted)", "keys", len(restore))
	}
	a.mu.Lock()
	a.desired, a.targets = desired, targets
	maps.Copy(a.managed, managed)
	maps.Copy(a.detached, detached)
	names := make(map[string]bool, len(desired)+len(targets)+len(a.managed))
	for n := range desired {
		names[n] = true
	}
	for n := range targets {
		names[n] = true
	}
	for n := range a.managed {
		names[n] = true
	}
	a.mu.Unlock()
	a.saveMemory(false, nil)
	for n := range names {
		a.reconcile(ctx, n)
	}
	return txn.Header.GetRevision(), nil
}

// reconcile makes the local plugin name match its desired state.
func (a *Agent) reconcile(ctx context.Context, name string) {
	a.mu.Lock()
	w, wanted := a.wantOf(name)
	managed := a.managed[name]
	a.mu.Unlock()
	mctx := manager.WithCaller(ctx, "fleet:"+a.cfg.Node)
	st, getErr := a.cfg.Manager.Get(name)
	loaded := getErr == nil
	if !wanted {
		if !managed {
			if a.refused[name] { // no longer wanted: the refusal ends (publish deletes its status)
				a.setRefused(name, false)
				delete(a.failed, name)
				delete(a.lastErr, name)
			}
			return
		}
		if loaded {
			if _, err := a.cfg.Manager.Unload(mctx, name, 0); err != nil && !errors.Is(err, manager.ErrNotFound) {
				a.log.Error("unloading a plugin the fleet no longer wants", "plugin", name, "error", err)
				return // tried again at the next resync
			}
			a.log.Info("unloaded: no longer desired by the fleet", "plugin", name)
		}
		if _, err := a.cfg.Client.Delete(ctx, a.keys.managed(a.cfg.Node, name)); err != nil {
			a.log.Warn("forgetting a managed plugin in etcd", "plugin", name, "error", err)
			return
		}
		a.mu.Lock()
		delete(a.managed, name)
		a.mu.Unlock()
		a.saveMemory(true, nil)
		delete(a.failed, name)
		delete(a.lastErr, name)
		delete(a.applied, name)
		return
	}
	if !managed && loaded && !a.cfg.AdoptLocal {
		// A plugin of this node's own has the name: the fleet does not
		// reload over it unless told to.
		if a.failed[name] != w.digest {
			a.log.Error("refusing a fleet plugin: a plugin of this node's own has its name (plugind --fleet-adopt-local lets the fleet take it over)", "plugin", name)
		}
		a.setRefused(name, true)
		a.failed[name] = w.digest
		a.lastErr[name] = "refused: a plugin of this node's own is loaded under this name; unload it, or run plugind with --fleet-adopt-local to let the fleet take it over"
		return
	}
	if a.refused[name] { // the local plugin is gone (or adopting is allowed now)
		a.setRefused(name, false)
		delete(a.failed, name)
		delete(a.lastErr, name)
	}
	if !managed {
		if _, err := a.cfg.Client.Put(ctx, a.keys.managed(a.cfg.Node, name), w.digest); err != nil {
			a.log.Warn("recording a managed plugin in etcd", "plugin", name, "error", err)
			return // tried again at the next change or resync
		}
		a.mu.Lock()
		a.managed[name] = true
		a.mu.Unlock()
		a.saveMemory(true, nil)
	}
	if loaded && spec.Digest(wire.SpecProto(st.Spec)) == w.digest {
		if a.failed[name] != w.digest {
			delete(a.failed, name)
			a.lastErr[name] = ""
		}
		return
	}
	if a.failed[name] == w.digest {
		return // failed here already; not again until the spec changes
	}
	ms, err := wire.Spec(w.spec)
	if err == nil {
		if loaded {
			bake := manager.NoBake
			if w.bake > 0 {
				bake = w.bake
			}
			_, err = a.cfg.Manager.Reload(mctx, manager.ReloadRequest{Name: name, Spec: &ms, Bake: bake})
		} else {
			_, err = a.cfg.Manager.Load(mctx, ms)
		}
	}
	if err != nil {
		a.failed[name], a.lastErr[name] = w.digest, err.Error()
		a.log.Error("the fleet's spec failed here; the node keeps what it runs", "plugin", name, "digest", w.digest, "error", err)
		return
	}
	delete(a.failed, name)
	a.lastErr[name] = ""
	a.applied[name] = w.digest
	what := "loaded"
	if loaded {
		what = "reloaded"
	}
	a.log.Info(what+" to the fleet's spec", "plugin", name, "digest", w.digest, "bake", w.bake)
}

// publish writes, under the lease, the status of every managed (or
// refused) plugin whose report changed since it was last written. A failed
// write is tried again at the next call.
func (a *Agent) publish(ctx context.Context, lease clientv3.LeaseID) {
	a.mu.Lock()
	names := make([]string, 0, len(a.managed)+len(a.refused))
	for n := range a.managed {
		names = append(names, n)
	}
	for n := range a.refused {
		names = append(names, n)
	}
	a.mu.Unlock()
	for _, name := range names {
		a.mu.Lock()
		w, wanted := a.wantOf(name)
		a.mu.Unlock()
		st := &pb.FleetPluginStatus{Node: a.cfg.Node, Plugin: name}
		if s, err := a.cfg.Manager.Get(name); err == nil {
			st.Generation = s.Generation
			st.State = pb.PluginState(s.State)
			st.SpecDigest = spec.Digest(wire.SpecProto(s.Spec))
			var bake *manager.BakeStatus // the plugin's current or last bake
			if hs, _, err := a.cfg.Manager.Health([]string{name}); err == nil && len(hs) == 1 {
				bake = hs[0].Bake
			}
			st.Baking = bake != nil && bake.Result == manager.BakeBaking && bake.Generation == s.Generation
			// Applied here, and now the node runs something else: its bake
			// reverted it. Not tried again until the spec changes.
			if wanted && a.applied[name] == w.digest && st.SpecDigest != w.digest && a.failed[name] != w.digest {
				a.failed[name] = w.digest
				a.lastErr[name] = "reverted during its bake"
				if bake != nil && bake.Reason != "" {
					a.lastErr[name] += ": " + bake.Reason
				}
				a.log.Warn("the fleet's spec was reverted here during its bake", "plugin", name, "digest", w.digest, "reason", a.lastErr[name])
			}
		}
		st.LastError, st.FailedSpecDigest = a.lastErr[name], a.failed[name]
		rec := encode(st) // without the time: only changes are written
		if a.published[name] == rec {
			continue
		}
		st.UpdatedAt = timestamppb.Now()
		if _, err := a.cfg.Client.Put(ctx, a.keys.reportKey(a.layout, a.cfg.Node, name), encode(st), clientv3.WithLease(lease)); err != nil {
			a.log.Debug("writing a status", "plugin", name, "error", err)
			return
		}
		a.published[name] = rec
	}
	// Status keys of plugins no longer managed (nor refused).
	for name := range a.published {
		a.mu.Lock()
		still := a.managed[name] || a.refused[name]
		a.mu.Unlock()
		if still {
			continue
		}
		if _, err := a.cfg.Client.Delete(ctx, a.keys.reportKey(a.layout, a.cfg.Node, name)); err == nil {
			delete(a.published, name)
		}
	}
}

// applyChanges applies one watch response of keys that each hold a T (a
// fleet plugin, a node's target): for each event, apply gets the key's
// name, its KeyValue and its new value (nil: deleted), then the plugin is
// reconciled. An unreadable value is logged and skipped; a wipe of the
// fleet's keys (checkDeletes) or the watch's end is returned.
func applyChanges[T any](ctx context.Context, a *Agent, resp clientv3.WatchResponse, ok bool, what string,
	decode func(*mvccpb.KeyValue) (*T, error), apply func(name string, kv *mvccpb.KeyValue, v *T)) error {
	evs, err := watchEvents(resp, ok, what)
	if err != nil {
		return err
	}
	a.seenRev = max(a.seenRev, resp.Header.GetRevision())
	if err := a.checkDeletes(ctx, evs); err != nil {
		return err
	}
	for _, ev := range evs {
		name := base(string(ev.Kv.Key))
		var v *T
		if ev.Type == clientv3.EventTypePut {
			if v, err = decode(ev.Kv); err != nil {
				a.log.Error("ignoring an unreadable value of "+what, "key", string(ev.Kv.Key), "error", err)
				continue
			}
		}
		apply(name, ev.Kv, v)
		a.reconcile(ctx, name)
	}
	return nil
}

// setRefused records whether the fleet plugin name is refused here (see
// AgentConfig.AdoptLocal). Run's goroutine only.
func (a *Agent) setRefused(name string, v bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if v {
		a.refused[name] = true
	} else {
		delete(a.refused, name)
	}
}

// memoryEvery is how often at most the remembered revision is written to
// disk while the node follows the fleet (a resync always writes it): the
// revision only has to be recent enough to tell an older snapshot.
const memoryEvery = 10 * time.Second

// remember records that the node follows etcd cluster id (0: the one it
// remembers), seen at revision rev, and writes it to disk when asked
// (force) or when the last write is memoryEvery old.
func (a *Agent) remember(id uint64, rev int64, force bool) {
	a.saveMemory(force, func(m *memory) bool {
		if id == 0 {
			id = m.clusterID
		}
		if id == 0 { // nothing remembered yet: a resync records the cluster first
			return false
		}
		changed := m.clusterID != id || rev > m.revision
		if m.clusterID != id {
			m.clusterID, m.revision = id, 0
		}
		m.revision = max(m.revision, rev)
		return changed
	})
}

// saveMemory applies change (nil: none) to the memory under a.mu, copies
// the managed and detached sets into it, and writes it to disk when
// something changed and either force is set or the last write is
// memoryEvery old. No disk I/O under a.mu.
func (a *Agent) saveMemory(force bool, change func(*memory) bool) {
	if a.cfg.Memory == "" {
		return
	}
	a.memMu.Lock()
	defer a.memMu.Unlock()
	a.mu.Lock()
	changed := change != nil && change(&a.mem)
	if !maps.Equal(a.mem.managed, a.managed) || !maps.Equal(a.mem.detached, a.detached) {
		a.mem.managed, a.mem.detached = maps.Clone(a.managed), maps.Clone(a.detached)
		changed, force = true, true
	}
	m := a.mem.clone()
	a.mu.Unlock()
	if !changed || (!force && time.Since(a.memSaved) < memoryEvery) {
		return
	}
	if err := m.save(a.cfg.Memory); err != nil {
		a.log.Warn("remembering the fleet on disk", "file", a.cfg.Memory, "error", err)
		return
	}
	a.memSaved = time.Now()
}

// Adopt makes the node accept the etcd it reaches now as its fleet's: it
// forgets the cluster and revision it remembered and, when it was fenced
// for another etcd, converges to what this one holds.
func (a *Agent) Adopt(ctx context.Context) error {
	a.mu.Lock()
	a.mem.clusterID, a.mem.revision = 0, 0
	a.mu.Unlock()
	if err := a.forgetEtcd(); err != nil {
		return fmt.Errorf("forgetting the fleet's etcd: %w", err)
	}
	select {
	case a.adopt <- struct{}{}:
	default:
	}
	a.log.Info("adopting the etcd the node reaches as its fleet's")
	return nil
}

// forgetEtcd writes the memory after Adopt cleared its etcd (the plugin
// sets stay).
func (a *Agent) forgetEtcd() error {
	if a.cfg.Memory == "" {
		return nil
	}
	a.memMu.Lock()
	defer a.memMu.Unlock()
	a.mu.Lock()
	m := a.mem.clone()
	a.mu.Unlock()
	return m.save(a.cfg.Memory)
}
