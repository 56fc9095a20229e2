package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"time"

	storev1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/store/v1"
	"github.com/plugincontrol/plugincontrol/manager/record"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
)

// Commit implements record.Store: the plugin record change and its audit
// record in one transaction (one fsync, shared with concurrent commits).
func (s *DB) Commit(c record.Change) error {
	if c.Audit == nil {
		return errors.New("store: a change of the desired state needs its audit record")
	}
	var put []byte
	if c.Put != nil {
		v, err := encodePlugin(c.Put)
		if err != nil {
			return err
		}
		put = v
	}
	// The audit record is filled in by the transaction (sequence, hashes):
	// work on a copy, so that a retried run starts from the caller's.
	a := *c.Audit
	err := s.update(func(tx *bolt.Tx) error {
		rec := a
		if put != nil {
			if err := tx.Bucket(bucketPlugins).Put([]byte(c.Put.Spec.Name), put); err != nil {
				return err
			}
		}
		if c.Delete != "" {
			if err := tx.Bucket(bucketPlugins).Delete([]byte(c.Delete)); err != nil {
				return err
			}
		}
		if err := s.appendAudit(tx, &rec); err != nil {
			return err
		}
		*c.Audit = rec
		return nil
	})
	if err == nil {
		s.committed()
	}
	return err
}

// appendAudit appends r to the log: the next sequence, chained to the last
// record (or the checkpoint), indexed by plugin; then retention removes
// what is too many or too old, moving the checkpoint.
func (s *DB) appendAudit(tx *bolt.Tx, r *record.AuditRecord) error {
	b := tx.Bucket(bucketAudit)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	r.Sequence = seq
	if k, v := b.Cursor().Last(); k != nil {
		last, err := decodeAudit(v)
		if err != nil {
			return fmt.Errorf("the last audit record (%d) cannot be read: %w", binary.BigEndian.Uint64(k), err)
		}
		r.PrevHash = last.Hash
	} else {
		cp, err := checkpoint(tx)
		if err != nil {
			return err
		}
		r.PrevHash = cp.GetHash()
	}
	r.Hash = r.ChainHash()
	v, err := encodeAudit(r)
	if err != nil {
		return err
	}
	if err := b.Put(u64(seq), v); err != nil {
		return err
	}
	if err := tx.Bucket(bucketAuditIndex).Put(indexKey(r.Plugin, seq), nil); err != nil {
		return err
	}
	return s.retain(tx, seq, r.Time)
}

// retain removes the oldest audit records beyond the retention count or
// older than the maximum age, a few at a time (at most 64 per commit, so a
// commit never stalls on a large backlog), and records the last one removed
// as the checkpoint the kept chain starts from.
func (s *DB) retain(tx *bolt.Tx, newest uint64, now time.Time) error {
	b := tx.Bucket(bucketAudit)
	c := b.Cursor()
	var removed *record.AuditRecord
	for n := 0; n < 64; n++ {
		k, v := c.First()
		if k == nil || binary.BigEndian.Uint64(k) == newest {
			break
		}
		seq := binary.BigEndian.Uint64(k)
		r, err := decodeAudit(v)
		tooMany := newest-seq >= uint64(s.opts.AuditRetention)
		tooOld := err == nil && s.opts.AuditMaxAge > 0 && now.Sub(r.Time) > s.opts.AuditMaxAge
		if !tooMany && !tooOld {
			break
		}
		if err != nil {
			return fmt.Errorf("audit record %d cannot be read: %w", seq, err)
		}
		if err := c.Delete(); err != nil {
			return err
		}
		if err := tx.Bucket(bucketAuditIndex).Delete(indexKey(r.Plugin, seq)); err != nil {
			return err
		}
		removed = &r
	}
	if removed == nil {
		return nil
	}
	v, err := proto.Marshal(&storev1.AuditCheckpoint{Sequence: removed.Sequence, Hash: removed.Hash})
	if err != nil {
		return err
	}
	return tx.Bucket(bucketMeta).Put(keyCheckpoint, v)
}

