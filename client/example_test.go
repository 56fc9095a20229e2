package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/plugincontrol/plugincontrol/client"
	examplev1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/example/v1"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// daemonAddr starts a private plugind for the example (a real manager and
// server with the example plugins, on a fresh unix socket) and returns its
// address. A service would use client.DefaultAddr() or its configuration.
func daemonAddr() (addr string, stop func()) { return client.StartExampleDaemon() }

// exampleClient starts a private plugind (see daemonAddr) and dials it as
// ExampleDial does, with a 30-second deadline on ctx. done closes the
// client, cancels ctx and stops the daemon.
func exampleClient() (ctx context.Context, c *client.Client, done func()) {
	addr, stop := daemonAddr()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	c, err := client.Dial(ctx, addr)
	if err != nil {
		cancel()
		stop()
		log.Fatal(err)
	}
	return ctx, c, func() {
		c.Close()
		cancel()
		stop()
	}
}

// Load a plugin, reload it and wait for the new generation to serve, then
// try an upgrade to a binary whose readiness probe fails: the candidate is
// killed and the active generation keeps serving.
func ExampleClient_Reload() {
	ctx, c, done := exampleClient()
	defer done()

	st, err := c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("loaded", st.GetName(), "generation", st.GetGeneration(), st.GetState())

	res, err := c.Reload(ctx, "echo", client.WithWaitHealthy(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("reloaded from generation", res.GetPreviousGeneration(), "to", res.GetPlugin().GetGeneration())

	_, err = c.Reload(ctx, "echo", client.WithSpec(&plugincontrolv1.PluginSpec{Name: "echo", Binary: "notready"}))
	var ce *client.CandidateError
	if errors.As(err, &ce) {
		fmt.Println("upgrade failed at", ce.Stage, "- generation", ce.ActiveGeneration, "keeps serving")
	}

	out, gen, err := c.Invoke(ctx, "echo", "echo", []byte("still here"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (generation %d)\n", out, gen)
	// Output:
	// loaded echo generation 1 PLUGIN_STATE_SERVING
	// reloaded from generation 1 to 2
	// upgrade failed at CANDIDATE_STAGE_READY - generation 2 keeps serving
	// still here (generation 2)
}

// Watch the health of a plugin: the watcher's view converges to the
// daemon's state and follows it (reconnecting and resuming by itself when
// the daemon restarts).
func ExampleClient_Watch() {
	ctx, c, done := exampleClient()
	defer done()

	if _, err := c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo"}); err != nil {
		log.Fatal(err)
	}

	w, err := c.Watch(ctx, client.WithNames("echo"))
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	<-w.Synced()
	fmt.Println("echo is", w.View()["echo"].GetState())

	// A handler panic: the call fails with a *client.PanicError, the
	// plugin lives on and its health becomes DEGRADED.
	_, _, err = c.Invoke(ctx, "echo", "panic", []byte("boom"))
	var pe *client.PanicError
	if errors.As(err, &pe) {
		fmt.Println("panic:", pe.Message)
	}
	for ev := range w.Events() {
		h := ev.GetHealth()
		if ev.GetType() == plugincontrolv1.HealthEventType_HEALTH_EVENT_TYPE_CHANGED && h.GetState() == plugincontrolv1.PluginState_PLUGIN_STATE_DEGRADED {
			fmt.Println("echo is", h.GetState(), "with", h.GetPanicsInWindow(), "panic in the window")
			break
		}
	}
	// Output:
	// echo is PLUGIN_STATE_SERVING
	// panic: boom
	// echo is PLUGIN_STATE_DEGRADED with 1 panic in the window
}

// Errors are typed: sentinels for errors.Is, details for errors.As.
func ExampleClient_Load() {
	addr, stop := daemonAddr()
	defer stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, addr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	spec := &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo"}
	if _, err := c.Load(ctx, spec); err != nil {
		log.Fatal(err)
	}
	_, err = c.Load(ctx, spec)
	fmt.Println("again:", errors.Is(err, client.ErrAlreadyExists))

	_, err = c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "Echo!", Binary: "echo"})
	var ie *client.InvalidArgumentError
	if errors.As(err, &ie) {
		fmt.Println("invalid field:", ie.Field)
	}
	_, err = c.Unload(ctx, "nope")
	fmt.Println("unknown:", errors.Is(err, client.ErrNotFound))
	// Output:
	// again: true
	// invalid field: name
	// unknown: true
}

// A connection of the caller's own to a plugin's process (the zero-hop
// data path): calls do not pass through plugind, and the connection
// follows the plugin's reloads.
func ExampleClient_DialDirect() {
	ctx, c, done := exampleClient()
	defer done()
	st, err := c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "ticker", Binary: "ticker",
		Handshake: &plugincontrolv1.Handshake{ProtocolVersion: 1, MagicCookieKey: "TICKER_PLUGIN", MagicCookieValue: "tick"}})
	if err != nil {
		log.Fatal(err)
	}
	conn, err := c.DialDirect(ctx, "ticker")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ticker := examplev1.NewTickerServiceClient(conn) // the plugin's own typed client
	who, err := ticker.Whoami(ctx, &examplev1.WhoamiRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("answered by the plugin's process:", who.GetPid() == st.GetPid())
	// Output:
	// answered by the plugin's process: true
}

// Connect to the local daemon (PLUGIND_ADDR, else the socket in the
// default state directory) with a bearer token, and list its plugins.
func ExampleDial() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := client.Dial(ctx, client.DefaultAddr(), client.WithToken("s3cret"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	plugins, err := c.List(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range plugins {
		fmt.Println(p.GetName(), p.GetGeneration(), p.GetState())
	}
}

// DefaultAddr honours PLUGIND_ADDR.
func ExampleDefaultAddr() {
	fmt.Println(client.DefaultAddr() != "")
	// Output: true
}

// Wait until a reloaded generation is SERVING and stays so for a settle
// period: the wait fails at once if that generation goes UNHEALTHY or is
// replaced by a newer one.
func ExampleClient_WaitServing() {
	ctx, c, done := exampleClient()
	defer done()

	if _, err := c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo"}); err != nil {
		log.Fatal(err)
	}
	resp, err := c.Reload(ctx, "echo")
	if err != nil {
		log.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	h, err := c.WaitServing(wctx, "echo", resp.GetPlugin().GetGeneration(), client.WithSettle(200*time.Millisecond))
	var ue *client.UnhealthyError
	switch {
	case errors.As(err, &ue):
		fmt.Println("not healthy:", ue.Reason)
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println("generation", h.GetGeneration(), "settled as", h.GetState())
	}
	// Output:
	// generation 2 settled as PLUGIN_STATE_SERVING
}

// Poll the states of all plugins: WithCompactView returns each plugin's
// name, state, generation and revision only, a fifth of the bytes of the
// full record and a quarter of the decoding.
func ExampleClient_Health() {
	ctx, c, done := exampleClient()
	defer done()
	if _, err := c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo"}); err != nil {
		log.Fatal(err)
	}
	full, _, err := c.Health(ctx)
	if err != nil {
		log.Fatal(err)
	}
	states, _, err := c.Health(ctx, client.WithCompactView())
	if err != nil {
		log.Fatal(err)
	}
	for i, h := range states {
		fmt.Println(h.GetName(), h.GetState(), "generation", h.GetGeneration(), "full record has since:", full[i].GetSince() != nil, "compact:", h.GetSince() != nil)
	}
	// Output:
	// echo PLUGIN_STATE_SERVING generation 1 full record has since: true compact: false
}
