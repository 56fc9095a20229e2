// Package workers runs calls on a bounded pool of goroutines that keep the
// stacks their calls grew.
//
// Why: grpc-go serves each call on a fresh goroutine, and serving a call
// of plugind's (a chain of interceptors, then a client call to the plugin)
// grows that goroutine's stack in steps, copying it each time.
// runtime.copystack was 40% of the Invoke handler's CPU at 16 callers
// (bench invoke) and 26% of a forwarded call's (bench passthrough), both
// measured with go tool pprof. grpc.NumStreamWorkers is grpc-go's own
// answer, but its workers are per grpc.Server (plugind runs one per plugin
// endpoint: each idle endpoint would pay for idle goroutines), they start
// with the server, and long-lived streams (WatchHealth) hold them for good.
// A Pool is shared, starts its goroutines as calls need them, and serves
// only the calls it is given.
//
// A call that finds every worker busy and the pool full runs on its
// caller's goroutine, as without the pool: the pool never queues a call.
package workers

import (
	"runtime"
	"sync"
)

// Pool is a bounded set of goroutines that run calls. Its zero value is
// not usable; call New. Stop it when done.
type Pool struct {
	work chan *job     // unbuffered: a send succeeds only to an idle worker
	quit chan struct{} // closed by Stop: idle workers return
	wg   sync.WaitGroup

	mu      sync.Mutex // guards n and stopped (never held while a call runs)
	n, max  int        // workers started, at most max
	stopped bool
}

// job is one call handed to a worker.
type job struct {
	f     func()
	panic any // what f panicked with, raised again by Run
	done  chan struct{}
}

// Size is a pool size for calls that mostly wait on another process: four
// per CPU the Go scheduler may use, at least 16.
func Size() int { return max(16, 4*runtime.GOMAXPROCS(0)) }

// New returns a pool of at most n workers (none started yet).
func New(n int) *Pool {
	return &Pool{work: make(chan *job), quit: make(chan struct{}), max: n}
}

// Run runs f on an idle worker, on a new one while the pool has room, or
// else on the caller's goroutine, and returns when f has. A panic in f is
// raised again on the caller's goroutine (where a recovery interceptor
// sees it).
func (p *Pool) Run(f func()) {
	j := &job{f: f, done: make(chan struct{})}
	select {
	case p.work <- j:
	default:
		if !p.start(j) {
			f()
			return
		}
	}
	<-j.done
	if j.panic != nil {
		panic(j.panic)
	}
}

// start starts a worker with j as its first call, unless the pool is full
// or stopped.
func (p *Pool) start(j *job) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped || p.n == p.max {
		return false
	}
	p.n++
	p.wg.Add(1)
	go p.loop(j)
	return true
}

func (p *Pool) loop(first *job) {
	defer p.wg.Done()
	first.run()
	for {
		select {
		case j := <-p.work:
			j.run()
		case <-p.quit:
			return
		}
	}
}

func (j *job) run() {
	defer close(j.done)
	defer func() { j.panic = recover() }()
	j.f()
}

// Stop ends the idle workers and waits for the busy ones to finish their
// calls. Calls run afterwards run on their callers' goroutines.
func (p *Pool) Stop() {
	p.mu.Lock()
	if !p.stopped {
		p.stopped = true
		close(p.quit)
	}
	p.mu.Unlock()
	p.wg.Wait()
}
