// Command flood is a misbehaving plugin that floods its stderr: about 4 MiB
// before plugin.Serve (through the stderr pipe, read by go-plugin) and about
// 4 MiB after (through go-plugin's stdio stream), including a line of 3 MiB
// without a newline. Otherwise it is the echo plugin. The host must stay
// responsive and keep only a bounded tail of it. With the argument
// "-notready" its readiness probe fails after the first flood.
package main

import (
	"bytes"
	"os"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/echo"
	"github.com/plugincontrol/plugincontrol/plugin"
)

// flood writes about 4 MiB to stderr: 32768 short lines, then one line of
// 3 MiB (written 1 MiB at a time), then a marker line.
func flood(tag string) {
	short := bytes.Repeat([]byte("flood "+tag+" short line 0123456789abcdef\n"), 1<<15) // ~1.2 MiB
	long := bytes.Repeat([]byte{'x'}, 1<<20)                                            // 1 MiB, no newline
	_, _ = os.Stderr.Write(short)
	for range 3 {
		_, _ = os.Stderr.Write(long)
	}
	_, _ = os.Stderr.Write([]byte("\nflood " + tag + " done\n"))
}

func main() {
	p := &echo.Plugin{}
	for _, a := range os.Args[1:] {
		if a == "-notready" {
			p.NotReady = "flood: not ready after flooding stderr"
		}
	}
	flood("before")
	go func() {
		// plugin.Serve redirects os.Stderr to go-plugin's stdio stream;
		// give it a moment to do so.
		time.Sleep(50 * time.Millisecond)
		flood("after")
	}()
	plugin.Serve(p)
}
