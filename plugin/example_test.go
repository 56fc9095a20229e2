package plugin_test

import (
	"context"
	"errors"

	"github.com/plugincontrol/plugincontrol/plugin"
)

type greeter struct{ greeting string }

func (g *greeter) Info() plugin.Info {
	return plugin.Info{Name: "greeter", Version: "0.1.0", Methods: []string{"greet"}}
}

// Ready receives the spec's config: here, the greeting to use.
func (g *greeter) Ready(_ context.Context, config []byte) error {
	if len(config) == 0 {
		return errors.New("config must hold the greeting")
	}
	g.greeting = string(config)
	return nil
}

func (g *greeter) Invoke(_ context.Context, method string, payload []byte) ([]byte, error) {
	return append([]byte(g.greeting+", "), payload...), nil
}

// A plugin's main: implement plugin.Plugin and serve it. A panic in Invoke
// reaches the caller as codes.Internal with a PanicDetail; the process lives.
func Example() {
	if false { // Serve takes over the process: it is started by plugind.
		plugin.Serve(&greeter{})
	}
}
