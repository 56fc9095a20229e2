package fleet

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The memory file's encoding is pinned: it outlives the plugind that wrote
// it.
func TestMemoryFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleet-etcd.json")
	m := memory{clusterID: 0xcdf818194e3a8c32, revision: 42}
	if err := m.save(path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if want := `{"schema":1,"cluster_id":"cdf818194e3a8c32","revision":42}` + "\n"; string(b) != want {
		t.Fatalf("file %q, want %q", b, want)
	}
	back, err := loadMemory(path)
	if err != nil || back != m {
		t.Fatalf("loaded %+v %v", back, err)
	}
	for body, want := range map[string]string{
		`{"schema":2,"cluster_id":"1","revision":1}`:   "schema 2",
		`{"schema":1,"cluster_id":"xyz","revision":1}`: "not an etcd cluster id",
		`not json`: "delete it",
	} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadMemory(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
	if err := (memory{}).save(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an empty memory leaves its file: %v", err)
	}
	if m, err := loadMemory(path); err != nil || m != (memory{}) {
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
