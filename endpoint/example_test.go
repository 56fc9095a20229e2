package endpoint_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-plugin/examples/grpc/proto"
	"github.com/plugincontrol/plugincontrol/endpoint"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Serve a foreign go-plugin plugin's own API at a stable unix socket, and
// call it with its own typed client, across a reload.
func Example() {
	ctx := context.Background()
	root, _ := os.MkdirTemp("", "ep-example-")
	defer os.RemoveAll(root)

	eps, err := endpoint.New(filepath.Join(root, "plugins"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer eps.Shutdown()
	m, err := manager.New(manager.Config{PluginDir: pluginDir, Logger: slog.New(slog.DiscardHandler), Endpoints: eps})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close(ctx)

	// go-plugin's examples/grpc KV plugin, known only by its handshake.
	res, err := m.Load(ctx, manager.Spec{Name: "kv", Binary: "kv",
		Handshake: &manager.Handshake{ProtocolVersion: 1, MagicCookieKey: "BASIC_PLUGIN", MagicCookieValue: "hello"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(filepath.Base(res.Status.Endpoint), res.Status.Services)

	conn, _ := grpc.NewClient(res.Status.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	kv := proto.NewKVClient(conn)
	_, _ = kv.Put(ctx, &proto.PutRequest{Key: "example", Value: []byte("42")})

	_, _ = m.Reload(ctx, manager.ReloadRequest{Name: "kv"}) // same endpoint, new generation
	got, err := kv.Get(ctx, &proto.GetRequest{Key: "example"})
	fmt.Printf("%.2s %v\n", got.GetValue(), err)
	// Output:
	// kv.sock [proto.KV]
	// 42 <nil>
}
