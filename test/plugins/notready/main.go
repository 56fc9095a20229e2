// Command notready is a misbehaving plugin whose readiness probe fails.
package main

import (
	"github.com/plugincontrol/plugincontrol/internal/echo"
	"github.com/plugincontrol/plugincontrol/plugin"
)

func main() { plugin.Serve(&echo.Plugin{NotReady: "backend database unreachable"}) }
