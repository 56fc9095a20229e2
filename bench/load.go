package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/store"
)

// runLoad loads N echo instances in parallel through the API of a fresh
// daemon, against N raw go-plugin launches (+ handshake, Dispense, first
// call) in parallel from this process; then times unary Health of all N
// from one caller. Teardown is untimed.
func runLoad(e *env) ([]row, error) {
	n := e.plugins
	rounds, healthCalls := 5, 300
	if e.short {
		rounds, healthCalls = 2, 50
	}
	var dl, rl, restores []float64
	var hl dist
	daemonRound := func() error {
		d, err := startDaemon(e)
		if err != nil {
			return err
		}
		defer func() { _ = os.RemoveAll(d.dir) }()
		defer d.close()
		took, err := loadMany(d, n)
		if err != nil {
			return err
		}
		dl = append(dl, float64(took))
		req := &pb.HealthRequest{}
		for range 20 {
			if _, err := d.ctl.Health(callCtx, req); err != nil {
				return err
			}
		}
		for range healthCalls {
			t0 := time.Now()
			r, err := d.ctl.Health(callCtx, req)
			el := time.Since(t0)
			if err != nil {
				return err
			}
			if len(r.GetPlugins()) != n {
				return fmt.Errorf("Health returned %d plugins, want %d", len(r.GetPlugins()), n)
			}
			hl = append(hl, el)
		}
		// Restore: the same N from the store, as plugind does at start.
		took, err = restoreFrom(e, d)
		if err != nil {
			return err
		}
		restores = append(restores, float64(took))
		return nil
	}
	rawRound := func() error {
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			first error
			all   []*rawPlugin
		)
		t0 := time.Now()
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, _, err := rawLaunch(e, nil)
				mu.Lock()
				defer mu.Unlock()
				if err != nil && first == nil {
					first = err
				}
				if r != nil {
					all = append(all, r)
				}
			}()
		}
		wg.Wait()
		took := time.Since(t0)
		for _, r := range all {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.kill()
			}()
		}
		wg.Wait()
		rl = append(rl, float64(took))
		return first
	}
	for i := range rounds {
		first, second := daemonRound, rawRound
		if i%2 == 1 {
			first, second = rawRound, daemonRound
		}
		if err := first(); err != nil {
			return nil, err
		}
		if err := second(); err != nil {
			return nil, err
		}
	}
	r := ratio(medianF(dl), medianF(rl))
	return []row{
		{
			scenario: fmt.Sprintf("load %d plugins in parallel", n), measure: fmt.Sprintf("time until all serve, median of %d", rounds),
			plugind: fmtDur(time.Duration(medianF(dl))), ref: fmt.Sprintf("%d raw launches %s", n, fmtDur(time.Duration(medianF(rl)))),
			ratio: r, target: "≤ 1.3", ok: okIf(r <= 1.3),
		},
		{
			scenario: fmt.Sprintf("restore %d plugins from the store", n), measure: fmt.Sprintf("time until all serve, median of %d", rounds),
			plugind: fmtDur(time.Duration(medianF(restores))), ref: "the load of the same " + fmtDur(time.Duration(medianF(dl))),
			ratio: ratio(medianF(restores), medianF(dl)),
		},
		{
			scenario: fmt.Sprintf("Health of all %d, 1 caller", n), measure: fmt.Sprintf("latency p50 / p99, n=%d", len(hl)),
			plugind: fmtDur(hl.p50()) + " / " + fmtDur(hl.p99()), ref: "—",
			target: "p50 ≤ 250 µs", ok: okIf(hl.p50() <= 250*time.Microsecond),
		},
	}, nil
}

// restoreFrom stops d, keeping its state directory, then times a new
// manager on the same store restoring every plugin.
func restoreFrom(e *env, d *daemon) (time.Duration, error) {
	d.keepDir = true
	d.close()
	st, err := store.Open(d.dir, store.Options{})
	if err != nil {
		return 0, err
	}
	defer st.Close()
	m, err := manager.New(manager.Config{PluginDir: e.pluginDir, SocketDir: filepath.Join(d.dir, "sockets"), Logger: e.log, Store: st})
	if err != nil {
		return 0, err
	}
	defer func() { _ = m.Close(context.Background()) }()
	t0 := time.Now()
	if err := m.Restore(context.Background()); err != nil {
		return 0, err
	}
	took := time.Since(t0)
	for _, s := range m.List() {
		if s.State != manager.StateServing {
			return 0, fmt.Errorf("restored %s: %s (%s)", s.Name, s.State, s.LastError)
		}
	}
	return took, nil
}
