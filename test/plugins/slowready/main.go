// Command slowready is a misbehaving plugin that handshakes and describes
// itself as echo, but whose readiness probe never answers: Ready blocks
// until the host gives up (its context ends).
package main

import (
	"context"

	"github.com/plugincontrol/plugincontrol/internal/echo"
	"github.com/plugincontrol/plugincontrol/plugin"
)

type slowready struct{ echo.Plugin }

func (*slowready) Ready(ctx context.Context, _ []byte) error {
	<-ctx.Done()
	return ctx.Err()
}

func main() { plugin.Serve(&slowready{}) }
