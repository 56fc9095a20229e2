package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// fanout is one contender of the fan-out scenario: a server with N
// watchers connected from a child process.
type fanout struct {
	name    string
	trigger func(i int) error
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	lines   chan string
	exited  chan error
	changes int // changes triggered so far

	last, half dist // per change: until the last (the median) watcher had it
	setup      time.Duration
	// Per watcher, measured in this (the server's) process after GC with
	// the watchers connected and one change delivered: heap in use,
	// goroutine stacks, goroutines.
	heap, stack, gor float64
	heapSynced       float64 // heap per watcher right after they synced
}

type memSample struct{ heap, stack, gor float64 }

func memNow() memSample {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{float64(ms.HeapInuse), float64(ms.StackInuse), float64(runtime.NumGoroutine())}
}

// runWatch measures one change fanned out to N WatchHealth watchers of
// plugind against one status change fanned out to N grpc-go health.Server
// Watch streams, and the server memory per watcher of each. The watchers run
// in child processes (this binary, -watch-client), spread over a handful of
// connections, so the memory measured here is the servers' alone. Two more
// contenders give the floor of the design: grpc-go health.Server's own
// fan-out machinery sending plugind's event (marshalled per stream, and
// encoded once). The contenders are set up one after the other (memory is
// measured as each one's delta) and then triggered in turn, change after
// change, so that drift of the machine hits them alike.
func runWatch(e *env) ([]row, error) {
	n := e.watchers
	conns, iters := 16, 30
	if e.short {
		conns, iters = 4, 5
	}
	// plugind allows 1024 streams per connection (--max-streams-per-conn):
	// past that, grpc-go clients queue new streams.
	conns = max(conns, (n+999)/1000)
	d, err := startDaemon(e, func(c *manager.Config) { c.MaxWatchers = n })
	if err != nil {
		return nil, err
	}
	defer d.close()
	ctx, cancel := ctxT(time.Minute)
	defer cancel()
	// No recovery timer, no UNHEALTHY: every trigger is one CHANGED event.
	policy := &pb.HealthPolicy{PanicThreshold: 1000, PanicWindow: durationpb.New(24 * time.Hour)}
	if err := d.load(ctx, "echo", policy); err != nil {
		return nil, err
	}
	// The compact view's watchers get a daemon of their own: a change on
	// one daemon must reach only its own contender's watchers.
	dc, err := startDaemon(e, func(c *manager.Config) { c.MaxWatchers = n })
	if err != nil {
		return nil, err
	}
	defer dc.close()
	if err := dc.load(ctx, "echo", policy); err != nil {
		return nil, err
	}
	h, err := startHealthRef(e)
	if err != nil {
		return nil, err
	}
	defer h.close()
	var bare [3]*bareWatch
	for i, encoded := range []bool{false, true, true} {
		bw := newBareWatch(encoded, i == 2)
		var opts []grpc.ServerOption
		if encoded {
			opts = append(opts, grpc.ForceServerCodecV2(rawCodec{encoding.GetCodecV2(grpcproto.Name)}))
		}
		bs, err := startPlain(e, func(s *grpc.Server) { pb.RegisterPluginControlServiceServer(s, bw) }, opts...)
		if err != nil {
			return nil, err
		}
		defer bs.close()
		bare[i] = bw
		bw.addr = bs.addr()
	}
	panicIn := func(d *daemon) func(int) error {
		return func(int) error {
			done := make(chan struct{})
			go func() {
				defer close(done)
				defer d.m.Recover("echo", "bench-fanout")
				panic("fan-out trigger")
			}()
			<-done
			return nil
		}
	}
	fs := []*fanout{
		{name: "plugind", trigger: panicIn(d)},
		{name: "grpc", trigger: func(i int) error {
			st := healthpb.HealthCheckResponse_NOT_SERVING
			if i%2 == 0 {
				st = healthpb.HealthCheckResponse_SERVING
			}
			h.hs.SetServingStatus(refService, st)
			return nil
		}},
		{name: "plugind", trigger: func(i int) error { bare[0].publish(i); return nil }},
		{name: "plugind", trigger: func(i int) error { bare[1].publish(i); return nil }},
		{name: "plugind", trigger: func(i int) error { bare[2].publish(i); return nil }},
		{name: "plugind-compact", trigger: panicIn(dc)},
	}
	addrs := []string{d.addr(), h.addr(), bare[0].addr, bare[1].addr, bare[2].addr, dc.addr()}
	defer func() {
		for _, f := range fs {
			f.close()
		}
	}()
	for i, f := range fs {
		if err := f.start(addrs[i], n, conns); err != nil {
			return nil, fmt.Errorf("contender %d (%s): %w", i, addrs[i], err)
		}
		if *flagMem != "" && i == 0 {
			writeProfile("heap", *flagMem)
		}
	}
	for range iters {
		for i, f := range fs {
			if err := f.change(true); err != nil {
				return nil, fmt.Errorf("contender %d: %w", i, err)
			}
		}
	}
	pf, gf, bf, ef, cf, vf := fs[0], fs[1], fs[2], fs[3], fs[4], fs[5]
	lr := ratio(float64(pf.last.p50()), float64(gf.last.p50()))
	vr := ratio(float64(vf.last.p50()), float64(gf.last.p50()))
	vmr := ratio(vf.heap+vf.stack, gf.heap+gf.stack)
	mr := ratio(pf.heap+pf.stack, gf.heap+gf.stack)
	name := fmt.Sprintf("WatchHealth fan-out, %d watchers on %d conns", n, conns)
	lat := func(f *fanout) string { return fmtDur(f.last.p50()) + " / " + fmtDur(f.last.p99()) }
	return []row{
		{
			scenario: name, measure: fmt.Sprintf("1 change until the last watcher has it, p50 / p99 of %d", iters),
			plugind: lat(pf), ref: "grpc-go Watch " + lat(gf),
			ratio: lr, target: "p50 ≤ 1.1", ok: okIf(lr <= 1.1), // issue 22
			note: fmt.Sprintf("median watcher %s vs %s", fmtDur(pf.half.p50()), fmtDur(gf.half.p50())),
		},
		{
			scenario: name, measure: "server memory per watcher (heap + stacks, after GC)",
			plugind: fmtBytes(pf.heap + pf.stack), ref: "grpc-go Watch " + fmtBytes(gf.heap+gf.stack),
			ratio: mr, target: "≤ 1.1", ok: okIf(mr <= 1.1), // issue 22
			note: fmt.Sprintf("heap %s vs %s, stacks %s vs %s, goroutines %.1f vs %.1f per watcher; heap right after sync %s vs %s",
				fmtBytes(pf.heap), fmtBytes(gf.heap), fmtBytes(pf.stack), fmtBytes(gf.stack), pf.gor, gf.gor,
				fmtBytes(pf.heapSynced), fmtBytes(gf.heapSynced)),
		},
		{
			scenario: name + ", HEALTH_VIEW_COMPACT", measure: "1 change until the last watcher has it, p50 / p99 (watchers asking for the compact view)",
			plugind: lat(vf), ref: "grpc-go Watch " + lat(gf),
			ratio: vr, target: "p50 ≤ 1.1", ok: okIf(vr <= 1.1), // issue 22
			note: fmt.Sprintf("median watcher %s; memory %s per watcher (ratio %.2f)",
				fmtDur(vf.half.p50()), fmtBytes(vf.heap+vf.stack), vmr),
		},
		{
			scenario: name + ", floor", measure: "grpc-go health.Server's fan-out sending plugind's event",
			plugind: lat(bf) + ", " + fmtBytes(bf.heap+bf.stack) + "/watcher", ref: "grpc-go Watch " + lat(gf),
			ratio: ratio(float64(bf.last.p50()), float64(gf.last.p50())),
			note:  "what the bigger event costs with nothing of plugind around it",
		},
		{
			scenario: name + ", floor", measure: "the same, the event encoded once for all streams",
			plugind: lat(ef) + ", " + fmtBytes(ef.heap+ef.stack) + "/watcher", ref: "grpc-go Watch " + lat(gf),
			ratio: ratio(float64(ef.last.p50()), float64(gf.last.p50())),
			note:  "the lower bound for plugind without a smaller event",
		},
		{
			scenario: name + ", floor", measure: "the same with a compact event (name, state, generation, revision)",
			plugind: lat(cf) + ", " + fmtBytes(cf.heap+cf.stack) + "/watcher", ref: "grpc-go Watch " + lat(gf),
			ratio: ratio(float64(cf.last.p50()), float64(gf.last.p50())),
			note:  "a design with an opt-in compact event",
		},
		{
			scenario: name, measure: "time to open all streams and sync",
			plugind: fmtDur(pf.setup), ref: "grpc-go Watch " + fmtDur(gf.setup),
			ratio: ratio(float64(pf.setup), float64(gf.setup)),
		},
	}, nil
}

