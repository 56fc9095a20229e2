package contract_test

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// The compatibility tests call today's server with clients that know only
// the committed baseline contract (proto/baseline.binpb): the grpcurl one
// through -protoset (every RPC of the baseline, by name), and a Go client
// built at run time from the baseline's descriptors with dynamicpb, which
// is what a client generated from the previous contract sends and decodes
// (same field numbers and types; fields added since arrive as unknown
// fields and are ignored). buf breaking proves the same statically; these
// prove it on the wire.

// TestCompatGrpcurlBaseline calls every RPC of the baseline contract.
func TestCompatGrpcurlBaseline(t *testing.T) {
	d := startDaemon(t)
	files := baselineFiles(t)
	call := func(method, data string) (string, int) {
		t.Helper()
		args := []string{"-plaintext", "-protoset", baseline, "-max-time", "1"}
		if data != "" {
			args = append(args, "-d", data)
		}
		return grpcurl(t, append(args, "-unix", d.Socket, method)...)
	}
	// Each RPC of the baseline, with a request that succeeds (or, for
	// WatchHealth, streams until grpcurl's deadline).
	requests := map[string]string{
		"plugincontrol.v1.PluginControlService/Load":        `{"spec":{"name":"old","binary":"echo"}}`,
		"plugincontrol.v1.PluginControlService/ListPlugins": `{}`,
		"plugincontrol.v1.PluginControlService/Reload":      `{"name":"old","expected_generation":1}`,
		"plugincontrol.v1.PluginControlService/Health":      `{"names":["old"]}`,
		"plugincontrol.v1.PluginControlService/WatchHealth": `{"names":["old"]}`,
		"plugincontrol.v1.PluginGatewayService/Invoke":      `{"plugin":"old","method":"echo","payload":"b2xk"}`,
		"plugincontrol.v1.PluginControlService/Unload":      `{"name":"old"}`,
		"plugincontrol.v1.PluginControlService/ListAudit":   `{"name":"old","page_size":2}`,
	}
	order := []string{"Load", "ListPlugins", "Reload", "Health", "WatchHealth", "Invoke", "Unload", "ListAudit"}
	wants := map[string][]string{
		"Load":        {`"name": "old"`, `"generation": "1"`, "PLUGIN_STATE_SERVING"},
		"ListPlugins": {`"name": "old"`, `"name": "echo"`},
		"Reload":      {`"generation": "2"`, `"previousGeneration": "1"`},
		"Health":      {`"name": "old"`, `"generation": "2"`, "PLUGIN_STATE_SERVING"},
		"WatchHealth": {"HEALTH_EVENT_TYPE_SNAPSHOT", "HEALTH_EVENT_TYPE_SYNCED", "Code: DeadlineExceeded"},
		"Invoke":      {`"payload": "b2xk"`, `"generation": "2"`},
		"Unload":      {"PLUGIN_STATE_STOPPED"},
		"ListAudit":   {`"action": "unload"`, `"action": "reload"`, `"nextPageToken"`, `"hash"`},
	}
	// Every RPC the baseline defines must be exercised here.
	seen := map[string]bool{}
	files.RangeFiles(func(f protoreflect.FileDescriptor) bool {
		for i := 0; i < f.Services().Len(); i++ {
			s := f.Services().Get(i)
			if !strings.HasPrefix(string(s.FullName()), "plugincontrol.v1.") {
				continue
			}
			for j := 0; j < s.Methods().Len(); j++ {
				full := string(s.FullName()) + "/" + string(s.Methods().Get(j).Name())
				if _, ok := requests[full]; !ok {
					t.Errorf("baseline RPC %s is not covered by this test", full)
				}
				seen[full] = true
			}
		}
		return true
	})
	for _, m := range order {
		var full string
		for k := range requests {
			if strings.HasSuffix(k, "/"+m) {
				full = k
			}
		}
		if !seen[full] {
			t.Errorf("%s is not in the baseline", full)
			continue
		}
		out, code := call(full, requests[full])
		if m != "WatchHealth" && code != 0 {
			t.Fatalf("%s with the baseline contract: exit %d\n%s", m, code, out)
		}
		for _, w := range wants[m] {
			if !strings.Contains(out, w) {
				t.Fatalf("%s with the baseline contract: output lacks %q:\n%s", m, w, out)
			}
		}
	}
	// An error with its detail, decoded with the baseline's types.
	out, code := call("plugincontrol.v1.PluginControlService/Reload", `{"name":"echo","spec":{"name":"echo","binary":"notready"}}`)
	if code != 64+int(codes.FailedPrecondition) || !strings.Contains(out, "plugincontrol.v1.CandidateFailure") || !strings.Contains(out, "CANDIDATE_STAGE_READY") {
		t.Fatalf("failed Reload with the baseline contract: exit %d\n%s", code, out)
	}
}

