// Command exitstart is a misbehaving plugin that exits before the handshake.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "exitstart: missing required configuration, giving up")
	os.Exit(3)
}
