package main_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin/examples/grpc/proto"
	"github.com/plugincontrol/plugincontrol/client"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// kvLoad is the Load request of go-plugin's examples/grpc KV plugin.
const kvLoad = `{"spec":{"name":"kv","binary":"kv","handshake":{"protocol_version":1,"magic_cookie_key":"BASIC_PLUGIN","magic_cookie_value":"hello"}}}`

// kvProtoDir is the directory of go-plugin's kv.proto, in the module cache.
func kvProtoDir(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/hashicorp/go-plugin")
	cmd.Dir = testbin.Root()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "examples", "grpc", "proto")
}

// kvStatus is the kv plugin's row of ListPlugins.
type kvStatus struct {
	Generation string `json:"generation"`
	State      string `json:"state"`
	Pid        string `json:"pid"`
	Endpoint   string `json:"endpoint"`
	LastError  string `json:"lastError"`
}

func (d *daemon) kvStatus(t *testing.T) kvStatus {
	t.Helper()
	out, code := d.grpcurl(t, "", "plugincontrol.v1.PluginControlService/ListPlugins")
	if code != 0 {
		t.Fatalf("ListPlugins: exit %d\n%s", code, out)
	}
	var list struct {
		Plugins []struct {
			Name string `json:"name"`
			kvStatus
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Plugins {
		if p.Name == "kv" {
			return p.kvStatus
		}
	}
	t.Fatalf("kv not listed:\n%s", out)
	return kvStatus{}
}

// go-plugin's own KV example, a plugin we did not write, through the
// daemon: loaded with its handshake, its typed API called with grpcurl and
// its own kv.proto at the endpoint, 5 reloads under a calling loop with no
// failed call, a wrong cookie refused at stage handshake, and a SIGKILL
// restarted through the pipeline with the endpoint serving again.
func TestForeignKVPlugin(t *testing.T) {
	d := startDaemon(t)
	out, code := d.grpcurl(t, kvLoad, "plugincontrol.v1.PluginControlService/Load")
	if code != 0 {
		t.Fatalf("Load: exit %d\n%s", code, out)
	}
	mustContain(t, "Load", out, `"protocol": "grpc"`, `"proto.KV"`, `"endpoint": "unix://`+d.StateDir+`/plugins/kv.sock"`, "CANDIDATE_STAGE_READY")
	st := d.kvStatus(t)
	sock := strings.TrimPrefix(st.Endpoint, "unix://")

	kvcurl := func(data, method string) (string, int) {
		return run(t, "grpcurl", "-plaintext", "-import-path", kvProtoDir(t), "-proto", "kv.proto", "-d", data, "-unix", sock, method)
	}
	if out, code := kvcurl(`{"key":"greeting","value":"aGVsbG8="}`, "proto.KV/Put"); code != 0 {
		t.Fatalf("Put through the endpoint: exit %d\n%s", code, out)
	}
	out, code = kvcurl(`{"key":"greeting"}`, "proto.KV/Get")
	if code != 0 {
		t.Fatalf("Get: exit %d\n%s", code, out)
	}
	mustContain(t, "Get", out, `"value": "aGVsbG8K`) // "hello\n..." as the plugin stores it
	// The plugin's own error passes through (exit 64+2: Unknown).
	out, code = kvcurl(`{"key":"missing"}`, "proto.KV/Get")
	if code != 64+2 || !strings.Contains(out, "no such file") {
		t.Fatalf("Get of a missing key: exit %d\n%s", code, out)
	}

	// 5 reloads while a loop calls Get through the endpoint.
	ctx := context.Background()
	c, err := client.Dial(ctx, d.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn, err := c.DialPlugin(ctx, "kv")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kv := proto.NewKVClient(conn)
	loop := testbin.StartLoop(1, func() error {
		_, err := kv.Get(ctx, &proto.GetRequest{Key: "greeting"})
		return err
	})
	pids := []string{st.Pid}
	for i := 0; i < 5; i++ {
		out, code := d.grpcurl(t, `{"name":"kv"}`, "plugincontrol.v1.PluginControlService/Reload")
		if code != 0 {
			t.Fatalf("Reload %d: exit %d\n%s", i+1, code, out)
		}
		pids = append(pids, d.kvStatus(t).Pid)
	}
	if calls, failed, first := loop.Stop(); calls < 5 || failed != 0 {
		t.Fatalf("%d calls during 5 reloads, %d failed: %v", calls, failed, first)
	}
	seen := map[string]bool{}
	for i, p := range pids {
		if seen[p] {
			t.Fatalf("pid %s twice in %v", p, pids)
		}
		seen[p] = true
		var pid int
		fmt.Sscan(p, &pid)
		if i < len(pids)-1 && !testbin.WaitGone(pid, 5*time.Second) {
			t.Fatalf("pid %d of an old generation still running", pid)
		}
	}

	// A candidate with the wrong cookie: stage handshake, generation 6 stays.
	out, code = d.grpcurl(t, strings.Replace(strings.Replace(kvLoad, `"spec"`, `"name":"kv","spec"`, 1), `"hello"`, `"goodbye"`, 1),
		"plugincontrol.v1.PluginControlService/Reload")
	if code != 64+9 {
		t.Fatalf("Reload with a wrong cookie: exit %d, want 73\n%s", code, out)
	}
	mustContain(t, "wrong cookie", out, "CANDIDATE_STAGE_HANDSHAKE", "generation 6 stays active", "cookie")
	if _, err := kv.Get(ctx, &proto.GetRequest{Key: "greeting"}); err != nil {
		t.Fatalf("Get after the refused candidate: %v", err)
	}

	// SIGKILL: restarted through the pipeline; the endpoint serves again.
	var pid int
	fmt.Sscan(d.kvStatus(t).Pid, &pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := d.kvStatus(t)
		if s.Generation == "7" && s.State == "PLUGIN_STATE_SERVING" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kv not restarted: %+v", s)
		}
		time.Sleep(20 * time.Millisecond) // polls through grpcurl, the tool under test (a process per read)
	}
	if out, code := kvcurl(`{"key":"greeting"}`, "proto.KV/Get"); code != 0 {
		t.Fatalf("Get after the restart: exit %d\n%s", code, out)
	}
	// Unload removes the endpoint.
	if out, code := d.grpcurl(t, `{"name":"kv"}`, "plugincontrol.v1.PluginControlService/Unload"); code != 0 {
		t.Fatalf("Unload: exit %d\n%s", code, out)
	}
	if out, code := kvcurl(`{"key":"greeting"}`, "proto.KV/Get"); code == 0 {
		t.Fatalf("Get after Unload succeeded:\n%s", out)
	}
}

// --endpoint-listen serves every plugin endpoint on one TCP port with the
// daemon's TLS; a call names its plugin in the plugincontrol-plugin key.
func TestEndpointListenTLS(t *testing.T) {
	dir := t.TempDir()
	caFile, certFile, keyFile, err := testbin.TLSFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	d := startDaemon(t, "--tls-cert", certFile, "--tls-key", keyFile, "--endpoint-listen", "tcp://"+addr)
	if out, code := d.grpcurl(t, kvLoad, "plugincontrol.v1.PluginControlService/Load"); code != 0 {
		t.Fatalf("Load: exit %d\n%s", code, out)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	ctx := context.Background()
	conn, err := client.DialEndpoint(ctx, "tcp://"+addr, "kv", client.WithTLS(&tls.Config{RootCAs: pool}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kv := proto.NewKVClient(conn)
	if _, err := kv.Put(ctx, &proto.PutRequest{Key: "tls", Value: []byte("v")}); err != nil {
		t.Fatalf("Put over the TLS endpoint: %v", err)
	}
	got, err := kv.Get(ctx, &proto.GetRequest{Key: "tls"})
	if err != nil || !strings.HasPrefix(string(got.GetValue()), "v") {
		t.Fatalf("Get: %q %v", got.GetValue(), err)
	}
	// Plaintext is refused on the TLS port.
	plain, err := client.DialEndpoint(ctx, "tcp://"+addr, "kv")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := proto.NewKVClient(plain).Get(cctx, &proto.GetRequest{Key: "tls"}); err == nil {
		t.Fatal("plaintext call on the TLS endpoint succeeded")
	}
}
