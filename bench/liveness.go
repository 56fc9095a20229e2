package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/durationpb"
)

// runLiveness measures what liveness probing costs: N echo plugins loaded
// with liveness_interval 1s, and the daemon's CPU time (this process:
// nothing else runs in it meanwhile) and the plugins' CPU time over a
// window, against the same N plugins without probing (reloaded without
// it), in alternating windows.
func runLiveness(e *env) ([]row, error) {
	n, window, rounds := e.plugins, 10*time.Second, 4 // 4: a median of 2 windows each way varied 0.6-1.0% between runs
	if e.short {
		window, rounds = 2*time.Second, 1
	}
	d, err := startDaemon(e)
	if err != nil {
		return nil, err
	}
	defer d.close()
	probed := &pb.HealthPolicy{LivenessInterval: durationpb.New(time.Second)}
	setAll := func(p *pb.HealthPolicy, load bool) error {
		var g errgroup.Group
		g.SetLimit(8)
		for i := range n {
			spec := &pb.PluginSpec{Name: fmt.Sprintf("live-%d", i), Binary: "echo", HealthPolicy: p}
			g.Go(func() error {
				if load {
					_, err := d.ctl.Load(callCtx, &pb.LoadRequest{Spec: spec})
					return err
				}
				_, err := d.ctl.Reload(callCtx, &pb.ReloadRequest{Name: spec.GetName(), Spec: spec})
				return err
			})
		}
		return g.Wait()
	}
	if err := setAll(probed, true); err != nil {
		return nil, err
	}
	var on, off, plugOn, plugOff []float64
	for r := range rounds {
		for _, probing := range []bool{r%2 == 0, r%2 != 0} {
			p := probed
			if !probing {
				p = nil
			}
			if err := setAll(p, false); err != nil {
				return nil, err
			}
			time.Sleep(1500 * time.Millisecond) // the reload's work settles; probers start
			self0, plug0, err := cpuTimes(d)
			if err != nil {
				return nil, err
			}
			time.Sleep(window)
			self1, plug1, err := cpuTimes(d)
			if err != nil {
				return nil, err
			}
			core := (self1 - self0).Seconds() / window.Seconds()
			pcore := (plug1 - plug0).Seconds() / window.Seconds()
			if probing {
				on, plugOn = append(on, core), append(plugOn, pcore)
			} else {
				off, plugOff = append(off, core), append(plugOff, pcore)
			}
		}
	}
	cost := medianF(on) - medianF(off)
	pcost := medianF(plugOn) - medianF(plugOff)
	return []row{{
		scenario: fmt.Sprintf("liveness, %d plugins at 1s", n), measure: fmt.Sprintf("CPU of the daemon, share of one core (median of %d windows of %v)", rounds, window),
		plugind: fmt.Sprintf("%.2f%% with probing, %.2f%% without: %.2f%%", 100*medianF(on), 100*medianF(off), 100*cost),
		ref:     fmt.Sprintf("the plugins answering: %.2f%%", 100*pcost),
		target:  "< 1% of a core", ok: okIf(cost < 0.01),
	}}, nil
}

// cpuTimes returns the CPU time (user + system) of this process and of
// every plugin process of d so far.
func cpuTimes(d *daemon) (self, plugins time.Duration, err error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0, err
	}
	self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	st, err := d.sdk.List(callCtx)
	if err != nil {
		return 0, 0, err
	}
	var mu sync.Mutex
	for _, p := range st {
		t := procCPU(int(p.GetPid()))
		mu.Lock()
		plugins += t
		mu.Unlock()
	}
	return self, plugins, nil
}

// procCPU is utime + stime of pid from /proc/pid/stat.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}
