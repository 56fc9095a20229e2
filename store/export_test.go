package store

import (
	"encoding/hex"
	"strings"
	"time"

	"github.com/plugincontrol/plugincontrol/manager/record"
	bolt "go.etcd.io/bbolt"
)

// GoldenRecords is the stored encoding of a plugin record with every field
// set and of an audit record, as hex lines: the schema's golden file.
func GoldenRecords() string {
	rec := record.PluginRecord{Name: "golden", Generation: 42, HeldUnhealthy: true, Reason: "held", PluginName: "echo", Spec: record.Spec{
		Name: "golden", Binary: "sub/echo", Args: []string{"-a", "b c"}, Env: map[string]string{"A": "1", "B": "2"},
		SHA256: strings.Repeat("ab", 32), Config: []byte{0, 1, 2}, StartTimeout: 3 * time.Second, ReadyService: "svc", ReadyTimeout: 4 * time.Second,
		Resources: record.Resources{MemoryMax: 64 << 20, PidsMax: 32, CPUMax: "50000 100000"},
		Handshake: &record.Handshake{ProtocolVersion: 2, MagicCookieKey: "COOKIE", MagicCookieValue: "v"},
		Policy: record.HealthPolicy{PanicThreshold: 4, PanicWindow: 2 * time.Minute, RestartLimit: 6, RestartPeriod: 3 * time.Minute,
			BackoffInitial: 50 * time.Millisecond, BackoffMax: 7 * time.Second, OnUnhealthy: record.ActionStop,
			LivenessInterval: time.Second, LivenessFailures: 2,
			Panics: record.FailureLimit{Threshold: 1, Window: time.Minute}, Crashes: record.FailureLimit{Threshold: 2},
			Hangs: record.FailureLimit{Threshold: 3}, Timeouts: record.FailureLimit{Threshold: 4, Window: time.Hour},
			StartFailures: record.FailureLimit{Threshold: 5}},
	}}
	p, err := encodePlugin(&rec)
	if err != nil {
		panic(err)
	}
	a := record.AuditRecord{Sequence: 7, Time: time.Unix(1700000000, 123456789).UTC(), Caller: "token:ci", Action: "reload", Plugin: "golden",
		OldGeneration: 41, NewGeneration: 42, Binary: "sub/echo", BinarySHA256: strings.Repeat("cd", 32), Outcome: "ok", PrevHash: "00"}
	a.Hash = a.ChainHash()
	av, err := encodeAudit(&a)
	if err != nil {
		panic(err)
	}
	return "plugin " + hex.EncodeToString(p) + "\naudit " + hex.EncodeToString(av) + "\naudit-hash " + a.Hash + "\n"
}

// DamageRecordForTest overwrites the stored record of plugin name with
// bytes that are not a record.
func DamageRecordForTest(path, name string) error {
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPlugins).Put([]byte(name), []byte("\xff\xff not a record"))
	})
}

// UsedBytesForTest is the size of the pages the store at path uses (its
// meta page's high-water mark).
func UsedBytesForTest(path string) int64 {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		return -1
	}
	defer db.Close()
	var n int64
	_ = db.View(func(tx *bolt.Tx) error {
		n = tx.Size()
		return nil
	})
	return n
}

// FillAuditForTest appends n audit records (of plugins p0..p9, in turn)
// in transactions of 10,000, with retention as configured.
func FillAuditForTest(s *DB, n int) error {
	for done := 0; done < n; {
		batch := min(10000, n-done)
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i := range batch {
				r := record.AuditRecord{Time: time.Now(), Caller: "uid:0", Action: "reload", Plugin: "p" + string(rune('0'+(done+i)%10)),
					OldGeneration: uint64(done + i), NewGeneration: uint64(done + i + 1), Binary: "echo", BinarySHA256: strings.Repeat("ab", 32), Outcome: "ok"}
				if err := s.appendAudit(tx, &r); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		done += batch
	}
	return nil
}
