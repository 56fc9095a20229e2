package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
)

// TestConcurrentMutations: 50 Load/Reload/Unload calls at once, on one
// shared plugin and on several others, while 2 callers keep invoking. Only
// the expected errors occur (AlreadyExists, NotFound); Reloads of one plugin
// are serialized (each got its own generation); no call is lost (a call
// fails only with NotFound or Unavailable, never on a generation stopped
// under it); afterwards every listed plugin serves from a running pid, no
// other plugin process or socket directory exists, and Close leaves
// nothing.
func TestConcurrentMutations(t *testing.T) {
	m, sock := newManager(t, manager.Config{})
	ctx := context.Background()
	load(t, m, manager.Spec{Name: "shared", Binary: "echo"})
	for i := range 3 {
		load(t, m, manager.Spec{Name: fmt.Sprintf("c%d", i), Binary: "echo"})
	}

	type result struct {
		op, name string
		gen      uint64
		err      error
	}
	const ops = 50
	results := make([]result, ops)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range ops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			octx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			<-start
			r := result{}
			switch {
			case i < 16: // 16 Reloads of the shared plugin
				r.op, r.name = "reload", "shared"
				rr, err := m.Reload(octx, manager.ReloadRequest{Name: "shared"})
				if err == nil {
					r.gen = rr.Status.Generation
				}
				r.err = err
			case i < 18: // 2 Loads of the shared plugin: AlreadyExists
				r.op, r.name = "load", "shared"
				_, r.err = m.Load(octx, manager.Spec{Name: "shared", Binary: "echo"})
			default: // Load, Reload and Unload of c0..c5
				r.name = fmt.Sprintf("c%d", (i/3)%6)
				switch i % 3 {
				case 0:
					r.op = "load"
					_, r.err = m.Load(octx, manager.Spec{Name: r.name, Binary: "echo"})
				case 1:
					r.op = "reload"
					_, r.err = m.Reload(octx, manager.ReloadRequest{Name: r.name})
				case 2:
					r.op = "unload"
					_, r.err = m.Unload(octx, r.name, 0)
				}
			}
			results[i] = r
		}()
	}
	// Callers on every name meanwhile.
	var calls, lost atomic.Int64
	var lostErr atomic.Value
	callCtx, stopCalls := context.WithCancel(ctx)
	var cwg sync.WaitGroup
	for c := range 2 {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			names := []string{"shared", "c0", "c1", "c2", "c3", "c4", "c5"}
			for n := 0; callCtx.Err() == nil; n++ {
				name := names[(n+c)%len(names)]
				_, err := m.Invoke(ctx, name, "sleep", []byte("1ms"))
				calls.Add(1)
				if err != nil && !isErr(err, manager.ErrNotFound, manager.ErrUnavailable) {
					lost.Add(1)
					lostErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	began := time.Now()
	close(start)
	wg.Wait()
	took := time.Since(began)
	stopCalls()
	cwg.Wait()

	counts := map[string]int{}
	var sharedGens []uint64
	for _, r := range results {
		kind := "ok"
		switch {
		case r.err == nil:
		case errors.Is(r.err, manager.ErrAlreadyExists):
			kind = "AlreadyExists"
		case errors.Is(r.err, manager.ErrNotFound):
			kind = "NotFound"
		default:
			t.Errorf("%s %s: unexpected error %v", r.op, r.name, r.err)
			kind = "unexpected"
		}
		counts[r.op+" "+kind]++
		if r.name == "shared" && r.op == "reload" && r.err == nil {
			sharedGens = append(sharedGens, r.gen)
		}
		if r.name == "shared" && r.op == "load" && kind != "AlreadyExists" {
			t.Errorf("Load of the loaded shared plugin: %v", r.err)
		}
	}
	t.Logf("%d concurrent mutations in %v: %v; %d invokes meanwhile", ops, took, counts, calls.Load())
	if lost.Load() > 0 {
		t.Errorf("%d invokes lost (failed with something other than NotFound/Unavailable); first: %v", lost.Load(), lostErr.Load())
	}
	// Serialized Reloads of the shared plugin: generations 2..17, once each.
	slices.Sort(sharedGens)
	if len(sharedGens) != 16 || sharedGens[0] != 2 || slices.Compact(slices.Clone(sharedGens))[15] != 17 {
		t.Errorf("generations of the 16 shared Reloads: %v, want 2..17 once each", sharedGens)
	}

	// The registry is consistent with the processes.
	list := m.List()
	var pids []int
	for _, st := range list {
		if st.State != manager.StateServing || !testbin.Alive(st.PID) {
			t.Errorf("%s: %s pid %d (alive %v)", st.Name, st.State, st.PID, testbin.Alive(st.PID))
		}
		res, err := m.Invoke(ctx, st.Name, "echo", []byte(st.Name))
		if err != nil || string(res.Payload) != st.Name || res.Generation != st.Generation {
			t.Errorf("%s does not serve from generation %d: %v", st.Name, st.Generation, err)
		}
		pids = append(pids, st.PID)
	}
	if st, err := m.Get("shared"); err != nil || st.Generation != 17 {
		t.Errorf("shared: %+v %v, want generation 17", st, err)
	}
	onlyProcesses(t, pluginDir, pids)
	if d := sockDirs(sock); len(d) != len(list) {
		t.Errorf("socket directories %v for %d plugins", d, len(list))
	}

	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := m.Close(cctx); err != nil {
		t.Fatal(err)
	}
	onlyProcesses(t, pluginDir, nil)
	if d := sockDirs(sock); len(d) != 0 {
		t.Errorf("socket directories after Close: %v", d)
	}
	if _, err := m.Load(ctx, manager.Spec{Name: "late", Binary: "echo"}); !errors.Is(err, manager.ErrClosed) {
		t.Errorf("Load after Close: %v, want ErrClosed", err)
	}
}

// TestConcurrentMutationsDuringClose: Close while Loads, Reloads and
// Unloads are in flight: every call returns (with ErrClosed or NotFound at
// worst), and nothing is left running.
func TestConcurrentMutationsDuringClose(t *testing.T) {
	m, sock := newManager(t, manager.Config{})
	ctx := context.Background()
	for i := range 3 {
		load(t, m, manager.Spec{Name: fmt.Sprintf("c%d", i), Binary: "echo"})
	}
	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("c%d", i%5)
			var err error
			switch i % 3 {
			case 0:
				_, err = m.Load(ctx, manager.Spec{Name: name, Binary: "echo"})
			case 1:
				_, err = m.Reload(ctx, manager.ReloadRequest{Name: name})
			case 2:
				_, err = m.Unload(ctx, name, 0)
			}
			errs <- err
		}()
	}
	time.Sleep(30 * time.Millisecond) // time is what is tested: Close lands while the operations are under way
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := m.Close(cctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("mutations did not return after Close")
	}
	close(errs)
	counts := map[string]int{}
	for err := range errs {
		switch {
		case err == nil:
			counts["ok"]++
		case isErr(err, manager.ErrClosed):
			counts["Closed"]++
		case isErr(err, manager.ErrNotFound):
			counts["NotFound"]++
		case isErr(err, manager.ErrAlreadyExists):
			counts["AlreadyExists"]++
		default:
			counts["other"]++
			t.Errorf("unexpected error: %v", err)
		}
	}
	t.Logf("30 mutations racing Close: %v", counts)
	onlyProcesses(t, pluginDir, nil)
	if d := sockDirs(sock); len(d) != 0 {
		t.Errorf("socket directories after Close: %v", d)
	}
}
