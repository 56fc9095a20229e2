// Command echo is the example plugin: methods echo, sleep and panic.
package main

import (
	"github.com/plugincontrol/plugincontrol/internal/echo"
	"github.com/plugincontrol/plugincontrol/plugin"
)

func main() { plugin.Serve(&echo.Plugin{}) }
