package store_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/store"
)

func open(t *testing.T, dir string) *store.DB {
	t.Helper()
	db, err := store.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestPluginsSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	spec := manager.Spec{Name: "echo", Binary: "echo", Args: []string{"-v"}, Env: map[string]string{"A": "1"}, Config: []byte{0, 1, 2},
		StartTimeout: 3 * time.Second, Policy: manager.HealthPolicy{PanicThreshold: 5, OnUnhealthy: manager.ActionRestart}}
	if err := db.PutPlugin(manager.PluginRecord{Spec: spec, Generation: 7, PluginName: "echo"}); err != nil {
		t.Fatal(err)
	}
	if err := db.PutPlugin(manager.PluginRecord{Spec: manager.Spec{Name: "gone", Binary: "echo"}, Generation: 1}); err != nil {
		t.Fatal(err)
	}
	if err := db.DeletePlugin("gone"); err != nil {
		t.Fatal(err)
	}
	db.Close()

	db = open(t, dir)
	defer db.Close()
	recs, err := db.Plugins()
	if err != nil || len(recs) != 1 {
		t.Fatalf("Plugins: %v %+v", err, recs)
	}
	r := recs[0]
	if r.Generation != 7 || r.Spec.Name != "echo" || r.Spec.Args[0] != "-v" || r.Spec.Env["A"] != "1" || string(r.Spec.Config) != "\x00\x01\x02" ||
		r.Spec.StartTimeout != 3*time.Second || r.Spec.Policy.PanicThreshold != 5 || r.Spec.Policy.OnUnhealthy != manager.ActionRestart {
		t.Fatalf("record after reopen: %+v", r)
	}
}

func TestRevisionsNeverGoBackwards(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	if prev, err := db.ReserveRevisions(0); err != nil || prev != 0 {
		t.Fatalf("fresh mark: %d %v", prev, err)
	}
	if _, err := db.ReserveRevisions(100); err != nil {
		t.Fatal(err)
	}
	if prev, _ := db.ReserveRevisions(50); prev != 100 {
		t.Fatalf("mark went from 100 to %d", prev)
	}
	db.Close()
	db = open(t, dir)
	defer db.Close()
	if prev, _ := db.ReserveRevisions(0); prev != 100 {
		t.Fatalf("mark after reopen: %d", prev)
	}
}

func TestAuditPaging(t *testing.T) {
	db := open(t, t.TempDir())
	defer db.Close()
	for i := range 10 {
		name := "a"
		if i%2 == 1 {
			name = "b"
		}
		r := &manager.AuditRecord{Time: time.Now(), Caller: "uid:0", Action: "load", Plugin: name, NewGeneration: uint64(i + 1), Outcome: "ok"}
		if err := db.AppendAudit(r); err != nil {
			t.Fatal(err)
		}
		if r.Sequence != uint64(i+1) {
			t.Fatalf("sequence %d, want %d", r.Sequence, i+1)
		}
	}
	all, _ := db.Audit("", 0, 100)
	if len(all) != 10 || all[0].Sequence != 10 || all[9].Sequence != 1 {
		t.Fatalf("newest first: %v", seqs(all))
	}
	page, _ := db.Audit("", 6, 3)
	if got := seqs(page); got != "5,4,3" {
		t.Fatalf("page before 6: %s", got)
	}
	bs, _ := db.Audit("b", 0, 2)
	if got := seqs(bs); got != "10,8" {
		t.Fatalf("plugin b: %s", got)
	}
}

func TestSecondOpenFailsClearly(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	defer db.Close()
	_, err := store.Open(dir, 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open: %v", err)
	}
}

func seqs(rs []manager.AuditRecord) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = strconv.FormatUint(r.Sequence, 10)
	}
	return strings.Join(parts, ",")
}
