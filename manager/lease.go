package manager

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"

	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Lease is a hold on one generation of a plugin: while a lease is out, a
// Reload or Unload drains rather than stops that generation, exactly as it
// waits for Invoke calls in flight, up to the drain timeout. When the drain
// gives up (or the process dies), Done is closed: calls still made under the
// lease fail, and the holder should end them with codes.Unavailable.
//
// Get one with Manager.Acquire and end it with Release, typically per call
// or per stream:
//
//	l, err := m.Acquire(ctx, "kv")
//	if err != nil { ... }
//	defer l.Release()
//	kv := l.Value.(shared.KV)
type Lease struct {
	// Plugin is the instance name.
	Plugin string
	// Generation is the generation the lease holds.
	Generation uint64
	// Value is what the generation's protocol dispensed (for GRPCProtocol,
	// the *grpc.ClientConn; for NativeProtocol, a *plugin.Conn; for the
	// embedder's protocol, its GRPCPlugin's GRPCClient value).
	Value any
	// Conn is go-plugin's connection to the generation's gRPC server.
	Conn *grpc.ClientConn
	// Addr is where the generation's gRPC server listens (go-plugin's
	// unix socket); nil when unknown.
	Addr net.Addr
	// TLS is set when that server speaks go-plugin's AutoMTLS: a
	// connection of someone else's needs its client certificate.
	TLS bool

	m        *Manager
	e        *entry
	inst     *instance
	released atomic.Bool
}

// Acquire returns a lease on the active generation of plugin name. Like
// Invoke it never waits behind a reload: the generation active now is
// leased, and a swap meanwhile only makes the next Acquire lease the new
// one. It fails with ErrNotFound for an unknown plugin and with
// ErrUnavailable when no generation serves (starting, restarting, stopped,
// or stopping).
func (m *Manager) Acquire(ctx context.Context, name string) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	e, err := m.lookup(name)
	if err != nil {
		return nil, err
	}
	inst, err := admit(ctx, e)
	if err != nil {
		return nil, err
	}
	l := &Lease{Plugin: name, Generation: inst.generation(), Value: inst.dispensed, Conn: inst.rpc, TLS: inst.tls != nil, m: m, e: e, inst: inst}
	if inst.client != nil {
		if rc := inst.client.ReattachConfig(); rc != nil {
			l.Addr = rc.Addr
		}
	}
	return l, nil
}

// Release ends the lease. It is idempotent.
func (l *Lease) Release() {
	if l.released.CompareAndSwap(false, true) {
		l.inst.release()
	}
}

// Context is cancelled once the generation is being stopped (the drain
// gave up on this lease, the plugin was unloaded, or its process exited).
// Make the calls of a lease under a context that ends with it:
//
//	ctx, cancel := context.WithCancel(ctx)
//	defer context.AfterFunc(l.Context(), cancel)()
func (l *Lease) Context() context.Context { return l.inst.gone }

// Draining is closed once the generation stops admitting calls: a reload
// made another active (or holds this one through a bake), or an unload
// began. A holder that makes calls of its own on the generation (a direct
// connection) should move new calls on and end the lease once those in
// flight are done: the drain waits for it.
func (l *Lease) Draining() <-chan struct{} { return l.inst.drained() }

// Done is Context().Done().
func (l *Lease) Done() <-chan struct{} { return l.inst.gone.Done() }

// Unary reports whether the generation described fullMethod
// ("/pkg.Service/Method") as unary: known for the native protocol, and
// through server reflection for foreign plugins that serve it. False when
// unknown.
func (l *Lease) Unary(fullMethod string) bool { return l.inst.unary[fullMethod] }

// Report tells the manager how a call made under the lease ended, for the
// failure tracker: an error whose gRPC status carries a
// plugincontrol.plugin.v1.PanicDetail (a handler panic the plugin SDK
// recovered) counts as a panic of the generation, and DeadlineExceeded as a
// call that timed out inside it. Other errors, and nil, change nothing.
func (l *Lease) Report(err error) {
	if err == nil {
		return
	}
	l.m.recordCallError(l.e, l.Generation, err)
}

// panicOf returns the PanicDetail of err's status, or nil.
func panicOf(err error) *PanicInfo {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	for _, d := range st.Details() {
		if pd, ok := d.(*pluginv1.PanicDetail); ok {
			return &PanicInfo{Message: pd.GetMessage(), Stack: pd.GetStack(), Fingerprint: pd.GetFingerprint()}
		}
	}
	return nil
}

// Endpoints serves each plugin's own gRPC API at a stable address across
// generations (package endpoint implements it for plugind). The manager
// opens a plugin's endpoint when the plugin is loaded or restored, before
// its first generation serves, and closes it once the plugin is unloaded
// (after its last generation stopped) or the manager closes. Calls reach
// the active generation through acquire, which leases it per call.
type Endpoints interface {
	// Open starts serving plugin name and returns the address clients
	// dial (such as "unix:///var/lib/plugind/plugins/kv.sock").
	Open(name string, acquire func(context.Context) (*Lease, error)) (address string, err error)
	// Close stops serving plugin name and removes its address.
	Close(name string)
}

// openEndpoint opens e's endpoint when the manager has Endpoints; the
// caller holds e's operation lock.
func (m *Manager) openEndpoint(e *entry) error {
	if m.cfg.Endpoints == nil {
		return nil
	}
	name := e.name
	addr, err := m.cfg.Endpoints.Open(name, func(ctx context.Context) (*Lease, error) { return m.Acquire(ctx, name) })
	if err != nil {
		return fmt.Errorf("plugin %q: %w", name, resourceErr("opening its endpoint", err))
	}
	e.mu.Lock()
	e.endpoint = addr
	e.mu.Unlock()
	return nil
}

// closeEndpoint closes e's endpoint, if it has one.
func (m *Manager) closeEndpoint(e *entry) {
	e.mu.Lock()
	had := e.endpoint != ""
	e.endpoint = ""
	e.mu.Unlock()
	if had {
		m.cfg.Endpoints.Close(e.name)
	}
}
