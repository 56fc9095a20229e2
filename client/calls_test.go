package client

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

func dial(t *testing.T, addr string, opts ...Option) *Client {
	t.Helper()
	c, err := Dial(context.Background(), addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestTypedCalls(t *testing.T) {
	d := newDaemon(t, daemonConfig{flags: []string{"--expose-panic-stacks"}})
	c := dial(t, d.addr())
	ctx := ctxT(t)

	st, err := c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo"})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if st.GetName() != "echo" || st.GetGeneration() != 1 || st.GetState() != plugincontrolv1.PluginState_PLUGIN_STATE_SERVING || st.GetPid() == 0 {
		t.Fatalf("Load status: %v", st)
	}

	list, err := c.List(ctx)
	if err != nil || len(list) != 1 || list[0].GetName() != "echo" {
		t.Fatalf("List: %v %v", list, err)
	}

	hs, rev, err := c.Health(ctx, WithNames("echo"))
	if err != nil || len(hs) != 1 || hs[0].GetState() != plugincontrolv1.PluginState_PLUGIN_STATE_SERVING || rev == 0 {
		t.Fatalf("Health: %v %d %v", hs, rev, err)
	}

	out, gen, err := c.Invoke(ctx, "echo", "echo", []byte("hello"))
	if err != nil || string(out) != "hello" || gen != 1 {
		t.Fatalf("Invoke: %q %d %v", out, gen, err)
	}

	// Reload with WaitHealthy: generation 2, serving.
	res, err := c.Reload(ctx, "echo", WithWaitHealthy(10*time.Second), WithDrainTimeout(time.Second), WithExpectedGeneration(1))
	if err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if res.GetPlugin().GetGeneration() != 2 || res.GetPreviousGeneration() != 1 {
		t.Fatalf("Reload: %v", res)
	}

	// A dry run changes nothing.
	res, err = c.Reload(ctx, "echo", WithValidateOnly(), WithWaitHealthy(time.Second))
	if err != nil || res.GetPlugin().GetGeneration() != 2 {
		t.Fatalf("validate only: %v %v", res, err)
	}

	// A failed candidate: *CandidateError with stage, reason, and the
	// generation that keeps serving.
	_, err = c.Reload(ctx, "echo", WithSpec(&plugincontrolv1.PluginSpec{Name: "echo", Binary: "notready"}))
	var ce *CandidateError
	if !errors.As(err, &ce) {
		t.Fatalf("failed Reload: %T %v", err, err)
	}
	if ce.Stage != plugincontrolv1.CandidateStage_CANDIDATE_STAGE_READY || ce.ActiveGeneration != 2 || !strings.Contains(ce.Message, "backend database unreachable") {
		t.Fatalf("CandidateError: %+v", ce)
	}
	if !errors.Is(err, ErrCandidateFailed) || status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "generation 2 stays active") {
		t.Fatalf("CandidateError matching: %v (code %v)", err, status.Code(err))
	}

	// A binary that does not resolve: a CandidateError too, and an invalid argument.
	_, err = c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "x", Binary: "missing"})
	if !errors.As(err, &ce) || ce.Stage != plugincontrolv1.CandidateStage_CANDIDATE_STAGE_RESOLVE || !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("missing binary: %v", err)
	}

	// Sentinels.
	if _, err := c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo"}); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("duplicate Load: %v", err)
	}
	if _, err := c.Reload(ctx, "echo", WithExpectedGeneration(1)); !errors.Is(err, ErrGenerationMismatch) {
		t.Fatalf("generation mismatch: %v", err)
	}
	if _, err := c.Unload(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Unload unknown: %v", err)
	}
	if _, _, err := c.Health(ctx, WithNames("nope")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Health unknown: %v", err)
	}
	if _, _, err := c.Invoke(ctx, "nope", "echo", nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Invoke unknown: %v", err)
	}
	var ie *InvalidArgumentError
	if _, err := c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "Bad Name", Binary: "echo"}); !errors.As(err, &ie) || ie.Field != "name" || !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad name: %v", err)
	}

	// A handler panic: *PanicError; the plugin lives on. (Stack is sent
	// because this daemon runs with --expose-panic-stacks.)
	_, _, err = c.Invoke(ctx, "echo", "panic", []byte("boom"))
	var pe *PanicError
	if !errors.As(err, &pe) || pe.Message != "boom" || pe.Fingerprint == "" || pe.Stack == "" || !errors.Is(err, ErrPanic) || status.Code(err) != codes.Internal {
		t.Fatalf("panic: %T %v", err, err)
	}
	// A plugin's own code passes through as a *StatusError.
	_, _, err = c.Invoke(ctx, "echo", "nosuch", nil)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != codes.Unimplemented {
		t.Fatalf("unknown method: %v", err)
	}

	st, err = c.Unload(ctx, "echo", WithDrainTimeout(time.Second))
	if err != nil || st.GetState() != plugincontrolv1.PluginState_PLUGIN_STATE_STOPPED {
		t.Fatalf("Unload: %v %v", st, err)
	}
	if list, err := c.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("List after Unload: %v %v", list, err)
	}
}

