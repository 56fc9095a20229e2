package record_test

import (
	"fmt"

	"github.com/plugincontrol/plugincontrol/manager/record"
)

// A spec is checked field by field; the error names the first bad one.
func ExampleSpec_Validate() {
	s := record.Spec{Name: "echo", Binary: "../echo"}
	fmt.Println(s.Validate())
	s.Binary = "echo"
	s.Policy.PanicThreshold = -1
	fmt.Println(s.Validate())
	s.Policy.PanicThreshold = 3
	fmt.Println(s.Validate())
	// Output:
	// invalid binary: "../echo" contains ".."; name a file inside the plugin directory
	// invalid health_policy.panic_threshold: -1 is outside 0..1000
	// <nil>
}
