package main

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// pluginDir holds the built plugins (go-plugin's KV example as "kv").
var pluginDir string

func TestMain(m *testing.M) { testbin.Main(m, &pluginDir, testbin.Plugins) }

// The host program, run as its main does: go-plugin's KV plugin loaded
// with the host's own protocol and reloaded three times under calls.
func Example() {
	if err := run(context.Background(), pluginDir, os.Stdout); err != nil {
		fmt.Println(err)
	}
	// Output:
	// loaded kv: generation 1, protocol kv
	// reloaded kv: generation 1 -> 2
	// reloaded kv: generation 2 -> 3
	// reloaded kv: generation 3 -> 4
	// calls during the reloads: none failed
	// old generations: all stopped
	// greeting: "hello"
}
