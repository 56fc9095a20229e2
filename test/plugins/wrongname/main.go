// Command wrongname is a misbehaving plugin that describes itself as
// another plugin ("notecho") than the echo it replaces.
package main

import (
	"github.com/plugincontrol/plugincontrol/internal/echo"
	"github.com/plugincontrol/plugincontrol/plugin"
)

func main() { plugin.Serve(&echo.Plugin{Name: "notecho"}) }
