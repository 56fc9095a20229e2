// Command chatter is a test plugin that logs heavily to its stderr (the
// real descriptor 2, as the log package and panics write it) whether or
// not anyone reads: "chatter N" every millisecond, numbered from 1. Its
// method "count" answers the last N written, so a test sees that it went
// on writing (it was neither blocked on a full pipe nor killed by SIGPIPE)
// while no plugind ran.
package main

import (
	"context"
	"fmt"
	"log"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/plugincontrol/plugincontrol/plugin"
)

type chatter struct{ n atomic.Int64 }

func (c *chatter) Info() plugin.Info {
	return plugin.Info{Name: "chatter", Version: "1.0.0", Methods: []string{"count"}}
}

func (c *chatter) Ready(context.Context, []byte) error { return nil }

func (c *chatter) Invoke(_ context.Context, method string, _ []byte) ([]byte, error) {
	if method != "count" {
		return nil, fmt.Errorf("unknown method %q", method)
	}
	return []byte(strconv.FormatInt(c.n.Load(), 10)), nil
}

func main() {
	c := &chatter{}
	// The log package writes to descriptor 2 directly (it took os.Stderr
	// before plugin.Serve redirects the variable to go-plugin's stream).
	log.SetFlags(0)
	go func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for range t.C {
			log.Printf("[INFO] chatter %d", c.n.Add(1))
		}
	}()
	plugin.Serve(c)
}
