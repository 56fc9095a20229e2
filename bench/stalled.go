package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// stalledPlugins is how many plugins the stalled watchers watch: each
// round of events changes every one of them.
const stalledPlugins = 10

// runStalled measures what stalled watchers cost the daemon, and the slow
// watcher policy: N WatchHealth watchers (a child process, as in the
// fan-out scenario) sync, then the process is frozen (SIGSTOP: a client
// that stopped reading), and events keep coming until every stream's
// grpc-go send queue is full and events wait in the hub. Measured in the
// daemon's process, per watcher: heap and stacks at that peak, then after
// the watch lag limit passed and the next event evicted them all. The
// process is then thawed: every stream must drain and end with
// ResourceExhausted (WATCH_EVICTED).
func runStalled(e *env) ([]row, error) {
	var rows []row
	// Small events (no panic message: the most messages per byte, the
	// most grpc-go bookkeeping per queued byte) and events of 1.2 KiB.
	for _, msgLen := range []int{0, 1200} {
		r, err := runStalledOnce(e, msgLen)
		if err != nil {
			return rows, err
		}
		rows = append(rows, r...)
	}
	return rows, nil
}

func runStalledOnce(e *env, msgLen int) ([]row, error) {
	n := e.watchers
	conns := max(16, (n+999)/1000)
	lag := 10 * time.Second
	if e.short {
		lag = 2 * time.Second
	}
	d, err := startDaemon(e, func(c *manager.Config) { c.MaxWatchers, c.WatchLagLimit = n, lag })
	if err != nil {
		return nil, err
	}
	defer d.close()
	ctx, cancel := ctxT(5 * time.Minute)
	defer cancel()
	policy := &pb.HealthPolicy{PanicThreshold: 1000, PanicWindow: durationpb.New(24 * time.Hour)}
	names := make([]string, stalledPlugins)
	for i := range names {
		names[i] = fmt.Sprintf("echo-%d", i)
		if err := d.load(ctx, names[i], policy); err != nil {
			return nil, err
		}
	}
	msg := strings.Repeat("s", msgLen)
	rounds := 0
	round := func() {
		rounds++
		for _, name := range names {
			func() {
				defer d.m.Recover(name, "bench-stalled")
				panic(msg)
			}()
		}
	}
	m0 := memNow()
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-watch-client", "stall", "-watch-addr", d.addr(),
		"-watch-n", strconv.Itoa(n), "-watch-conns", strconv.Itoa(conns))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	next := func(timeout time.Duration) (string, error) {
		select {
		case l, ok := <-lines:
			if !ok || strings.HasPrefix(l, "error") {
				return "", fmt.Errorf("stalled watcher process: %q", l)
			}
			return l, nil
		case <-time.After(timeout):
			return "", fmt.Errorf("stalled watcher process: no answer within %v", timeout)
		}
	}
	if l, err := next(time.Minute + time.Duration(n)*5*time.Millisecond); err != nil || l != "ready" {
		return nil, fmt.Errorf("waiting for the watchers to sync: %q %v", l, err)
	}
	m1 := memNow()

	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return nil, err
	}
	// Half the lag limit of events: every stream's send blocks, and events
	// wait in the hub.
	t0 := time.Now()
	for time.Since(t0) < lag/2 {
		round()
		time.Sleep(250 * time.Millisecond)
	}
	peakRounds := rounds
	peak := memNow()
	if ev := d.m.EvictedWatches(); ev != 0 {
		return nil, fmt.Errorf("%d watches evicted within %v, before the lag limit (%v)", ev, time.Since(t0), lag)
	}
	// More, until the oldest waiting events are older than the limit and
	// the next one evicts them (bounded).
	for d.m.EvictedWatches() < uint64(n) && time.Since(t0) < 3*lag+30*time.Second {
		round()
		time.Sleep(100 * time.Millisecond)
	}
	evictedIn := time.Since(t0)
	after := memNow()
	evicted := d.m.EvictedWatches()

	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		return nil, err
	}
	l, err := next(2 * time.Minute)
	if err != nil {
		return nil, fmt.Errorf("%w (%d of %d evicted, %d watches open)", err, evicted, n, d.m.Watchers())
	}
	var ended, gotEvicted int
	if _, err := fmt.Sscanf(l, "ended %d %d", &ended, &gotEvicted); err != nil || ended != n {
		return nil, fmt.Errorf("stalled watcher process said %q", l)
	}
	drained := memNow()

	per := func(m memSample) float64 { return (m.heap + m.stack - m0.heap - m0.stack) / float64(n) }
	// The size of one event on the wire (its health record is most of it).
	evSize := 0
	if h, err := d.ctl.Health(ctx, &pb.HealthRequest{Names: names[:1]}); err == nil && len(h.GetPlugins()) == 1 {
		evSize = proto.Size(&pb.WatchHealthResponse{Event: &pb.HealthEvent{Type: pb.HealthEventType_HEALTH_EVENT_TYPE_CHANGED, Revision: h.GetRevision(), Health: h.GetPlugins()[0]}})
	}
	name := fmt.Sprintf("WatchHealth, %d stalled watchers of %d plugins on %d conns, events of %d bytes, lag limit %v", n, stalledPlugins, conns, evSize, lag)
	return []row{
		{
			scenario: name, measure: fmt.Sprintf("daemon memory per stalled watcher after %v of events while frozen (%d rounds of %d events; heap + stacks, after GC)", lag/2, peakRounds, stalledPlugins),
			plugind: fmtBytes(per(peak)), ref: fmt.Sprintf("synced, before the stall: %s", fmtBytes(per(m1))),
			note: "bounded by grpc-go's per-stream write quota (64 KiB of queued messages) and one pending event per plugin in the hub",
		},
		{
			scenario: name, measure: "the same once events past the lag limit had evicted them all (every send queue full by then)",
			plugind: fmtBytes(per(after)), ref: fmt.Sprintf("%d of %d evicted %v after the stall began", evicted, n, evictedIn.Round(100*time.Millisecond)),
			note: "the hub's pending sets are dropped at once; grpc-go's queued bytes wait for the client to read them (or for keepalive to close a dead connection)",
		},
		{
			scenario: name, measure: "after thawing the client: streams that ended with ResourceExhausted WATCH_EVICTED, then daemon memory per watcher",
			plugind: fmt.Sprintf("%d of %d", gotEvicted, n), ref: fmtBytes(per(drained)),
			ok: okIf(gotEvicted == n && int(evicted) == n), target: "all evicted",
		},
	}, nil
}

