// Package metrics exposes plugind's Prometheus metrics: RPC metrics from
// go-grpc-middleware's prometheus provider, plugin metrics read from the
// manager at scrape time (info, state, failures by class, restarts, bakes,
// watchers, coalesced events) or counted as they happen (candidate pipeline
// runs, the last reload, calls to plugins by method and code), and
// plugincontrol_build_info. Series of a plugin that was unloaded are dropped
// at the next scrape.
package metrics

import (
	"context"
	"runtime"
	"sync"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/reflection"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	buildversion "github.com/plugincontrol/plugincontrol/internal/version"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
)

// Metrics holds the collectors. Create it before the manager (its
// ObserveCandidate goes into manager.Config.OnCandidate), then Attach the
// manager.
type Metrics struct {
	// Registry holds every collector; the HTTP handler serves the Metrics
	// itself (Gather), which prunes unloaded plugins' series first.
	Registry *prometheus.Registry
	// GRPC is the RPC metrics interceptor provider for the server; use it
	// through ServerInterceptors and InitializeServer, which leave
	// WatchHealth out.
	GRPC *grpcprom.ServerMetrics

	reloads      *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	lastReload   *prometheus.GaugeVec
	lastReloadOK *prometheus.GaugeVec
	calls        *prometheus.CounterVec
	callTime     *prometheus.HistogramVec
	leases       *prometheus.GaugeVec

	// series caches the children of calls (code OK) and callTime per
	// plugin and method: callKey -> *callSeries. Measured: looking both up
	// with WithLabelValues after noting the method under mu took 441-512
	// ns per call from 2 parallel callers, the cache 166-225 ns
	// (go test -bench ObserveCall ./metrics). Entries are added and removed only under mu, together with
	// the series of the vectors, so none outlives its series.
	series sync.Map

	mu      sync.Mutex                 // guards methods and mgr, and writes to series
	methods map[string]map[string]bool // per plugin, the method labels in use (at most maxMethods)
	mgr     *manager.Manager
}

// callKey is a plugin and a method as called.
type callKey struct{ plugin, method string }

// callSeries are the series of one plugin and method label.
type callSeries struct {
	method string // the label ("other" past maxMethods)
	ok     prometheus.Counter
	took   prometheus.Observer
}

// Gather implements prometheus.Gatherer: it first drops the series of
// plugins that are no longer loaded, then gathers Registry. Serve it
// (promhttp.HandlerFor(m, ...)) rather than Registry.
func (m *Metrics) Gather() ([]*dto.MetricFamily, error) {
	m.mu.Lock()
	mgr := m.mgr
	m.mu.Unlock()
	if mgr != nil {
		loaded := map[string]bool{}
		for _, st := range mgr.List() {
			loaded[st.Name] = true
		}
		m.forget(loaded)
	}
	return m.Registry.Gather()
}

// maxMethods bounds the method label values of one plugin: a method name
// comes from callers, and past this many distinct ones they are counted as
// "other".
const maxMethods = 100

