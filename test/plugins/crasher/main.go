// Command crasher is a misbehaving plugin that starts and passes its
// readiness probe, then dies when a background goroutine panics. The delay
// comes from its config ("crash_after=DURATION", default 100ms), so every
// start crashes: the supervisor's restart limit is tested with it.
package main

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/echo"
	"github.com/plugincontrol/plugincontrol/plugin"
)

type crasher struct {
	echo.Plugin
	once sync.Once
}

func (c *crasher) Info() plugin.Info {
	i := c.Plugin.Info()
	i.Name = "crasher"
	return i
}

func (c *crasher) Ready(_ context.Context, config []byte) error {
	delay := 100 * time.Millisecond
	if v, ok := strings.CutPrefix(string(config), "crash_after="); ok {
		if d, err := time.ParseDuration(v); err == nil {
			delay = d
		}
	}
	c.once.Do(func() {
		go func() {
			time.Sleep(delay)
			panic("crasher: background worker lost its connection")
		}()
	})
	return nil
}

func main() { plugin.Serve(&crasher{}) }
