package client

import (
	"context"
	"errors"
	"strings"
	"testing"

	examplev1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/example/v1"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// DialPlugin reaches a foreign plugin's own typed API at its endpoint
// (the ticker example: a go-plugin plugin with its own TickerService),
// across a reload.
func TestDialPlugin(t *testing.T) {
	d := newDaemon(t, daemonConfig{})
	ctx := context.Background()
	c, err := Dial(ctx, d.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "ticker", Binary: "ticker",
		Handshake: &plugincontrolv1.Handshake{ProtocolVersion: 1, MagicCookieKey: "TICKER_PLUGIN", MagicCookieValue: "tick"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(st.GetEndpoint(), "/plugins/ticker.sock") || st.GetProtocol() != "grpc" {
		t.Fatalf("status: %v", st)
	}
	conn, err := c.DialPlugin(ctx, "ticker")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ticker := examplev1.NewTickerServiceClient(conn)
	before, err := ticker.Whoami(ctx, &examplev1.WhoamiRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Reload(ctx, "ticker"); err != nil {
		t.Fatal(err)
	}
	after, err := ticker.Whoami(ctx, &examplev1.WhoamiRequest{})
	if err != nil || after.GetPid() == before.GetPid() || after.GetPid() == 0 {
		t.Fatalf("Whoami after the reload: %v %v, want a new process (was %d)", after, err, before.GetPid())
	}
	if _, err := c.DialPlugin(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown plugin: %v", err)
	}
}
