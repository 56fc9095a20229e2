package main

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	examplev1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/example/v1"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// runDirect compares a unary 1 KiB call (the ticker plugin's Echo) on a
// direct connection (client.DialDirect: the daemon leases the generation
// and passes a connection to its socket; the calls never touch plugind)
// with the same call on a plain connection to the plugin's socket. Then it
// reloads the plugin e.reloads times with 4 callers on the direct
// connection, counting failed calls, and times how long after each Reload
// returned a call first reaches the new process.
func runDirect(e *env) ([]row, error) {
	rounds, calls1, dur16 := 5, 3000, 2*time.Second
	if e.short {
		rounds, calls1, dur16 = 2, 300, 300*time.Millisecond
	}
	d, err := startDaemon(e)
	if err != nil {
		return nil, err
	}
	defer d.close()
	ctx, cancel := ctxT(10 * time.Minute)
	defer cancel()
	if _, err := d.ctl.Load(ctx, &pb.LoadRequest{Spec: tickerSpec}); err != nil {
		return nil, err
	}
	socks, _ := filepath.Glob(filepath.Join(d.dir, "sockets", "*", "plugin*"))
	if len(socks) != 1 {
		return nil, fmt.Errorf("the ticker plugin's socket: found %v", socks)
	}
	plain, err := dialPlain("unix://" + socks[0])
	if err != nil {
		return nil, err
	}
	defer plain.Close()
	dconn, err := d.sdk.DialDirect(ctx, "ticker")
	if err != nil {
		return nil, err
	}
	defer dconn.Close()
	tc := examplev1.NewTickerServiceClient(dconn)
	one, _, rates, err := contend([]func(int) error{echoVia(tc), echoVia(examplev1.NewTickerServiceClient(plain))}, rounds, calls1, dur16)
	if err != nil {
		return nil, err
	}
	plain.Close()
	p1 := ratio(float64(one[0].p50()), float64(one[1].p50()))
	tr := ratio(medianF(rates[0]), medianF(rates[1]))
	lat := func(d dist) string { return fmtDur(d.p50()) + " / " + fmtDur(d.p99()) }
	rows := []row{
		{
			scenario: "direct, 1 caller", measure: fmt.Sprintf("unary 1 KiB latency p50 / p99, n=%d", len(one[0])),
			plugind: lat(one[0]), ref: "plain connection to the plugin's socket " + lat(one[1]),
			ratio: p1, target: "p50 ≤ 1.1 × plain", ok: okIf(p1 <= 1.1),
		},
		{
			scenario: "direct, 16 callers", measure: fmt.Sprintf("throughput, median of %d rounds of %v", rounds, dur16),
			plugind: fmtRate(medianF(rates[0])), ref: "plain " + fmtRate(medianF(rates[1])),
			ratio: tr, target: "≥ 0.95 × plain", ok: okIf(tr >= 0.95),
		},
	}

	// Reloads under load.
	stop, stopLoad := context.WithCancel(context.Background())
	var (
		wg     sync.WaitGroup
		during load
	)
	wg.Go(func() { during = closedLoop(stop, 4, 0, echoVia(tc)) })
	var moves dist
	var relErr error
	for range e.reloads {
		res, err := d.ctl.Reload(ctx, &pb.ReloadRequest{Name: "ticker"})
		if err != nil {
			relErr = fmt.Errorf("Reload: %w", err)
			break
		}
		swapped := time.Now()
		for {
			who, err := tc.Whoami(callCtx, &examplev1.WhoamiRequest{})
			if err != nil {
				relErr = fmt.Errorf("Whoami after a reload: %w", err)
				break
			}
			if who.GetPid() == res.GetPlugin().GetPid() {
				moves = append(moves, time.Since(swapped))
				break
			}
			if time.Since(swapped) > time.Minute {
				relErr = fmt.Errorf("still on pid %d a minute after the reload to %d", who.GetPid(), res.GetPlugin().GetPid())
				break
			}
		}
		if relErr != nil {
			break
		}
	}
	stopLoad()
	wg.Wait()
	if relErr != nil {
		return rows, relErr
	}
	rows = append(rows,
		row{
			scenario: fmt.Sprintf("direct during %d reloads", len(moves)), measure: "failed calls (4 callers)",
			plugind: fmt.Sprintf("%d of %d calls", during.failed, during.failed+during.calls), ref: "—", target: "0", ok: okIf(during.failed == 0),
		},
		row{
			scenario: fmt.Sprintf("direct during %d reloads", len(moves)), measure: "Reload returned → first call on the new process, p50 / p99",
			plugind: lat(moves), ref: "—", target: "—",
		})
	if during.failed > 0 {
		return rows, fmt.Errorf("%d direct calls failed during reloads: %v", during.failed, during.firstErr)
	}
	return rows, nil
}
