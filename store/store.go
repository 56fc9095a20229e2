// Package store keeps plugind's desired state and audit log in a bbolt
// database (<state-dir>/plugind.db). bbolt was chosen because it is the
// embedded store Go infrastructure already trusts (etcd, Consul): pure Go,
// one file, serializable transactions, and every committed transaction
// fsynced, so an acknowledged mutation survives kill -9.
//
// What is on disk has a versioned schema owned by this package, not by the
// manager's Go types: records are the protobuf messages of
// plugincontrol.store.v1 (schema.go), a schema version key says which
// schema the file holds, and older schemas are migrated when the store is
// opened (migrate.go). A record that cannot be decoded is reported, never
// dropped.
//
// A damaged file never makes plugind panic: Open checks the file (bbolt's
// own consistency check, with bbolt's panics and memory faults turned into
// errors) and refuses it with a *DamagedError naming the file and the
// problem. Snapshots of the last good state are kept beside it
// (snapshot.go), and Recover puts the newest good one in place.
package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	"github.com/plugincontrol/plugincontrol/manager/record"
	bolt "go.etcd.io/bbolt"
)

// FileName is the database file inside the state directory.
const FileName = "plugind.db"

// Options tune a DB; zero fields take the defaults.
type Options struct {
	// Timeout bounds the wait for another process's lock on the file
	// (default 2s).
	Timeout time.Duration
	// AuditRetention is how many audit records are kept (default
	// 100,000); older ones are removed, a checkpoint keeping the chain
	// verifiable.
	AuditRetention int
	// AuditMaxAge, when set, also removes audit records older than it.
	AuditMaxAge time.Duration
	// SnapshotEvery is how many commits pass between snapshots (default
	// 1000); a snapshot is also taken at Open when the state changed since
	// the last one.
	SnapshotEvery int
	// SnapshotsKept is how many snapshots are kept (default 3).
	SnapshotsKept int
}

func (o *Options) defaults() {
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.AuditRetention <= 0 {
		o.AuditRetention = 100000
	}
	if o.SnapshotEvery <= 0 {
		o.SnapshotEvery = 1000
	}
	if o.SnapshotsKept <= 0 {
		o.SnapshotsKept = 3
	}
}

// DB is a record.Store on bbolt. It is safe for concurrent use.
type DB struct {
	db    *bolt.DB
	path  string
	opts  Options
	group group

	// snapMu guards snapshotting and lastSnap: one snapshot at a time.
	snapMu   sync.Mutex
	snapWG   sync.WaitGroup // snapshots in the background
	lastSnap uint64         // commit count of the last snapshot

	mu      sync.Mutex // guards commits and closed
	commits uint64     // commits since the last snapshot was scheduled
	closed  bool
}

var _ record.Store = (*DB)(nil)

// DamagedError is a store file that cannot be used: plugind refuses to
// start on it. Recover (plugind store recover) puts the newest good
// snapshot in its place.
type DamagedError struct {
	// Path is the file.
	Path string
	// Problem says what is wrong with it.
	Problem string
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("store %s is damaged: %s", e.Path, e.Problem)
}

// Open opens (creating if needed) the database in stateDir, checks it,
// migrates an older schema, and takes a snapshot if the state changed since
// the last one. A damaged file is a *DamagedError; a file locked by another
// process fails after opts.Timeout.
func Open(stateDir string, opts Options) (*DB, error) {
	opts.defaults()
	path := filepath.Join(stateDir, FileName)
	db, err := openChecked(path, opts.Timeout, false)
	if err != nil {
		return nil, err
	}
	s := &DB{db: db, path: path, opts: opts}
	if err := s.initSchema(); err != nil {
		db.Close()
		var de *DamagedError
		if errors.As(err, &de) {
			return nil, err
		}
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	if err := s.snapshotIfChanged(); err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: snapshot: %w", path, err)
	}
	return s, nil
}

// openChecked opens path with bbolt and runs bbolt's consistency check,
// turning bbolt's panics on a damaged file ("invalid freelist page", a
// truncated mmap's SIGBUS) into a *DamagedError.
func openChecked(path string, timeout time.Duration, readOnly bool) (db *bolt.DB, err error) {
	if fi, serr := os.Stat(path); serr == nil && fi.Size() > 0 && fi.Size() < 2*int64(os.Getpagesize()) {
		return nil, &DamagedError{Path: path, Problem: fmt.Sprintf("the file is %d bytes, shorter than bbolt's two meta pages (truncated?)", fi.Size())}
	}
	err = guard(func() error {
		var oerr error
		db, oerr = bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, ReadOnly: readOnly})
		return oerr
	})
	switch {
	case errors.Is(err, bolt.ErrTimeout):
		return nil, fmt.Errorf("store %s is locked by another process (is another plugind running on this state directory?)", path)
	case errors.Is(err, errPanic), errors.Is(err, bolt.ErrInvalid), errors.Is(err, bolt.ErrChecksum), errors.Is(err, bolt.ErrVersionMismatch):
		return nil, &DamagedError{Path: path, Problem: err.Error()}
	case err != nil:
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	if cerr := check(db); cerr != nil {
		db.Close()
		return nil, &DamagedError{Path: path, Problem: cerr.Error()}
	}
	return db, nil
}

// errPanic marks a panic of bbolt turned into an error by guard.
var errPanic = errors.New("bbolt panicked")

// guard runs f, turning a panic, and a memory fault on bbolt's mmap (made
// a panic by SetPanicOnFault), into an error wrapping errPanic.
func guard(f func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", errPanic, r)
		}
	}()
	return f()
}

// check proves the file readable before anything else reads it:
//
//  1. the pages the meta page claims fit in the file (a truncated file
//     would make bbolt read its mmap past the end: SIGBUS);
//  2. every bucket, key and value is read once, in this goroutine under
//     guard, so a damaged page is an error rather than a panic;
//  3. bbolt's own consistency check (every page reachable once, no page
//     both free and in use). It runs in a goroutine of its own, where a
//     panic could not be recovered: the walk above has read every page it
//     will.
func check(db *bolt.DB) error {
	err := guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			fi, err := os.Stat(db.Path())
			if err != nil {
				return err
			}
			if tx.Size() > fi.Size() {
				return fmt.Errorf("the file is %d bytes but its meta page claims %d (truncated)", fi.Size(), tx.Size())
			}
			return tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return walk(b) })
		})
	})
	if err != nil {
		return err
	}
	return db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
			if len(errs) == 5 {
				break
			}
		}
		return errors.Join(errs...)
	})
}

// walk reads every key and value of b and its nested buckets.
func walk(b *bolt.Bucket) error {
	c := b.Cursor()
	var sum byte
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil {
			if nb := b.Bucket(k); nb != nil {
				if err := walk(nb); err != nil {
					return err
				}
			}
			continue
		}
		for _, x := range v {
			sum ^= x
		}
	}
	_ = sum
	return nil
}

// Close waits for a snapshot in progress and closes the database.
func (s *DB) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.snapWG.Wait()
	return s.db.Close()
}

// Path is the database file.
func (s *DB) Path() string { return s.path }
