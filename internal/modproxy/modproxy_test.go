package modproxy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/module"
	modzip "golang.org/x/mod/zip"
)

func TestRelease(t *testing.T) {
	gomod := []byte("module " + Path + "/client\n\ngo 1.22\n\nrequire (\n\t" + Path + "/gen v0.1.0\n\tgoogle.golang.org/grpc v1.70.0\n)\n")
	gosum := []byte("google.golang.org/grpc v1.70.0 h1:abc=\n" + Path + "/gen v0.0.9 h1:old=\n")
	sums := map[string]hashes{Path + "/gen": {zip: "h1:zip=", mod: "h1:mod="}}
	mod, sum, err := release(gomod, gosum, "v0.2.0", sums)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mod), Path+"/gen v0.2.0") || strings.Contains(string(mod), "v0.1.0") {
		t.Errorf("go.mod does not require gen at v0.2.0:\n%s", mod)
	}
	want := Path + "/gen v0.2.0 h1:zip=\n" + Path + "/gen v0.2.0/go.mod h1:mod=\ngoogle.golang.org/grpc v1.70.0 h1:abc=\n"
	if string(sum) != want {
		t.Errorf("go.sum:\n%s\nwant:\n%s", sum, want)
	}

	// A sibling not released before, or a replace directive, is refused.
	if _, _, err := release(gomod, gosum, "v0.2.0", nil); err == nil || !strings.Contains(err.Error(), "not released before it") {
		t.Errorf("gen not released yet: %v", err)
	}
	replaced := append(append([]byte{}, gomod...), "replace "+Path+"/gen => ../gen\n"...)
	if _, _, err := release(replaced, gosum, "v0.2.0", sums); err == nil || !strings.Contains(err.Error(), "replace") {
		t.Errorf("a replace directive: %v", err)
	}
}

// TestBuild makes the proxy of this repository and checks each zip the way
// the go command does on download.
func TestBuild(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := Build(context.Background(), root, out, "not-a-version"); err == nil {
		t.Fatal("a bad version was accepted")
	}
	if err := Build(context.Background(), root, out, "v0.0.0-unit"); err != nil {
		t.Fatal(err)
	}
	for _, dir := range Modules {
		mv := module.Version{Path: modulePath(dir), Version: "v0.0.0-unit"}
		esc, _ := module.EscapePath(mv.Path)
		vdir := filepath.Join(out, esc, "@v")
		cf, err := modzip.CheckZip(mv, filepath.Join(vdir, mv.Version+".zip"))
		if err != nil {
			t.Fatalf("%s: %v", mv, err)
		}
		if err := cf.Err(); err != nil {
			t.Errorf("%s: %v", mv, err)
		}
		for _, f := range cf.Valid {
			// The root module's zip leaves out the nested modules and what
			// git ignores.
			if dir == "." && (strings.HasPrefix(f, "client/") || strings.HasPrefix(f, "bin/") || strings.Contains(f, "node_modules/")) {
				t.Errorf("%s holds %s", mv, f)
			}
		}
		list, err := os.ReadFile(filepath.Join(vdir, "list"))
		if err != nil || strings.TrimSpace(string(list)) != mv.Version {
			t.Errorf("%s list: %q %v", mv, list, err)
		}
	}
}