func TestWaitServing(t *testing.T) {
	d := newDaemon(t, daemonConfig{})
	c := dial(t, d.addr())
	ctx := ctxT(t)

	// Not loaded: fails at once instead of waiting for the deadline.
	_, err := c.WaitServing(ctx, "nope", 1)
	var ue *UnhealthyError
	if !errors.As(err, &ue) || ue.Reason != "not loaded" || !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("WaitServing unknown: %v", err)
	}

	// One panic makes a plugin with threshold 1 UNHEALTHY: WaitServing
	// reports it with the reason.
	st, err := c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "fragile", Binary: "echo", HealthPolicy: &plugincontrolv1.HealthPolicy{PanicThreshold: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if h, err := c.WaitServing(ctx, "fragile", st.GetGeneration()); err != nil || h.GetGeneration() != 1 {
		t.Fatalf("WaitServing serving: %v %v", h, err)
	}
	_, _, _ = c.Invoke(ctx, "fragile", "panic", []byte("kaboom"))
	_, err = c.WaitServing(ctx, "fragile", st.GetGeneration())
	if !errors.As(err, &ue) || ue.Health.GetState() != plugincontrolv1.PluginState_PLUGIN_STATE_UNHEALTHY || ue.Reason == "" {
		t.Fatalf("WaitServing unhealthy: %v", err)
	}

	// A newer generation fails the wait for an older one at once; the
	// newer one passes a settle period.
	rr, err := c.Reload(ctx, "fragile")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.WaitServing(ctx, "fragile", st.GetGeneration())
	if !errors.As(err, &ue) || !strings.HasPrefix(ue.Reason, "generation 2 replaced it (SERVING)") {
		t.Fatalf("WaitServing replaced: %v", err)
	}
	start := time.Now()
	if h, err := c.WaitServing(ctx, "fragile", rr.GetPlugin().GetGeneration(), WithSettle(300*time.Millisecond)); err != nil || h.GetGeneration() != 2 {
		t.Fatalf("WaitServing settle: %v %v", h, err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("WaitServing with a 300ms settle returned after %s", took)
	}
	// Within the settle period, UNHEALTHY fails it.
	go func() {
		time.Sleep(100 * time.Millisecond) // time is what is tested: the panic lands within the settle period
		_, _, _ = c.Invoke(ctx, "fragile", "panic", []byte("again"))
	}()
	_, err = c.WaitServing(ctx, "fragile", 2, WithSettle(10*time.Second))
	if !errors.As(err, &ue) || !strings.HasPrefix(ue.Reason, "UNHEALTHY") {
		t.Fatalf("WaitServing unhealthy within settle: %v", err)
	}

	// A timeout carries the context error.
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = c.WaitServing(wctx, "fragile", 5)
	if !errors.As(err, &ue) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitServing timeout: %v", err)
	}
}

// countingControl answers every call with Unavailable and counts attempts.
type countingControl struct {
	plugincontrolv1.UnimplementedPluginControlServiceServer
	list, health, load, reload atomic.Int32
}

// unavailable counts an attempt in n and fails it.
func unavailable(n *atomic.Int32) error {
	n.Add(1)
	return status.Error(codes.Unavailable, "restarting")
}

