package server

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// The direct path: a local caller opens PluginDirectService.Lease on the
// control socket (authenticated and authorised there, as every call is),
// gets a ticket, and presents it on the direct socket, where the daemon
// connects to the leased generation's gRPC server and passes the connected
// socket back (SCM_RIGHTS). The caller then talks to the plugin's process
// with no hop; plugin sockets stay private to the daemon (mode 0700
// directories).
//
// The direct socket's wire format, version 1 (TestDirectWire pins it):
//
//	caller -> daemon   "PDF1" ticket[32]
//	daemon -> caller   0x00 with one fd in SCM_RIGHTS: the connection
//	                   0x01 message (UTF-8, to EOF): refused, and why
//
// A ticket is good once, for DirectTicketTTL, and only for a process with
// the uid and pid of the lease's caller (SO_PEERCRED on both sockets): a
// ticket read by someone else is of no use to them.

// DirectMagic opens a request on the direct socket (its version 1).
const DirectMagic = "PDF1"

// DirectTicketTTL is how long a lease's ticket may be presented.
const DirectTicketTTL = 10 * time.Second

// directTicketLen is the length of a ticket, in bytes.
const directTicketLen = 32

// WithDirectSocket names the unix socket path ServeDirect listens on, told
// to Lease callers, and the upper bounds (seconds) of the call observer's
// duration histogram (metrics.CallDurationBuckets), which direct callers
// count their calls into. Without it PluginDirectService refuses leases
// (FailedPrecondition).
func WithDirectSocket(path string, buckets []float64) Option {
	return func(o *options) { o.directSocket, o.directBuckets = path, buckets }
}

// DirectLeaseObserver is told when a direct lease of a plugin is taken
// (delta 1) and ended (-1) (package metrics' ObserveDirectLease).
type DirectLeaseObserver func(plugin string, delta int)

// WithDirectLeaseObserver sets the observer of direct leases.
func WithDirectLeaseObserver(f DirectLeaseObserver) Option {
	return func(o *options) { o.onLease = f }
}

// ticket is one lease's pass to the direct socket.
type ticket struct {
	uid     uint32
	pid     int32
	plugin  string
	gen     uint64
	addr    net.Addr
	expires time.Time
}

// tickets are the lease tickets not presented yet. The lock guards only
// the map: no I/O under it.
type tickets struct {
	mu sync.Mutex
	m  map[[directTicketLen]byte]ticket
}

func (t *tickets) add(tk ticket) ([directTicketLen]byte, error) {
	var id [directTicketLen]byte
	if _, err := rand.Read(id[:]); err != nil {
		return id, err
	}
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[[directTicketLen]byte]ticket{}
	}
	for k, v := range t.m { // expired ones: few, as each is taken within a round trip
		if now.After(v.expires) {
			delete(t.m, k)
		}
	}
	t.m[id] = tk
	return id, nil
}

// take removes and returns the ticket id, if it is there and not expired.
func (t *tickets) take(id [directTicketLen]byte) (ticket, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tk, ok := t.m[id]
	delete(t.m, id)
	if !ok || time.Now().After(tk.expires) {
		return ticket{}, false
	}
	return tk, true
}

func (t *tickets) drop(id [directTicketLen]byte) {
	t.mu.Lock()
	delete(t.m, id)
	t.mu.Unlock()
}

// direct serves PluginDirectService.
type direct struct {
	pb.UnimplementedPluginDirectServiceServer
	s *Server
}

