// Command noisycookie is badcookie with a chatty start: it logs about 60 KiB
// to stderr, then go-plugin refuses the host's cookie (saying so on stderr)
// and exits. Its stdout reaches EOF while the host may still be reading
// that stderr, so a host that judges the failure by stderr must read all of
// it first.
package main

import (
	"bytes"
	"os"

	"github.com/plugincontrol/plugincontrol/internal/echo"
	"github.com/plugincontrol/plugincontrol/plugin"
)

func main() {
	_, _ = os.Stderr.Write(bytes.Repeat([]byte("noisycookie: warming up the cache, please wait\n"), 1300))
	h := plugin.HandshakeConfig()
	h.MagicCookieKey = "SOME_OTHER_PLUGIN_SYSTEM"
	h.MagicCookieValue = "not-plugincontrol"
	plugin.Serve(&echo.Plugin{}, plugin.WithHandshake(h))
}
