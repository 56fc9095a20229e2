package metrics_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
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

// Fleet metrics read what the node's agent and controller hold, at scrape
// time.
func ExampleMetrics_AttachFleet() {
	met := metrics.New()
	met.AttachFleet(func() metrics.FleetStats {
		return metrics.FleetStats{Leading: true, Rollouts: []*pb.Rollout{{
			Plugin: "echo", State: pb.RolloutState_ROLLOUT_STATE_RUNNING, Wave: 1,
			Nodes: []*pb.RolloutNode{
				{Node: "a", State: pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATED},
				{Node: "b", State: pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATING},
				{Node: "c", State: pb.RolloutNodeState_ROLLOUT_NODE_STATE_PENDING},
			},
		}}}
	})
	srv := httptest.NewServer(promhttp.HandlerFor(met.Registry, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, _ := srv.Client().Get(srv.URL)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "plugincontrol_fleet_") && !strings.HasSuffix(l, " 0") {
			fmt.Println(l)
		}
	}
	// Output:
	// plugincontrol_fleet_leader 1
	// plugincontrol_fleet_rollout_nodes{plugin="echo",state="pending"} 1
	// plugincontrol_fleet_rollout_nodes{plugin="echo",state="updated"} 1
	// plugincontrol_fleet_rollout_nodes{plugin="echo",state="updating"} 1
	// plugincontrol_fleet_rollout_state{plugin="echo",state="running"} 1
	// plugincontrol_fleet_rollout_wave{plugin="echo"} 1
}
