package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// memorySchema is the version of the memory file's layout; a file of
// another version is refused, not guessed at (version 1, without the
// plugin lists, is read as well).
const memorySchema = 2

// memory is what a node remembers of its fleet, on disk
// (AgentConfig.Memory):
//   - the etcd cluster's id and the highest revision it saw. An etcd whose
//     cluster id differs (rebuilt, another cluster) or whose revision is
//     behind (restored from an older snapshot) is not the one the node's
//     plugins came from: the node fences itself until an operator adopts
//     it (AdoptFleetEtcd);
//   - the plugins it runs for the fleet (managed) and those it was told to
//     keep as its own (detached): the same as its P/managed/NODE/ and
//     P/detached/NODE/ keys, which the controller collects once the node
//     has been gone for the node retention. Back after that, the node
//     knows its fleet plugins from its local namesakes and writes those
//     keys again.
//
// The file is JSON, {"schema":2,"cluster_id":"<hex>","revision":N,
// "managed":[names],"detached":[names]} (the lists sorted, left out when
// empty): its fields are written by name, never from a Go struct's
// layout, and a test pins the encoding.
type memory struct {
	clusterID uint64 // 0: no etcd remembered
	revision  int64
	managed   map[string]bool // never nil after loadMemory
	detached  map[string]bool // never nil after loadMemory
}

type memoryFile struct {
	Schema    int      `json:"schema"`
	ClusterID string   `json:"cluster_id"`
	Revision  int64    `json:"revision"`
	Managed   []string `json:"managed,omitempty"`
	Detached  []string `json:"detached,omitempty"`
}

// clone is a copy of m that shares nothing with it.
func (m memory) clone() memory {
	m.managed, m.detached = maps.Clone(m.managed), maps.Clone(m.detached)
	if m.managed == nil {
		m.managed = map[string]bool{}
	}
	if m.detached == nil {
		m.detached = map[string]bool{}
	}
	return m
}

// empty reports whether m remembers nothing.
func (m memory) empty() bool {
	return m.clusterID == 0 && len(m.managed) == 0 && len(m.detached) == 0
}

// loadMemory reads path; a missing file is an empty memory.
func loadMemory(path string) (memory, error) {
	if path == "" {
		return memory{}.clone(), nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return memory{}.clone(), nil
	}
	if err != nil {
		return memory{}, fmt.Errorf("fleet memory %s: %w", path, err)
	}
	var f memoryFile
	if err := json.Unmarshal(b, &f); err != nil {
		return memory{}, fmt.Errorf("fleet memory %s: %w (delete it to make the node adopt the etcd it reaches)", path, err)
	}
	if f.Schema != memorySchema && f.Schema != 1 {
		return memory{}, fmt.Errorf("fleet memory %s: schema %d, this plugind reads 1 and %d", path, f.Schema, memorySchema)
	}
	id, err := strconv.ParseUint(f.ClusterID, 16, 64)
	if err != nil || f.Revision < 0 {
		return memory{}, fmt.Errorf("fleet memory %s: cluster_id %q, revision %d: not an etcd cluster id and revision", path, f.ClusterID, f.Revision)
	}
	m := memory{clusterID: id, revision: f.Revision}.clone()
	for _, n := range f.Managed {
		m.managed[n] = true
	}
	for _, n := range f.Detached {
		m.detached[n] = true
	}
	return m, nil
}

// encode is the file's bytes.
func (m memory) encode() []byte {
	b, _ := json.Marshal(memoryFile{Schema: memorySchema, ClusterID: strconv.FormatUint(m.clusterID, 16), Revision: m.revision,
		Managed: slices.Sorted(maps.Keys(m.managed)), Detached: slices.Sorted(maps.Keys(m.detached))})
	return append(b, '\n')
}

// save writes m to path atomically (a temporary file renamed over it); an
// empty memory removes the file.
func (m memory) save(path string) error {
	if path == "" {
		return nil
	}
	if m.empty() {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".fleet-memory-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(m.encode()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// errForeign: the etcd is not the one the node's plugins came from (see
// memory). It is an errFenced: the node keeps what it runs and waits, but
// for an operator's adopt rather than for the schema key.
var errForeign = fmt.Errorf("%w (another etcd)", errFenced)

// check says whether an etcd of cluster id at revision rev is the one m
// remembers.
func (m memory) check(id uint64, rev int64) error {
	switch {
	case m.clusterID == 0:
		return nil
	case id != m.clusterID:
		return fmt.Errorf("%w: etcd cluster %x is not %x, the one this node followed (an etcd rebuilt, or another cluster): pluginctl fleet adopt on this node makes it follow this one", errForeign, id, m.clusterID)
	case rev < m.revision:
		return fmt.Errorf("%w: etcd is at revision %d, behind the %d this node saw (restored from an older snapshot?): pluginctl fleet adopt on this node makes it follow this one", errForeign, rev, m.revision)
	}
	return nil
}
