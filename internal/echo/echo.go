// Package echo is the echo plugin's implementation, shared by the good echo
// example and the misbehaving variants the tests use.
package echo

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/plugincontrol/plugincontrol/plugin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Version is reported in Describe.
const Version = "1.0.0"

// Plugin answers echo, sleep and panic.
type Plugin struct {
	// Name overrides the name the plugin describes itself with ("echo").
	Name string
	// NotReady, when set, is the reason Ready refuses.
	NotReady string

	crash sync.Once
	// stuck is what a deadlock_after config deadlocks on: once a goroutine
	// holds it for good, every Ready blocks.
	stuck    sync.Mutex
	deadlock sync.Once
}

// Info implements plugin.Plugin.
func (p *Plugin) Info() plugin.Info {
	name := p.Name
	if name == "" {
		name = "echo"
	}
	return plugin.Info{Name: name, Version: Version, Methods: []string{"echo", "sleep", "panic"}}
}

// Ready implements plugin.Plugin. A config "crash_after=DURATION" makes the
// process crash (a Go panic in a background goroutine) that long after its
// first Ready: the tests use it for a generation that dies after the swap.
// A config "deadlock_after=DURATION" makes every Ready from then on block
// for good (the process runs on): a deadlocked handler, for liveness.
func (p *Plugin) Ready(_ context.Context, config []byte) error {
	if p.NotReady != "" {
		return fmt.Errorf("%s", p.NotReady)
	}
	if d, ok, err := after(config, "deadlock_after="); err != nil {
		return err
	} else if ok {
		p.deadlock.Do(func() {
			go func() {
				time.Sleep(d)
				p.stuck.Lock() // never unlocked
			}()
		})
		p.stuck.Lock()
		defer p.stuck.Unlock()
	}
	if d, ok, err := after(config, "crash_after="); err != nil {
		return err
	} else if ok {
		p.crash.Do(func() {
			go func() {
				time.Sleep(d)
				panic(fmt.Sprintf("echo: crash_after %v", d))
			}()
		})
	}
	return nil
}

// after parses a config "KEY=DURATION" (key with its "="): ok is false for
// another config.
func after(config []byte, key string) (d time.Duration, ok bool, err error) {
	v, ok := strings.CutPrefix(string(config), key)
	if !ok {
		return 0, false, nil
	}
	if d, err = time.ParseDuration(v); err != nil {
		return 0, false, fmt.Errorf("config %q: %v", config, err)
	}
	return d, true, nil
}

// Invoke implements plugin.Plugin: echo returns the payload, sleep sleeps
// for the duration in the payload (Go syntax) and returns it, panic panics
// with the payload as message.
func (p *Plugin) Invoke(ctx context.Context, method string, payload []byte) ([]byte, error) {
	switch method {
	case "echo":
		return payload, nil
	case "sleep":
		d, err := time.ParseDuration(string(payload))
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "sleep: payload %q is not a duration: %v", payload, err)
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return payload, nil
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	case "panic":
		panic(string(payload))
	default:
		return nil, status.Errorf(codes.Unimplemented, "echo: unknown method %q (have echo, sleep, panic)", method)
	}
}
