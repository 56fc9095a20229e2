package store

import (
	"fmt"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// group commits the updates of concurrent writers in one bbolt transaction,
// so that they share one fsync (a commit costs 3-7 ms on a virtual disk:
// 100 plugins loaded in parallel were 200 commits in a row). A writer that
// finds no commit running commits at once: a lone writer waits for nothing.
// Writers that arrive while a commit runs are queued; when it ends, the
// first of them commits the whole queue.
type group struct {
	mu      sync.Mutex // guards queue and leading
	queue   []*groupOp
	leading bool // a writer is committing
}

type groupOp struct {
	fn   func(*bolt.Tx) error
	res  chan error    // the outcome, once committed
	lead chan struct{} // this writer commits the queue next
}

// update runs fn in a read-write transaction, possibly shared with other
// writers' functions, and returns once it is durable. fn may run twice (if
// another function of its batch fails, each is retried alone), so it must
// not have effects outside the transaction that a second run would repeat.
func (s *DB) update(fn func(*bolt.Tx) error) error {
	g := &s.group
	op := &groupOp{fn: fn, res: make(chan error, 1), lead: make(chan struct{}, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, op)
	if g.leading {
		g.mu.Unlock()
		select {
		case err := <-op.res:
			return err
		case <-op.lead:
			// The previous leader handed over; op is still queued.
		}
		g.mu.Lock()
	}
	g.leading = true
	batch := g.queue
	g.queue = nil
	g.mu.Unlock()

	s.commit(batch)

	g.mu.Lock()
	if len(g.queue) > 0 {
		g.queue[0].lead <- struct{}{}
	} else {
		g.leading = false
	}
	g.mu.Unlock()
	return <-op.res
}

// commit runs batch in one transaction; when one function fails, the others
// are not failed with it: each runs again in a transaction of its own. A
// function that panics fails (its caller gets the panic as an error), as
// does a panic of bbolt itself: a writer never hangs the queue behind it.
func (s *DB) commit(batch []*groupOp) {
	err := s.updateGuarded(func(tx *bolt.Tx) error {
		for _, op := range batch {
			if err := runOp(op.fn, tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil || len(batch) == 1 {
		for _, op := range batch {
			op.res <- err
		}
		return
	}
	for _, op := range batch {
		op.res <- s.updateGuarded(func(tx *bolt.Tx) error { return runOp(op.fn, tx) })
	}
}

// updateGuarded is db.Update under guard: bbolt's panics and memory faults
// are errors.
func (s *DB) updateGuarded(fn func(*bolt.Tx) error) error {
	return guard(func() error { return s.db.Update(fn) })
}

// runOp runs one writer's function, its panic made an error.
func runOp(fn func(*bolt.Tx) error, tx *bolt.Tx) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("store: update function panicked: %v", r)
		}
	}()
	return fn(tx)
}
