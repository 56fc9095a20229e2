package endpoint_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plugincontrol/plugincontrol/endpoint"
)

// TestPathFitsEveryName: an endpoint's path is NAME.sock where that fits a
// unix socket path, else a hashed name ('_' and 12 hex digits, never a
// plugin name) in the same directory, else in the short directory; it
// depends on the name alone, and differs between names.
func TestPathFitsEveryName(t *testing.T) {
	base := t.TempDir()
	short := filepath.Join(base, "s")
	long := filepath.Join(base, strings.Repeat("d", 100-len(base)))
	for _, c := range []struct {
		dir, name, want string
	}{
		{base, "kv", filepath.Join(base, "kv.sock")},
		{filepath.Join(base, strings.Repeat("m", 40)), "n" + strings.Repeat("x", 62), filepath.Join(base, strings.Repeat("m", 40), "_")},
		{long, "n" + strings.Repeat("x", 62), filepath.Join(short, "_")},
	} {
		s, err := endpoint.New(c.dir, endpoint.WithShortDir(short))
		if err != nil {
			t.Fatal(err)
		}
		p := s.Path(c.name)
		if len(p) > 107 || !strings.HasPrefix(p, c.want) || p != s.Path(c.name) || p == s.Path(c.name[:len(c.name)-1]+"y") {
			t.Errorf("Path(%q) under %d-byte dir = %q (%d bytes), want a stable, distinct path of at most 107 bytes starting %q", c.name, len(c.dir), p, len(p), c.want)
		}
		s.Shutdown()
	}
	if _, err := os.Stat(short); !os.IsNotExist(err) {
		t.Errorf("the short directory was created before an endpoint needed it: %v", err)
	}
}
