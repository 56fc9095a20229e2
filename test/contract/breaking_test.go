package contract_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// copyTree copies the directory from into to.
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// buf runs the pinned buf (built by TestMain) in dir.
func buf(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(bins, "buf"), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestBreakingCheckCatchesRenumbering: the two checks make check runs (buf
// breaking against the committed baseline, and against the previous
// commit) pass on today's protos and fail on a copy whose fields were
// renumbered: ListAudit's page_size, a field added long after the first
// release, and WatchHealthRequest.view.
func TestBreakingCheckCatchesRenumbering(t *testing.T) {
	root := testbin.Root()
	against := []string{baseline, filepath.Join(root, ".git") + "#ref=HEAD"}
	for _, a := range against {
		if out, err := buf(t, root, "breaking", "--against", a); err != nil {
			t.Fatalf("today's protos against %s: %v\n%s", a, err, out)
		}
	}
	for _, c := range []struct{ file, from, to, want string }{
		{"control.proto", "uint32 page_size = 4;", "uint32 page_size = 14;", "ListAuditRequest"},
		{"control.proto", "HealthView view = 3;", "HealthView view = 13;", "WatchHealthRequest"},
	} {
		dir := t.TempDir()
		copyTree(t, filepath.Join(root, "proto"), filepath.Join(dir, "proto"))
		b, err := os.ReadFile(filepath.Join(root, "buf.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "buf.yaml"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "proto", "plugincontrol", "v1", c.file)
		src, err := os.ReadFile(path)
		if err != nil || !strings.Contains(string(src), c.from) {
			t.Fatalf("%s has no %q (%v): update this test", c.file, c.from, err)
		}
		if err := os.WriteFile(path, []byte(strings.Replace(string(src), c.from, c.to, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, a := range against {
			out, err := buf(t, dir, "breaking", "--against", a)
			if err == nil || !strings.Contains(out, c.want) {
				t.Errorf("renumbered %q in %s passed buf breaking against %s (%v):\n%s", c.from, c.file, a, err, out)
			}
		}
	}
}