// Lease holds a generation for a direct caller; see the proto.
func (d *direct) Lease(stream grpc.BidiStreamingServer[pb.LeaseRequest, pb.LeaseResponse]) error {
	s := d.s
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	open := first.GetOpen()
	if open == nil {
		return status.Error(codes.InvalidArgument, "Lease: the first request must be open {plugin}")
	}
	if s.opts.directSocket == "" {
		return status.Error(codes.FailedPrecondition, "this daemon serves no direct socket: call the plugin's endpoint")
	}
	p, _ := peer.FromContext(ctx)
	who, ok := p.Addr.(PeerAddr)
	if !ok {
		return status.Errorf(codes.FailedPrecondition, "direct connections are for callers on the daemon's unix socket (this call came from %v): call the plugin's endpoint", p.Addr)
	}
	l, err := s.m.Acquire(ctx, open.GetPlugin())
	if err != nil {
		return toStatus(err)
	}
	defer l.Release()
	switch {
	case open.GetGeneration() != 0 && open.GetGeneration() != l.Generation:
		return status.Errorf(codes.FailedPrecondition, "plugin %q: generation %d is not active (generation %d is)", open.GetPlugin(), open.GetGeneration(), l.Generation)
	case l.TLS:
		return status.Errorf(codes.FailedPrecondition, "plugin %q speaks go-plugin's AutoMTLS (plugind --auto-mtls): no direct connection; call its endpoint", open.GetPlugin())
	case l.Addr == nil || l.Addr.Network() != "unix":
		return status.Errorf(codes.FailedPrecondition, "plugin %q serves on %v, not a unix socket: no direct connection; call its endpoint", open.GetPlugin(), l.Addr)
	}
	id, err := s.tickets.add(ticket{uid: who.UID, pid: who.PID, plugin: l.Plugin, gen: l.Generation, addr: l.Addr, expires: time.Now().Add(DirectTicketTTL)})
	if err != nil {
		return status.Errorf(codes.Internal, "a ticket: %v", err)
	}
	defer s.tickets.drop(id)
	if f := s.opts.onLease; f != nil {
		f(l.Plugin, 1)
		defer f(l.Plugin, -1)
	}
	if err := stream.Send(&pb.LeaseResponse{Plugin: l.Plugin, Generation: l.Generation, Ticket: id[:], DirectSocket: s.opts.directSocket, DurationBuckets: s.opts.directBuckets}); err != nil {
		return err
	}

	// Reports, until the caller closes the stream (the lease ends with it),
	// the generation stops, or the daemon stops or re-executes.
	reqs := make(chan *pb.LeaseRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				recvErr <- ctx.Err()
				return
			}
		}
	}()
	draining := l.Draining()
	for {
		select {
		case <-draining:
			draining = nil
			if err := stream.Send(&pb.LeaseResponse{Plugin: l.Plugin, Generation: l.Generation, Draining: true}); err != nil {
				return err
			}
		case req := <-reqs:
			if r := req.GetReport(); r != nil {
				s.observeReport(l.Plugin, r)
			}
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err()
			}
			return err
		case <-l.Done():
			return status.Errorf(codes.Unavailable, "plugin %q generation %d stopped", l.Plugin, l.Generation)
		case <-s.shutdown:
			return s.ended()
		}
	}
}

// observeReport adds a caller's counts to the call metrics, as if each
// call had taken its bucket's bound (the slowest bucket: twice the last
// bound; with no bounds, 0).
func (s *Server) observeReport(plugin string, r *pb.CallReport) {
	if s.opts.onCall == nil {
		return
	}
	bounds := s.opts.directBuckets
	for _, c := range r.GetCalls() {
		for i, n := range c.GetBuckets() {
			if i > len(bounds) {
				break
			}
			took := 0.0
			switch {
			case i < len(bounds):
				took = bounds[i]
			case len(bounds) > 0:
				took = 2 * bounds[len(bounds)-1]
			}
			for range min(n, 1<<20) {
				s.opts.onCall(plugin, c.GetMethod(), codes.Code(c.GetCode()), time.Duration(took*float64(time.Second)))
			}
		}
	}
}

// ServeDirect answers tickets on lis (a unix socket listener; see
// WithDirectSocket) until lis is closed.
func (s *Server) ServeDirect(lis net.Listener) error {
	ul, ok := lis.(*net.UnixListener)
	if !ok {
		return fmt.Errorf("direct socket: want a unix socket listener, got %T", lis)
	}
	for {
		c, err := ul.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		go s.serveTicket(c)
	}
}

// serveTicket answers one request on the direct socket.
func (s *Server) serveTicket(c *net.UnixConn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	refuse := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		s.log.Warn("direct socket: refused", slog.String("reason", msg))
		_, _ = c.Write(append([]byte{1}, msg...))
	}
	var req [len(DirectMagic) + directTicketLen]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		refuse("reading the request: %v", err)
		return
	}
	if string(req[:len(DirectMagic)]) != DirectMagic {
		refuse("not a direct-socket request of version 1 (want %q first)", DirectMagic)
		return
	}
	uid, pid, err := peerCred(c)
	if err != nil {
		refuse("reading the caller's credentials: %v", err)
		return
	}
	tk, ok := s.tickets.take([directTicketLen]byte(req[len(DirectMagic):]))
	switch {
	case !ok:
		refuse("unknown or expired ticket: open a Lease first and present its ticket within %s", DirectTicketTTL)
		return
	case tk.uid != uid || tk.pid != pid:
		refuse("the ticket was issued to uid %d pid %d, not to uid %d pid %d", tk.uid, tk.pid, uid, pid)
		return
	}
	pc, err := net.DialTimeout("unix", tk.addr.String(), 5*time.Second)
	if err != nil {
		refuse("plugin %q generation %d: connecting: %v", tk.plugin, tk.gen, err)
		return
	}
	defer pc.Close()
	f, err := pc.(*net.UnixConn).File()
	if err != nil {
		refuse("plugin %q: %v", tk.plugin, err)
		return
	}
	defer f.Close()
	if _, _, err := c.WriteMsgUnix([]byte{0}, syscall.UnixRights(int(f.Fd())), nil); err != nil {
		s.log.Warn("direct socket: sending the connection", slog.String("plugin", tk.plugin), slog.Any("error", err))
	}
}