// baselineFiles loads the descriptors of the committed baseline image.
func baselineFiles(t *testing.T) *protoregistry.Files {
	t.Helper()
	b, err := os.ReadFile(baseline)
	if err != nil {
		t.Fatal(err)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(b, &set); err != nil {
		t.Fatalf("%s: %v", baseline, err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		t.Fatalf("%s: %v", baseline, err)
	}
	return files
}

// oldClient is a client generated, at run time, from the baseline contract.
type oldClient struct {
	t     *testing.T
	conn  *grpc.ClientConn
	files *protoregistry.Files
	types *dynamicpb.Types
}

func (c *oldClient) method(full string) protoreflect.MethodDescriptor {
	c.t.Helper()
	svc, name, _ := strings.Cut(full, "/")
	d, err := c.files.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		c.t.Fatalf("baseline lacks %s: %v", svc, err)
	}
	m := d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(name))
	if m == nil {
		c.t.Fatalf("baseline lacks %s", full)
	}
	return m
}

func (c *oldClient) request(m protoreflect.MethodDescriptor, js string) *dynamicpb.Message {
	c.t.Helper()
	req := dynamicpb.NewMessage(m.Input())
	if err := (protojson.UnmarshalOptions{Resolver: c.types}).Unmarshal([]byte(js), req); err != nil {
		c.t.Fatalf("%s request %s: %v", m.FullName(), js, err)
	}
	return req
}

// unary calls full ("pkg.Service/Method") with a JSON request and returns
// the response decoded with the baseline's descriptors.
func (c *oldClient) unary(ctx context.Context, full, js string) (*dynamicpb.Message, error) {
	m := c.method(full)
	resp := dynamicpb.NewMessage(m.Output())
	err := c.conn.Invoke(ctx, "/"+full, c.request(m, js), resp)
	return resp, err
}

// get follows a path of field names through a dynamic message.
func get(t *testing.T, msg protoreflect.Message, path ...string) protoreflect.Value {
	t.Helper()
	var v protoreflect.Value
	for i, name := range path {
		fd := msg.Descriptor().Fields().ByName(protoreflect.Name(name))
		if fd == nil {
			t.Fatalf("%s has no field %q", msg.Descriptor().FullName(), name)
		}
		v = msg.Get(fd)
		if i < len(path)-1 {
			msg = v.Message()
		}
	}
	return v
}

func enumName(t *testing.T, msg protoreflect.Message, path ...string) string {
	t.Helper()
	v := get(t, msg, path...)
	parent := msg
	for _, name := range path[:len(path)-1] {
		parent = parent.Get(parent.Descriptor().Fields().ByName(protoreflect.Name(name))).Message()
	}
	fd := parent.Descriptor().Fields().ByName(protoreflect.Name(path[len(path)-1]))
	ev := fd.Enum().Values().ByNumber(v.Enum())
	if ev == nil {
		return "unknown"
	}
	return string(ev.Name())
}