// New registers every collector on a fresh registry (with the Go and
// process collectors, and plugincontrol_build_info).
func New() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		GRPC: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets([]float64{.0005, .001, .005, .01, .025, .05, .1, .25, .5, 1, 5}))),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "plugincontrol_candidates_total",
			Help: "Candidate pipeline runs by plugin, action (load, reload, validate, restart, restore, unhealthy-restart, revert), result (ok, failed) and failing stage (none on success).",
		}, []string{"plugin", "action", "result", "stage"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "plugincontrol_candidate_duration_seconds",
			Help:    "Duration of candidate pipeline runs (launch to readiness) by action and result.",
			Buckets: []float64{.01, .02, .03, .05, .075, .1, .2, .5, 1, 2, 5, 10},
		}, []string{"action", "result"}),
		lastReload: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "plugincontrol_plugin_last_reload_timestamp_seconds",
			Help: "When the plugin's last reload (its candidate) finished, in seconds since the epoch.",
		}, []string{"plugin"}),
		lastReloadOK: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "plugincontrol_plugin_last_reload_success",
			Help: "1 when the plugin's last reload succeeded, 0 when its candidate failed.",
		}, []string{"plugin"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "plugincontrol_plugin_calls_total",
			Help: "Calls to plugins, through Invoke (method: the plugin's method) or a plugin's endpoint (method: the full gRPC method), by gRPC code. Past 100 methods per plugin, method is \"other\".",
		}, []string{"plugin", "method", "code"}),
		callTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "plugincontrol_plugin_call_duration_seconds",
			Help:    "Duration of calls to plugins (Invoke and endpoints; streams until they end), by plugin and method.",
			Buckets: CallDurationBuckets(),
		}, []string{"plugin", "method"}),
		leases: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "plugincontrol_plugin_direct_leases",
			Help: "Direct connections (PluginDirectService leases) held on the plugin's generations: each keeps its generation alive through a reload until its calls end.",
		}, []string{"plugin"}),
		methods: map[string]map[string]bool{},
	}
	reg.MustRegister(m.GRPC, m.reloads, m.duration, m.lastReload, m.lastReloadOK, m.calls, m.callTime, m.leases, buildInfo(),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// buildInfo is plugincontrol_build_info: 1, labelled with the daemon's
// version (stamped by a release build, else its module version, "(devel)"
// from a checkout), VCS revision, build date (a release build's; empty
// otherwise) and Go version.
func buildInfo() prometheus.Collector {
	version, revision := buildversion.Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "plugincontrol_build_info",
		Help:        "1, labelled with the version, VCS revision, build date and Go version plugind was built with.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "date": buildversion.Date(), "goversion": runtime.Version()},
	})
	g.Set(1)
	return g
}

// ObserveCandidate matches manager.Config.OnCandidate.
func (m *Metrics) ObserveCandidate(plugin, action string, failed manager.Stage, took time.Duration) {
	result, stage := "ok", "none"
	if failed != manager.StageUnknown {
		result, stage = "failed", failed.String()
	}
	// Under mu, so that forget cannot drop the plugin between noting it
	// and adding its series (candidates are rare).
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.methods[plugin] == nil {
		m.methods[plugin] = map[string]bool{}
	}
	m.reloads.WithLabelValues(plugin, action, result, stage).Inc()
	m.duration.WithLabelValues(action, result).Observe(took.Seconds())
	if action == "reload" {
		m.lastReload.WithLabelValues(plugin).Set(float64(time.Now().UnixNano()) / 1e9)
		ok := 0.0
		if result == "ok" {
			ok = 1
		}
		m.lastReloadOK.WithLabelValues(plugin).Set(ok)
	}
}

// ObserveCall counts a call to a plugin (Invoke, or a call on its endpoint)
// that ended with code after took. It matches server.WithCallObserver and
// endpoint.WithCallObserver.
func (m *Metrics) ObserveCall(plugin, method string, code codes.Code, took time.Duration) {
	var cs *callSeries
	if v, ok := m.series.Load(callKey{plugin, method}); ok {
		cs = v.(*callSeries)
	} else {
		cs = m.newSeries(plugin, method)
	}
	if code == codes.OK {
		cs.ok.Inc()
	} else {
		m.calls.WithLabelValues(plugin, cs.method, code.String()).Inc()
	}
	cs.took.Observe(took.Seconds())
}

// CallDurationBuckets are the upper bounds, in seconds, of
// plugincontrol_plugin_call_duration_seconds: direct callers count their
// calls into them (server.WithDirectSocket).
func CallDurationBuckets() []float64 {
	return []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5}
}

// ObserveDirectLease counts a direct lease of plugin taken (delta 1) or
// ended (-1). It matches server.WithDirectLeaseObserver.
func (m *Metrics) ObserveDirectLease(plugin string, delta int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.methods[plugin] == nil {
		m.methods[plugin] = map[string]bool{}
	}
	m.leases.WithLabelValues(plugin).Add(float64(delta))
}

// newSeries records that plugin has series and returns (and caches) those
// of method: its label is "other" past maxMethods distinct methods.
func (m *Metrics) newSeries(plugin, method string) *callSeries {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.series.Load(callKey{plugin, method}); ok {
		return v.(*callSeries)
	}
	ms := m.methods[plugin]
	if ms == nil {
		ms = map[string]bool{}
		m.methods[plugin] = ms
	}
	label := method
	if method != "" && !ms[method] {
		if len(ms) >= maxMethods {
			label = "other"
		} else {
			ms[method] = true
		}
	}
	cs := &callSeries{
		method: label,
		ok:     m.calls.WithLabelValues(plugin, label, codes.OK.String()),
		took:   m.callTime.WithLabelValues(plugin, label),
	}
	m.series.Store(callKey{plugin, method}, cs)
	return cs
}

