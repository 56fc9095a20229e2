// Command embed is a host program that embeds plugincontrol's manager with
// its own go-plugin protocol: go-plugin's examples/grpc KV plugin, a plugin
// plugincontrol did not write, dispensed as the typed shared.KV its host
// expects. It loads the plugin, then reloads it three times while four
// goroutines call it: every call succeeds (try-activate: each new
// generation serves before the old one is drained and stopped), and each
// old process is gone afterwards.
//
//	go build -o /tmp/plugins/kv github.com/hashicorp/go-plugin/examples/grpc/plugin-go-grpc
//	go run ./examples/embed -plugin-dir /tmp/plugins
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/examples/grpc/shared"
	"github.com/plugincontrol/plugincontrol/manager"
)

func main() {
	dir := flag.String("plugin-dir", "plugins", "directory holding the kv plugin binary")
	flag.Parse()
	if err := run(context.Background(), *dir, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "embed:", err)
		os.Exit(1)
	}
}

// kvProtocol is how the host speaks to the KV plugin: go-plugin's handshake
// and plugin set from the plugin's own shared package. The manager
// dispenses "kv" with shared.KVGRPCPlugin, so a lease hands out shared.KV.
func kvProtocol() *manager.Protocol {
	return &manager.Protocol{
		Name:      "kv",
		Handshake: shared.Handshake,
		Plugins:   goplugin.PluginSet{"kv": &shared.KVGRPCPlugin{}},
		Dispense:  "kv",
		Validate: func(v any) error {
			if _, ok := v.(shared.KV); !ok {
				return fmt.Errorf("dispensed %T, not a shared.KV", v)
			}
			return nil
		},
	}
}

// withKV runs f on the active generation of the plugin, under a lease: a
// reload drains the generation until the lease is released.
func withKV(ctx context.Context, m *manager.Manager, f func(shared.KV) error) error {
	l, err := m.Acquire(ctx, "kv")
	if err != nil {
		return err
	}
	defer l.Release()
	return f(l.Value.(shared.KV))
}

func run(ctx context.Context, pluginDir string, out io.Writer) error {
	m, err := manager.New(manager.Config{PluginDir: pluginDir, Logger: slog.New(slog.DiscardHandler),
		Protocol: func(manager.Spec) *manager.Protocol { return kvProtocol() }})
	if err != nil {
		return err
	}
	defer m.Close(ctx)

	res, err := m.Load(ctx, manager.Spec{Name: "kv", Binary: "kv"})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "loaded kv: generation %d, protocol %s\n", res.Status.Generation, res.Status.Protocol)
	if err := withKV(ctx, m, func(kv shared.KV) error { return kv.Put("greeting", []byte("hello")) }); err != nil {
		return err
	}

	var calls, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := withKV(ctx, m, func(kv shared.KV) error {
					_, err := kv.Get("greeting")
					return err
				})
				calls.Add(1)
				if err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	pids := []int{res.Status.PID}
	for range 3 {
		time.Sleep(20 * time.Millisecond) // let the callers call
		rr, err := m.Reload(ctx, manager.ReloadRequest{Name: "kv"})
		if err != nil {
			close(stop)
			wg.Wait()
			return err
		}
		pids = append(pids, rr.Status.PID)
		fmt.Fprintf(out, "reloaded kv: generation %d -> %d\n", rr.PreviousGeneration, rr.Status.Generation)
	}
	close(stop)
	wg.Wait()
	if failed.Load() > 0 {
		return fmt.Errorf("%d of %d calls failed during the reloads", failed.Load(), calls.Load())
	}
	fmt.Fprintln(out, "calls during the reloads: none failed")

	for _, pid := range pids[:len(pids)-1] {
		if err := waitGone(pid, 5*time.Second); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, "old generations: all stopped")
	var got []byte
	err = withKV(ctx, m, func(kv shared.KV) (err error) {
		got, err = kv.Get("greeting")
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "greeting: %q\n", firstLine(got))
	return nil
}

// waitGone waits until process pid no longer exists.
func waitGone(pid int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("old generation pid %d still running", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func firstLine(b []byte) string {
	for i, c := range b {
		if c == '\n' {
			return string(b[:i])
		}
	}
	return string(b)
}
