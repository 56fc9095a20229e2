package workers

import (
	"runtime"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// stackDepth grows the calling goroutine's stack by about n KiB.
//
//go:noinline
func stackDepth(n int) int {
	var pad [1024]byte
	pad[n%len(pad)] = byte(n)
	if n == 0 {
		return int(pad[0])
	}
	return stackDepth(n-1) + int(pad[n%len(pad)])
}

// goid is the calling goroutine's id, from its stack header.
func goid() string {
	b := make([]byte, 64)
	b = b[:runtime.Stack(b, false)]
	return strings.Fields(string(b))[1]
}

func TestRunReusesWorkers(t *testing.T) {
	p := New(2)
	defer p.Stop()
	ids := map[string]bool{}
	for range 10 {
		p.Run(func() { ids[goid()] = true; stackDepth(32) })
	}
	if len(ids) != 1 {
		t.Fatalf("10 calls one after another ran on %d goroutines, want 1 (the first worker, reused)", len(ids))
	}
	if ids[goid()] {
		t.Fatal("a call ran on the caller's goroutine with an idle worker")
	}
}

func TestRunInlineWhenFull(t *testing.T) {
	p := New(1)
	defer p.Stop()
	hold, held := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(func() { close(held); <-hold }) // takes the only worker
	}()
	<-held
	caller := goid()
	var ran string
	p.Run(func() { ran = goid() })
	close(hold)
	<-done
	if ran != caller {
		t.Fatalf("with the pool full a call ran on goroutine %s, want the caller's %s", ran, caller)
	}
}

func TestRunRaisesPanicOnCaller(t *testing.T) {
	p := New(1)
	defer p.Stop()
	defer func() {
		if r := recover(); r != "boom" {
			t.Fatalf("recovered %v, want the worker's panic boom", r)
		}
	}()
	p.Run(func() { panic("boom") })
	t.Fatal("Run returned after its call panicked")
}

func TestStopWaitsForBusyWorkers(t *testing.T) {
	p := New(2)
	held, hold := make(chan struct{}), make(chan struct{})
	finished := make(chan struct{})
	go p.Run(func() { close(held); <-hold; close(finished) })
	<-held
	stopped := make(chan struct{})
	go func() { p.Stop(); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("Stop returned while a call was running")
	case <-finished:
		t.Fatal("the call finished before it was let go")
	default:
	}
	close(hold)
	<-stopped
	select {
	case <-finished:
	default:
		t.Fatal("Stop returned before the busy worker's call finished")
	}
	caller := goid()
	var ran string
	p.Run(func() { ran = goid() })
	if ran != caller {
		t.Fatal("a call after Stop did not run on its caller's goroutine")
	}
}

// BenchmarkRun compares a call with a deep stack run on a fresh goroutine
// each time (what grpc-go does per call) with one run through a Pool.
func BenchmarkRun(b *testing.B) {
	b.Run("fresh-goroutine", func(b *testing.B) {
		for b.Loop() {
			done := make(chan struct{})
			go func() { stackDepth(16); close(done) }()
			<-done
		}
	})
	b.Run("pool", func(b *testing.B) {
		p := New(1)
		defer p.Stop()
		for b.Loop() {
			done := make(chan struct{})
			go func() { p.Run(func() { stackDepth(16) }); close(done) }()
			<-done
		}
	})
}
