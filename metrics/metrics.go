// Package metrics exposes plugind's Prometheus metrics: RPC metrics from
// go-grpc-middleware's prometheus provider, and plugin metrics read from the
// manager at scrape time (state, failures by class, restarts, bakes, watchers,
// coalesced events) or counted as they happen (candidate pipeline runs).
package metrics

import (
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics holds the collectors. Create it before the manager (its
// ObserveCandidate goes into manager.Config.OnCandidate), then Attach the
// manager.
type Metrics struct {
	// Registry is what the HTTP handler serves.
	Registry *prometheus.Registry
	// GRPC is the RPC metrics interceptor provider for the server.
	GRPC *grpcprom.ServerMetrics

	reloads  *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// New registers every collector on a fresh registry (with the Go and
// process collectors).
func New() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		GRPC: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets([]float64{.0005, .001, .005, .01, .025, .05, .1, .25, .5, 1, 5}))),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "plugincontrol_candidates_total",
			Help: "Candidate pipeline runs by action (load, reload, validate, restart, restore, unhealthy-restart), result (ok, failed) and failing stage (none on success).",
		}, []string{"action", "result", "stage"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "plugincontrol_candidate_duration_seconds",
			Help:    "Duration of candidate pipeline runs (launch to readiness) by action and result.",
			Buckets: []float64{.01, .02, .03, .05, .075, .1, .2, .5, 1, 2, 5, 10},
		}, []string{"action", "result"}),
	}
	reg.MustRegister(m.GRPC, m.reloads, m.duration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveCandidate matches manager.Config.OnCandidate.
func (m *Metrics) ObserveCandidate(_ string, action string, failed manager.Stage, took time.Duration) {
	result, stage := "ok", "none"
	if failed != manager.StageUnknown {
		result, stage = "failed", failed.String()
	}
	m.reloads.WithLabelValues(action, result, stage).Inc()
	m.duration.WithLabelValues(action, result).Observe(took.Seconds())
}

// Attach registers the collectors that read mgr at scrape time.
func (m *Metrics) Attach(mgr *manager.Manager) {
	m.Registry.MustRegister(&pluginCollector{m: mgr})
}

var (
	descState = prometheus.NewDesc("plugincontrol_plugin_state",
		"1 for the plugin's current health state, 0 for the others.", []string{"plugin", "state"}, nil)
	descGeneration = prometheus.NewDesc("plugincontrol_plugin_generation",
		"Active (or last) generation of the plugin.", []string{"plugin"}, nil)
	descPanics = prometheus.NewDesc("plugincontrol_plugin_panics_total",
		"Recovered handler panics of the plugin since it was loaded.", []string{"plugin"}, nil)
	descCrashes = prometheus.NewDesc("plugincontrol_plugin_crashes_total",
		"Unexpected exits of the plugin's processes since it was loaded.", []string{"plugin"}, nil)
	descRestarts = prometheus.NewDesc("plugincontrol_plugin_restarts_total",
		"Supervisor restarts of the plugin since it was loaded.", []string{"plugin"}, nil)
	descFailures = prometheus.NewDesc("plugincontrol_plugin_failures_total",
		"Failures of the plugin since it was loaded, by class: panic (recovered), crash, hang (liveness), timeout (a call timed out inside the plugin), start (a supervisor restart failed).", []string{"plugin", "class"}, nil)
	descBaking = prometheus.NewDesc("plugincontrol_plugin_baking",
		"1 while a reload of the plugin bakes (the previous generation's process kept warm), else 0.", []string{"plugin"}, nil)
	descWatchers = prometheus.NewDesc("plugincontrol_health_watchers",
		"Open WatchHealth streams (the limit --max-watchers applies to).", nil, nil)
	descEvicted = prometheus.NewDesc("plugincontrol_health_watchers_evicted_total",
		"Health watches ended for falling behind by more than the watch lag limit (plugind --watch-lag-limit).", nil, nil)
	descCoalesced = prometheus.NewDesc("plugincontrol_health_events_coalesced_total",
		"Health events a slow watcher skipped because a newer state of the same plugin replaced them.", nil, nil)
	descRevision = prometheus.NewDesc("plugincontrol_health_revision",
		"Current daemon-wide health revision.", nil, nil)
)

var states = []manager.State{manager.StateStarting, manager.StateServing, manager.StateDegraded, manager.StateUnhealthy, manager.StateStopped}

// pluginCollector reads the manager on every scrape, so the series always
// match the current plugins (an unloaded plugin's series disappear).
type pluginCollector struct{ m *manager.Manager }

func (c *pluginCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descGeneration, descPanics, descCrashes, descRestarts, descFailures, descBaking, descWatchers, descEvicted, descCoalesced, descRevision} {
		ch <- d
	}
}

func (c *pluginCollector) Collect(ch chan<- prometheus.Metric) {
	hs, rev, _ := c.m.Health(nil)
	for _, h := range hs {
		for _, s := range states {
			v := 0.0
			if h.State == s {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, v, h.Name, s.String())
		}
		ch <- prometheus.MustNewConstMetric(descGeneration, prometheus.GaugeValue, float64(h.Generation), h.Name)
		ch <- prometheus.MustNewConstMetric(descPanics, prometheus.CounterValue, float64(h.LifetimePanics), h.Name)
		ch <- prometheus.MustNewConstMetric(descCrashes, prometheus.CounterValue, float64(h.Crashes), h.Name)
		ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(h.Restarts), h.Name)
		for _, f := range h.Failures {
			ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(f.Lifetime), h.Name, f.Class.String())
		}
		baking := 0.0
		if h.Bake != nil && h.Bake.Result == manager.BakeBaking {
			baking = 1
		}
		ch <- prometheus.MustNewConstMetric(descBaking, prometheus.GaugeValue, baking, h.Name)
	}
	ch <- prometheus.MustNewConstMetric(descWatchers, prometheus.GaugeValue, float64(c.m.Watchers()))
	ch <- prometheus.MustNewConstMetric(descEvicted, prometheus.CounterValue, float64(c.m.EvictedWatches()))
	ch <- prometheus.MustNewConstMetric(descCoalesced, prometheus.CounterValue, float64(c.m.CoalescedEvents()))
	ch <- prometheus.MustNewConstMetric(descRevision, prometheus.GaugeValue, float64(rev))
}
