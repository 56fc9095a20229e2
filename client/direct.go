package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"
)

// DirectScheme is the gRPC target scheme of DialDirect's connections
// ("plugind:///NAME").
const DirectScheme = "plugind"

// reportInterval is how often a direct connection reports its calls to
// the daemon (and once more as each leased connection closes).
const reportInterval = time.Second

// DialDirect returns a connection to the plugin's own gRPC API that goes
// straight to the plugin's process: the zero-hop data path, for callers on
// the daemon's machine that reach it on its unix socket.
//
//	conn, err := c.DialDirect(ctx, "kv")
//	if err != nil { ... }
//	defer conn.Close()
//	kv := proto.NewKVClient(conn)
//
// The daemon still decides who may (PluginDirectService.Lease needs the
// invoker role with an auth file), and passes the connection as a file
// descriptor over its direct socket: no plugin socket is opened to anyone
// else. The connection follows the plugin's generations: once a reload
// makes a new generation active (seen on WatchHealth), new calls go to it
// and calls in flight finish on the old one, which the daemon keeps alive
// while this connection holds a lease on it (up to its drain deadline).
// While plugind itself is down or re-executing, calls go on over the
// connection they have; the lease is taken again when it is back. Calls
// are counted by the client and reported to the daemon every second, into
// the same metrics as the plugin's forwarded endpoint.
//
// It fails at once with ErrNotFound for an unknown plugin, ErrUnavailable
// when no generation serves, ErrPermissionDenied without the invoker
// role, and codes.FailedPrecondition when a direct connection cannot be
// had (a daemon reached over TCP, a plugin on go-plugin's AutoMTLS, a
// daemon with --direct-socket off): use DialPlugin, the forwarded
// endpoint, then. opts are added to the connection's (interceptors, call
// options); its transport is the daemon's to choose.
func (c *Client) DialDirect(ctx context.Context, name string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dctx, cancel := context.WithCancel(context.Background())
	d := &directConn{c: c, name: name, ctx: dctx, cancel: cancel, stats: newCallStats()}
	// The first lease now: every reason not to connect shows here, not as
	// failing calls.
	first, err := d.lease(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	d.first = first
	d.stats.buckets = first.buckets
	d.res = &directResolver{addr: strconv.FormatUint(first.gen, 10)}
	conn, err := grpc.NewClient(DirectScheme+":///"+name, append([]grpc.DialOption{
		grpc.WithResolvers(d.res),
		grpc.WithContextDialer(d.dial),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A dial is a local round trip to plugind: one that failed (the
		// daemon restarting, a generation replaced under it) is tried
		// again soon, not after gRPC's default second.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithChainUnaryInterceptor(d.stats.unary),
		grpc.WithChainStreamInterceptor(d.stats.stream),
	}, opts...)...)
	if err != nil {
		first.close(nil)
		cancel()
		return nil, fmt.Errorf("client: direct connection to %q: %w", name, err)
	}
	w, err := c.Watch(dctx, WithNames(name), WithViewOnly(), WithCompactView())
	if err != nil {
		conn.Close()
		first.close(nil)
		cancel()
		return nil, err
	}
	conn.Connect()
	go d.follow(w)
	go d.report()
	go d.closeWith(conn)
	return conn, nil
}

// directConn is the state behind one DialDirect connection.
type directConn struct {
	c      *Client
	name   string
	ctx    context.Context // ends when the connection is closed
	cancel context.CancelFunc
	res    *directResolver
	stats  *callStats
	newest atomic.Uint64 // the generation of the newest connection dialed

	mu     sync.Mutex     // guards first and leases
	first  *directLease   // the lease DialDirect took, for the first dial
	leases []*directLease // the leases of open connections, newest last
}

// follow moves the connection to each new active generation it has not
// dialed yet: a new address makes gRPC's pick_first dial it (a new lease
// and connection) and close the old connection once its calls are done.
// The lease's draining notice usually came first; this covers a lease
// that was down (plugind restarting) when the generation changed.
func (d *directConn) follow(w *Watcher) {
	defer w.Close()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-w.Done():
			return
		case <-w.Changed():
		}
		h := w.View()[d.name]
		if h == nil || h.GetGeneration() == 0 {
			continue
		}
		switch h.GetState() {
		case plugincontrolv1.PluginState_PLUGIN_STATE_SERVING, plugincontrolv1.PluginState_PLUGIN_STATE_DEGRADED:
			if h.GetGeneration() != d.newest.Load() {
				d.res.update(strconv.FormatUint(h.GetGeneration(), 10))
			}
		}
	}
}