func (s *countingControl) ListPlugins(context.Context, *plugincontrolv1.ListPluginsRequest) (*plugincontrolv1.ListPluginsResponse, error) {
	return nil, unavailable(&s.list)
}

func (s *countingControl) Health(context.Context, *plugincontrolv1.HealthRequest) (*plugincontrolv1.HealthResponse, error) {
	return nil, unavailable(&s.health)
}

func (s *countingControl) Load(context.Context, *plugincontrolv1.LoadRequest) (*plugincontrolv1.LoadResponse, error) {
	return nil, unavailable(&s.load)
}

func (s *countingControl) Reload(context.Context, *plugincontrolv1.ReloadRequest) (*plugincontrolv1.ReloadResponse, error) {
	return nil, unavailable(&s.reload)
}

// TestRetryPolicy checks that only the idempotent reads are retried.
func TestRetryPolicy(t *testing.T) {
	fake := &countingControl{}
	c := dial(t, "unix://"+serve(t, fake))
	ctx := ctxT(t)
	if _, err := c.List(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("List: %v", err)
	}
	if _, _, err := c.Health(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Health: %v", err)
	}
	if _, err := c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "x", Binary: "x"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Load: %v", err)
	}
	if _, err := c.Reload(ctx, "x"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Reload: %v", err)
	}
	if got := [4]int32{fake.list.Load(), fake.health.Load(), fake.load.Load(), fake.reload.Load()}; got != [4]int32{retryAttempts, retryAttempts, 1, 1} {
		t.Fatalf("attempts (list, health, load, reload) = %v, want [%d %d 1 1]", got, retryAttempts, retryAttempts)
	}
}

// TestRetryWaitsForDaemon: a List issued while the daemon is restarting
// succeeds once it is back (within the retry budget).
func TestRetryWaitsForDaemon(t *testing.T) {
	d := newDaemon(t, daemonConfig{})
	c := dial(t, d.addr())
	ctx := ctxT(t)
	if _, err := c.List(ctx); err != nil {
		t.Fatal(err)
	}
	d.stop()
	restarted := make(chan *daemon, 1)
	go func() {
		time.Sleep(100 * time.Millisecond) // time is what is tested: the calls retry while no daemon listens
		nd, err := startDaemon(daemonConfig{sock: d.sock})
		if err != nil {
			t.Error(err)
		}
		restarted <- nd
	}()
	_, err := c.List(ctx)
	nd := <-restarted
	if nd != nil {
		// Replace the stopped daemon so that cleanup stops the new one.
		d.replace(nd)
	}
	if err != nil {
		t.Fatalf("List across a restart: %v", err)
	}
}

// WithBake keeps the previous generation warm; WaitBake says how the bake
// ended: kept after a clean period, reverted when the new generation fails.
func TestReloadWithBake(t *testing.T) {
	d := newDaemon(t, daemonConfig{})
	c := dial(t, d.addr())
	ctx := context.Background()
	load(t, c, "echo")
	resp, err := c.Reload(ctx, "echo", WithBake(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	b, err := c.WaitBake(wctx, "echo", resp.GetPlugin().GetGeneration())
	if err != nil || b.GetResult() != plugincontrolv1.BakeResult_BAKE_RESULT_KEPT || b.GetPreviousGeneration() != 1 {
		t.Fatalf("clean bake: %v %v", b, err)
	}
	strict := &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo", HealthPolicy: &plugincontrolv1.HealthPolicy{PanicThreshold: 1}}
	resp, err = c.Reload(ctx, "echo", WithSpec(strict), WithBake(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Invoke(ctx, "echo", "panic", []byte("boom")); !errors.Is(err, ErrPanic) {
		t.Fatalf("panic: %v", err)
	}
	b, err = c.WaitBake(wctx, "echo", resp.GetPlugin().GetGeneration())
	if err != nil || b.GetResult() != plugincontrolv1.BakeResult_BAKE_RESULT_REVERTED || b.GetRevertedTo() != 4 {
		t.Fatalf("failed bake: %v %v", b, err)
	}
	if _, err := c.WaitBake(wctx, "nope", 1); !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("WaitBake of an unknown plugin: %v", err)
	}
}
