package manager_test

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"go.uber.org/goleak"
)

// pluginDir holds the example plugins, built once for the package.
var pluginDir string

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		// A fuzzing worker runs only the fuzz target: no plugins needed.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "pc-plugins-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := testbin.Plugins(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pluginDir = dir
	code := m.Run()
	if left := testbin.ProcessesIn(dir); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: plugin processes left running: %v\n", left)
		code = 1
	}
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: goroutines leaked: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
