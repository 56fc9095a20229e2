//go:build !linux

// plugind runs on Linux only: it starts, watches and contains plugin
// processes with pidfds, Pdeathsig, process groups, cgroup v2 and prctl.
// Elsewhere the command builds and says so. (The client, the plugin SDK,
// pluginctl and the store build everywhere.)
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Fprintf(os.Stderr, "plugind runs on Linux only (it needs pidfd, Pdeathsig, cgroup v2 and prctl); this is %s/%s. "+
		"pluginctl and the Go and TypeScript clients work from here against a plugind on Linux.\n", runtime.GOOS, runtime.GOARCH)
	os.Exit(1)
}
