package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/plugincontrol/plugincontrol/client"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// The live-restore scenarios run a real plugind process (a reload execs it
// in place; a crash is a SIGKILL), built by the scenario, with N echo
// plugins.

// plugindProc is a plugind process the scenario started.
type plugindProc struct {
	cmd    *exec.Cmd
	state  string
	stderr *testbin.Buffer
	exited chan struct{}
	c      *client.Client
}

// startPlugind starts bin/plugind on state with args and waits until it
// answers.
func startPlugind(bin, pluginDir, state string, args ...string) (*plugindProc, error) {
	p := &plugindProc{state: state, stderr: &testbin.Buffer{}, exited: make(chan struct{})}
	// Its own stderr pipe (not os/exec's): a reaper in keep mode outlives it.
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(bin, append([]string{"--plugin-dir", pluginDir, "--state-dir", state, "--log-level", "info"}, args...)...)
	p.cmd.Stderr = pw
	err = p.cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, err
	}
	go func() { _, _ = pr.WriteTo(p.stderr); pr.Close() }()
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "unix://"+filepath.Join(state, "plugind.sock"))
	if err != nil {
		p.kill()
		return nil, err
	}
	p.c = c
	for {
		if _, err := c.List(ctx); err == nil {
			return p, nil
		}
		if ctx.Err() != nil {
			p.kill()
			return nil, fmt.Errorf("plugind did not come up: %s", p.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *plugindProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
	if p.c != nil {
		p.c.Close()
	}
}

// stop stops plugind with SIGTERM (its plugins stop with it).
func (p *plugindProc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.kill()
		return errors.New("plugind did not stop on SIGTERM")
	}
	p.c.Close()
	return nil
}

// loadEchos loads n echo plugins in parallel.
func (p *plugindProc) loadEchos(n int) error {
	var g errgroup.Group
	g.SetLimit(8)
	for i := range n {
		g.Go(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			_, err := p.c.Load(ctx, &pb.PluginSpec{Name: fmt.Sprintf("echo%d", i), Binary: "echo"})
			return err
		})
	}
	return g.Wait()
}

// pids maps every plugin to its pid and generation, or fails when one is
// not SERVING.
func (p *plugindProc) pids() (map[string][2]uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ps, err := p.c.List(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][2]uint64{}
	for _, s := range ps {
		if s.GetState() != pb.PluginState_PLUGIN_STATE_SERVING {
			return nil, fmt.Errorf("%s is %s", s.GetName(), s.GetState())
		}
		out[s.GetName()] = [2]uint64{uint64(s.GetPid()), s.GetGeneration()}
	}
	return out, nil
}

var servingRE = regexp.MustCompile(`plugind reloaded in place.*? serving_after=([0-9.]+[µnm]?s)`)

