package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/plugincontrol/plugincontrol/manager/record"
	bolt "go.etcd.io/bbolt"
)

// Schema 1 is what plugind wrote up to commit b97b77a: encoding/json of the
// manager's Go structs of that time. These types freeze their field names
// (the JSON keys of schema 1); they must never change.
type (
	v1PluginRecord struct {
		Spec          v1Spec
		Generation    uint64
		HeldUnhealthy bool
		Reason        string
		PluginName    string
	}
	v1Spec struct {
		Name         string
		Binary       string
		Args         []string
		Env          map[string]string
		SHA256       string
		Config       []byte
		StartTimeout time.Duration
		Policy       v1Policy
	}
	v1Policy struct {
		PanicThreshold int
		PanicWindow    time.Duration
		RestartLimit   int
		RestartPeriod  time.Duration
		BackoffInitial time.Duration
		BackoffMax     time.Duration
		OnUnhealthy    int
	}
	v1AuditRecord struct {
		Sequence      uint64
		Time          time.Time
		Caller        string
		Action        string
		Plugin        string
		OldGeneration uint64
		NewGeneration uint64
		Binary        string
		BinarySHA256  string
		Outcome       string
		Error         string
	}
)

// migrateV1 rewrites the records of schema 1 in schema 2, in the caller's
// transaction (all or nothing): plugin records as storev1.PluginRecord
// (one that cannot be decoded is kept as it is, and reported unreadable
// like any other), audit records as storev1.AuditRecord, chained and
// indexed by plugin.
func migrateV1(tx *bolt.Tx) error {
	plugins := tx.Bucket(bucketPlugins)
	type kv struct{ k, v []byte }
	var rewrites []kv
	err := plugins.ForEach(func(k, v []byte) error {
		var old v1PluginRecord
		if json.Unmarshal(v, &old) != nil || old.Spec.Name != string(k) {
			return nil // left as it is: Plugins reports it unreadable
		}
		p := old.Spec.Policy
		r := record.PluginRecord{
			Name: string(k),
			Spec: record.Spec{
				Name: old.Spec.Name, Binary: old.Spec.Binary, Args: old.Spec.Args, Env: old.Spec.Env, SHA256: old.Spec.SHA256,
				Config: old.Spec.Config, StartTimeout: old.Spec.StartTimeout,
				Policy: record.HealthPolicy{
					PanicThreshold: p.PanicThreshold, PanicWindow: p.PanicWindow, RestartLimit: p.RestartLimit,
					RestartPeriod: p.RestartPeriod, BackoffInitial: p.BackoffInitial, BackoffMax: p.BackoffMax,
					OnUnhealthy: record.Action(p.OnUnhealthy),
				},
			},
			Generation: old.Generation, HeldUnhealthy: old.HeldUnhealthy, Reason: old.Reason, PluginName: old.PluginName,
		}
		nv, err := encodePlugin(&r)
		if err != nil {
			return fmt.Errorf("plugin %q: %w", k, err)
		}
		rewrites = append(rewrites, kv{append([]byte(nil), k...), nv})
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range rewrites {
		if err := plugins.Put(r.k, r.v); err != nil {
			return err
		}
	}

	audit, index := tx.Bucket(bucketAudit), tx.Bucket(bucketAuditIndex)
	rewrites = rewrites[:0]
	prev := ""
	err = audit.ForEach(func(k, v []byte) error {
		var old v1AuditRecord
		if err := json.Unmarshal(v, &old); err != nil {
			return fmt.Errorf("audit record %d: %w", binary.BigEndian.Uint64(k), err)
		}
		r := record.AuditRecord{
			Sequence: old.Sequence, Time: old.Time, Caller: old.Caller, Action: old.Action, Plugin: old.Plugin,
			OldGeneration: old.OldGeneration, NewGeneration: old.NewGeneration, Binary: old.Binary,
			BinarySHA256: old.BinarySHA256, Outcome: old.Outcome, Error: old.Error, PrevHash: prev,
		}
		r.Hash = r.ChainHash()
		prev = r.Hash
		nv, err := encodeAudit(&r)
		if err != nil {
			return err
		}
		rewrites = append(rewrites, kv{append([]byte(nil), k...), nv})
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range rewrites {
		if err := audit.Put(r.k, r.v); err != nil {
			return err
		}
		a, _ := decodeAudit(r.v)
		if err := index.Put(indexKey(a.Plugin, a.Sequence), nil); err != nil {
			return err
		}
	}
	return nil
}