// start runs the watcher process against addr, waits until every watcher
// is synced, delivers one untimed change and measures the server memory the
// watchers hold.
func (f *fanout) start(addr string, n, conns int) error {
	m0 := memNow()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	f.cmd = exec.Command(self, "-watch-client", f.name, "-watch-addr", addr,
		"-watch-n", strconv.Itoa(n), "-watch-conns", strconv.Itoa(conns))
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	f.cmd.Stderr = os.Stderr
	if f.stdin, err = f.cmd.StdinPipe(); err != nil {
		return err
	}
	stdout, err := f.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := f.cmd.Start(); err != nil {
		return err
	}
	f.exited = make(chan error, 1)
	f.lines = make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f.lines <- sc.Text()
		}
		close(f.lines)
		f.exited <- f.cmd.Wait()
	}()
	if l, err := f.next(30*time.Second + time.Duration(n)*5*time.Millisecond); err != nil || l != "ready" {
		return fmt.Errorf("waiting for the watchers to sync: %q %v", l, err)
	}
	f.setup = time.Since(t0)
	m1 := memNow()
	f.heapSynced = (m1.heap - m0.heap) / float64(n)
	if err := f.change(false); err != nil {
		return err
	}
	m2 := memNow()
	f.heap = (m2.heap - m0.heap) / float64(n)
	f.stack = (m2.stack - m0.stack) / float64(n)
	f.gor = (m2.gor - m0.gor) / float64(n)
	return nil
}

