package metrics

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// FleetStats is what the fleet metrics read at scrape time: this node's
// agent (Fenced) and controller (the rest; see fleet.ControllerStats).
type FleetStats struct {
	// Fenced is why the node refuses to act on the fleet's keys ("": it
	// does not).
	Fenced string
	// Leading: this node's controller leads the rollouts. Rollouts are the
	// active rollouts it stepped last (only the leader has any).
	Leading  bool
	Rollouts []*pb.Rollout
	// StepErrors counts the controller's failed steps; LastStepError is
	// when the last one failed (zero: never).
	StepErrors    uint64
	LastStepError time.Time
}

// AttachFleet registers the fleet's collectors, which call stats on every
// scrape (it must not block on the network: plugind's reads what the
// agent and the controller keep in memory).
func (m *Metrics) AttachFleet(stats func() FleetStats) {
	m.Registry.MustRegister(&fleetCollector{stats: stats})
}

var (
	descFleetLeader = prometheus.NewDesc("plugincontrol_fleet_leader",
		"1 while this node's controller leads the fleet's rollouts, else 0.", nil, nil)
	descFleetFenced = prometheus.NewDesc("plugincontrol_fleet_fenced",
		"1 while this node refuses to act on the fleet's keys (the schema key is gone, or another instance holds its name: see pluginctl fleet status), else 0.", nil, nil)
	descFleetStepErrors = prometheus.NewDesc("plugincontrol_fleet_controller_step_errors_total",
		"Steps of the rollout controller that failed (etcd out of reach, a write refused) on this node.", nil, nil)
	descFleetLastStepError = prometheus.NewDesc("plugincontrol_fleet_controller_last_step_error_timestamp_seconds",
		"When the last step of this node's rollout controller failed (0: never).", nil, nil)
	descRolloutState = prometheus.NewDesc("plugincontrol_fleet_rollout_state",
		"1 for the state of each active rollout, 0 for the others (on the leading node).", []string{"plugin", "state"}, nil)
	descRolloutWave = prometheus.NewDesc("plugincontrol_fleet_rollout_wave",
		"The wave an active rollout is at (0: the canary; on the leading node).", []string{"plugin"}, nil)
	descRolloutNodes = prometheus.NewDesc("plugincontrol_fleet_rollout_nodes",
		"Nodes of an active rollout by state (on the leading node).", []string{"plugin", "state"}, nil)
)

var (
	activeStates = []pb.RolloutState{pb.RolloutState_ROLLOUT_STATE_RUNNING, pb.RolloutState_ROLLOUT_STATE_PAUSED, pb.RolloutState_ROLLOUT_STATE_HALTED}
	nodeStates   = []pb.RolloutNodeState{
		pb.RolloutNodeState_ROLLOUT_NODE_STATE_PENDING, pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATING,
		pb.RolloutNodeState_ROLLOUT_NODE_STATE_UPDATED, pb.RolloutNodeState_ROLLOUT_NODE_STATE_FAILED,
		pb.RolloutNodeState_ROLLOUT_NODE_STATE_LOST, pb.RolloutNodeState_ROLLOUT_NODE_STATE_ROLLED_BACK,
	}
)

type fleetCollector struct{ stats func() FleetStats }

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFleetLeader, descFleetFenced, descFleetStepErrors, descFleetLastStepError, descRolloutState, descRolloutWave, descRolloutNodes} {
		ch <- d
	}
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(descFleetLeader, prometheus.GaugeValue, b2f(s.Leading))
	ch <- prometheus.MustNewConstMetric(descFleetFenced, prometheus.GaugeValue, b2f(s.Fenced != ""))
	ch <- prometheus.MustNewConstMetric(descFleetStepErrors, prometheus.CounterValue, float64(s.StepErrors))
	last := 0.0
	if !s.LastStepError.IsZero() {
		last = float64(s.LastStepError.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(descFleetLastStepError, prometheus.GaugeValue, last)
	for _, r := range s.Rollouts {
		plugin := r.GetPlugin()
		for _, st := range activeStates {
			ch <- prometheus.MustNewConstMetric(descRolloutState, prometheus.GaugeValue, b2f(r.GetState() == st), plugin, stateLabel(st.String(), "ROLLOUT_STATE_"))
		}
		ch <- prometheus.MustNewConstMetric(descRolloutWave, prometheus.GaugeValue, float64(r.GetWave()), plugin)
		counts := map[pb.RolloutNodeState]int{}
		for _, n := range r.GetNodes() {
			counts[n.GetState()]++
		}
		for _, st := range nodeStates {
			ch <- prometheus.MustNewConstMetric(descRolloutNodes, prometheus.GaugeValue, float64(counts[st]), plugin, stateLabel(st.String(), "ROLLOUT_NODE_STATE_"))
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// stateLabel is an enum value's name without its prefix, lower-cased as
// Prometheus labels usually are ("running", "updating").
func stateLabel(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}
