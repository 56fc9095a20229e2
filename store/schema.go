package store

import (
	"encoding/binary"
	"fmt"

	storev1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/store/v1"
	"github.com/plugincontrol/plugincontrol/internal/wire"
	"github.com/plugincontrol/plugincontrol/manager/record"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The schema, version 2:
//
//	bucket "plugins":     plugin name            → storev1.PluginRecord
//	bucket "audit":       sequence (8 bytes, BE) → storev1.AuditRecord
//	bucket "audit_index": plugin name, 0, sequence (8 bytes, BE) → empty
//	bucket "meta":        "schema_version"      → 8 bytes, BE: 2
//	                      "revision_high_water" → 8 bytes, BE
//	                      "audit_checkpoint"    → storev1.AuditCheckpoint
//
// Version 1 (plugind up to commit b97b77a) held JSON of the manager's Go
// structs in "plugins" and "audit"; migrate.go reads it.
var (
	bucketPlugins    = []byte("plugins")
	bucketAudit      = []byte("audit")
	bucketAuditIndex = []byte("audit_index")
	bucketMeta       = []byte("meta")
	keyVersion       = []byte("schema_version")
	keyRevision      = []byte("revision_high_water")
	keyCheckpoint    = []byte("audit_checkpoint")
)

// SchemaVersion is the version of the records this package writes.
const SchemaVersion = 2

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// getU64 reads an 8-byte counter of bucket b (0 when absent).
func getU64(b *bolt.Bucket, key []byte) (uint64, error) {
	v := b.Get(key)
	switch len(v) {
	case 0:
		return 0, nil
	case 8:
		return binary.BigEndian.Uint64(v), nil
	}
	return 0, fmt.Errorf("meta key %q is %d bytes, want 8", key, len(v))
}

// initSchema creates the buckets of a new file, migrates an older schema,
// and refuses a newer one.
func (s *DB) initSchema() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		version, err := getU64(meta, keyVersion)
		if err != nil {
			return &DamagedError{Path: s.path, Problem: err.Error()}
		}
		for _, b := range [][]byte{bucketPlugins, bucketAudit, bucketAuditIndex} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		switch {
		case version == 0 && tx.Bucket(bucketPlugins).Stats().KeyN == 0 && tx.Bucket(bucketAudit).Stats().KeyN == 0:
			// A new file.
		case version == 1:
			if err := migrateV1(tx); err != nil {
				return fmt.Errorf("migrating schema 1 to %d: %w", SchemaVersion, err)
			}
		case version == SchemaVersion:
			return nil
		case version > SchemaVersion:
			return fmt.Errorf("schema version %d was written by a newer plugind; this one reads up to %d (run the newer plugind, or restore a snapshot it has not touched)", version, SchemaVersion)
		default:
			return &DamagedError{Path: s.path, Problem: fmt.Sprintf("records without a schema version (%d)", version)}
		}
		return meta.Put(keyVersion, u64(SchemaVersion))
	})
}

// encodePlugin is the stored form of a plugin record. The encoding is
// deterministic (the golden test pins it).
func encodePlugin(r *record.PluginRecord) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(&storev1.PluginRecord{
		Spec:          wire.SpecProto(r.Spec),
		Generation:    r.Generation,
		HeldUnhealthy: r.HeldUnhealthy,
		Reason:        r.Reason,
		PluginName:    r.PluginName,
	})
}

// decodePlugin reads a stored plugin record; an error says why it cannot
// be used.
func decodePlugin(name string, v []byte) (record.PluginRecord, error) {
	var p storev1.PluginRecord
	if err := proto.Unmarshal(v, &p); err != nil {
		return record.PluginRecord{}, fmt.Errorf("not a plugin record: %w", err)
	}
	spec, err := wire.Spec(p.GetSpec())
	if err != nil {
		return record.PluginRecord{}, err
	}
	if spec.Name != name {
		return record.PluginRecord{}, fmt.Errorf("the record is stored under %q but holds the spec of %q", name, spec.Name)
	}
	return record.PluginRecord{Name: name, Spec: spec, Generation: p.GetGeneration(), HeldUnhealthy: p.GetHeldUnhealthy(),
		Reason: p.GetReason(), PluginName: p.GetPluginName()}, nil
}

func auditProto(r *record.AuditRecord) *storev1.AuditRecord {
	return &storev1.AuditRecord{
		Sequence: r.Sequence, Time: timestamppb.New(r.Time), Caller: r.Caller, Action: r.Action, Plugin: r.Plugin,
		OldGeneration: r.OldGeneration, NewGeneration: r.NewGeneration, Binary: r.Binary, BinarySha256: r.BinarySHA256,
		Outcome: r.Outcome, Error: r.Error, PrevHash: r.PrevHash, Hash: r.Hash,
	}
}

func encodeAudit(r *record.AuditRecord) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(auditProto(r))
}

func decodeAudit(v []byte) (record.AuditRecord, error) {
	var a storev1.AuditRecord
	if err := proto.Unmarshal(v, &a); err != nil {
		return record.AuditRecord{}, err
	}
	return record.AuditRecord{
		Sequence: a.GetSequence(), Time: a.GetTime().AsTime(), Caller: a.GetCaller(), Action: a.GetAction(), Plugin: a.GetPlugin(),
		OldGeneration: a.GetOldGeneration(), NewGeneration: a.GetNewGeneration(), Binary: a.GetBinary(), BinarySHA256: a.GetBinarySha256(),
		Outcome: a.GetOutcome(), Error: a.GetError(), PrevHash: a.GetPrevHash(), Hash: a.GetHash(),
	}, nil
}