// closeWith ends everything of d once conn is closed.
func (d *directConn) closeWith(conn *grpc.ClientConn) {
	for s := conn.GetState(); s != connectivity.Shutdown; s = conn.GetState() {
		conn.WaitForStateChange(d.ctx, s)
	}
	d.mu.Lock()
	first := d.first
	d.first = nil
	d.mu.Unlock()
	if first != nil {
		first.close(d.stats)
	}
	d.cancel()
}

// dial is the connection's dialer: a connection to the active generation
// under a lease of its own (addr, the generation seen, only makes gRPC
// dial again when it changes).
func (d *directConn) dial(ctx context.Context, _ string) (net.Conn, error) {
	d.mu.Lock()
	l := d.first
	d.first = nil
	d.mu.Unlock()
	if l == nil {
		var err error
		if l, err = d.lease(ctx); err != nil {
			// Text only: a dial error carrying a status code would reach
			// the callers as Internal; without one it is Unavailable.
			return nil, errors.New(err.Error())
		}
	}
	d.mu.Lock()
	d.leases = append(d.leases, l)
	d.mu.Unlock()
	d.newest.Store(l.gen)
	l.ended = make(chan struct{})
	go d.keep(l)
	return &leasedConn{Conn: l.conn, d: d, l: l}, nil
}

// directLease is one Lease stream and the connection it gave.
type directLease struct {
	gen     uint64
	conn    net.Conn
	buckets []float64
	cancel  context.CancelFunc
	ended   chan struct{} // closed when keep returns (nil: not kept)

	mu     sync.Mutex // guards stream (Send), cancel and closed
	stream grpc.BidiStreamingClient[plugincontrolv1.LeaseRequest, plugincontrolv1.LeaseResponse]
	closed bool
}

// lease opens a Lease of the active generation and receives its
// connection.
func (d *directConn) lease(ctx context.Context) (*directLease, error) {
	// Not d.ctx: a lease outlives the ClientConn's Close until gRPC closes
	// its connection, after the calls on it ended.
	lctx, cancel := context.WithCancel(context.Background())
	stream, resp, err := d.openLease(ctx, lctx, 0)
	if err != nil {
		cancel()
		return nil, err
	}
	conn, err := receiveConn(ctx, resp.GetDirectSocket(), resp.GetTicket())
	if err != nil {
		cancel()
		return nil, fmt.Errorf("client: direct connection to %q: %w", d.name, err)
	}
	return &directLease{gen: resp.GetGeneration(), conn: conn, buckets: resp.GetDurationBuckets(), cancel: cancel, stream: stream}, nil
}

// openLease opens a Lease stream that lives as long as lctx, waiting for
// its first response within ctx.
func (d *directConn) openLease(ctx, lctx context.Context, gen uint64) (grpc.BidiStreamingClient[plugincontrolv1.LeaseRequest, plugincontrolv1.LeaseResponse], *plugincontrolv1.LeaseResponse, error) {
	stream, err := plugincontrolv1.NewPluginDirectServiceClient(d.c.conn).Lease(lctx)
	if err != nil {
		return nil, nil, wrapError(err)
	}
	if err := stream.Send(&plugincontrolv1.LeaseRequest{Kind: &plugincontrolv1.LeaseRequest_Open{Open: &plugincontrolv1.LeaseOpen{Plugin: d.name, Generation: gen}}}); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, wrapError(err)
	}
	type first struct {
		resp *plugincontrolv1.LeaseResponse
		err  error
	}
	got := make(chan first, 1)
	go func() {
		resp, err := stream.Recv()
		got <- first{resp, err}
	}()
	select {
	case f := <-got:
		if f.err != nil {
			return nil, nil, wrapError(f.err)
		}
		return stream, f.resp, nil
	case <-ctx.Done():
		return nil, nil, ctx.Err() // the caller cancels lctx, which ends Recv
	}
}

