// Command compare is the performance regression gate (make bench-compare):
// it builds plugind from a base commit (default HEAD~1) in a git worktree
// and from the working tree, starts both on the same plugins, and runs the
// hot scenarios on the two daemons interleaved, round by round in
// alternating order, so that what the machine does meanwhile hits both
// alike. For each scenario it prints head/base (latency) or base/head
// (throughput): above 1 means this tree is slower. It exits 1 when a ratio
// exceeds 1 + -tolerance.
//
//	go run ./bench/compare                      # HEAD~1 vs the working tree
//	go run ./bench/compare -base HEAD           # a tree against itself (the noise)
//	go run ./bench/compare -runs 10 -base HEAD  # the spread of 10 runs
//
// The tolerance is chosen from the spread of self-comparisons recorded in
// bench/RESULTS.md (section "Regression gate").
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/plugincontrol/plugincontrol/client"
	examplev1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/example/v1"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

var (
	flagBase      = flag.String("base", "HEAD~1", "the commit to compare the working tree with")
	flagRounds    = flag.Int("rounds", 7, "interleaved rounds per scenario")
	flagTolerance = flag.Float64("tolerance", 0.30, "fail when a ratio exceeds 1 + tolerance (twice: a scenario past it is measured again)")
	flagRuns      = flag.Int("runs", 1, "whole comparisons to run (the spread of ratios is printed with more than one)")
	flagWatchers  = flag.Int("watchers", 500, "WatchHealth streams of the fan-out scenario")
)

func main() {
	flag.Parse()
	err := run()
	switch {
	case errors.Is(err, errSlower):
		os.Exit(1) // said why already
	case err != nil:
		fmt.Fprintln(os.Stderr, "bench-compare:", err)
		os.Exit(2)
	}
}

// errSlower: a scenario is slower than the base past the tolerance.
var errSlower = errors.New("slower than the base")

// daemon is one plugind under comparison.
type daemon struct {
	name string
	cmd  *exec.Cmd
	dir  string
	c    *client.Client
	conn *grpc.ClientConn // a plain connection, as the bench's
	ctl  pb.PluginControlServiceClient
	gw   pb.PluginGatewayServiceClient
	ep   examplev1.TickerServiceClient // through the ticker's endpoint
	dt   examplev1.TickerServiceClient // direct; nil when the daemon has no direct path
	more []*grpc.ClientConn            // the endpoint's and the direct connections
	done chan struct{}
}

// scenario measures one daemon once: a latency (lower is better) or a
// rate (higher is better).
type scenario struct {
	name    string
	rate    bool
	measure func(context.Context, *daemon) (float64, error)
}

func run() error {
	root, err := gitRoot()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "bench-compare-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	baseRev, err := git(root, "rev-parse", "--short", *flagBase)
	if err != nil {
		return fmt.Errorf("the base commit %q: %w (a shallow clone has no parent: fetch more history)", *flagBase, err)
	}
	wt := filepath.Join(tmp, "base")
	if _, err := git(root, "worktree", "add", "--detach", wt, baseRev); err != nil {
		return err
	}
	defer func() { _, _ = git(root, "worktree", "remove", "--force", wt) }()
	bins := filepath.Join(tmp, "bin")
	for _, b := range []struct{ dir, out string }{{wt, filepath.Join(bins, "base") + "/"}, {root, filepath.Join(bins, "head") + "/"}} {
		if err := goBuild(b.dir, b.out, "./cmd/plugind"); err != nil {
			return err
		}
	}
	// The same plugins for both: the daemon is what is compared.
	plugins := filepath.Join(bins, "plugins") + "/"
	if err := goBuild(root, plugins, "./examples/plugins/echo", "./examples/plugins/ticker"); err != nil {
		return err
	}
	fmt.Printf("base %s (%s) vs head (the working tree), %d rounds, tolerance %.0f%%\n", *flagBase, baseRev, *flagRounds, *flagTolerance*100)

	all := map[string][]float64{}
	var worst []string
	for r := range *flagRuns {
		ratios, err := compare(tmp, bins, plugins)
		if err != nil {
			return err
		}
		for _, s := range scenarios() {
			if v, ok := ratios[s.name]; ok {
				all[s.name] = append(all[s.name], v)
				if r == *flagRuns-1 && *flagRuns == 1 && v > 1+*flagTolerance {
					worst = append(worst, fmt.Sprintf("%s %.2f", s.name, v))
				}
			}
		}
	}
	if *flagRuns > 1 {
		fmt.Printf("\nspread over %d runs (ratio: min / median / max):\n", *flagRuns)
		for _, s := range scenarios() {
			v := all[s.name]
			if len(v) == 0 {
				continue
			}
			sort.Float64s(v)
			fmt.Printf("  %-28s %.2f / %.2f / %.2f\n", s.name, v[0], v[len(v)/2], v[len(v)-1])
		}
		return nil
	}
	if len(worst) > 0 {
		fmt.Printf("\nFAIL: slower than %s by more than %.0f%%: %s\n", *flagBase, *flagTolerance*100, strings.Join(worst, ", "))
		return errSlower // after the deferred cleanup of the worktree
	}
	fmt.Printf("\nok: no scenario slower than %s by more than %.0f%%\n", *flagBase, *flagTolerance*100)
	return nil
}

