package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SnapshotDir is the directory of snapshots inside the state directory.
const SnapshotDir = "snapshots"

// Snapshots are whole copies of the database taken in a read transaction
// (bbolt's Tx.WriteTo, consistent while writers go on), written to a
// temporary file, fsynced, renamed into place, the directory fsynced: a
// snapshot is either whole or absent. Their names carry the commit count,
// so the newest is the last in name order: plugind-<commits, 20 digits>.db.

// committed counts a commit and takes a snapshot in the background every
// SnapshotEvery commits.
func (s *DB) committed() {
	s.mu.Lock()
	s.commits++
	due := s.commits >= uint64(s.opts.SnapshotEvery) && !s.closed
	if due {
		s.commits = 0
		s.snapWG.Add(1)
	}
	s.mu.Unlock()
	if due {
		go func() {
			defer s.snapWG.Done()
			_ = s.Snapshot() // a failed snapshot leaves the older ones
		}()
	}
}

// snapshotIfChanged takes a snapshot at Open when the state changed since
// the newest one (or there is none).
func (s *DB) snapshotIfChanged() error {
	n, err := s.commitCount()
	if err != nil {
		return err
	}
	snaps, err := ListSnapshots(filepath.Dir(s.path))
	if err != nil {
		return err
	}
	if len(snaps) > 0 && snaps[len(snaps)-1].Commits == n {
		s.lastSnap = n
		return nil
	}
	return s.Snapshot()
}

// commitCount is the number of audited commits so far (the audit log's
// sequence: every commit appends one record).
func (s *DB) commitCount() (uint64, error) {
	var n uint64
	err := guard(func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			n = tx.Bucket(bucketAudit).Sequence()
			return nil
		})
	})
	return n, err
}

