package hub_test

import (
	"context"
	"fmt"

	"github.com/plugincontrol/plugincontrol/manager/hub"
	"github.com/plugincontrol/plugincontrol/manager/record"
)

// Publish health records and follow them with a watch: a snapshot, SYNCED,
// then each change.
func Example() {
	h := hub.New(hub.Config{})
	defer h.Close()
	h.Publish(hub.EventChanged, record.Health{Name: "echo", State: record.StateStarting})

	w, _ := h.Subscribe([]string{"echo"}, 0, 10)
	defer w.Close()
	h.Publish(hub.EventChanged, record.Health{Name: "echo", State: record.StateServing, Generation: 1})

	ctx := context.Background()
	for range 2 {
		evs, _ := w.Next(ctx)
		for _, e := range evs {
			fmt.Println(e.Revision, e.Type, e.Health.Name, e.Health.State)
		}
	}
	// Output:
	// 1 SNAPSHOT echo STARTING
	// 1 SYNCED  UNKNOWN
	// 2 CHANGED echo SERVING
}