// TestCompatDynamicBaselineClient round-trips Load, ListPlugins, Reload,
// Invoke, Health, WatchHealth and Unload, and decodes an error detail, with
// messages built from the baseline's descriptors.
func TestCompatDynamicBaselineClient(t *testing.T) {
	d := startDaemon(t)
	files := baselineFiles(t)
	conn, err := grpc.NewClient(d.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := &oldClient{t: t, conn: conn, files: files, types: dynamicpb.NewTypes(files)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	resp, err := c.unary(ctx, "plugincontrol.v1.PluginControlService/Load", `{"spec":{"name":"old","binary":"echo","args":["-x"],"env":{"A":"1"},"config":"Y2Zn","start_timeout":"5s","health_policy":{"panic_threshold":5}}}`)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if get(t, resp, "plugin", "name").String() != "old" || get(t, resp, "plugin", "generation").Uint() != 1 || enumName(t, resp, "plugin", "state") != "PLUGIN_STATE_SERVING" {
		t.Fatalf("Load response: %v", resp)
	}
	if get(t, resp, "plugin", "pid").Int() == 0 || get(t, resp, "report", "stages").List().Len() == 0 {
		t.Fatalf("Load response lacks pid or report: %v", resp)
	}

	resp, err = c.unary(ctx, "plugincontrol.v1.PluginControlService/ListPlugins", `{}`)
	if err != nil {
		t.Fatalf("ListPlugins: %v", err)
	}
	var names []string
	list := get(t, resp, "plugins").List()
	for i := 0; i < list.Len(); i++ {
		names = append(names, get(t, list.Get(i).Message(), "name").String())
	}
	if strings.Join(names, ",") != "echo,old" {
		t.Fatalf("ListPlugins: %v", names)
	}

	resp, err = c.unary(ctx, "plugincontrol.v1.PluginControlService/Reload", `{"name":"old","expected_generation":1,"drain_timeout":"2s"}`)
	if err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if get(t, resp, "plugin", "generation").Uint() != 2 || get(t, resp, "previous_generation").Uint() != 1 {
		t.Fatalf("Reload response: %v", resp)
	}

	resp, err = c.unary(ctx, "plugincontrol.v1.PluginGatewayService/Invoke", `{"plugin":"old","method":"echo","payload":"aGk="}`)
	if err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	if string(get(t, resp, "payload").Bytes()) != "hi" || get(t, resp, "generation").Uint() != 2 {
		t.Fatalf("Invoke response: %v", resp)
	}

	resp, err = c.unary(ctx, "plugincontrol.v1.PluginControlService/Health", `{"names":["old"]}`)
	if err != nil {
		t.Fatalf("Health: %v", err)
	}
	hs := get(t, resp, "plugins").List()
	if hs.Len() != 1 || enumName(t, hs.Get(0).Message(), "state") != "PLUGIN_STATE_SERVING" || get(t, resp, "revision").Uint() == 0 {
		t.Fatalf("Health response: %v", resp)
	}
	rev := get(t, resp, "revision").Uint()

	// WatchHealth from 0: snapshot then SYNCED; then resume from SYNCED's
	// revision and see the Unload as REMOVED.
	m := c.method("plugincontrol.v1.PluginControlService/WatchHealth")
	desc := &grpc.StreamDesc{StreamName: "WatchHealth", ServerStreams: true}
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	stream, err := conn.NewStream(sctx, desc, "/plugincontrol.v1.PluginControlService/WatchHealth")
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(c.request(m, `{"names":["old"]}`)); err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	recv := func() *dynamicpb.Message {
		t.Helper()
		ev := dynamicpb.NewMessage(m.Output())
		if err := stream.RecvMsg(ev); err != nil {
			t.Fatalf("WatchHealth Recv: %v", err)
		}
		return ev
	}
	if ev := recv(); enumName(t, ev, "event", "type") != "HEALTH_EVENT_TYPE_SNAPSHOT" || get(t, ev, "event", "health", "name").String() != "old" {
		t.Fatalf("first event: %v", ev)
	}
	ev := recv()
	if enumName(t, ev, "event", "type") != "HEALTH_EVENT_TYPE_SYNCED" || get(t, ev, "event", "revision").Uint() < rev {
		t.Fatalf("second event: %v", ev)
	}

	// An error with its detail, decoded with the baseline's types.
	_, err = c.unary(ctx, "plugincontrol.v1.PluginControlService/Reload", `{"name":"old","spec":{"name":"old","binary":"notready"}}`)
	st := status.Convert(err)
	// The first detail is the CandidateFailure, as the baseline knew it;
	// details added since (the ErrorInfo) follow it.
	if st.Code() != codes.FailedPrecondition || len(st.Proto().GetDetails()) < 1 {
		t.Fatalf("failed Reload: %v", err)
	}
	anyDetail := st.Proto().GetDetails()[0]
	mt, err := c.types.FindMessageByURL(anyDetail.GetTypeUrl())
	if err != nil {
		t.Fatalf("the baseline does not know the detail %s: %v", anyDetail.GetTypeUrl(), err)
	}
	cf := mt.New()
	if err := proto.Unmarshal(anyDetail.GetValue(), cf.Interface()); err != nil {
		t.Fatal(err)
	}
	if enumName(t, cf, "stage") != "CANDIDATE_STAGE_READY" || get(t, cf, "active_generation").Uint() != 2 {
		t.Fatalf("CandidateFailure: %v", cf)
	}

	resp, err = c.unary(ctx, "plugincontrol.v1.PluginControlService/Unload", `{"name":"old"}`)
	if err != nil || enumName(t, resp, "plugin", "state") != "PLUGIN_STATE_STOPPED" {
		t.Fatalf("Unload: %v %v", resp, err)
	}
	for {
		ev := recv()
		if enumName(t, ev, "event", "type") == "HEALTH_EVENT_TYPE_REMOVED" {
			if get(t, ev, "event", "health", "name").String() != "old" {
				t.Fatalf("REMOVED: %v", ev)
			}
			break
		}
	}
	scancel()
	for {
		if err := stream.RecvMsg(dynamicpb.NewMessage(m.Output())); err != nil {
			if !errors.Is(err, io.EOF) && status.Code(err) != codes.Canceled {
				t.Fatalf("stream end: %v", err)
			}
			break
		}
	}
}
