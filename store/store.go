// Package store keeps plugind's desired state and audit record in a bbolt
// database (one file under the state directory). bbolt was chosen because it
// is the embedded store Go infrastructure already trusts (etcd, Consul):
// pure Go, one file, serializable transactions, and every committed
// transaction fsynced, so an acknowledged mutation survives kill -9.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/plugincontrol/plugincontrol/manager"
	bolt "go.etcd.io/bbolt"
)

var (
	bucketPlugins = []byte("plugins")
	bucketAudit   = []byte("audit")
	bucketMeta    = []byte("meta")
	keyRevision   = []byte("revision_high_water")
	keyVersion    = []byte("schema_version")
)

// schemaVersion is bumped on incompatible changes of the stored records.
const schemaVersion = 1

// FileName is the database file inside the state directory.
const FileName = "plugind.db"

// DB is a manager.Store on bbolt. It is safe for concurrent use.
type DB struct {
	db *bolt.DB
	// maxAudit bounds the audit log; older records are pruned.
	maxAudit int
	group    group
}

var _ manager.Store = (*DB)(nil)

// Open opens (creating if needed) the database in stateDir. It fails fast
// (after timeout) when another plugind holds the file.
func Open(stateDir string, timeout time.Duration) (*DB, error) {
	path := filepath.Join(stateDir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("store %s is locked by another process (is another plugind running on this state directory?)", path)
		}
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketPlugins, bucketAudit, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keyVersion); v != nil {
			if got := binary.BigEndian.Uint64(v); got != schemaVersion {
				return fmt.Errorf("schema version %d, this plugind reads %d", got, schemaVersion)
			}
			return nil
		}
		return meta.Put(keyVersion, u64(schemaVersion))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	return &DB{db: db, maxAudit: 100000}, nil
}

// Close closes the database.
func (s *DB) Close() error { return s.db.Close() }

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// PutPlugin implements manager.Store.
func (s *DB) PutPlugin(r manager.PluginRecord) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPlugins).Put([]byte(r.Spec.Name), v)
	})
}

// PutPluginAudited implements manager.AuditedStore: the plugin record and
// the audit record of the mutation in one transaction (one fsync).
func (s *DB) PutPluginAudited(r manager.PluginRecord, a *manager.AuditRecord) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketPlugins).Put([]byte(r.Spec.Name), v); err != nil {
			return err
		}
		return s.appendAudit(tx, a)
	})
}

// DeletePlugin implements manager.Store.
func (s *DB) DeletePlugin(name string) error {
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPlugins).Delete([]byte(name))
	})
}

// Plugins implements manager.Store.
func (s *DB) Plugins() ([]manager.PluginRecord, error) {
	var out []manager.PluginRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPlugins).ForEach(func(k, v []byte) error {
			var r manager.PluginRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("plugin record %q: %w", k, err)
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}

// ReserveRevisions implements manager.Store.
func (s *DB) ReserveRevisions(upTo uint64) (uint64, error) {
	var prev uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keyRevision); v != nil {
			prev = binary.BigEndian.Uint64(v)
		}
		if upTo > prev {
			return meta.Put(keyRevision, u64(upTo))
		}
		return nil
	})
	return prev, err
}

// AppendAudit implements manager.Store.
func (s *DB) AppendAudit(r *manager.AuditRecord) error {
	return s.update(func(tx *bolt.Tx) error { return s.appendAudit(tx, r) })
}

func (s *DB) appendAudit(tx *bolt.Tx, r *manager.AuditRecord) error {
	b := tx.Bucket(bucketAudit)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	r.Sequence = seq
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := b.Put(u64(seq), v); err != nil {
		return err
	}
	// Prune the oldest records beyond maxAudit, a few at a time.
	if seq > uint64(s.maxAudit) {
		c := b.Cursor()
		for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= seq-uint64(s.maxAudit); k, _ = c.First() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Audit implements manager.Store.
func (s *DB) Audit(name string, before uint64, limit int) ([]manager.AuditRecord, error) {
	var out []manager.AuditRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		var k, v []byte
		if before == 0 {
			k, v = c.Last()
		} else {
			k, v = c.Seek(u64(before))
			if k == nil {
				k, v = c.Last()
			} else {
				k, v = c.Prev()
			}
		}
		for ; k != nil && len(out) < limit; k, v = c.Prev() {
			var r manager.AuditRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("audit record %d: %w", binary.BigEndian.Uint64(k), err)
			}
			if before != 0 && r.Sequence >= before {
				continue
			}
			if name == "" || r.Plugin == name {
				out = append(out, r)
			}
		}
		return nil
	})
	return out, err
}

var _ manager.AuditedStore = (*DB)(nil)
