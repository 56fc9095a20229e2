package testbin

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// Main is the TestMain of packages that run real processes: it builds what
// the tests need into a fresh directory (build gets its path, and *dir is set
// to it), runs the tests, and fails the run when any process started from
// that directory is still running or goroutines leaked (opts tell goleak
// what to ignore). Fuzzing workers skip the build: they run only the fuzz
// target.
func Main(m *testing.M, dir *string, build func(dir string) error, opts ...goleak.Option) {
	flag.Parse()
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		os.Exit(m.Run())
	}
	d, err := os.MkdirTemp("", "pc-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := build(d); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(d)
		os.Exit(1)
	}
	*dir = d
	code := m.Run()
	if left := ProcessesIn(d); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: processes left running: %v\n", left)
		code = 1
	}
	os.RemoveAll(d)
	if code == 0 {
		if err := goleak.Find(opts...); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: goroutines leaked: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
