package store_test

import (
	"os/exec"
	"strings"
	"testing"
)

// A Store depends on the manager's data, never on its runtime: no
// go-plugin, no process control, no manager package (only manager/record).
func TestImportsDataOnly(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		switch {
		case strings.Contains(dep, "hashicorp/go-plugin"),
			strings.HasSuffix(dep, "/internal/proc"),
			strings.HasSuffix(dep, "/internal/launch"),
			strings.HasSuffix(dep, "plugincontrol/plugincontrol/manager"):
			t.Errorf("store imports %s", dep)
		}
	}
	if !strings.Contains(string(out), "plugincontrol/manager/record") {
		t.Fatalf("go list -deps shows no manager/record; output:\n%s", out)
	}
}
