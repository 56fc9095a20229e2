package record

import (
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
		if ValidName(name) != nameRE.MatchString(name) {
			t.Fatalf("ValidName(%q) = %v, the rule says %v", name, ValidName(name), nameRE.MatchString(name))
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
