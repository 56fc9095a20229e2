package store_test

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/client"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/store"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/v2")

func open(t testing.TB, dir string, opts ...store.Options) *store.DB {
	t.Helper()
	var o store.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	db, err := store.Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func auditOf(action, plugin string, gen uint64) *manager.AuditRecord {
	return &manager.AuditRecord{Time: time.Unix(1700000000, int64(gen)), Caller: "uid:0", Action: action, Plugin: plugin, NewGeneration: gen, Outcome: "ok"}
}

func put(t *testing.T, db *store.DB, r manager.PluginRecord) {
	t.Helper()
	if err := db.Commit(manager.Change{Put: &r, Audit: auditOf("load", r.Spec.Name, r.Generation)}); err != nil {
		t.Fatal(err)
	}
}

func TestPluginsSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	spec := manager.Spec{Name: "echo", Binary: "echo", Args: []string{"-v"}, Env: map[string]string{"A": "1"}, Config: []byte{0, 1, 2},
		StartTimeout: 3 * time.Second, Policy: manager.HealthPolicy{PanicThreshold: 5, OnUnhealthy: manager.ActionRestart,
			LivenessInterval: time.Second, Timeouts: manager.FailureLimit{Threshold: 4, Window: time.Minute}},
		Handshake: &manager.Handshake{ProtocolVersion: 2, MagicCookieKey: "K", MagicCookieValue: "v"}, ReadyService: "svc",
		ReadyTimeout: time.Second, Resources: manager.Resources{MemoryMax: 1 << 30, PidsMax: 100, CPUMax: "100000 100000"}}
	put(t, db, manager.PluginRecord{Spec: spec, Generation: 7, PluginName: "echo"})
	put(t, db, manager.PluginRecord{Spec: manager.Spec{Name: "gone", Binary: "echo"}, Generation: 1})
	if err := db.Commit(manager.Change{Delete: "gone", Audit: auditOf("unload", "gone", 1)}); err != nil {
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
	if r.Name != "echo" || r.Generation != 7 || r.Unreadable != "" || !reflect.DeepEqual(r.Spec, spec) {
		t.Fatalf("record after reopen:\n%+v\nwant the spec\n%+v", r, spec)
	}
}

// A change and its audit record are one transaction: a change without an
// audit record is refused and changes nothing.
func TestCommitNeedsItsAuditRecord(t *testing.T) {
	db := open(t, t.TempDir())
	defer db.Close()
	r := manager.PluginRecord{Spec: manager.Spec{Name: "echo", Binary: "echo"}, Generation: 1}
	if err := db.Commit(manager.Change{Put: &r}); err == nil {
		t.Fatal("a change without an audit record was committed")
	}
	if recs, _ := db.Plugins(); len(recs) != 0 {
		t.Fatalf("recorded anyway: %+v", recs)
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

func seqs(rs []manager.AuditRecord) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = strconv.FormatUint(r.Sequence, 10)
	}
	return strings.Join(parts, ",")
}

func TestAuditPaging(t *testing.T) {
	db := open(t, t.TempDir())
	defer db.Close()
	for i := range 10 {
		name := "a"
		if i%2 == 1 {
			name = "b"
		}
		r := auditOf("load", name, uint64(i+1))
		if err := db.Commit(manager.Change{Audit: r}); err != nil {
			t.Fatal(err)
		}
		if r.Sequence != uint64(i+1) || r.Hash == "" {
			t.Fatalf("sequence %d hash %q, want %d", r.Sequence, r.Hash, i+1)
		}
	}
	all, _ := db.Audit(manager.AuditQuery{Limit: 100})
	if len(all.Records) != 10 || all.Records[0].Sequence != 10 || all.More {
		t.Fatalf("newest first: %v more %v", seqs(all.Records), all.More)
	}
	page, _ := db.Audit(manager.AuditQuery{Before: 6, Limit: 3})
	if got := seqs(page.Records); got != "5,4,3" || !page.More {
		t.Fatalf("page before 6: %s more %v", got, page.More)
	}
	for _, c := range []struct {
		q    manager.AuditQuery
		want string
		more bool
	}{
		{manager.AuditQuery{Plugin: "b", Limit: 2}, "10,8", true},
		{manager.AuditQuery{Plugin: "b", Before: 8, Limit: 10}, "6,4,2", false},
		{manager.AuditQuery{Plugin: "a", Before: 4, Limit: 10}, "3,1", false},
		{manager.AuditQuery{Plugin: "c", Limit: 10}, "", false},
	} {
		p, err := db.Audit(c.q)
		if err != nil || seqs(p.Records) != c.want || p.More != c.more {
			t.Errorf("%+v: %s more %v (%v), want %s more %v", c.q, seqs(p.Records), p.More, err, c.want, c.more)
		}
	}
}

// toProto is an audit record as the API sends it.
func toProto(r manager.AuditRecord) *pb.AuditRecord {
	return &pb.AuditRecord{Sequence: r.Sequence, Time: timestamppb.New(r.Time), Caller: r.Caller, Action: r.Action, Plugin: r.Plugin,
		OldGeneration: r.OldGeneration, NewGeneration: r.NewGeneration, Binary: r.Binary, BinarySha256: r.BinarySHA256,
		Outcome: r.Outcome, Error: r.Error, PrevHash: r.PrevHash, Hash: r.Hash}
}

// verify checks the store's whole log with the client's own
// implementation of the chain.
func verify(t *testing.T, db *store.DB) (int, error) {
	t.Helper()
	page, err := db.Audit(manager.AuditQuery{Limit: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	var recs []*pb.AuditRecord
	for _, r := range page.Records {
		recs = append(recs, toProto(r))
	}
	var cp *pb.AuditCheckpoint
	if page.Checkpoint != nil {
		cp = &pb.AuditCheckpoint{Sequence: page.Checkpoint.Sequence, Hash: page.Checkpoint.Hash}
	}
	_, err = client.VerifyAudit(recs, cp)
	return len(recs), err
}

// Retention keeps the newest records and a checkpoint: the chain of what
// is kept still verifies, by the store's check and by the client.
func TestAuditRetentionKeepsTheChainVerifiable(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir, store.Options{AuditRetention: 5})
	for i := range 12 {
		if err := db.Commit(manager.Change{Audit: auditOf("reload", "echo", uint64(i+1))}); err != nil {
			t.Fatal(err)
		}
	}
	page, _ := db.Audit(manager.AuditQuery{Limit: 100})
	if got := seqs(page.Records); got != "12,11,10,9,8" || page.Checkpoint == nil || page.Checkpoint.Sequence != 7 {
		t.Fatalf("kept %s, checkpoint %+v", got, page.Checkpoint)
	}
	if n, err := verify(t, db); err != nil || n != 5 {
		t.Fatalf("client verify: %d records, %v", n, err)
	}
	db.Close()
	if rep := store.Check(filepath.Join(dir, store.FileName)); rep.Problem != "" || rep.ChainBroken != "" || rep.AuditRecords != 5 {
		t.Fatalf("check: %+v", rep)
	}
}

func TestSecondOpenFailsClearly(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	defer db.Close()
	_, err := store.Open(dir, store.Options{Timeout: 100 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open: %v", err)
	}
}

// Concurrent commits share transactions and each gets its own sequence; a
// function that fails or panics fails alone.
func TestConcurrentCommits(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	var wg sync.WaitGroup
	errs := make([]error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := manager.PluginRecord{Spec: manager.Spec{Name: fmt.Sprintf("p%d", i), Binary: "echo"}, Generation: 1}
			errs[i] = db.Commit(manager.Change{Put: &r, Audit: auditOf("load", r.Spec.Name, 1)})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
	}
	recs, _ := db.Plugins()
	if n, err := verify(t, db); len(recs) != 100 || n != 100 || err != nil {
		t.Fatalf("%d plugins, %d audit records, chain %v", len(recs), n, err)
	}
	db.Close()
}

// The encoding of records is pinned: a change of a field number, a type or
// the encoding fails here before it loses anyone's state.
func TestRecordEncodingIsPinned(t *testing.T) {
	golden := filepath.Join("testdata", "v2", "records.golden")
	got := store.GoldenRecords()
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("record encoding changed (schema %d): if on purpose, bump SchemaVersion, add a migration, and run go test ./store -update\ngot:\n%s\nwant:\n%s",
			store.SchemaVersion, got, want)
	}
}

// A store written by plugind b97b77a (schema 1, JSON; see
// testdata/v1/make-fixture.sh) is migrated when opened: every plugin with
// its whole spec, every audit record, the revision mark.
func TestMigratesSchema1(t *testing.T) {
	dir := t.TempDir()
	b, err := os.ReadFile(filepath.Join("testdata", "v1", store.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, store.FileName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	db := open(t, dir)
	recs, err := db.Plugins()
	if err != nil || len(recs) != 3 {
		t.Fatalf("plugins: %v %+v", err, recs)
	}
	pin, _ := hex.DecodeString("5b2485ceed35ab06118397f51b2ba5f7784549a67325a6df86d3dff45b73532f")
	alpha := manager.PluginRecord{Name: "alpha", Generation: 3, PluginName: "echo", Spec: manager.Spec{
		Name: "alpha", Binary: "echo", Args: []string{"--one", "two words"}, Env: map[string]string{"GREETING": "hello", "LEVEL": "3"},
		SHA256: hex.EncodeToString(pin), Config: []byte("config-alpha"), StartTimeout: 7 * time.Second,
		Policy: manager.HealthPolicy{PanicThreshold: 5, PanicWindow: 90 * time.Second, RestartLimit: 4, RestartPeriod: 2 * time.Minute,
			BackoffInitial: 200 * time.Millisecond, BackoffMax: 5 * time.Second, OnUnhealthy: manager.ActionRestart}}}
	if fmt.Sprintf("%+v", recs[0]) != fmt.Sprintf("%+v", alpha) {
		t.Errorf("alpha:\n%+v\nwant\n%+v", recs[0], alpha)
	}
	if r := recs[1]; r.Name != "beta" || r.Generation != 2 || fmt.Sprint(r.Spec.Args) != "[v2]" || string(r.Spec.Config) != "v2" {
		t.Errorf("beta: %+v", r)
	}
	if r := recs[2]; r.Name != "delta" || !r.HeldUnhealthy || !strings.Contains(r.Reason, "restart limit reached") ||
		r.Spec.Policy.RestartLimit != 1 || r.Spec.Policy.BackoffInitial != 10*time.Millisecond || r.PluginName != "crasher" {
		t.Errorf("delta: %+v", r)
	}
	page, _ := db.Audit(manager.AuditQuery{Limit: 100})
	if got := seqs(page.Records); got != "11,10,9,8,7,6,5,4,3,2,1" {
		t.Fatalf("audit after migration: %s", got)
	}
	if r := page.Records[4]; r.Action != "reload" || r.Plugin != "beta" || r.Outcome != "failed" || !strings.Contains(r.Error, "backend database unreachable") {
		t.Errorf("audit record 7: %+v", r)
	}
	if _, err := verify(t, db); err != nil {
		t.Fatalf("the migrated audit log does not verify: %v", err)
	}
	if prev, _ := db.ReserveRevisions(0); prev < 1<<20 {
		t.Fatalf("revision mark after migration: %d", prev)
	}
	r := auditOf("load", "epsilon", 1)
	if err := db.Commit(manager.Change{Audit: r}); err != nil || r.Sequence != 12 || r.PrevHash != page.Records[0].Hash {
		t.Fatalf("the log goes on after the migration: %+v %v", r, err)
	}
	db.Close()
	if rep := store.Check(filepath.Join(dir, store.FileName)); rep.Problem != "" || rep.SchemaVersion != store.SchemaVersion || rep.AuditRecords != 12 {
		t.Fatalf("check after migration: %+v", rep)
	}
}

// A damaged file is refused with the file and the problem named, never a
// panic: truncated at several offsets, or random bytes. Recover puts the
// newest good snapshot in its place.
func TestDamagedFileAndRecover(t *testing.T) {
	src := t.TempDir()
	db := open(t, src)
	for i := range 20 {
		put(t, db, manager.PluginRecord{Spec: manager.Spec{Name: fmt.Sprintf("p%d", i), Binary: "echo"}, Generation: 1})
	}
	db.Close()
	// Reopening took a snapshot of the 20 plugins.
	db = open(t, src)
	db.Close()
	good, err := os.ReadFile(filepath.Join(src, store.FileName))
	if err != nil {
		t.Fatal(err)
	}
	snaps, _ := store.ListSnapshots(src)
	if len(snaps) == 0 || snaps[len(snaps)-1].Commits != 20 {
		t.Fatalf("snapshots: %+v", snaps)
	}
	page := os.Getpagesize()
	used := int(store.UsedBytesForTest(filepath.Join(src, store.FileName)))
	if used <= 4*page || used > len(good) {
		t.Fatalf("the store uses %d of its %d bytes", used, len(good))
	}
	// Truncations inside the pages in use, at several offsets; past them
	// the file is whole (bbolt grows it ahead of use).
	cases := map[string][]byte{
		"one-page":             good[:page],
		"truncated-at-3-pages": good[:3*page],
		"truncated-mid-page":   good[:used/2+123],
		"truncated-last-page":  good[:used-page],
		"truncated-last-byte":  good[:used-1],
		"random-bytes":         randomBytes(len(good)),
		"zeroed-meta":          append(make([]byte, 2*page), good[2*page:]...),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, store.FileName), data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.CopyFS(filepath.Join(dir, store.SnapshotDir), os.DirFS(filepath.Join(src, store.SnapshotDir))); err != nil {
				t.Fatal(err)
			}
			_, err := store.Open(dir, store.Options{})
			var de *store.DamagedError
			if !errors.As(err, &de) || de.Path != filepath.Join(dir, store.FileName) || de.Problem == "" {
				t.Fatalf("open of a %s file: %v", name, err)
			}
			if rep := store.Check(filepath.Join(dir, store.FileName)); rep.Problem == "" {
				t.Fatalf("check of a %s file: %+v", name, rep)
			}
			sn, err := store.Recover(dir, false)
			if err != nil || sn.Commits != 20 {
				t.Fatalf("recover: %+v %v", sn, err)
			}
			if aside, _ := filepath.Glob(filepath.Join(dir, store.FileName+".damaged-*")); len(aside) != 1 {
				t.Fatalf("the damaged file was not kept aside: %v", aside)
			}
			db := open(t, dir)
			defer db.Close()
			if recs, _ := db.Plugins(); len(recs) != 20 {
				t.Fatalf("after recover: %d plugins", len(recs))
			}
		})
	}
	// Cut past the pages in use: nothing is lost.
	whole := t.TempDir()
	if err := os.WriteFile(filepath.Join(whole, store.FileName), good[:used], 0o600); err != nil {
		t.Fatal(err)
	}
	if db, err := store.Open(whole, store.Options{}); err != nil {
		t.Fatalf("a file cut after its last page in use: %v", err)
	} else {
		db.Close()
	}
	if _, err := store.Recover(src, false); err == nil || !strings.Contains(err.Error(), "not damaged") {
		t.Fatalf("recover of a good store: %v", err)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

// One record that cannot be read does not hide the others: it is returned
// Unreadable, and stays on disk.
func TestUnreadableRecordIsReported(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	for _, n := range []string{"a", "b", "c"} {
		put(t, db, manager.PluginRecord{Spec: manager.Spec{Name: n, Binary: "echo"}, Generation: 1})
	}
	db.Close()
	if err := store.DamageRecordForTest(filepath.Join(dir, store.FileName), "b"); err != nil {
		t.Fatal(err)
	}
	db = open(t, dir)
	defer db.Close()
	recs, err := db.Plugins()
	if err != nil || len(recs) != 3 || recs[0].Unreadable != "" || recs[2].Unreadable != "" || recs[1].Name != "b" || recs[1].Unreadable == "" {
		t.Fatalf("plugins: %v %+v", err, recs)
	}
	t.Logf("unreadable: %s", recs[1].Unreadable)
}
