package chaos_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/server"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// rawCodec sends and receives request and response bytes as they are, so a
// test can put on the wire what the Go proto library refuses to marshal
// (invalid UTF-8 in string fields, wrong wire types, truncated fields).
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { *v.(*[]byte) = bytes.Clone(data); return nil }
func (rawCodec) Name() string                       { return "proto" }

// callRaw sends body to method and returns the status.
func (f *fixture) callRaw(t *testing.T, method string, body []byte) *status.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []byte
	err := f.conn.Invoke(ctx, method, &body, &out, grpc.ForceCodec(rawCodec{}))
	return status.Convert(err)
}

// Wire builders for the raw cases.
func strField(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func msgField(b []byte, num protowire.Number, m []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}

func varintField(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

const (
	methodLoad   = "/plugincontrol.v1.PluginControlService/Load"
	methodReload = "/plugincontrol.v1.PluginControlService/Reload"
	methodUnload = "/plugincontrol.v1.PluginControlService/Unload"
	methodInvoke = "/plugincontrol.v1.PluginGatewayService/Invoke"
)

// TestBadInputThroughServer sends malformed requests to a real server on a
// unix socket: oversized messages, invalid UTF-8 in names, path traversal in
// binaries, wrong wire types and garbage bytes. Each gets an error status;
// the active generation keeps serving with the same pid and the registry
// does not change.
func TestBadInputThroughServer(t *testing.T) {
	// A plugin directory with echo and a symlink that leaves it (to a
	// working echo binary elsewhere: only the check keeps it from running).
	dir := t.TempDir()
	copyFile(t, filepath.Join(pluginDir, "echo"), filepath.Join(dir, "echo"))
	if err := os.Symlink(filepath.Join(pluginDir, "echo"), filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/bin/sh", filepath.Join(dir, "shell")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	const maxRecv = 1 << 20
	f := startServer(t, manager.Config{PluginDir: dir}, server.WithLimits(maxRecv, 1024))
	ctx := context.Background()
	res, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "echo", Binary: "echo"}})
	if err != nil {
		t.Fatal(err)
	}
	pid := int(res.GetPlugin().GetPid())
	unchanged := func(t *testing.T) {
		t.Helper()
		f.serves(t, "echo", 1, pid)
		if l := f.m.List(); len(l) != 1 {
			t.Fatalf("registry changed: %+v", l)
		}
		onlyProcesses(t, dir, []int{pid})
		if d := sockDirs(f.sock); len(d) != 1 {
			t.Fatalf("socket directories %v", d)
		}
	}

	t.Run("oversized", func(t *testing.T) {
		// Just under the limit: passes through to the plugin and back.
		big := bytes.Repeat([]byte{'a'}, maxRecv-1024)
		r, err := f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "echo", Payload: big})
		if err != nil || !bytes.Equal(r.GetPayload(), big) {
			t.Fatalf("payload under the limit: %v", err)
		}
		for _, c := range []struct {
			what string
			call func() error
		}{
			{"Invoke payload", func() error {
				_, err := f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: "echo", Method: "echo", Payload: make([]byte, 2*maxRecv)})
				return err
			}},
			{"Load config", func() error {
				_, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "big", Binary: "echo", Config: make([]byte, 2*maxRecv)}})
				return err
			}},
			{"Reload args", func() error {
				_, err := f.ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo", Spec: &pb.PluginSpec{Name: "echo", Binary: "echo", Args: []string{strings.Repeat("a", 2*maxRecv)}}})
				return err
			}},
		} {
			if st := status.Convert(c.call()); st.Code() != codes.ResourceExhausted {
				t.Errorf("%s over the limit: %v, want ResourceExhausted", c.what, st)
			}
			unchanged(t)
		}
	})

	t.Run("bad-utf8", func(t *testing.T) {
		// grpc-go's proto codec refuses invalid UTF-8 in proto3 string
		// fields while unmarshalling the request, before any interceptor
		// or handler runs: the caller gets Internal ("grpc: error
		// unmarshalling request"), which is grpc-go's choice, not ours.
		bad := []struct {
			what, method string
			body         []byte
		}{
			{"Load spec.name", methodLoad, msgField(nil, 1, strField(strField(nil, 1, "ech\xffo"), 2, "echo"))},
			{"Load spec.binary", methodLoad, msgField(nil, 1, strField(strField(nil, 1, "x"), 2, "ec\xc3\x28ho"))},
			{"Reload name", methodReload, strField(nil, 1, "\xc3\x28")},
			{"Unload name", methodUnload, strField(nil, 1, "echo\xff")},
			{"Invoke plugin", methodInvoke, strField(strField(nil, 1, "ech\xffo"), 2, "echo")},
			{"Invoke method", methodInvoke, strField(strField(nil, 1, "echo"), 2, "ec\xfeho")},
		}
		for _, b := range bad {
			st := f.callRaw(t, b.method, b.body)
			if st.Code() != codes.Internal || !strings.Contains(st.Message(), "UTF-8") {
				t.Errorf("%s with invalid UTF-8: %v, want Internal from grpc-go's unmarshalling", b.what, st)
			}
			t.Logf("%s: %v: %s", b.what, st.Code(), st.Message())
			unchanged(t)
		}
		// Valid UTF-8 that is not a valid name reaches our validation.
		for _, name := range []string{"échø", "a\x00b", "ECHO", "e/../x", strings.Repeat("a", 200)} {
			st := status.Convert(func() error {
				_, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: name, Binary: "echo"}})
				return err
			}())
			if st.Code() != codes.InvalidArgument || badField(st) != "name" {
				t.Errorf("Load name %q: %v, want InvalidArgument on name", name, st)
			}
			st = status.Convert(func() error {
				_, err := f.gw.Invoke(ctx, &pb.InvokeRequest{Plugin: name, Method: "echo"})
				return err
			}())
			if st.Code() != codes.InvalidArgument {
				t.Errorf("Invoke plugin %q: %v, want InvalidArgument", name, st)
			}
		}
		unchanged(t)
	})

	t.Run("path-traversal", func(t *testing.T) {
		for _, b := range []struct{ binary, want string }{
			{"../x", `contains ".."`},
			{"../plugins/echo", `contains ".."`},
			{"/bin/sh", "absolute path"},
			{filepath.Join(pluginDir, "echo"), "absolute path"},
			{"a/../../x", `contains ".."`},
			{"sub/../echo", `contains ".."`},
			{"./echo", "not a clean path"},
			{"escape", "outside the plugin directory"},
			{"shell", "outside the plugin directory"},
			{"sub", "not a regular file"},
			{"missing", "not found"},
		} {
			for _, call := range []struct {
				what string
				do   func() error
			}{
				{"Load", func() error {
					_, err := f.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "x", Binary: b.binary}})
					return err
				}},
				{"Reload", func() error {
					_, err := f.ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo", Spec: &pb.PluginSpec{Name: "echo", Binary: b.binary}})
					return err
				}},
				{"Reload validate_only", func() error {
					_, err := f.ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo", ValidateOnly: true, Spec: &pb.PluginSpec{Name: "echo", Binary: b.binary}})
					return err
				}},
			} {
				st := status.Convert(call.do())
				if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), b.want) {
					t.Errorf("%s binary %q: %v, want InvalidArgument containing %q", call.what, b.binary, st, b.want)
				}
			}
		}
		unchanged(t)
	})

	t.Run("wrong-types", func(t *testing.T) {
		listGarbage := append(mustMarshal(t, &pb.ListPluginsRequest{}), 0xff, 0xff, 0xff) // a tag whose varint never ends
		cases := []struct {
			what, method string
			body         []byte
			code         codes.Code
		}{
			// Go's protobuf parses a known field with the wrong wire type
			// as an unknown field: the spec is then missing.
			{"Load spec as a varint", methodLoad, varintField(nil, 1, 7), codes.InvalidArgument},
			{"Load spec as fixed64", methodLoad, protowire.AppendFixed64(protowire.AppendTag(nil, 1, protowire.Fixed64Type), 7), codes.InvalidArgument},
			{"Load spec.name as a varint", methodLoad, msgField(nil, 1, strField(varintField(nil, 1, 42), 2, "echo")), codes.InvalidArgument},
			{"Load spec.env as a string", methodLoad, msgField(nil, 1, strField(strField(strField(nil, 1, "x"), 2, "echo"), 4, "K=V")), codes.Internal},
			{"Load spec.start_timeout with a negative duration", methodLoad, msgField(nil, 1, msgField(strField(strField(nil, 1, "x"), 2, "echo"), 7, varintField(nil, 1, uint64(1<<64-5)))), codes.InvalidArgument},
			{"ListPluginsRequest with garbage as a Load", methodLoad, listGarbage, codes.Internal},
			{"Load spec truncated", methodLoad, msgField(nil, 1, strField(nil, 1, "echo"))[:5], codes.Internal},
			{"Load with a group wire type", methodLoad, protowire.AppendTag(nil, 1, protowire.StartGroupType), codes.Internal},
			{"Reload name as a varint", methodReload, varintField(nil, 1, 1), codes.InvalidArgument},
			{"Unload name as a nested message", methodUnload, msgField(nil, 1, varintField(nil, 1, 1)), codes.InvalidArgument},
			{"Invoke plugin as a varint", methodInvoke, varintField(strField(nil, 2, "echo"), 1, 5), codes.InvalidArgument},
			{"Invoke payload as a varint, no method", methodInvoke, varintField(strField(nil, 1, "echo"), 3, 5), codes.InvalidArgument},
		}
		for _, c := range cases {
			st := f.callRaw(t, c.method, c.body)
			if st.Code() != c.code {
				t.Errorf("%s: %v, want %v", c.what, st, c.code)
			}
			t.Logf("%s: %v: %s", c.what, st.Code(), st.Message())
			unchanged(t)
		}
	})
}

