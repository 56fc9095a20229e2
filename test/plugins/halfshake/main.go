// Command halfshake is a misbehaving plugin that writes half a go-plugin
// handshake line (no address, no protocol, no newline) and exits.
package main

import "os"

func main() {
	_, _ = os.Stdout.Write([]byte("1|1|unix|"))
	os.Exit(0)
}