// compare starts both daemons, runs every scenario interleaved and returns
// the ratios by scenario.
func compare(tmp, bins, plugins string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var ds []*daemon
	defer func() {
		for _, d := range ds {
			d.stop()
		}
	}()
	for _, name := range []string{"base", "head"} {
		d, err := start(ctx, name, filepath.Join(bins, name, "plugind"), plugins, tmp)
		if err != nil {
			return nil, err
		}
		ds = append(ds, d)
	}
	fmt.Printf("\n| scenario | base | head | ratio (>1: head slower) |\n|---|---|---|---|\n")
	out := map[string]float64{}
	for _, s := range scenarios() {
		if s.name == "direct unary p50" && (ds[0].dt == nil || ds[1].dt == nil) {
			fmt.Printf("| %s | — | — | not compared: %s has no direct path |\n", s.name, map[bool]string{true: "base", false: "head"}[ds[0].dt == nil])
			continue
		}
		ratio, b, h, err := measure(ctx, s, ds, *flagRounds)
		if err != nil {
			return nil, err
		}
		if ratio > 1+*flagTolerance && *flagRuns == 1 {
			// Past the tolerance: measured again, twice as long, before it
			// counts (a burst of other work on the machine passes; a
			// regression stays).
			fmt.Printf("| %s | %s | %s | %.2f: measuring again |\n", s.name, format(s, b), format(s, h), ratio)
			if ratio, b, h, err = measure(ctx, s, ds, 2**flagRounds); err != nil {
				return nil, err
			}
		}
		out[s.name] = ratio
		fmt.Printf("| %s | %s | %s | %.2f |\n", s.name, format(s, b), format(s, h), ratio)
	}
	return out, nil
}

// measure runs s on both daemons, a warm-up, then rounds in alternating
// order, and returns the ratio (>1: head slower) and the two medians.
func measure(ctx context.Context, s scenario, ds []*daemon, rounds int) (ratio, b, h float64, err error) {
	samples := [2][]float64{}
	for _, d := range ds {
		if _, err := s.measure(ctx, d); err != nil {
			return 0, 0, 0, fmt.Errorf("%s on %s: %w", s.name, d.name, err)
		}
	}
	for r := range rounds {
		order := []int{0, 1}
		if r%2 == 1 {
			order = []int{1, 0}
		}
		for _, i := range order {
			v, err := s.measure(ctx, ds[i])
			if err != nil {
				return 0, 0, 0, fmt.Errorf("%s on %s: %w", s.name, ds[i].name, err)
			}
			samples[i] = append(samples[i], v)
		}
	}
	b, h = median(samples[0]), median(samples[1])
	ratio = h / b
	if s.rate {
		ratio = b / h
	}
	return ratio, b, h, nil
}

func format(s scenario, v float64) string {
	if s.rate {
		return fmt.Sprintf("%.0f/s", v)
	}
	return time.Duration(v).Round(time.Microsecond).String()
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	sort.Float64s(v)
	if len(v) == 0 {
		return math.NaN()
	}
	return v[len(v)/2]
}

