package protodoc

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// TestRenderNamesEverything renders the compiled-in descriptors (no source
// info, so no comments) and checks every RPC, field and enum value is named.
func TestRenderNamesEverything(t *testing.T) {
	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(f protoreflect.FileDescriptor)
	add = func(f protoreflect.FileDescriptor) {
		if seen[f.Path()] {
			return
		}
		seen[f.Path()] = true
		for i := 0; i < f.Imports().Len(); i++ {
			add(f.Imports().Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(f))
	}
	for _, f := range []protoreflect.FileDescriptor{plugincontrolv1.File_plugincontrol_v1_control_proto, plugincontrolv1.File_plugincontrol_v1_gateway_proto} {
		add(f)
	}
	b, err := proto.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	files, err := Load(b)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := Render(&out, files, "plugincontrol.", "API"); err != nil {
		t.Fatal(err)
	}
	doc := out.String()
	for _, want := range []string{
		"#### rpc WatchHealth", "stream [`plugincontrol.v1.WatchHealthResponse`]",
		"### message plugincontrol.v1.PluginSpec", "| `health_policy` | 8 |", "map<`string`, `string`>",
		"### enum plugincontrol.v1.PluginState", "| `PLUGIN_STATE_SERVING` | 2 |",
		"#### rpc Invoke", "`google.protobuf.Duration`",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("reference lacks %q", want)
		}
	}
	if strings.Contains(doc, "google.protobuf.Duration is") || strings.Contains(doc, "### message google.") {
		t.Error("well-known types documented")
	}
}
