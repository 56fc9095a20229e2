package manager_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/examples/grpc/proto"
	"github.com/hashicorp/go-plugin/examples/grpc/shared"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc"
)

// kvSpec is go-plugin's examples/grpc KV plugin as a foreign plugin.
func kvSpec(name string) manager.Spec {
	return manager.Spec{Name: name, Binary: "kv", Handshake: &manager.Handshake{
		ProtocolVersion: testbin.KVHandshake.ProtocolVersion, MagicCookieKey: testbin.KVHandshake.MagicCookieKey, MagicCookieValue: testbin.KVHandshake.MagicCookieValue,
	}}
}

// kvGet gets key through a lease on the active generation of name.
func kvGet(ctx context.Context, m *manager.Manager, name, key string) (string, uint64, error) {
	l, err := m.Acquire(ctx, name)
	if err != nil {
		return "", 0, err
	}
	defer l.Release()
	resp, err := proto.NewKVClient(l.Value.(*grpc.ClientConn)).Get(ctx, &proto.GetRequest{Key: key})
	if err != nil {
		return "", l.Generation, err
	}
	return string(resp.GetValue()), l.Generation, nil
}

// A foreign go-plugin plugin we did not write (go-plugin's own KV
// example) is loaded with its handshake, described through reflection,
// probed through grpc.health.v1, and called with its own typed client
// through a lease; reloads swap it with no failed call.
func TestForeignPluginLeaseAndReload(t *testing.T) {
	m, _ := newManager(t, "")
	ctx := context.Background()
	res, err := m.Load(ctx, kvSpec("kv"))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	st := res.Status
	if st.Protocol != "grpc" || st.State != manager.StateServing || fmt.Sprint(st.Services) != "[proto.KV]" {
		t.Fatalf("status: protocol %q state %s services %v", st.Protocol, st.State, st.Services)
	}
	l, err := m.Acquire(ctx, "kv")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := proto.NewKVClient(l.Value.(*grpc.ClientConn)).Put(ctx, &proto.PutRequest{Key: "k", Value: []byte("v1")}); err != nil {
		t.Fatalf("Put: %v", err)
	}
	l.Release()
	l.Release() // idempotent

	// Invoke is the native contract's: a foreign plugin says where to go.
	if _, err := m.Invoke(ctx, "kv", "get", nil); !errors.Is(err, manager.ErrNotNative) {
		t.Fatalf("Invoke on a foreign plugin: %v", err)
	}

	loop := testbin.StartLoop(4, func() error {
		v, _, err := kvGet(ctx, m, "kv", "k")
		if err == nil && !strings.HasPrefix(v, "v1") {
			err = fmt.Errorf("Get: %q", v)
		}
		return err
	})
	pids := []int{st.PID}
	for range 3 {
		rr, err := m.Reload(ctx, manager.ReloadRequest{Name: "kv"})
		if err != nil {
			t.Fatalf("Reload: %v", err)
		}
		pids = append(pids, rr.Status.PID)
	}
	if calls, failed, first := loop.Stop(); calls == 0 || failed != 0 {
		t.Fatalf("%d calls, %d failed: %v", calls, failed, first)
	}
	for i, p := range pids[:len(pids)-1] {
		if p == pids[i+1] || !testbin.WaitGone(p, 5*time.Second) {
			t.Fatalf("old generation pid %d still running (pids %v)", p, pids)
		}
	}
}