// stallClient is the watcher process of runStalled: n watch streams of
// every plugin on conns connections to addr, reading every event. It
// prints "ready" once every stream is synced, and "ended N E" once all n
// streams ended, E of them with ResourceExhausted WATCH_EVICTED. It exits
// when stdin closes.
func stallClient(addr string, n, conns int) int {
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
	var synced, ended, evicted atomic.Int64
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			st, err := pb.NewPluginControlServiceClient(ccs[i%conns]).WatchHealth(ctx, &pb.WatchHealthRequest{})
			if err != nil {
				<-sem
				say("error %v", err)
				return
			}
			sync := false
			for {
				r, err := st.Recv()
				if err != nil {
					if !sync {
						<-sem
						say("error before sync: %v", err)
						return
					}
					if status.Code(err) == codes.ResourceExhausted && rpcerr.Info(err).GetReason() == rpcerr.ReasonWatchEvicted {
						evicted.Add(1)
					}
					if ended.Add(1) == int64(n) {
						say("ended %d %d", n, evicted.Load())
					}
					return
				}
				if !sync && r.GetEvent().GetType() == pb.HealthEventType_HEALTH_EVENT_TYPE_SYNCED {
					sync = true
					<-sem
					if synced.Add(1) == int64(n) {
						say("ready")
					}
				}
			}
		}()
	}
	<-ctx.Done()
	wg.Wait()
	return 0
}
