package record

import "fmt"

// FailureClass is a kind of plugin failure. Each class is counted on its
// own, over the plugin's lifetime and within a sliding window, and judged
// against its own threshold (HealthPolicy).
type FailureClass int

// Failure classes, numbered as plugincontrol.v1.FailureClass.
const (
	FailureUnknown FailureClass = iota
	// FailurePanic is a handler panic the plugin SDK recovered, reported
	// on the failing call (or counted with Manager.Recover).
	FailurePanic
	// FailureCrash is an exit of the process the manager did not ask for
	// (exit status, signal, OOM kill).
	FailureCrash
	// FailureHang is liveness_failures liveness probes in a row that
	// failed or timed out.
	FailureHang
	// FailureTimeout is a call to the plugin that timed out inside it.
	FailureTimeout
	// FailureStart is a supervisor restart whose candidate failed.
	FailureStart
)

// NumClasses bounds the FailureClass values.
const NumClasses = 6

// Classes lists the failure classes in order.
var Classes = []FailureClass{FailurePanic, FailureCrash, FailureHang, FailureTimeout, FailureStart}

var classNames = [...]string{"unknown", "panic", "crash", "hang", "timeout", "start"}

func (c FailureClass) String() string {
	if c < 0 || int(c) >= len(classNames) {
		return fmt.Sprintf("class(%d)", int(c))
	}
	return classNames[c]
}