var kib = bytes.Repeat([]byte("x"), 1024)

func scenarios() []scenario {
	return []scenario{
		{"invoke p50, 1 caller", false, func(ctx context.Context, d *daemon) (float64, error) {
			return p50(ctx, 300, func(ctx context.Context) error {
				_, err := d.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "echo", Payload: kib})
				return err
			})
		}},
		{"invoke rate, 16 callers", true, func(ctx context.Context, d *daemon) (float64, error) {
			return rate(ctx, 16, 400*time.Millisecond, func(ctx context.Context) error {
				_, err := d.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "echo", Payload: kib})
				return err
			})
		}},
		{"health p50", false, func(ctx context.Context, d *daemon) (float64, error) {
			return p50(ctx, 300, func(ctx context.Context) error {
				_, err := d.ctl.Health(ctx, &pb.HealthRequest{})
				return err
			})
		}},
		{"forwarded unary p50", false, func(ctx context.Context, d *daemon) (float64, error) {
			return p50(ctx, 300, func(ctx context.Context) error {
				_, err := d.ep.Echo(ctx, &examplev1.EchoRequest{Payload: kib})
				return err
			})
		}},
		{"forwarded rate, 16 callers", true, func(ctx context.Context, d *daemon) (float64, error) {
			return rate(ctx, 16, 400*time.Millisecond, func(ctx context.Context) error {
				_, err := d.ep.Echo(ctx, &examplev1.EchoRequest{Payload: kib})
				return err
			})
		}},
		{"direct unary p50", false, func(ctx context.Context, d *daemon) (float64, error) {
			return p50(ctx, 300, func(ctx context.Context) error {
				_, err := d.dt.Echo(ctx, &examplev1.EchoRequest{Payload: kib})
				return err
			})
		}},
		{"reload p50", false, func(ctx context.Context, d *daemon) (float64, error) {
			return p50(ctx, 3, func(ctx context.Context) error {
				_, err := d.ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo"})
				return err
			})
		}},
		{"fan-out to watchers", false, func(ctx context.Context, d *daemon) (float64, error) {
			return fanout(ctx, d, *flagWatchers)
		}},
	}
}

// p50 makes n calls one after the other and returns their median duration
// in nanoseconds.
func p50(ctx context.Context, n int, call func(context.Context) error) (float64, error) {
	lat := make([]float64, 0, n)
	for range n {
		t0 := time.Now()
		if err := call(ctx); err != nil {
			return 0, err
		}
		lat = append(lat, float64(time.Since(t0)))
	}
	return median(lat), nil
}

// rate runs n callers back to back for d and returns calls per second.
// Calls get ctx (no deadline of d: a call cut by it would count as failed).
func rate(ctx context.Context, n int, d time.Duration, call func(context.Context) error) (float64, error) {
	var calls atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	t0 := time.Now()
	end := t0.Add(d)
	for range n {
		wg.Go(func() {
			for time.Now().Before(end) {
				if err := call(ctx); err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
				calls.Add(1)
			}
		})
	}
	wg.Wait()
	if err, ok := first.Load().(error); ok {
		return 0, err
	}
	return float64(calls.Load()) / time.Since(t0).Seconds(), nil
}

