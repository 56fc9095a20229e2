package manager

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/plugincontrol/plugincontrol/manager/hub"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrNotFound: no plugin of that name is loaded.
	ErrNotFound = errors.New("plugin not found")
	// ErrAlreadyExists: a plugin of that name is already loaded.
	ErrAlreadyExists = errors.New("plugin already loaded")
	// ErrUnavailable: the plugin has no serving generation right now
	// (starting, restarting or stopping).
	ErrUnavailable = errors.New("plugin unavailable")
	// ErrClosed: the manager is shut down.
	ErrClosed = hub.ErrClosed
	// ErrUnreadable: a Reload of a plugin whose stored record could not be
	// read (Load a spec over it, or Unload it).
	ErrUnreadable = errors.New("stored record unreadable")
	// ErrNotNative: Invoke on a plugin that does not speak the native
	// contract (a foreign gRPC plugin or an embedder's protocol); call
	// its own API through a Lease or its endpoint instead.
	ErrNotNative = errors.New("plugin does not serve the native contract")
)

// Stage is a step of the candidate pipeline.
type Stage int

// Pipeline stages, in order.
const (
	StageUnknown Stage = iota
	StageResolve
	StageChecksum
	StageStart
	StageHandshake
	StageDescribe
	StageReady
	StageSwap
	StageDrain
)

var stageNames = [...]string{"unknown", "resolve", "checksum", "start", "handshake", "describe", "ready", "swap", "drain"}

func (s Stage) String() string {
	if s < 0 || int(s) >= len(stageNames) {
		return fmt.Sprintf("stage(%d)", int(s))
	}
	return stageNames[s]
}

// CandidateError is a candidate that failed a pipeline stage. The candidate
// was killed and its socket directory removed; the active generation, if
// any, was not touched.
type CandidateError struct {
	// Plugin is the instance name.
	Plugin string
	// Stage is the failing step.
	Stage Stage
	// Err is the reason.
	Err error
	// StderrTail is the end of the candidate's stderr.
	StderrTail string
	// ActiveGeneration keeps serving (0: none).
	ActiveGeneration uint64
	// Report has the timings of the stages that ran.
	Report *Report
}

func (e *CandidateError) Error() string {
	keep := "no generation is active"
	if e.ActiveGeneration > 0 {
		keep = fmt.Sprintf("generation %d stays active", e.ActiveGeneration)
	}
	return fmt.Sprintf("plugin %q: candidate failed at stage %s: %v (%s)", e.Plugin, e.Stage, e.Err, keep)
}

func (e *CandidateError) Unwrap() error { return e.Err }

// GenerationMismatchError is a Reload whose expected generation is not the
// active one. Nothing was changed.
type GenerationMismatchError struct {
	Plugin   string
	Expected uint64
	Active   uint64
}

func (e *GenerationMismatchError) Error() string {
	return fmt.Sprintf("plugin %q: expected generation %d, active generation is %d", e.Plugin, e.Expected, e.Active)
}

// CallError is an error returned by a plugin's Invoke handler (or its
// transport). Err carries the plugin's gRPC status unchanged.
type CallError struct {
	Plugin     string
	Generation uint64
	Err        error
	// Panic is set when the handler panicked and the SDK recovered it.
	Panic *PanicInfo
}

func (e *CallError) Error() string {
	return fmt.Sprintf("plugin %q generation %d: %v", e.Plugin, e.Generation, e.Err)
}

func (e *CallError) Unwrap() error { return e.Err }

// PanicInfo is a recovered panic reported by the plugin SDK.
type PanicInfo struct {
	Message     string
	Stack       string
	Fingerprint string
}

// LimitError is a request refused because a configured limit was reached.
type LimitError struct {
	// Limit names the limit ("max_plugins", "max_watchers", ...).
	Limit string
	// Value is the configured limit.
	Value int
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("limit %s (%d) reached", e.Limit, e.Value)
}

// ResourceError is a failure of the manager's own process for lack of a
// resource (file descriptors, disk space, memory, processes), not of the
// plugin: the request may succeed once the resource is back.
type ResourceError struct {
	// Resource names it: "file descriptors", "disk", "memory",
	// "processes".
	Resource string
	// Op says what needed it.
	Op  string
	Err error
}

func (e *ResourceError) Error() string {
	return fmt.Sprintf("%s: out of %s: %v", e.Op, e.Resource, e.Err)
}

func (e *ResourceError) Unwrap() error { return e.Err }

// resourceErr wraps err in a *ResourceError when it says the process ran
// out of something; other errors are returned as they are.
func resourceErr(op string, err error) error {
	var re *ResourceError
	if err == nil || errors.As(err, &re) {
		return err
	}
	res := ""
	switch {
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		res = "file descriptors"
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		res = "disk"
	case errors.Is(err, syscall.ENOMEM):
		res = "memory"
	case errors.Is(err, syscall.EAGAIN) && strings.Contains(err.Error(), "fork"):
		res = "processes"
	default:
		// go-plugin reports some failures as text only.
		switch msg := err.Error(); {
		case strings.Contains(msg, "too many open files"):
			res = "file descriptors"
		case strings.Contains(msg, "no space left on device"):
			res = "disk"
		default:
			return err
		}
	}
	return &ResourceError{Resource: res, Op: op, Err: err}
}
