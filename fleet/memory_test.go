package fleet

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The memory file's encoding is pinned: it outlives the plugind that wrote
// it.
func TestMemoryFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet-etcd.json")
	m := memory{clusterID: 0xcdf818194e3a8c32, revision: 42, managed: map[string]bool{"greet": true, "auth": true}, detached: map[string]bool{"audit": true}}
	if err := m.save(path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if want := `{"schema":2,"cluster_id":"cdf818194e3a8c32","revision":42,"managed":["auth","greet"],"detached":["audit"]}` + "\n"; string(b) != want {
		t.Fatalf("file %q, want %q", b, want)
	}
	same := func(a, b memory) bool {
		return a.clusterID == b.clusterID && a.revision == b.revision && maps.Equal(a.managed, b.managed) && maps.Equal(a.detached, b.detached)
	}
	back, err := loadMemory(path)
	if err != nil || !same(back, m) {
		t.Fatalf("loaded %+v %v", back, err)
	}
	// Version 1, written before the plugin lists, still reads.
	if err := os.WriteFile(path, []byte(`{"schema":1,"cluster_id":"cdf818194e3a8c32","revision":42}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if back, err := loadMemory(path); err != nil || !same(back, memory{clusterID: 0xcdf818194e3a8c32, revision: 42}.clone()) {
		t.Fatalf("schema 1: %+v %v", back, err)
	}
	for body, want := range map[string]string{
		`{"schema":3,"cluster_id":"1","revision":1}`:   "schema 3",
		`{"schema":2,"cluster_id":"xyz","revision":1}`: "not an etcd cluster id",
		`not json`: "delete it",
	} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadMemory(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
	// Only the plugin lists: no etcd remembered (after an adopt).
	if err := (memory{managed: map[string]bool{"greet": true}}).save(path); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != `{"schema":2,"cluster_id":"0","revision":0,"managed":["greet"]}`+"\n" {
		t.Fatalf("file %q", b)
	}
	if err := (memory{}).save(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an empty memory leaves its file: %v", err)
	}
	if m, err := loadMemory(path); err != nil || !same(m, memory{}) || m.managed == nil || m.detached == nil {
		t.Fatalf("no file: %+v %v", m, err)
	}
}

// Another cluster, or a revision behind the remembered one, is foreign
// (and so fenced); the same cluster ahead is not; nothing remembered
// accepts anything.
func TestMemoryCheck(t *testing.T) {
	m := memory{clusterID: 7, revision: 100}
	if err := m.check(7, 100); err != nil {
		t.Fatal(err)
	}
	if err := m.check(7, 250); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		id  uint64
		rev int64
	}{{8, 500}, {7, 99}} {
		err := m.check(bad.id, bad.rev)
		if !errors.Is(err, errForeign) || !errors.Is(err, errFenced) {
			t.Errorf("cluster %x at %d: %v", bad.id, bad.rev, err)
		}
	}
	if err := (memory{}).check(9, 1); err != nil {
		t.Fatal(err)
	}
}
