// Command badversion is a misbehaving plugin that speaks an unsupported
// handshake protocol version.
package main

import (
	"github.com/plugincontrol/plugincontrol/internal/echo"
	"github.com/plugincontrol/plugincontrol/plugin"
)

func main() {
	h := plugin.HandshakeConfig()
	h.ProtocolVersion = 99
	plugin.Serve(&echo.Plugin{}, plugin.WithHandshake(h))
}