// TestWrongWireTypeDropsField documents protobuf's rule that a known field
// with the wrong wire type is kept as an unknown field: a Reload whose
// expected_generation has the wrong wire type is a Reload without that
// guard. (With validate_only set here, so nothing changes either way.)
func TestWrongWireTypeDropsField(t *testing.T) {
	f := startServer(t, manager.Config{})
	res, err := f.ctl.Load(context.Background(), &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "echo", Binary: "echo"}})
	if err != nil {
		t.Fatal(err)
	}
	pid := int(res.GetPlugin().GetPid())
	// expected_generation (field 3, uint64) sent as a string "7".
	body := varintField(strField(strField(nil, 1, "echo"), 3, "7"), 4, 1)
	if st := f.callRaw(t, methodReload, body); st.Code() != codes.OK {
		t.Fatalf("Reload with expected_generation of the wrong wire type: %v, want OK (the field is ignored)", st)
	}
	// The same with the right wire type is refused.
	body = varintField(varintField(strField(nil, 1, "echo"), 3, 7), 4, 1)
	if st := f.callRaw(t, methodReload, body); st.Code() != codes.Aborted {
		t.Fatalf("Reload with expected_generation 7: %v, want Aborted", st)
	}
	f.serves(t, "echo", 1, pid)
}

func badField(st *status.Status) string {
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			return br.GetFieldViolations()[0].GetField()
		}
	}
	return ""
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}
