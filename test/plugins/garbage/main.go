// Command garbage is a misbehaving plugin that prints to stdout before the
// handshake line, which breaks go-plugin's handshake.
package main

import (
	"fmt"

	"github.com/plugincontrol/plugincontrol/internal/echo"
	"github.com/plugincontrol/plugincontrol/plugin"
)

func main() {
	fmt.Println("hello from garbage, this is not a handshake")
	plugin.Serve(&echo.Plugin{})
}
