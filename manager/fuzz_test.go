package manager

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzResolveBinary: whatever the name, a resolved path lies inside the
// plugin directory, is a regular executable file, and symlinks never lead
// out.
func FuzzResolveBinary(f *testing.F) {
	dir := f.TempDir()
	outside := f.TempDir()
	must := func(err error) {
		if err != nil {
			f.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "ok"), []byte("#!/bin/sh\n"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "noexec"), []byte("x"), 0o644))
	must(os.WriteFile(filepath.Join(outside, "evil"), []byte("#!/bin/sh\n"), 0o755))
	must(os.Mkdir(filepath.Join(dir, "sub"), 0o755))
	must(os.Symlink(filepath.Join(outside, "evil"), filepath.Join(dir, "escape")))
	must(os.Symlink("../ok", filepath.Join(dir, "sub", "up")))
	must(os.Symlink("..", filepath.Join(dir, "sub", "parent")))
	must(os.Symlink(outside, filepath.Join(dir, "outdir")))
	real, _ := filepath.EvalSymlinks(dir)
	for _, s := range []string{"ok", "noexec", "escape", "sub/up", "sub/parent/ok", "outdir/evil", "../ok", "/etc/passwd", "sub", "", "ok\x00", "sub/../ok"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		p, err := resolveBinary(real, name)
		if err != nil {
			return
		}
		rel, rerr := filepath.Rel(real, p)
		if rerr != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			t.Fatalf("%q resolved outside the directory: %s", name, p)
		}
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			t.Fatalf("%q resolved to a non-executable or irregular file %s", name, p)
		}
		if strings.Contains(p, outside) {
			t.Fatalf("%q resolved into the outside directory: %s", name, p)
		}
	})
}