func (f *fanout) next(timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case l, ok := <-f.lines:
		if !ok {
			return "", fmt.Errorf("watcher process exited")
		}
		if strings.HasPrefix(l, "error") {
			return "", fmt.Errorf("watcher process: %s", l)
		}
		return l, nil
	case <-t.C:
		return "", fmt.Errorf("watcher process: no answer within %v", timeout)
	}
}

// change triggers the next change and waits until every watcher has it.
func (f *fanout) change(timed bool) error {
	f.changes++
	i := f.changes
	start := time.Now().UnixNano()
	if err := f.trigger(i); err != nil {
		return err
	}
	l, err := f.next(time.Minute)
	if err != nil {
		return err
	}
	var k int
	var half, last int64
	if _, err := fmt.Sscanf(l, "done %d %d %d", &k, &half, &last); err != nil || k != i {
		return fmt.Errorf("watcher process said %q after change %d", l, i)
	}
	if timed {
		f.half = append(f.half, time.Duration(half-start))
		f.last = append(f.last, time.Duration(last-start))
	}
	return nil
}

// close ends the watcher process (it exits when its stdin closes).
func (f *fanout) close() {
	if f.cmd == nil || f.cmd.Process == nil {
		return
	}
	f.stdin.Close()
	select {
	case <-f.exited:
	case <-time.After(15 * time.Second):
		_ = f.cmd.Process.Kill()
		<-f.exited
	}
	f.cmd = nil
}

// watchClient is the watcher process: n watch streams of the given kind on
// conns connections to addr. It prints "ready" once every watcher is synced,
// then, for the k-th change, "done k T50 TLAST" (unix nanoseconds at which
// half and all of the watchers had it). It exits when stdin closes.
func watchClient(kind, addr string, n, conns int) int {
	raiseFileLimit()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(os.Stdout, format+"\n", args...)
	}
	ccs := make([]*grpc.ClientConn, conns)
	for i := range ccs {
		c, err := dialPlain(addr)
		if err != nil {
			say("error dial: %v", err)
			return 1
		}
		defer c.Close()
		ccs[i] = c
	}
	const maxChanges = 1 << 12
	var (
		synced atomic.Int64
		counts [maxChanges]atomic.Int64
		failed atomic.Bool
	)
	sem := make(chan struct{}, 64) // bounded stream opening
	changed := func(k int) {
		if k >= maxChanges {
			return
		}
		switch counts[k].Add(1) {
		case int64((n + 1) / 2):
			counts[0].Store(time.Now().UnixNano()) // the median watcher's time, reported below
		case int64(n):
			say("done %d %d %d", k, counts[0].Load(), time.Now().UnixNano())
		}
	}
	fail := func(err error) {
		if ctx.Err() == nil && failed.CompareAndSwap(false, true) {
			say("error %v", err)
			cancel()
		}
	}
	isSynced := func() {
		<-sem
		if synced.Add(1) == int64(n) {
			say("ready")
		}
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			cc := ccs[i%conns]
			switch kind {
			case "plugind", "plugind-compact":
				req := &pb.WatchHealthRequest{Names: []string{"echo"}}
				if kind == "plugind-compact" {
					req.View = pb.HealthView_HEALTH_VIEW_COMPACT
				}
				st, err := pb.NewPluginControlServiceClient(cc).WatchHealth(ctx, req)
				if err != nil {
					<-sem
					fail(err)
					return
				}
				k, sync := 0, false
				for {
					r, err := st.Recv()
					if err != nil {
						if !sync {
							<-sem
						}
						fail(err)
						return
					}
					switch r.GetEvent().GetType() {
					case pb.HealthEventType_HEALTH_EVENT_TYPE_SYNCED:
						if !sync {
							sync = true
							isSynced()
						}
					case pb.HealthEventType_HEALTH_EVENT_TYPE_CHANGED:
						if sync {
							k++
							changed(k)
						}
					}
				}
			case "grpc":
				st, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{Service: refService})
				if err != nil {
					<-sem
					fail(err)
					return
				}
				k := -1
				for {
					_, err := st.Recv()
					if err != nil {
						if k < 0 {
							<-sem
						}
						fail(err)
						return
					}
					k++
					if k == 0 {
						isSynced()
					} else {
						changed(k)
					}
				}
			default:
				<-sem
				fail(fmt.Errorf("unknown kind %q", kind))
			}
		}()
	}
	<-ctx.Done()
	wg.Wait()
	if failed.Load() {
		return 1
	}
	return 0
}

