package store_test

// The store's figures (issue 13), with the bbolt file in a temporary
// directory of the machine's disk:
//
//	go test -run '^$' -bench . -benchtime 200x ./store

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/store"
)

// BenchmarkAuditPage is one ListAudit page of 100 records with 100,000 in
// the log: the newest, a plugin's newest (through the index), and the
// oldest page.
func BenchmarkAuditPage(b *testing.B) {
	db := open(b, b.TempDir())
	defer db.Close()
	if err := store.FillAuditForTest(db, 100000); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		q    manager.AuditQuery
	}{
		{"newest", manager.AuditQuery{Limit: 100}},
		{"one-plugin", manager.AuditQuery{Plugin: "p7", Limit: 100}},
		{"oldest", manager.AuditQuery{Before: 101, Limit: 100}},
		{"one-plugin-oldest", manager.AuditQuery{Plugin: "p7", Before: 1000, Limit: 100}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				p, err := db.Audit(c.q)
				if err != nil || len(p.Records) == 0 {
					b.Fatalf("%v %d", err, len(p.Records))
				}
			}
		})
	}
}

// BenchmarkStoreSize reports the file's size with 10,000 audit records
// (and 100 plugins).
func BenchmarkStoreSize(b *testing.B) {
	for b.Loop() {
		dir := b.TempDir()
		db := open(b, dir)
		for i := range 100 {
			r := manager.PluginRecord{Spec: manager.Spec{Name: "p" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Binary: "echo", Args: []string{"-v"}}, Generation: 1}
			if err := db.Commit(manager.Change{Put: &r, Audit: auditOf("load", r.Spec.Name, 1)}); err != nil {
				b.Fatal(err)
			}
		}
		if err := store.FillAuditForTest(db, 9900); err != nil {
			b.Fatal(err)
		}
		db.Close()
		fi, err := os.Stat(filepath.Join(dir, store.FileName))
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(fi.Size())/(1<<20), "MiB")
	}
}

// BenchmarkOpen is opening (and checking) a store of 100,000 audit records.
func BenchmarkOpen(b *testing.B) {
	dir := b.TempDir()
	db := open(b, dir)
	if err := store.FillAuditForTest(db, 100000); err != nil {
		b.Fatal(err)
	}
	db.Close()
	for b.Loop() {
		db, err := store.Open(dir, store.Options{})
		if err != nil {
			b.Fatal(err)
		}
		db.Close()
	}
}
