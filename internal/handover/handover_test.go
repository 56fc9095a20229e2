package handover

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/manager"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// sample is a handover with every field set.
func sample() (*manager.Handover, Daemon) {
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	spec := manager.Spec{Name: "kv", Binary: "kv", Args: []string{"-v"}, Env: map[string]string{"A": "1"},
		Handshake: &manager.Handshake{ProtocolVersion: 1, MagicCookieKey: "BASIC_PLUGIN", MagicCookieValue: "hello"},
		Policy:    manager.HealthPolicy{PanicThreshold: 3, PanicWindow: time.Minute}}
	prev := spec
	prev.Env = map[string]string{"A": "0"}
	proc := func(gen uint64, pid int) *manager.ProcessHandover {
		return &manager.ProcessHandover{
			Generation: gen, PID: pid, StartTicks: 123456, Network: "unix", Address: "/s/1/plugin1", ProtocolVersion: 1,
			SocketDir: "/s/1", Cgroup: "/sys/fs/cgroup/plugind-x/kv.g3.1", Mark: "abc/kv.g3.1", StdoutFD: 7, StderrFD: 8,
			SHA256: "00ff", Version: "1.0.0", PluginName: "kv", Services: []string{"proto.KV"}, UnaryMethods: []string{"/proto.KV/Get"},
			StartedAt: t0, TLS: &manager.TLSHandover{ClientCert: []byte{1}, ClientKey: []byte{2}, ServerCert: []byte{3}}, Spec: spec,
		}
	}
	held := proc(2, 41)
	held.Spec = prev
	h := &manager.Handover{
		Hub: &manager.HubHandover{Revision: 42,
			History: []manager.Event{{Type: manager.EventChanged, Revision: 41, Health: manager.Health{Name: "kv", State: manager.StateServing, Generation: 3, Revision: 41, Since: t0}}},
			Latest:  []manager.Health{{Name: "kv", State: manager.StateDegraded, Generation: 3, Revision: 42, Reason: "panic", Since: t0}},
		},
		Plugins: map[string]*manager.PluginHandover{"kv": {
			Name: "kv", Spec: spec, Generation: 3, PluginName: "kv", Full: true, State: manager.StateDegraded, Since: t0,
			Reason: "panic", LastError: "boom", Restarts: 2, Revision: 42, Endpoint: "unix:///e/kv.sock",
			RestartLog: []time.Time{t0}, Consecutive: 1,
			Faults: &manager.FaultsHandover{Generation: 3, Windows: map[manager.FailureClass][]time.Time{manager.FailurePanic: {t0}},
				Lifetime: map[manager.FailureClass]uint64{manager.FailurePanic: 4, manager.FailureCrash: 1}, Combined: []time.Time{t0},
				LastPanic: &manager.PanicRecord{Message: "boom", Fingerprint: "f", Time: t0, Generation: 3}},
			Bake:   &manager.BakeHandover{Status: manager.BakeStatus{Generation: 3, PreviousGeneration: 2, Until: t0, Result: manager.BakeBaking}, PreviousSpec: prev, PreviousPluginName: "kv"},
			Active: proc(3, 40), Held: held,
		}},
		ReaperPID: 39, ReaperFD: 9,
	}
	d := Daemon{Version: "v1.2.3", BootID: "boot", Listeners: map[string]int{"listen:unix:///x.sock": 10}, FleetLease: 77, FleetNode: "n1", ReloadStarted: t0, CloseFDs: []int{11, 12}}
	return h, d
}

// TestGolden pins the encoding of schema 1: a change here is a change of
// the handover's wire format, which an older or newer image must still
// read (add fields, never renumber).
func TestGolden(t *testing.T) {
	h, d := sample()
	b, err := Encode(h, d)
	if err != nil {
		t.Fatal(err)
	}
	// written_at is the time of encoding: fix it.
	b = fixWrittenAt(t, b)
	path := filepath.Join("testdata", "handover-v1.binpb")
	if *update {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("the encoding of schema 1 changed (%d bytes, golden %d): run go test -update only for a change that keeps old readers working", len(b), len(want))
	}
}

// TestRoundTrip decodes what Encode wrote into the same handover (the
// stdio descriptors become files the decoder owns).
func TestRoundTrip(t *testing.T) {
	h, d := sample()
	// Real descriptors: Decode takes them.
	r1, w1, _ := os.Pipe()
	r2, w2, _ := os.Pipe()
	defer w1.Close()
	defer w2.Close()
	h.Plugins["kv"].Active.StdoutFD, h.Plugins["kv"].Active.StderrFD = int(r1.Fd()), int(r2.Fd())
	h.Plugins["kv"].Held.StdoutFD, h.Plugins["kv"].Held.StderrFD = 0, 0
	b, err := Encode(h, d)
	if err != nil {
		t.Fatal(err)
	}
	got, gd, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	a := got.Plugins["kv"].Active
	if a.Stdout == nil || a.Stderr == nil || a.Stdout.Fd() != r1.Fd() {
		t.Fatalf("stdio not taken: %v %v", a.Stdout, a.Stderr)
	}
	a.Stdout, a.Stderr = nil, nil
	h.Plugins["kv"].Active.StdoutFD, h.Plugins["kv"].Active.StderrFD = 0, 0
	gd.Written = time.Time{}
	if !reflect.DeepEqual(gd, d) {
		t.Errorf("daemon part: %+v, want %+v", gd, d)
	}
	if !reflect.DeepEqual(got, h) {
		t.Errorf("decoded %+v\nwant %+v", got.Plugins["kv"], h.Plugins["kv"])
	}
}

// TestDecodeRefusesUnknownSchema: a newer image's schema is not guessed at.
func TestDecodeRefusesUnknownSchema(t *testing.T) {
	if _, _, err := Decode([]byte{0x08, 0x02}); err == nil {
		t.Fatal("schema 2 decoded")
	}
	if _, _, err := Decode([]byte("garbage")); err == nil {
		t.Fatal("garbage decoded")
	}
}

// TestRecords keeps, loads and clears live-restore records; a record of
// another boot is dropped, not trusted.
func TestRecords(t *testing.T) {
	state := t.TempDir()
	r, err := NewRecords(state, "boot-a")
	if err != nil {
		t.Fatal(err)
	}
	h, _ := sample()
	p := h.Plugins["kv"]
	if err := r.Save(p); err != nil {
		t.Fatal(err)
	}
	got, skipped := r.Load()
	if len(skipped) != 0 || got["kv"] == nil || got["kv"].Active.PID != 40 || got["kv"].Full || got["kv"].Restarts != 2 {
		t.Fatalf("loaded %+v, skipped %v", got["kv"], skipped)
	}
	other, _ := NewRecords(state, "boot-b")
	if got, skipped := other.Load(); len(got) != 0 || len(skipped) != 1 {
		t.Fatalf("a record of another boot: loaded %v, skipped %v", got, skipped)
	}
	if _, err := os.Stat(filepath.Join(RunDir(state), "kv.pb")); !os.IsNotExist(err) {
		t.Fatalf("the record of another boot was kept: %v", err)
	}
	_ = r.Save(p)
	if err := r.Remove("kv"); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.Load(); len(got) != 0 {
		t.Fatalf("removed record loaded: %v", got)
	}
}