// keep holds l's lease while its connection is open: it reads the
// stream until it ends. When it ends while the connection is open
// (plugind stopped or re-executes) the lease is taken again once the
// daemon is back, if the generation is still the active one (if not, the
// connection is about to move anyway). Calls go on meanwhile.
func (d *directConn) keep(l *directLease) {
	defer close(l.ended)
	// Short: until the lease is back a reload would stop the generation
	// without waiting for this connection's calls.
	b := Backoff{Initial: 20 * time.Millisecond, Max: time.Second}
	for {
		l.mu.Lock()
		stream := l.stream
		l.mu.Unlock()
		for stream != nil {
			resp, err := stream.Recv()
			if err != nil {
				break
			}
			if resp.GetDraining() {
				// A reload or an unload: dial again (the active
				// generation, or none); gRPC closes this connection once
				// its calls are done, which ends the lease. In a goroutine:
				// gRPC may be closing a connection of this lease meanwhile.
				go d.res.update("drain-" + strconv.FormatUint(l.gen, 10))
			}
		}
		l.mu.Lock()
		closed := l.closed
		l.stream = nil
		l.mu.Unlock()
		if closed || d.ctx.Err() != nil {
			return
		}
		if b.Wait(d.ctx) != nil {
			return
		}
		lctx, cancel := context.WithCancel(context.Background())
		octx, ocancel := context.WithTimeout(d.ctx, 5*time.Second)
		s, _, err := d.openLease(octx, lctx, l.gen)
		ocancel()
		switch {
		case err == nil:
			l.mu.Lock()
			if l.closed {
				l.mu.Unlock()
				cancel()
				return
			}
			l.cancel()
			l.stream, l.cancel = s, cancel
			l.mu.Unlock()
			b.Reset()
		case status.Code(err) == codes.FailedPrecondition: // not the active generation any more
			cancel()
			return
		default:
			cancel()
		}
	}
}

// send sends r on l's stream; false when it has none.
func (l *directLease) send(r *plugincontrolv1.CallReport) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stream == nil || l.closed {
		return false
	}
	return l.stream.Send(&plugincontrolv1.LeaseRequest{Kind: &plugincontrolv1.LeaseRequest_Report{Report: r}}) == nil
}

// close ends the lease: the calls counted so far are reported on it
// first (stats nil: none), and the daemon is given a moment to read them
// (the stream ends when it has) before the stream is cancelled.
func (l *directLease) close(stats *callStats) {
	if stats != nil {
		if r := stats.take(); r != nil && !l.send(r) {
			stats.putBack(r)
		}
	}
	l.mu.Lock()
	l.closed = true
	open := l.stream != nil
	if open {
		_ = l.stream.CloseSend()
	}
	l.mu.Unlock()
	l.conn.Close()
	if open && l.ended != nil {
		select {
		case <-l.ended:
		case <-time.After(time.Second):
		}
	}
	l.mu.Lock()
	cancel := l.cancel
	l.mu.Unlock()
	cancel()
}

// report sends the call counts every reportInterval on the newest lease
// that has a stream.
func (d *directConn) report() {
	t := time.NewTicker(reportInterval)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		leases := append([]*directLease(nil), d.leases...)
		d.mu.Unlock()
		for i := len(leases) - 1; i >= 0; i-- {
			r := d.stats.take()
			if r == nil {
				break
			}
			if leases[i].send(r) {
				break
			}
			d.stats.putBack(r)
		}
	}
}

// leasedConn is a connection to a plugin that ends its lease when gRPC
// closes it (after its last call, when the connection moved on).
type leasedConn struct {
	net.Conn
	d    *directConn
	l    *directLease
	once sync.Once
}

