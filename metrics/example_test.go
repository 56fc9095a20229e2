package metrics_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/metrics"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Wire metrics into a manager and serve them over HTTP.
func Example() {
	met := metrics.New()
	dir, _ := os.MkdirTemp("", "plugins-")
	defer os.RemoveAll(dir)
	m, err := manager.New(manager.Config{PluginDir: dir, Logger: slog.New(slog.DiscardHandler), OnCandidate: met.ObserveCandidate})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close(context.Background())
	met.Attach(m)

	srv := httptest.NewServer(promhttp.HandlerFor(met.Registry, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, _ := srv.Client().Get(srv.URL)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "plugincontrol_health_") || strings.HasPrefix(l, "plugincontrol_lifecycle_") {
			fmt.Println(l)
		}
	}
	// Output:
	// plugincontrol_health_events_coalesced_total 0
	// plugincontrol_health_revision 0
	// plugincontrol_health_watchers 0
	// plugincontrol_health_watchers_evicted_total 0
	// plugincontrol_lifecycle_refused_transitions_total 0
}
