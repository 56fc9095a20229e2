package record

import "time"

// State is a plugin's health state.
type State int

// States, numbered as plugincontrol.v1.PluginState.
const (
	StateUnknown State = iota
	StateStarting
	StateServing
	StateDegraded
	StateUnhealthy
	StateStopped
)

var stateNames = [...]string{"UNKNOWN", "STARTING", "SERVING", "DEGRADED", "UNHEALTHY", "STOPPED"}

func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return "UNKNOWN"
	}
	return stateNames[s]
}

// Health is the health record of one plugin instance.
type Health struct {
	Name       string
	State      State
	Generation uint64
	// PanicsInWindow counts the panics and crashes of the current
	// generation within the policy's panic window (the panic_threshold
	// rule); LifetimePanics and Crashes count recovered panics and crashes
	// over all generations; LastPanic is the last panic (or crash with a
	// panic message). Failures has every class's counts.
	PanicsInWindow int
	LifetimePanics uint64
	Crashes        uint64
	Restarts       int
	LastPanic      *PanicRecord
	Failures       []FailureCount
	// Reason says why the plugin is in State; empty when SERVING.
	Reason   string
	Since    time.Time
	Revision uint64
	// Bake is the current or last bake of a reload with a bake period.
	Bake *BakeStatus
}

// PanicRecord is the last panic of a plugin.
type PanicRecord struct {
	Message     string
	Fingerprint string
	Time        time.Time
	Generation  uint64
}

// FailureCount is a class's count in a plugin's health record.
type FailureCount struct {
	Class FailureClass
	// InWindow counts the class within its window (for panics, hangs and
	// timeouts: of the current generation).
	InWindow int
	// Lifetime counts the class over every generation.
	Lifetime uint64
}

// BakeResult says how a bake went.
type BakeResult int

// Bake results, numbered as plugincontrol.v1.BakeResult.
const (
	BakeUnknown BakeResult = iota
	// BakeBaking: the new generation serves on trial; the previous
	// generation's process is kept warm.
	BakeBaking
	// BakeKept: the bake period passed; the previous process was stopped.
	BakeKept
	// BakeReverted: the new generation became UNHEALTHY (or crashed)
	// during the bake; the previous process serves again, as a new
	// generation.
	BakeReverted
	// BakeCancelled: the bake ended early (another Reload, an Unload, the
	// daemon's shutdown, or the warm process exited).
	BakeCancelled
)

var bakeResultNames = [...]string{"UNKNOWN", "BAKING", "KEPT", "REVERTED", "CANCELLED"}

func (r BakeResult) String() string {
	if r < 0 || int(r) >= len(bakeResultNames) {
		return "UNKNOWN"
	}
	return bakeResultNames[r]
}

// BakeStatus describes the current or last bake of a plugin.
type BakeStatus struct {
	// Generation is the generation on trial.
	Generation uint64
	// PreviousGeneration is the generation whose process is kept warm.
	PreviousGeneration uint64
	// Until is when the bake ends if nothing goes wrong.
	Until time.Time
	// Result says how it went.
	Result BakeResult
	// Reason says why it was reverted or cancelled.
	Reason string
	// RevertedTo is the generation the previous process serves as after a
	// revert (generations only rise).
	RevertedTo uint64
}