// A candidate with the wrong cookie fails at stage handshake and the
// active generation keeps serving; a SIGKILLed generation is restarted
// through the pipeline.
func TestForeignPluginBadCookieAndCrash(t *testing.T) {
	m, _ := newManager(t, "")
	ctx := context.Background()
	res, err := m.Load(ctx, kvSpec("kv"))
	if err != nil {
		t.Fatal(err)
	}
	bad := kvSpec("kv")
	bad.Handshake.MagicCookieValue = "wrong"
	_, err = m.Reload(ctx, manager.ReloadRequest{Name: "kv", Spec: &bad})
	var ce *manager.CandidateError
	if !errors.As(err, &ce) || ce.Stage != manager.StageHandshake || ce.ActiveGeneration != 1 {
		t.Fatalf("reload with a wrong cookie: %v", err)
	}
	if _, gen, err := kvGet(ctx, m, "kv", "missing"); gen != 1 || err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("generation 1 after the failed reload: gen %d err %v", gen, err)
	}

	w, err := m.Watch([]string{"kv"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := syscall.Kill(res.Status.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		evs, err := w.Next(wctx)
		if err != nil {
			t.Fatalf("waiting for the restart: %v", err)
		}
		last := evs[len(evs)-1].Health
		if last.Generation == 2 && last.State == manager.StateServing {
			break
		}
	}
	if _, gen, err := kvGet(ctx, m, "kv", "missing"); gen != 2 || err == nil {
		t.Fatalf("after the restart: gen %d err %v", gen, err)
	}
}

// An embedder's protocol: go-plugin's shared.KVGRPCPlugin dispenses the
// typed shared.KV, which a lease hands out as is. The protocol is chosen by
// Config.Protocol whenever the manager first speaks to a process, so it
// holds across a reload and a restore from the store though the spec, data
// only, never carries it.
func TestEmbedderProtocol(t *testing.T) {
	kv := &manager.Protocol{
		Name:      "kv",
		Handshake: shared.Handshake,
		Plugins:   goplugin.PluginSet{"kv": &shared.KVGRPCPlugin{}},
		Dispense:  "kv",
	}
	broken := &manager.Protocol{Name: "broken", Handshake: shared.Handshake, Plugins: goplugin.PluginSet{"kv": &shared.KVPlugin{}}, Dispense: "kv"}
	resolve := func(s manager.Spec) *manager.Protocol {
		switch s.Name {
		case "store":
			return kv
		case "broken":
			return broken
		}
		return nil
	}
	st := newFlakyStore()
	m, _ := newManagerWith(t, func(c *manager.Config) { c.Protocol, c.Store = resolve, st })
	ctx := context.Background()
	res, err := m.Load(ctx, manager.Spec{Name: "store", Binary: "kv"})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if res.Status.Protocol != "kv" {
		t.Fatalf("protocol %q", res.Status.Protocol)
	}
	put := func(m *manager.Manager, v string) {
		t.Helper()
		l, err := m.Acquire(ctx, "store")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Release()
		store := l.Value.(shared.KV)
		if err := store.Put("greeting", []byte(v)); err != nil {
			t.Fatal(err)
		}
		got, err := store.Get("greeting")
		if err != nil || !strings.HasPrefix(string(got), v) {
			t.Fatalf("Get: %q %v", got, err)
		}
	}
	put(m, "hi")
	rr, err := m.Reload(ctx, manager.ReloadRequest{Name: "store"})
	if err != nil || rr.Status.Protocol != "kv" {
		t.Fatalf("Reload: %+v %v", rr, err)
	}
	put(m, "again")

	// A protocol that cannot work is refused before anything starts.
	_, err = m.Load(ctx, manager.Spec{Name: "broken", Binary: "kv"})
	var inv *manager.InvalidError
	if !errors.As(err, &inv) || inv.Field != "protocol" || !strings.Contains(err.Error(), "not a go-plugin GRPCPlugin") {
		t.Fatalf("net/rpc-only protocol: %v", err)
	}

	// A second manager restores the stored spec with the same protocol.
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if r, ok := st.record("store"); !ok || r.Spec.Name != "store" {
		t.Fatalf("stored: %+v %v", r, ok)
	}
	m2, _ := newManagerWith(t, func(c *manager.Config) { c.Protocol, c.Store = resolve, st })
	if err := m2.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if s, err := m2.Get("store"); err != nil || s.Protocol != "kv" || s.State != manager.StateServing {
		t.Fatalf("restored: %+v %v", s, err)
	}
	put(m2, "restored")
}

// A lease held across a reload keeps its generation alive until it is
// released (or the drain times out, which ends it).
func TestLeaseDrain(t *testing.T) {
	m, _ := newManager(t, "")
	ctx := context.Background()
	res, err := m.Load(ctx, kvSpec("kv"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := m.Acquire(ctx, "kv")
	if err != nil {
		t.Fatal(err)
	}
	released := make(chan time.Time, 1)
	go func() {
		time.Sleep(300 * time.Millisecond) // time is what is tested: the drain waits this long for the lease
		released <- time.Now()
		l.Release()
	}()
	rr, err := m.Reload(ctx, manager.ReloadRequest{Name: "kv", DrainTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	done := time.Now()
	if rel := <-released; done.Before(rel) || rr.Report.DrainedCalls != 1 || rr.Report.DrainTimedOut {
		t.Fatalf("reload returned at %v, lease released at %v; report %+v", done, rel, rr.Report)
	}
	if !testbin.WaitGone(res.Status.PID, 5*time.Second) {
		t.Fatal("old generation still running")
	}

	// A lease the drain gives up on is ended: its context is cancelled.
	l2, err := m.Acquire(ctx, "kv")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	rr, err = m.Reload(ctx, manager.ReloadRequest{Name: "kv", DrainTimeout: 100 * time.Millisecond})
	if err != nil || !rr.Report.DrainTimedOut {
		t.Fatalf("reload: %v %+v", err, rr)
	}
	select {
	case <-l2.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("lease not ended after the drain timed out")
	}
	if _, err := proto.NewKVClient(l2.Conn).Get(ctx, &proto.GetRequest{Key: "x"}); err == nil {
		t.Fatal("call on a stopped generation succeeded")
	}
}
