package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/server"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// healthPlugins is how many echo instances the health scenario loads.
const healthPlugins = 10

// loadMany loads n echo instances named echo-000... in parallel through the
// API and returns how long that took.
func loadMany(d *daemon, n int) (time.Duration, error) {
	ctx, cancel := ctxT(5 * time.Minute)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	t0 := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.load(ctx, fmt.Sprintf("echo-%03d", i), nil); err != nil {
				mu.Lock()
				if first == nil {
					first = fmt.Errorf("Load echo-%03d: %w", i, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return time.Since(t0), first
}

// runHealth compares unary Health of all plugins (10 loaded) with grpc-go's
// health.Server Check on a plain grpc.Server in the same process, 16
// callers each. An informational row measures grpc.health.v1 Check on
// plugind's own server (the mirror), which isolates the cost of plugind's
// interceptors from that of the Health handler.
func runHealth(e *env) ([]row, error) {
	const callers = 16
	rounds, dur := 5, 2*time.Second
	if e.short {
		rounds, dur = 2, 300*time.Millisecond
	}
	d, err := startDaemon(e)
	if err != nil {
		return nil, err
	}
	defer d.close()
	if _, err := loadMany(d, healthPlugins); err != nil {
		return nil, err
	}
	h, err := startHealthRef(e)
	if err != nil {
		return nil, err
	}
	defer h.close()
	refConn, err := dialPlain(h.addr())
	if err != nil {
		return nil, err
	}
	defer refConn.Close()
	mirrorConn, err := dialPlain(d.addr())
	if err != nil {
		return nil, err
	}
	defer mirrorConn.Close()
	ref, mirror := healthpb.NewHealthClient(refConn), healthpb.NewHealthClient(mirrorConn)
	var closers []func() // the floors' servers and connections, closed last first

	// healthOf calls Health through c: a plain connection (via) or package
	// client's (sdk), in the given view.
	healthOf := func(c pb.PluginControlServiceClient, view pb.HealthView) func(int) error {
		req := &pb.HealthRequest{View: view}
		return func(int) error {
			r, err := c.Health(callCtx, req)
			if err == nil && len(r.GetPlugins()) != healthPlugins {
				err = fmt.Errorf("Health returned %d plugins, want %d", len(r.GetPlugins()), healthPlugins)
			}
			return err
		}
	}
	via := healthOf(d.ctl, pb.HealthView_HEALTH_VIEW_UNSPECIFIED)
	viaCompact := healthOf(d.ctl, pb.HealthView_HEALTH_VIEW_COMPACT)
	check := func(svc string, c healthpb.HealthClient) func(int) error {
		req := &healthpb.HealthCheckRequest{Service: svc}
		return func(int) error {
			r, err := c.Check(callCtx, req)
			if err == nil && r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				err = fmt.Errorf("Check %q: %v", svc, r.GetStatus())
			}
			return err
		}
	}
	sdk := healthOf(d.sdk.Control(), pb.HealthView_HEALTH_VIEW_UNSPECIFIED)
	// The floors: a plain grpc.Server answering Health with the same
	// response, built once (no interceptors, no manager), in each view.
	bareOf := func(view pb.HealthView) (func(int) error, error) {
		snap, err := d.ctl.Health(callCtx, &pb.HealthRequest{View: view})
		if err != nil {
			return nil, err
		}
		bs, err := startPlain(e, func(s *grpc.Server) { pb.RegisterPluginControlServiceServer(s, &bareHealth{resp: snap}) })
		if err != nil {
			return nil, err
		}
		closers = append(closers, bs.close)
		bareConn, err := dialPlain(bs.addr())
		if err != nil {
			return nil, err
		}
		closers = append(closers, func() { bareConn.Close() })
		return healthOf(pb.NewPluginControlServiceClient(bareConn), view), nil
	}
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	floor, err := bareOf(pb.HealthView_HEALTH_VIEW_UNSPECIFIED)
	if err != nil {
		return nil, err
	}
	floorCompact, err := bareOf(pb.HealthView_HEALTH_VIEW_COMPACT)
	if err != nil {
		return nil, err
	}
	fs := []func(int) error{via, check(refService, ref), check(server.ServicePrefix+"echo-000", mirror), sdk, floor, viaCompact, floorCompact}
	// The mirror follows the hub asynchronously: wait for it.
	deadline := time.Now().Add(10 * time.Second)
	for fs[2](0) != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for _, f := range fs {
		if l := forCalls(200, 4, 30*time.Second, f); l.failed > 0 {
			return nil, fmt.Errorf("warm-up: %d failed calls: %v", l.failed, l.firstErr)
		}
	}
	rates := make([][]float64, len(fs))
	lats := make([]dist, len(fs))
	for i := range rounds {
		for j := range fs {
			k := (i + j) % len(fs)
			l := forDuration(dur, callers, fs[k])
			if l.failed > 0 {
				return nil, fmt.Errorf("%d failed calls: %v", l.failed, l.firstErr)
			}
			rates[k] = append(rates[k], l.rate())
			lats[k] = append(lats[k], l.lat...)
		}
	}
	tr := ratio(medianF(rates[0]), medianF(rates[1]))
	mr := ratio(medianF(rates[2]), medianF(rates[1]))
	sr := ratio(medianF(rates[3]), medianF(rates[1]))
	fr := ratio(medianF(rates[4]), medianF(rates[1]))
	cr := ratio(medianF(rates[5]), medianF(rates[1]))
	cfr := ratio(medianF(rates[6]), medianF(rates[1]))
	return []row{
		{
			scenario: fmt.Sprintf("Health (all %d plugins), %d callers", healthPlugins, callers), measure: fmt.Sprintf("throughput, median of %d rounds of %v", rounds, dur),
			plugind: fmtRate(medianF(rates[0])), ref: "grpc-go Check " + fmtRate(medianF(rates[1])),
			ratio: tr, target: "≥ 0.9", ok: okIf(tr >= 0.9), // issue 22
			note: fmt.Sprintf("p50 %s vs %s", fmtDur(lats[0].p50()), fmtDur(lats[1].p50())),
		},
		{
			scenario: fmt.Sprintf("Health floor: plain grpc.Server, the same %d-plugin response, %d callers", healthPlugins, callers), measure: "throughput",
			plugind: fmtRate(medianF(rates[4])), ref: "grpc-go Check " + fmtRate(medianF(rates[1])),
			ratio: fr, note: "what the bigger response costs with nothing of plugind around it",
		},
		{
			scenario: fmt.Sprintf("Health (all %d plugins), HEALTH_VIEW_COMPACT, %d callers", healthPlugins, callers), measure: fmt.Sprintf("throughput, median of %d rounds of %v", rounds, dur),
			plugind: fmtRate(medianF(rates[5])), ref: "grpc-go Check " + fmtRate(medianF(rates[1])),
			ratio: cr, target: "≥ 0.9", ok: okIf(cr >= 0.9), // issue 22, for callers that need states only
			note: fmt.Sprintf("callers asking for name, state, generation and revision; p50 %s", fmtDur(lats[5].p50())),
		},
		{
			scenario: fmt.Sprintf("Health floor, HEALTH_VIEW_COMPACT: plain grpc.Server, the same compact %d-plugin response, %d callers", healthPlugins, callers), measure: "throughput",
			plugind: fmtRate(medianF(rates[6])), ref: "grpc-go Check " + fmtRate(medianF(rates[1])),
			ratio: cfr, note: "what the compact response costs with nothing of plugind around it",
		},
		{
			scenario: fmt.Sprintf("grpc.health.v1 Check on plugind's server, %d callers", callers), measure: "throughput",
			plugind: fmtRate(medianF(rates[2])), ref: "grpc-go Check " + fmtRate(medianF(rates[1])),
			ratio: mr, note: "grpc-go's handler behind plugind's interceptors",
		},
		{
			scenario: fmt.Sprintf("Health via package client, %d callers", callers), measure: "throughput",
			plugind: fmtRate(medianF(rates[3])), ref: "grpc-go Check " + fmtRate(medianF(rates[1])),
			ratio: sr, note: "the SDK's retry interceptor on top of the first row",
		},
	}, nil
}

// bareHealth answers Health with a fixed response.
type bareHealth struct {
	pb.UnimplementedPluginControlServiceServer
	resp *pb.HealthResponse
}

func (b *bareHealth) Health(context.Context, *pb.HealthRequest) (*pb.HealthResponse, error) {
	return b.resp, nil
}