// forget drops the series of plugins that are no longer loaded (at
// scrape time).
func (m *Metrics) forget(loaded map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for p := range m.methods {
		if loaded[p] {
			continue
		}
		delete(m.methods, p)
		m.series.Range(func(k, _ any) bool {
			if k.(callKey).plugin == p {
				m.series.Delete(k)
			}
			return true
		})
		l := prometheus.Labels{"plugin": p}
		m.calls.DeletePartialMatch(l)
		m.callTime.DeletePartialMatch(l)
		m.leases.DeletePartialMatch(l)
		m.reloads.DeletePartialMatch(l)
		m.lastReload.DeletePartialMatch(l)
		m.lastReloadOK.DeletePartialMatch(l)
	}
}

// ServerInterceptors are the RPC metrics interceptors of the control
// server, scoped with go-grpc-middleware's selector to every method but
// WatchHealth: the interceptor wraps every stream and looks its labels up
// again for every message sent, which with 10,000 watchers costs more than
// the event itself. plugincontrol_health_watchers counts the watchers
// instead.
func (m *Metrics) ServerInterceptors() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	notWatch := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return c.FullMethod() != pb.PluginControlService_WatchHealth_FullMethodName
	})
	return m.GRPC.UnaryServerInterceptor(), selector.StreamServerInterceptor(m.GRPC.StreamServerInterceptor(), notWatch)
}

// InitializeServer creates the RPC series of every method of srv at zero
// (so that rates work from the first scrape), but WatchHealth's, which the
// interceptors leave out.
func (m *Metrics) InitializeServer(srv reflection.ServiceInfoProvider) {
	m.GRPC.InitializeMetrics(withoutWatch{srv})
}

type withoutWatch struct{ reflection.ServiceInfoProvider }

func (w withoutWatch) GetServiceInfo() map[string]grpc.ServiceInfo {
	out := map[string]grpc.ServiceInfo{}
	for name, info := range w.ServiceInfoProvider.GetServiceInfo() {
		var methods []grpc.MethodInfo
		for _, mi := range info.Methods {
			if "/"+name+"/"+mi.Name != pb.PluginControlService_WatchHealth_FullMethodName {
				methods = append(methods, mi)
			}
		}
		info.Methods = methods
		out[name] = info
	}
	return out
}

// Attach registers the collectors that read mgr at scrape time.
func (m *Metrics) Attach(mgr *manager.Manager) {
	m.mu.Lock()
	m.mgr = mgr
	m.mu.Unlock()
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
	descRefused = prometheus.NewDesc("plugincontrol_lifecycle_refused_transitions_total",
		"Lifecycle events refused in a plugin's state: each is a bug in plugind (logged with the plugin, state and event); alert on any.", nil, nil)
	descInfo = prometheus.NewDesc("plugincontrol_plugin_info",
		"1 for each plugin, labelled with its binary, the version it described and its binary's sha256.", []string{"plugin", "binary", "version", "sha256"}, nil)
	descRevision = prometheus.NewDesc("plugincontrol_health_revision",
		"Current daemon-wide health revision.", nil, nil)
)

var states = []manager.State{manager.StateStarting, manager.StateServing, manager.StateDegraded, manager.StateUnhealthy, manager.StateStopped}

// pluginCollector reads the manager on every scrape, so the series always
// match the current plugins (an unloaded plugin's series disappear).
type pluginCollector struct{ m *manager.Manager }

func (c *pluginCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descGeneration, descPanics, descCrashes, descRestarts, descFailures, descBaking, descWatchers, descEvicted, descCoalesced, descRefused, descRevision, descInfo} {
		ch <- d
	}
}

func (c *pluginCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.m.List() {
		ch <- prometheus.MustNewConstMetric(descInfo, prometheus.GaugeValue, 1, st.Name, st.Binary, st.Version, st.SHA256)
	}
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
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(c.m.RefusedTransitions()))
	ch <- prometheus.MustNewConstMetric(descRevision, prometheus.GaugeValue, float64(rev))
}
