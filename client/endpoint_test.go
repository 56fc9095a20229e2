package client

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/go-plugin/examples/grpc/proto"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// DialPlugin reaches a foreign plugin's own typed API at its endpoint,
// across a reload.
func TestDialPlugin(t *testing.T) {
	d := newDaemon(t, daemonConfig{})
	ctx := context.Background()
	c, err := Dial(ctx, d.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Load(ctx, &plugincontrolv1.PluginSpec{Name: "kv", Binary: "kv",
		Handshake: &plugincontrolv1.Handshake{ProtocolVersion: 1, MagicCookieKey: "BASIC_PLUGIN", MagicCookieValue: "hello"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(st.GetEndpoint(), "/plugins/kv.sock") || st.GetProtocol() != "grpc" {
		t.Fatalf("status: %v", st)
	}
	conn, err := c.DialPlugin(ctx, "kv")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kv := proto.NewKVClient(conn)
	if _, err := kv.Put(ctx, &proto.PutRequest{Key: "client", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Reload(ctx, "kv"); err != nil {
		t.Fatal(err)
	}
	got, err := kv.Get(ctx, &proto.GetRequest{Key: "client"})
	if err != nil || !strings.HasPrefix(string(got.GetValue()), "v") {
		t.Fatalf("Get after reload: %v %v", got, err)
	}
	if _, err := c.DialPlugin(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown plugin: %v", err)
	}
}