func checkpoint(tx *bolt.Tx) (*storev1.AuditCheckpoint, error) {
	v := tx.Bucket(bucketMeta).Get(keyCheckpoint)
	if v == nil {
		return nil, nil
	}
	var cp storev1.AuditCheckpoint
	if err := proto.Unmarshal(v, &cp); err != nil {
		return nil, fmt.Errorf("the audit checkpoint cannot be read: %w", err)
	}
	return &cp, nil
}

// indexKey is the key of an audit record in the per-plugin index.
func indexKey(plugin string, seq uint64) []byte {
	k := make([]byte, 0, len(plugin)+9)
	k = append(k, plugin...)
	k = append(k, 0)
	return append(k, u64(seq)...)
}

// Plugins implements record.Store. A record that cannot be decoded is
// returned with Unreadable set (and stays on disk).
func (s *DB) Plugins() ([]record.PluginRecord, error) {
	var out []record.PluginRecord
	err := guard(func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketPlugins).ForEach(func(k, v []byte) error {
				r, err := decodePlugin(string(k), v)
				if err != nil {
					r = record.PluginRecord{Name: string(k), Unreadable: err.Error()}
				}
				out = append(out, r)
				return nil
			})
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// ReserveRevisions implements record.Store.
func (s *DB) ReserveRevisions(upTo uint64) (uint64, error) {
	var prev uint64
	err := s.update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		var err error
		if prev, err = getU64(meta, keyRevision); err != nil {
			return err
		}
		if upTo > prev {
			return meta.Put(keyRevision, u64(upTo))
		}
		return nil
	})
	return prev, err
}

// Audit implements record.Store: newest first, from Before down, at most
// Limit records; the records of one plugin are read through its index, so
// a page costs the same however many other records the log holds.
func (s *DB) Audit(q record.AuditQuery) (record.AuditPage, error) {
	var page record.AuditPage
	err := guard(func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			cp, err := checkpoint(tx)
			if err != nil {
				return err
			}
			if cp != nil {
				page.Checkpoint = &record.AuditCheckpoint{Sequence: cp.GetSequence(), Hash: cp.GetHash()}
			}
			audit := tx.Bucket(bucketAudit)
			add := func(seq uint64, v []byte) (bool, error) {
				if len(page.Records) == q.Limit {
					page.More = true
					return false, nil
				}
				r, err := decodeAudit(v)
				if err != nil {
					return false, fmt.Errorf("audit record %d cannot be read: %w", seq, err)
				}
				page.Records = append(page.Records, r)
				return true, nil
			}
			before := q.Before
			if before == 0 {
				before = ^uint64(0)
			}
			if q.Plugin == "" {
				c := audit.Cursor()
				k, v := c.Seek(u64(before))
				if k == nil {
					k, v = c.Last()
				}
				for ; k != nil; k, v = c.Prev() {
					seq := binary.BigEndian.Uint64(k)
					if seq >= before {
						continue
					}
					if more, err := add(seq, v); err != nil || !more {
						return err
					}
				}
				return nil
			}
			prefix := append([]byte(q.Plugin), 0)
			c := tx.Bucket(bucketAuditIndex).Cursor()
			k, _ := c.Seek(indexKey(q.Plugin, before))
			if k == nil {
				k, _ = c.Last()
			}
			for ; k != nil; k, _ = c.Prev() {
				if len(k) != len(prefix)+8 || !bytes.Equal(k[:len(prefix)], prefix) {
					if bytes.Compare(k, prefix) > 0 {
						continue // a later plugin's key, where Seek landed
					}
					return nil // an earlier plugin's: no more of this one
				}
				seq := binary.BigEndian.Uint64(k[len(prefix):])
				if seq >= before {
					continue
				}
				if more, err := add(seq, audit.Get(k[len(prefix):])); err != nil || !more {
					return err
				}
			}
			return nil
		})
	})
	return page, err
}
