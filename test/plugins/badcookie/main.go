// Command badcookie is a misbehaving plugin built with another handshake
// cookie: it refuses the host's cookie and exits.
package main

import (
	"github.com/plugincontrol/plugincontrol/internal/echo"
	"github.com/plugincontrol/plugincontrol/plugin"
)

func main() {
	h := plugin.HandshakeConfig()
	h.MagicCookieKey = "SOME_OTHER_PLUGIN_SYSTEM"
	h.MagicCookieValue = "not-plugincontrol"
	plugin.Serve(&echo.Plugin{}, plugin.WithHandshake(h))
}
