package docs

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// groups are folders the table describes as one row: the folders below
// them (generated code, fixture plugins, the bench's parts, a tool's
// command) are covered by it. A top-level folder is covered by any row
// below it.
var groups = []string{"gen", "test/plugins", "examples/plugins", "internal/testbin", "internal/protodoc", "bench", "sdk/ts", "deploy"}

// TestWhatIsWhere: README's "What is where" names every folder that holds
// a Go package or a top-level part of the repository, and every path it
// names exists.
func TestWhatIsWhere(t *testing.T) {
	root := testbin.Root()
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "\n## What is where\n")
	if start < 0 {
		t.Fatal(`README.md has no "## What is where"`)
	}
	section := text[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	listed := map[string]bool{}
	cell := regexp.MustCompile("`([^`]+)`")
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		first := strings.SplitN(line[1:], "|", 2)[0]
		for _, m := range cell.FindAllStringSubmatch(first, -1) {
			p := strings.TrimSuffix(m[1], "/")
			if _, err := os.Stat(filepath.Join(root, p)); err != nil {
				t.Errorf("What is where names %s, which is not in the repository", m[1])
			}
			listed[p] = true
		}
	}

	covered := func(dir string) bool {
		if !strings.Contains(dir, "/") { // a top-level folder: itself or a row below it
			for p := range listed {
				if p == dir || strings.HasPrefix(p, dir+"/") {
					return true
				}
			}
			return false
		}
		for d := dir; d != "."; d = filepath.Dir(d) {
			if listed[d] && (d == dir || slices.Contains(groups, d)) {
				return true
			}
		}
		return false
	}
	var dirs []string
	for _, mod := range []string{".", "client", "plugin", "gen"} {
		cmd := exec.Command("go", "list", "-f", "{{.Dir}}", "./...")
		cmd.Dir = filepath.Join(root, mod)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list in %s: %v", mod, err)
		}
		for _, d := range strings.Fields(string(out)) {
			rel, _ := filepath.Rel(root, d)
			dirs = append(dirs, rel)
		}
	}
	tracked, err := exec.Command("git", "-C", root, "ls-files").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	for _, f := range strings.Fields(string(tracked)) {
		if top, _, ok := strings.Cut(f, "/"); ok && !strings.HasPrefix(top, ".") && top != "cmd" && top != "internal" && top != "test" && top != "examples" {
			dirs = append(dirs, top)
		}
	}
	slices.Sort(dirs)
	for _, d := range slices.Compact(dirs) {
		if !covered(d) {
			t.Errorf("README's What is where does not list %s/", d)
		}
	}
}
