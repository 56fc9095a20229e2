package spec_test

import (
	"fmt"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/spec"
)

// A spec from a file and the spec the daemon reports for it are the same
// plugin, however each spells its defaults: apply compares them with Equal
// and shows Diff.
func Example() {
	file := &pb.PluginSpec{Name: "echo", Binary: "echo", HealthPolicy: &pb.HealthPolicy{PanicThreshold: 3}}
	daemon := &pb.PluginSpec{Name: "echo", Binary: "echo", HealthPolicy: &pb.HealthPolicy{
		PanicThreshold: 3, UnhealthyAction: pb.UnhealthyAction_UNHEALTHY_ACTION_NONE}}
	fmt.Println(spec.Equal(file, daemon))

	upgraded := &pb.PluginSpec{Name: "echo", Binary: "echo", Env: map[string]string{"VERSION": "2"}}
	for _, d := range spec.Diff(file, upgraded) {
		fmt.Println(d)
	}
	// Output:
	// true
	// env: (unset) → {"VERSION":"2"}
	// health_policy: {"panic_threshold":3} → (unset)
}
