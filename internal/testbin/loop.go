package testbin

import (
	"sync"
	"sync/atomic"
	"time"
)

// Loop is n callers calling call back to back until Stop: the load a test
// keeps on a plugin while it reloads or restarts it.
type Loop struct {
	stop         chan struct{}
	wg           sync.WaitGroup
	calls, fails atomic.Int64
	mu           sync.Mutex // guards first
	first        error
}

// StartLoop starts n callers of call.
func StartLoop(n int, call func() error) *Loop {
	l := &Loop{stop: make(chan struct{})}
	for range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				err := call()
				l.calls.Add(1)
				if err != nil {
					l.fails.Add(1)
					l.mu.Lock()
					if l.first == nil {
						l.first = err
					}
					l.mu.Unlock()
				}
			}
		}()
	}
	return l
}

// Stop stops the callers, waits for them, and returns how many calls they
// made, how many failed, and the first failure.
func (l *Loop) Stop() (calls, failed int64, first error) {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls.Load(), l.fails.Load(), l.first
}

// Calls is how many calls the callers have made so far.
func (l *Loop) Calls() int64 { return l.calls.Load() }

// WaitCalls waits up to d until the callers have made n calls in all, and
// reports whether they did: a test uses it to have calls in flight when it
// acts. It checks every millisecond (the count is the event).
func (l *Loop) WaitCalls(n int64, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for l.calls.Load() < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}
