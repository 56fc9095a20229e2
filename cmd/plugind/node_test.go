package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin/examples/grpc/proto"
	"github.com/plugincontrol/plugincontrol/client"
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// nodeSpec is the Load spec of the Node.js KV plugin.
func nodeSpec(t *testing.T, name string, args ...string) string {
	t.Helper()
	path, err := testbin.NodePlugin(filepath.Join(bins, "plugins"))
	if err != nil {
		t.Fatal(err)
	}
	spec := map[string]any{"name": name, "binary": "node-kv/plugin.js", "args": args, "env": map[string]string{"PATH": path},
		"handshake": map[string]any{"protocol_version": 1, "magic_cookie_key": "BASIC_PLUGIN", "magic_cookie_value": "hello"}}
	b, _ := json.Marshal(spec)
	return string(b)
}

// A plugin written in another language (Node.js with @grpc/grpc-js) that
// speaks go-plugin's handshake itself: loaded, called through its endpoint
// with the same typed client as the Go KV plugin, reloaded under calls.
// One that binds a fixed TCP port fails as a candidate at once, saying
// the port is taken, and the active generation keeps serving.
func TestNodePlugin(t *testing.T) {
	d := startDaemon(t)
	out, code := d.grpcurl(t, `{"spec":`+nodeSpec(t, "nodekv")+`}`, "plugincontrol.v1.PluginControlService/Load")
	if code != 0 {
		t.Fatalf("Load: exit %d\n%s", code, out)
	}
	// grpc-js serves no reflection: describe is skipped and says so.
	mustContain(t, "Load", out, `"protocol": "grpc"`, "describe skipped", "/plugins/nodekv.sock")

	ctx := context.Background()
	c, err := client.Dial(ctx, d.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn, err := c.DialPlugin(ctx, "nodekv")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kv := proto.NewKVClient(conn)
	if _, err := kv.Put(ctx, &proto.PutRequest{Key: "node", Value: []byte("from go")}); err != nil {
		t.Fatalf("Put: %v", err)
	}
	for i := 0; i < 2; i++ {
		if _, err := c.Reload(ctx, "nodekv"); err != nil {
			t.Fatalf("Reload: %v", err)
		}
		got, err := kv.Get(ctx, &proto.GetRequest{Key: "node"})
		if err != nil || !strings.HasPrefix(string(got.GetValue()), "from go") {
			t.Fatalf("Get after reload %d: %q %v", i+1, got.GetValue(), err)
		}
	}
	// The plugin's own NOT_FOUND passes through without plugind's ErrorInfo.
	_, err = kv.Get(ctx, &proto.GetRequest{Key: "absent"})
	if status.Code(err) != codes.NotFound || rpcerr.Info(err) != nil {
		t.Fatalf("Get of an absent key: %v", err)
	}

	// A fixed port: generation 1 binds it, the candidate cannot.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	lis.Close()
	out, code = d.grpcurl(t, `{"spec":`+nodeSpec(t, "fixed", "--port", fmt.Sprint(port))+`}`, "plugincontrol.v1.PluginControlService/Load")
	if code != 0 {
		t.Fatalf("Load on a fixed port: exit %d\n%s", code, out)
	}
	start := time.Now()
	out, code = d.grpcurl(t, `{"name":"fixed"}`, "plugincontrol.v1.PluginControlService/Reload")
	if code != 64+int(codes.FailedPrecondition) {
		t.Fatalf("Reload on a taken port: exit %d\n%s", code, out)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the candidate on a taken port took %v to fail: it must not hang until start_timeout", took)
	}
	mustContain(t, "taken port", out, "CANDIDATE_STAGE_START", "exited with status 1", "EADDRINUSE", "generation 1 stays active")
}
