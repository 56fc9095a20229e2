package store_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/store"
)

// A manager whose desired state and audit record survive restarts.
func Example() {
	dir, _ := os.MkdirTemp("", "plugind-state-")
	defer os.RemoveAll(dir)
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer db.Close()
	m, err := manager.New(manager.Config{PluginDir: dir, Store: db, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close(context.Background())
	// m.Restore(ctx) relaunches what was loaded before the last stop.
	recs, _ := db.Plugins()
	fmt.Println("plugins to restore:", len(recs))
	// Output: plugins to restore: 0
}