// Snapshot writes a snapshot of the current state and removes the oldest
// beyond SnapshotsKept.
func (s *DB) Snapshot() error {
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	dir := filepath.Join(filepath.Dir(s.path), SnapshotDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var commits uint64
	tmp, err := os.CreateTemp(dir, ".snapshot-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // gone after the rename anyway
	err = guard(func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			commits = tx.Bucket(bucketAudit).Sequence()
			_, err := tx.WriteTo(tmp)
			return err
		})
	})
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	final := filepath.Join(dir, fmt.Sprintf("plugind-%020d.db", commits))
	if err := os.Rename(tmp.Name(), final); err != nil {
		return err
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	s.lastSnap = commits
	snaps, err := ListSnapshots(filepath.Dir(s.path))
	if err != nil {
		return err
	}
	for len(snaps) > s.opts.SnapshotsKept {
		_ = os.Remove(snaps[0].Path)
		snaps = snaps[1:]
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// SnapshotInfo is one snapshot file.
type SnapshotInfo struct {
	Path    string
	Commits uint64 // commits (audit records) the state had
	ModTime time.Time
}

// ListSnapshots returns the snapshots in stateDir, oldest first.
func ListSnapshots(stateDir string) ([]SnapshotInfo, error) {
	dir := filepath.Join(stateDir, SnapshotDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []SnapshotInfo
	for _, e := range ents {
		n, ok := strings.CutPrefix(e.Name(), "plugind-")
		n, ok2 := strings.CutSuffix(n, ".db")
		if !ok || !ok2 {
			continue
		}
		c, err := strconv.ParseUint(n, 10, 64)
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		out = append(out, SnapshotInfo{Path: filepath.Join(dir, e.Name()), Commits: c, ModTime: info.ModTime()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Commits < out[j].Commits })
	return out, nil
}

// Report describes a store file: whether it can be used, and what it holds.
type Report struct {
	Path string
	// Problem, when set, says why the file cannot be used.
	Problem string
	// SchemaVersion is the file's schema version.
	SchemaVersion uint64
	// Plugins counts the plugin records; Unreadable names those that
	// cannot be decoded (restore lists them UNHEALTHY).
	Plugins    int
	Unreadable []string
	// AuditRecords counts the audit records; ChainBroken, when set, says
	// where the audit chain does not verify.
	AuditRecords int
	ChainBroken  string
}

// Check inspects the store file at path without changing it: bbolt's
// consistency check, every record decoded, the audit chain verified.
func Check(path string) Report {
	rep := Report{Path: path}
	if _, err := os.Stat(path); err != nil {
		rep.Problem = err.Error()
		return rep
	}
	db, err := openChecked(path, time.Second, true)
	if err != nil {
		rep.Problem = err.Error()
		var de *DamagedError
		if errors.As(err, &de) {
			rep.Problem = de.Problem
		}
		return rep
	}
	defer db.Close()
	err = guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			meta := tx.Bucket(bucketMeta)
			if meta == nil {
				return errors.New("no meta bucket: not a plugind store")
			}
			v, err := getU64(meta, keyVersion)
			if err != nil {
				return err
			}
			rep.SchemaVersion = v
			if p := tx.Bucket(bucketPlugins); p != nil {
				_ = p.ForEach(func(k, val []byte) error {
					rep.Plugins++
					if v == SchemaVersion {
						if _, err := decodePlugin(string(k), val); err != nil {
							rep.Unreadable = append(rep.Unreadable, fmt.Sprintf("%s: %v", k, err))
						}
					}
					return nil
				})
			}
			a := tx.Bucket(bucketAudit)
			if a == nil || v != SchemaVersion {
				return nil
			}
			prev := ""
			if cp, err := checkpoint(tx); err != nil {
				return err
			} else if cp != nil {
				prev = cp.GetHash()
			}
			return a.ForEach(func(k, val []byte) error {
				rep.AuditRecords++
				if rep.ChainBroken != "" {
					return nil
				}
				r, err := decodeAudit(val)
				switch {
				case err != nil:
					rep.ChainBroken = fmt.Sprintf("record %x cannot be read: %v", k, err)
				case r.PrevHash != prev:
					rep.ChainBroken = fmt.Sprintf("record %d does not chain to the record before it", r.Sequence)
				case r.Hash != r.ChainHash():
					rep.ChainBroken = fmt.Sprintf("record %d does not match its hash (edited?)", r.Sequence)
				}
				prev = r.Hash
				return nil
			})
		})
	})
	if err != nil {
		rep.Problem = err.Error()
	}
	return rep
}

// ErrNotDamaged is Recover refusing to replace a store that is not damaged
// (without force).
var ErrNotDamaged = errors.New("is not damaged")

// Recover puts the newest snapshot that passes Check in place of the store
// file in stateDir, keeping the damaged file beside it
// (plugind.db.damaged-<time>), and returns the snapshot used. It refuses
// when the store file is not damaged (ErrNotDamaged; force overrides that)
// and when no snapshot passes.
func Recover(stateDir string, force bool) (SnapshotInfo, error) {
	path := filepath.Join(stateDir, FileName)
	if rep := Check(path); rep.Problem == "" && !force {
		return SnapshotInfo{}, fmt.Errorf("store %s %w: nothing to recover (force replaces it with the newest snapshot anyway)", path, ErrNotDamaged)
	}
	snaps, err := ListSnapshots(stateDir)
	if err != nil {
		return SnapshotInfo{}, err
	}
	for i := len(snaps) - 1; i >= 0; i-- {
		sn := snaps[i]
		if rep := Check(sn.Path); rep.Problem != "" {
			continue
		}
		if _, err := os.Stat(path); err == nil {
			aside := fmt.Sprintf("%s.damaged-%s", path, time.Now().UTC().Format("20060102T150405Z"))
			if err := os.Rename(path, aside); err != nil {
				return SnapshotInfo{}, err
			}
		}
		if err := copyFile(sn.Path, path); err != nil {
			return SnapshotInfo{}, err
		}
		return sn, syncDir(stateDir)
	}
	return SnapshotInfo{}, fmt.Errorf("no usable snapshot in %s (%d found)", filepath.Join(stateDir, SnapshotDir), len(snaps))
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
