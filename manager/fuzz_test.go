package manager

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzSpecValidate: Validate never panics, and an accepted spec's name and
// binary obey the rules the API promises.
func FuzzSpecValidate(f *testing.F) {
	for _, s := range []struct{ name, binary, sha, arg, envK string }{
		{"echo", "echo", "", "", ""},
		{"a", "sub/echo", strings.Repeat("ab", 32), "-v", "HOME"},
		{"Echo", "../x", "zz", "\x00", "PLUGIN_X"},
		{"e\xff", "/bin/sh", "", "", "1BAD"},
		{strings.Repeat("a", 64), "a//b", "", "", ""},
		{"x-", "./echo", "", "", ""},
	} {
		f.Add(s.name, s.binary, s.sha, s.arg, s.envK)
	}
	f.Fuzz(func(t *testing.T, name, binary, sha, arg, envK string) {
		if validName(name) != nameRE.MatchString(name) {
			t.Fatalf("validName(%q) = %v, the rule says %v", name, validName(name), nameRE.MatchString(name))
		}
		s := Spec{Name: name, Binary: binary, SHA256: sha, Args: []string{arg}, Env: map[string]string{envK: "v"}}
		if err := s.Validate(); err != nil {
			if _, ok := err.(*InvalidError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if !nameRE.MatchString(name) {
			t.Fatalf("accepted name %q", name)
		}
		if filepath.IsAbs(binary) || !utf8.ValidString(binary) || filepath.Clean(binary) != binary {
			t.Fatalf("accepted binary %q", binary)
		}
		for _, el := range strings.Split(binary, "/") {
			if el == ".." {
				t.Fatalf("accepted binary %q with ..", binary)
			}
		}
	})
}

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