func (c *leasedConn) Close() error {
	c.once.Do(func() {
		c.d.mu.Lock()
		for i, l := range c.d.leases {
			if l == c.l {
				c.d.leases = append(c.d.leases[:i], c.d.leases[i+1:]...)
				break
			}
		}
		c.d.mu.Unlock()
		// Not here: gRPC closes the connection from its own goroutines
		// (a balancer switching generations), which the lease's last
		// report and the daemon's answer must not hold up.
		go c.l.close(c.d.stats)
	})
	return nil
}

// directResolver resolves plugind:///NAME to one address, the generation
// to connect to; a new one makes gRPC dial again.
type directResolver struct {
	mu   sync.Mutex // guards addr and cc
	addr string
	cc   resolver.ClientConn
}

func (r *directResolver) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cc = cc
	_ = cc.UpdateState(resolver.State{Addresses: []resolver.Address{{Addr: r.addr}}})
	return r, nil
}

func (r *directResolver) Scheme() string                        { return DirectScheme }
func (r *directResolver) ResolveNow(resolver.ResolveNowOptions) {}
func (r *directResolver) Close() {
	r.mu.Lock()
	r.cc = nil
	r.mu.Unlock()
}

func (r *directResolver) update(addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if addr == r.addr {
		return
	}
	r.addr = addr
	if r.cc != nil {
		_ = r.cc.UpdateState(resolver.State{Addresses: []resolver.Address{{Addr: addr}}})
	}
}

// callStats counts calls by method and code, into the daemon's duration
// buckets (known from the first lease, before any call).
type callStats struct {
	buckets []float64  // upper bounds, seconds; set before the first call
	mu      sync.Mutex // guards calls
	calls   map[callKey][]uint64
}

type callKey struct {
	method string
	code   uint32
}

func newCallStats() *callStats { return &callStats{calls: map[callKey][]uint64{}} }

func (s *callStats) add(method string, err error, took time.Duration) {
	k := callKey{method, uint32(status.Code(err))}
	i := sort.SearchFloat64s(s.buckets, took.Seconds())
	s.mu.Lock()
	counts := s.calls[k]
	if counts == nil {
		counts = make([]uint64, len(s.buckets)+1)
		s.calls[k] = counts
	}
	counts[i]++
	s.mu.Unlock()
}

// take returns the counts so far as a report, and forgets them; nil when
// there are none.
func (s *callStats) take() *plugincontrolv1.CallReport {
	s.mu.Lock()
	calls := s.calls
	if len(calls) == 0 {
		s.mu.Unlock()
		return nil
	}
	s.calls = map[callKey][]uint64{}
	s.mu.Unlock()
	r := &plugincontrolv1.CallReport{}
	for k, counts := range calls {
		r.Calls = append(r.Calls, &plugincontrolv1.CallCount{Method: k.method, Code: k.code, Buckets: counts})
	}
	return r
}

// putBack keeps the counts of a report that could not be sent for the
// next one.
func (s *callStats) putBack(r *plugincontrolv1.CallReport) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range r.GetCalls() {
		k := callKey{c.GetMethod(), c.GetCode()}
		counts := s.calls[k]
		if counts == nil {
			counts = make([]uint64, len(s.buckets)+1)
			s.calls[k] = counts
		}
		for i, n := range c.GetBuckets() {
			if i < len(counts) {
				counts[i] += n
			}
		}
	}
}

func (s *callStats) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	start := time.Now()
	err := invoker(ctx, method, req, reply, cc, opts...)
	s.add(method, err, time.Since(start))
	return err
}

func (s *callStats) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	start := time.Now()
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		s.add(method, err, time.Since(start))
		return nil, err
	}
	return &countedStream{ClientStream: cs, s: s, method: method, start: start}, nil
}

// countedStream counts a stream once, when it ends.
type countedStream struct {
	grpc.ClientStream
	s      *callStats
	method string
	start  time.Time
	once   sync.Once
}

func (c *countedStream) RecvMsg(m any) error {
	err := c.ClientStream.RecvMsg(m)
	if err != nil {
		c.once.Do(func() {
			end := err
			if errors.Is(end, io.EOF) {
				end = nil
			}
			c.s.add(c.method, end, time.Since(c.start))
		})
	}
	return err
}
