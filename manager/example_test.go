package manager_test

import (
	"context"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"github.com/plugincontrol/plugincontrol/manager"
)

// Load a plugin, call it, and reload it with try-activate semantics.
func Example() {
	ctx := context.Background()
	m, err := manager.New(manager.Config{PluginDir: pluginDir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close(ctx)

	if _, err := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo"}); err != nil {
		fmt.Println(err)
		return
	}
	res, _ := m.Invoke(ctx, "echo", "echo", []byte("hello"))
	fmt.Printf("%s from generation %d\n", res.Payload, res.Generation)

	// A candidate that fails validation never replaces the active one.
	_, err = m.Reload(ctx, manager.ReloadRequest{Name: "echo", Spec: &manager.Spec{Name: "echo", Binary: "notready"}})
	fmt.Println(err)

	rr, _ := m.Reload(ctx, manager.ReloadRequest{Name: "echo"})
	fmt.Println("now generation", rr.Status.Generation)
	// Output:
	// hello from generation 1
	// plugin "echo": candidate failed at stage ready: plugin reports not ready: backend database unreachable (generation 1 stays active)
	// now generation 2
}

// Watch health: a snapshot, SYNCED, then live changes.
func ExampleManager_Watch() {
	ctx := context.Background()
	m, _ := manager.New(manager.Config{PluginDir: pluginDir, Logger: slog.New(slog.DiscardHandler)})
	defer m.Close(ctx)
	_, _ = m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo"})

	w, _ := m.Watch([]string{"echo"}, 0)
	defer w.Close()
	evs, _ := w.Next(ctx)
	for _, e := range evs {
		if e.Type == manager.EventSynced {
			fmt.Println(e.Type)
			continue
		}
		fmt.Println(e.Type, e.Health.Name, e.Health.State)
	}
	_, _ = m.Invoke(ctx, "echo", "panic", []byte("oops"))
	evs, _ = w.Next(ctx)
	last := evs[len(evs)-1].Health
	fmt.Println(last.State, last.LastPanic.Message)
	// Output:
	// SNAPSHOT echo SERVING
	// SYNCED
	// DEGRADED oops
}

// Count panics of your own goroutines against a plugin.
func ExampleManager_Recover() {
	ctx := context.Background()
	m, _ := manager.New(manager.Config{PluginDir: pluginDir, Logger: slog.New(slog.DiscardHandler)})
	defer m.Close(ctx)
	_, _ = m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo"})

	func() {
		defer m.Recover("echo", "cache-refresh")
		panic("nil map")
	}()
	hs, _, _ := m.Health([]string{"echo"})
	fmt.Println(hs[0].State, hs[0].LifetimePanics, hs[0].LastPanic.Message)
	// Output: DEGRADED 1 cache-refresh: nil map
}

// Wait for the supervisor to bring a crashed plugin back: WaitHealth
// follows the plugin's health until a record passes the test.
func ExampleManager_WaitHealth() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, _ := manager.New(manager.Config{PluginDir: pluginDir, Logger: slog.New(slog.DiscardHandler)})
	defer m.Close(ctx)
	res, _ := m.Load(ctx, manager.Spec{Name: "echo", Binary: "echo"})

	_ = syscall.Kill(res.Status.PID, syscall.SIGKILL)
	h, err := m.WaitHealth(ctx, "echo", func(h manager.Health) bool {
		return h.Generation > res.Status.Generation && h.State == manager.StateServing
	})
	fmt.Println(h.Generation, h.State, h.Crashes, err)
	// Output: 2 SERVING 1 <nil>
}
