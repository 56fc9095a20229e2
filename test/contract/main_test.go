// Package contract_test drives the real plugind with the real grpcurl and
// with clients built from the committed baseline contract: the golden
// transcripts pin what operators and scripts see on the wire, and the
// compatibility tests prove that a client of the previous contract still
// works against today's server.
package contract_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// bins holds plugind, pluginctl, grpcurl and the example plugins (bins/plugins);
// image is a buf image of today's protos, baseline the committed one.
var (
	bins     string
	image    string
	baseline = filepath.Join(testbin.Root(), "proto", "baseline.binpb")
)

func TestMain(m *testing.M) {
	testbin.Main(m, &bins, func(dir string) error {
		if err := testbin.DaemonBinaries(dir, "github.com/fullstorydev/grpcurl/cmd/grpcurl", "github.com/bufbuild/buf/cmd/buf"); err != nil {
			return err
		}
		image = filepath.Join(dir, "image.binpb")
		cmd := exec.Command("go", "tool", "-modfile=tools/go.mod", "buf", "build", "-o", image)
		cmd.Dir = testbin.Root()
		cmd.Env = append(os.Environ(), "GOWORK=off") // tools are outside the workspace
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("buf build: %v\n%s", err, out)
		}
		return nil
	})
}

// startDaemon runs the built plugind with echo loaded, in a fresh state
// directory, and waits until echo serves. SIGTERM stops it at cleanup.
func startDaemon(t *testing.T) *testbin.Daemon {
	t.Helper()
	return testbin.StartDaemon(t, testbin.DaemonOptions{
		Bin:  bins,
		Load: []string{"echo"},
	})
}

// grpcurl runs the built grpcurl and returns its combined output and exit
// code (64 + the gRPC status code on an RPC error).
func grpcurl(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(bins, "grpcurl"), args...).CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("grpcurl %v: %v", args, err)
	}
	return string(out), code
}