// runReexec reloads a plugind with N plugins in place (SIGHUP) while 4
// callers invoke them, and times each reload from the signal to the new
// image serving.
func runReexec(e *env) ([]row, error) {
	bin := filepath.Join(e.tmp, "cmd")
	if err := testbin.Commands(bin); err != nil {
		return nil, err
	}
	state, err := os.MkdirTemp(e.tmp, "rx-")
	if err != nil {
		return nil, err
	}
	p, err := startPlugind(filepath.Join(bin, "plugind"), e.pluginDir, state)
	if err != nil {
		return nil, err
	}
	defer func() { _ = p.stop() }()
	n := e.plugins
	if err := p.loadEchos(n); err != nil {
		return nil, err
	}
	before, err := p.pids()
	if err != nil {
		return nil, err
	}
	reloads := 10
	if e.short {
		reloads = 3
	}
	// 4 callers, each invoking the plugins in turn, timing every call.
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var across dist // calls that overlapped a reload
	var failed int
	var firstErr error
	var reloading sync.Mutex // held while a reload is in progress, by the main loop
	inReload := func() bool {
		if reloading.TryLock() {
			reloading.Unlock()
			return false
		}
		return true
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; ctx.Err() == nil; i++ {
				during := inReload()
				t0 := time.Now()
				cctx, c2 := context.WithTimeout(ctx, 10*time.Second)
				_, _, err := p.c.Invoke(cctx, fmt.Sprintf("echo%d", i%n), "echo", []byte("x"))
				c2()
				took := time.Since(t0)
				during = during || inReload()
				if ctx.Err() != nil {
					return
				}
				mu.Lock()
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
				}
				if during {
					across = append(across, took)
				}
				mu.Unlock()
			}
		})
	}
	var inside, outside dist
	for i := 1; i <= reloads; i++ {
		time.Sleep(200 * time.Millisecond) // calls at a steady pace before each reload
		reloading.Lock()
		t0 := time.Now()
		_ = p.cmd.Process.Signal(syscall.SIGHUP)
		if !p.stderr.WaitFor("plugind reloaded in place", i, 30*time.Second) {
			reloading.Unlock()
			cancel()
			wg.Wait()
			return nil, fmt.Errorf("reload %d did not complete: %s", i, p.stderr)
		}
		outside = append(outside, time.Since(t0))
		time.Sleep(50 * time.Millisecond) // calls made just after the new image serves count too
		reloading.Unlock()
	}
	cancel()
	wg.Wait()
	for _, m := range servingRE.FindAllStringSubmatch(p.stderr.String(), -1) {
		if d, err := time.ParseDuration(m[1]); err == nil {
			inside = append(inside, d)
		}
	}
	after, err := p.pids()
	if err != nil {
		return nil, err
	}
	for name, v := range before {
		if after[name] != v {
			return nil, fmt.Errorf("%s changed across the reloads: %v, then %v", name, v, after[name])
		}
	}
	if failed > 0 {
		return nil, fmt.Errorf("%d calls failed across %d reloads; first: %v", failed, reloads, firstErr)
	}
	return []row{
		{
			scenario: fmt.Sprintf("reload plugind in place (SIGHUP) with %d plugins", n), measure: fmt.Sprintf("SIGHUP until the new image serves (its log), p50 / p99 of %d", reloads),
			plugind: fmtDur(inside.p50()) + " / " + fmtDur(inside.p99()), ref: "—",
			target: "≤ 200 ms", ok: okIf(len(inside) == reloads && inside.p99() <= 200*time.Millisecond),
		},
		{
			scenario: fmt.Sprintf("reload plugind in place (SIGHUP) with %d plugins", n), measure: fmt.Sprintf("SIGHUP until every plugin is taken over, p50 / p99 of %d", reloads),
			plugind: fmtDur(outside.p50()) + " / " + fmtDur(outside.p99()), ref: "—",
		},
		{
			scenario: fmt.Sprintf("calls across %d reloads in place", reloads), measure: fmt.Sprintf("p50 / p99 of the %d calls made during a reload; failed", len(across)),
			plugind: fmtDur(across.p50()) + " / " + fmtDur(across.p99()) + "; " + strconv.Itoa(failed) + " failed", ref: "—",
			target: "0 failed", ok: okIf(failed == 0),
		},
	}, nil
}

var restoredRE = regexp.MustCompile(`desired state restored" plugins=\d+ took=([0-9.]+[µnm]?s)`)

// runAdopt kills a --live-restore plugind with N plugins (SIGKILL) and
// times the next one from its start until it serves every plugin, adopted.
func runAdopt(e *env) ([]row, error) {
	bin := filepath.Join(e.tmp, "cmd")
	if _, err := os.Stat(filepath.Join(bin, "plugind")); err != nil {
		if err := testbin.Commands(bin); err != nil {
			return nil, err
		}
	}
	state, err := os.MkdirTemp(e.tmp, "ad-")
	if err != nil {
		return nil, err
	}
	n := e.plugins
	p, err := startPlugind(filepath.Join(bin, "plugind"), e.pluginDir, state, "--live-restore")
	if err != nil {
		return nil, err
	}
	if err := p.loadEchos(n); err != nil {
		_ = p.stop()
		return nil, err
	}
	rounds := 5
	if e.short {
		rounds = 2
	}
	var total, restore dist
	for range rounds {
		before, err := p.pids()
		if err != nil {
			_ = p.stop()
			return nil, err
		}
		p.kill()
		t0 := time.Now()
		p, err = startPlugind(filepath.Join(bin, "plugind"), e.pluginDir, state, "--live-restore")
		if err != nil {
			return nil, err
		}
		if !p.stderr.WaitFor("desired state restored", 1, 30*time.Second) {
			_ = p.stop()
			return nil, fmt.Errorf("the adoption did not complete: %s", p.stderr)
		}
		total = append(total, time.Since(t0))
		if m := restoredRE.FindStringSubmatch(p.stderr.String()); m != nil {
			if d, err := time.ParseDuration(m[1]); err == nil {
				restore = append(restore, d)
			}
		}
		after, err := p.pids()
		if err != nil {
			_ = p.stop()
			return nil, err
		}
		for name, v := range before {
			if after[name] != v {
				_ = p.stop()
				return nil, fmt.Errorf("%s was not adopted: %v, then %v", name, v, after[name])
			}
		}
	}
	if err := p.stop(); err != nil {
		return nil, err
	}
	return []row{{
		scenario: fmt.Sprintf("crash adoption of %d plugins (--live-restore, after SIGKILL)", n), measure: fmt.Sprintf("start until all serve, p50 / p99 of %d", rounds),
		plugind: fmtDur(total.p50()) + " / " + fmtDur(total.p99()), ref: "of which adopting " + fmtDur(restore.p50()),
		target: "≤ 500 ms", ok: okIf(total.p99() <= 500*time.Millisecond),
	}}, nil
}