// fanout opens n WatchHealth streams of the echo plugin (over 8
// connections), reloads it, and returns how long until every stream saw
// the new generation (nanoseconds).
func fanout(ctx context.Context, d *daemon, n int) (float64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var conns []*grpc.ClientConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 8 {
		c, err := grpc.NewClient("unix://"+d.sock(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return 0, err
		}
		conns = append(conns, c)
	}
	st, err := d.ctl.ListPlugins(ctx, &pb.ListPluginsRequest{})
	if err != nil {
		return 0, err
	}
	var gen uint64
	for _, p := range st.GetPlugins() {
		if p.GetName() == "echo" {
			gen = p.GetGeneration()
		}
	}
	synced := make(chan struct{}, n)
	seen := make(chan time.Time, n)
	errs := make(chan error, n)
	for i := range n {
		s, err := pb.NewPluginControlServiceClient(conns[i%len(conns)]).WatchHealth(ctx, &pb.WatchHealthRequest{Names: []string{"echo"}})
		if err != nil {
			return 0, err
		}
		go func() {
			for {
				resp, err := s.Recv()
				if err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				ev := resp.GetEvent()
				if ev.GetType() == pb.HealthEventType_HEALTH_EVENT_TYPE_SYNCED {
					synced <- struct{}{}
				}
				if h := ev.GetHealth(); h != nil && h.GetGeneration() > gen && h.GetState() == pb.PluginState_PLUGIN_STATE_SERVING {
					seen <- time.Now()
					return
				}
			}
		}()
	}
	for range n {
		select {
		case <-synced:
		case err := <-errs:
			return 0, err
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	t0 := time.Now()
	if _, err := d.ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo"}); err != nil {
		return 0, err
	}
	var last time.Time
	for range n {
		select {
		case t := <-seen:
			if t.After(last) {
				last = t
			}
		case err := <-errs:
			return 0, err
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return float64(last.Sub(t0)), nil
}

func (d *daemon) sock() string { return filepath.Join(d.dir, "plugind.sock") }

// start runs plugind (bin) on a state directory of its own, with the echo
// and ticker plugins loaded.
func start(ctx context.Context, name, bin, plugins, tmp string) (*daemon, error) {
	dir, err := os.MkdirTemp(tmp, "d-"+name+"-")
	if err != nil {
		return nil, err
	}
	d := &daemon{name: name, dir: dir, done: make(chan struct{})}
	d.cmd = exec.Command(bin, "--plugin-dir", plugins, "--state-dir", d.dir, "--log-level", "error", "--drain-timeout", "5s")
	d.cmd.Stderr = os.Stderr
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	if d.c, err = client.Dial(ctx, "unix://"+d.sock()); err != nil {
		d.stop()
		return nil, err
	}
	for {
		_, err := d.c.List(ctx)
		if err == nil {
			break
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("plugind %s exited at start", name)
		case <-ctx.Done():
			d.stop()
			return nil, err
		case <-time.After(20 * time.Millisecond): // the socket is not there yet
		}
	}
	if d.conn, err = grpc.NewClient("unix://"+d.sock(), grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		d.stop()
		return nil, err
	}
	d.ctl, d.gw = pb.NewPluginControlServiceClient(d.conn), pb.NewPluginGatewayServiceClient(d.conn)
	if _, err := d.c.Load(ctx, &pb.PluginSpec{Name: "echo", Binary: "echo"}); err != nil {
		d.stop()
		return nil, err
	}
	st, err := d.c.Load(ctx, &pb.PluginSpec{Name: "ticker", Binary: "ticker",
		Handshake: &pb.Handshake{ProtocolVersion: 1, MagicCookieKey: "TICKER_PLUGIN", MagicCookieValue: "tick"}})
	if err != nil {
		d.stop()
		return nil, err
	}
	epc, err := client.DialEndpoint(ctx, st.GetEndpoint(), "")
	if err != nil {
		d.stop()
		return nil, err
	}
	d.ep = examplev1.NewTickerServiceClient(epc)
	d.more = append(d.more, epc)
	dc, err := d.c.DialDirect(ctx, "ticker")
	switch {
	case err == nil:
		d.dt = examplev1.NewTickerServiceClient(dc)
		d.more = append(d.more, dc)
	case status.Code(err) == codes.Unimplemented:
		// A base from before the direct path.
	default:
		d.stop()
		return nil, err
	}
	return d, nil
}

func (d *daemon) stop() {
	for _, c := range d.more {
		c.Close()
	}
	if d.c != nil {
		d.c.Close()
	}
	if d.conn != nil {
		d.conn.Close()
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

func gitRoot() (string, error) {
	out, err := git(".", "rev-parse", "--show-toplevel")
	return out, err
}

func git(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("git %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// goBuild builds pkgs of the tree at dir into out (a directory, ending in
// "/"), in that tree's workspace.
func goBuild(dir, out string, pkgs ...string) error {
	cmd := exec.Command("go", append([]string{"build", "-o", out}, pkgs...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK="+filepath.Join(dir, "go.work"))
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s in %s: %w\n%s", strings.Join(pkgs, " "), dir, err, b)
	}
	return nil
}