// bareWatch is the floor of the WatchHealth design: grpc-go health.Server's
// own fan-out (a 1-slot channel and a goroutine per stream, the current
// message sent as is), serving plugind's WatchHealth messages. Its ratio to
// grpc-go's Watch is what the richer event costs by itself (a bigger
// message to send and decode), with nothing of plugind around it.
//
// With encoded set, the event is marshalled once per change and the same
// bytes go to every stream (through rawCodec), as plugind could do.
type bareWatch struct {
	pb.UnimplementedPluginControlServiceServer
	addr    string
	encoded bool
	compact bool // events carry only name, state, generation and revision
	mu      sync.Mutex
	subs    map[chan struct{}]struct{}
	cur     atomic.Pointer[pb.WatchHealthResponse]
	raw     atomic.Pointer[rawMsg]
}

func newBareWatch(encoded, compact bool) *bareWatch {
	b := &bareWatch{encoded: encoded, compact: compact, subs: map[chan struct{}]struct{}{}}
	b.publish(0)
	return b
}

func (b *bareWatch) set(m *pb.WatchHealthResponse) {
	b.cur.Store(m)
	if b.encoded {
		raw, err := proto.Marshal(m)
		if err != nil {
			panic(err)
		}
		b.raw.Store(&rawMsg{raw})
	}
}

// rawMsg is a message already in wire format; rawCodec sends it as is and
// hands everything else to grpc-go's proto codec.
type rawMsg struct{ b []byte }

type rawCodec struct{ encoding.CodecV2 }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(*rawMsg); ok {
		return mem.BufferSlice{mem.SliceBuffer(m.b)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// bareEvent is a CHANGED event like the one plugind sends after the k-th
// recovered panic (same fields, same sizes).
func bareEvent(k int) *pb.WatchHealthResponse {
	now := timestamppb.Now()
	return &pb.WatchHealthResponse{Event: &pb.HealthEvent{
		Type: pb.HealthEventType_HEALTH_EVENT_TYPE_CHANGED, Revision: uint64(100 + k),
		Health: &pb.PluginHealth{
			Name: "echo", State: pb.PluginState_PLUGIN_STATE_DEGRADED, Generation: 1,
			PanicsInWindow: uint32(k), LifetimePanics: uint64(k), Since: now, Revision: uint64(100 + k),
			LastPanic: &pb.PanicRecord{Message: "bench-fanout: fan-out trigger", Fingerprint: "0123456789abcdef", Time: now, Generation: 1},
		},
	}}
}

func (b *bareWatch) WatchHealth(_ *pb.WatchHealthRequest, stream grpc.ServerStreamingServer[pb.WatchHealthResponse]) error {
	ch := make(chan struct{}, 1)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.subs, ch)
		b.mu.Unlock()
	}()
	snap := &pb.WatchHealthResponse{Event: &pb.HealthEvent{Type: pb.HealthEventType_HEALTH_EVENT_TYPE_SNAPSHOT, Revision: 100,
		Health: &pb.PluginHealth{Name: "echo", State: pb.PluginState_PLUGIN_STATE_SERVING, Generation: 1, Since: timestamppb.Now(), Revision: 100}}}
	if err := stream.Send(snap); err != nil {
		return err
	}
	if err := stream.Send(&pb.WatchHealthResponse{Event: &pb.HealthEvent{Type: pb.HealthEventType_HEALTH_EVENT_TYPE_SYNCED, Revision: 100}}); err != nil {
		return err
	}
	for {
		select {
		case <-ch:
			var err error
			if b.encoded {
				err = stream.SendMsg(b.raw.Load())
			} else {
				err = stream.Send(b.cur.Load())
			}
			if err != nil {
				return err
			}
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

func (b *bareWatch) publish(k int) {
	m := bareEvent(k)
	if b.compact {
		h := m.GetEvent().GetHealth()
		m.Event.Health = &pb.PluginHealth{Name: h.GetName(), State: h.GetState(), Generation: h.GetGeneration(), Revision: h.GetRevision()}
	}
	b.set(m)
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
