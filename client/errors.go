package client

import (
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// Sentinel errors. Every error returned by the typed helpers of Client
// (Load, Reload, Unload, List, Health, Invoke, WaitServing) matches, with
// errors.Is, the sentinel of its gRPC code; the typed errors below
// (CandidateError, PanicError, InvalidArgumentError, UnhealthyError) carry
// the status details on top.
var (
	// ErrNotFound: no plugin of that name is loaded (codes.NotFound).
	ErrNotFound = errors.New("plugincontrol: plugin not found")
	// ErrAlreadyExists: Load of a name that is already loaded
	// (codes.AlreadyExists).
	ErrAlreadyExists = errors.New("plugincontrol: plugin already loaded")
	// ErrGenerationMismatch: Reload with WithExpectedGeneration found another
	// generation active (codes.Aborted). Nothing was changed.
	ErrGenerationMismatch = errors.New("plugincontrol: generation mismatch")
	// ErrUnavailable: the daemon cannot be reached or is shutting down, or
	// the plugin is starting, restarting or stopped (codes.Unavailable).
	ErrUnavailable = errors.New("plugincontrol: unavailable")
	// ErrInvalidArgument: a bad name or spec field, or a binary that cannot
	// be resolved inside the plugin directory (codes.InvalidArgument).
	ErrInvalidArgument = errors.New("plugincontrol: invalid argument")
	// ErrCandidateFailed: a candidate failed the pipeline
	// (codes.FailedPrecondition); errors.As to *CandidateError for details.
	ErrCandidateFailed = errors.New("plugincontrol: candidate failed")
	// ErrUnauthenticated: the daemon wants a (valid) bearer token
	// (codes.Unauthenticated).
	ErrUnauthenticated = errors.New("plugincontrol: unauthenticated")
	// ErrPermissionDenied: the token may not do this (codes.PermissionDenied).
	ErrPermissionDenied = errors.New("plugincontrol: permission denied")
	// ErrPanic: a plugin handler panicked (codes.Internal with a PanicDetail);
	// errors.As to *PanicError for the message, fingerprint and stack.
	ErrPanic = errors.New("plugincontrol: plugin panicked")
	// ErrReloading: a stream ended because the daemon reloads itself in
	// place (codes.Unavailable, reason DAEMON_RELOADING; it also matches
	// ErrUnavailable). Watch and WaitServing resume at once, without a
	// backoff and without telling a reconnect hook.
	ErrReloading = errors.New("plugincontrol: daemon reloading in place")
)

var sentinels = map[codes.Code]error{
	codes.NotFound:           ErrNotFound,
	codes.AlreadyExists:      ErrAlreadyExists,
	codes.Aborted:            ErrGenerationMismatch,
	codes.Unavailable:        ErrUnavailable,
	codes.InvalidArgument:    ErrInvalidArgument,
	codes.FailedPrecondition: ErrCandidateFailed,
	codes.Unauthenticated:    ErrUnauthenticated,
	codes.PermissionDenied:   ErrPermissionDenied,
}

// StatusError is a gRPC status returned by the daemon, as a Go error. Every
// error of the typed helpers that came from the daemon is (or wraps) one:
// status.Code and status.FromError keep working on them, and errors.Is
// matches the sentinel of the code (ErrNotFound for codes.NotFound, ...).
type StatusError struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Message is the status message.
	Message string
	st      *status.Status
}

// Error returns "plugind: <code>: <message>".
func (e *StatusError) Error() string { return fmt.Sprintf("plugind: %s: %s", e.Code, e.Message) }

// GRPCStatus returns the status with its details, for status.FromError.
func (e *StatusError) GRPCStatus() *status.Status { return e.st }

// Is matches the sentinel error of the status code (and ErrReloading).
func (e *StatusError) Is(target error) bool {
	if s, ok := sentinels[e.Code]; ok && s == target {
		return true
	}
	return target == ErrReloading && e.Code == codes.Unavailable && errorReason(e.st) == reasonReloading
}

// reasonReloading is the ErrorInfo reason of a stream ended by a reload.
const reasonReloading = "DAEMON_RELOADING"

// errorReason is the reason of st's google.rpc.ErrorInfo ("" without one).
func errorReason(st *status.Status) string {
	if st == nil {
		return ""
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetReason()
		}
	}
	return ""
}

// CandidateError is a Load or Reload whose candidate failed a stage of the
// pipeline (codes.FailedPrecondition, or codes.InvalidArgument for the
// resolve stage). The candidate was killed; ActiveGeneration keeps serving.
// It unwraps to the *StatusError, so errors.Is(err, ErrCandidateFailed)
// (or ErrInvalidArgument for a resolve failure) holds.
type CandidateError struct {
	// Stage is the pipeline step that failed.
	Stage plugincontrolv1.CandidateStage
	// Message says what went wrong.
	Message string
	// StderrTail is the end of the candidate's stderr (at most 4 KiB).
	StderrTail string
	// ActiveGeneration is the generation that keeps serving, 0 if none.
	ActiveGeneration uint64
	// Status is the status the daemon returned.
	Status *StatusError
}

// Error returns the status error's text (the daemon's message).
func (e *CandidateError) Error() string { return e.Status.Error() }

// Unwrap returns the status error.
func (e *CandidateError) Unwrap() error { return e.Status }

// PanicError is an Invoke whose plugin handler panicked (codes.Internal with
// a plugincontrol.plugin.v1.PanicDetail). The plugin process lives on; the
// daemon counted the panic. It unwraps to the *StatusError and matches
// ErrPanic.
type PanicError struct {
	// Message is the panic value, formatted with %v.
	Message string
	// Fingerprint is a stable hash of the panic site.
	Fingerprint string
	// Stack is the goroutine stack at the panic: sent only to callers with
	// the operator role, or by a plugind started with --expose-panic-stacks;
	// "" otherwise.
	Stack string
	// Status is the status the daemon returned.
	Status *StatusError
}

// Error returns the status error's text (the daemon's message).
func (e *PanicError) Error() string { return e.Status.Error() }

// Unwrap returns the status error.
func (e *PanicError) Unwrap() error { return e.Status }

// Is matches ErrPanic.
func (e *PanicError) Is(target error) bool { return target == ErrPanic }

// InvalidArgumentError is a request with a bad field (codes.InvalidArgument
// with a google.rpc.BadRequest). It unwraps to the *StatusError and matches
// ErrInvalidArgument.
type InvalidArgumentError struct {
	// Field is the offending field in proto spelling (such as "name" or
	// "spec.start_timeout").
	Field string
	// Reason says what is wrong with it.
	Reason string
	// Status is the status the daemon returned.
	Status *StatusError
}

// Error returns the status error's text (the daemon's message).
func (e *InvalidArgumentError) Error() string { return e.Status.Error() }

// Unwrap returns the status error.
func (e *InvalidArgumentError) Unwrap() error { return e.Status }

// UnhealthyError is returned by WaitServing (and Reload with WithWaitHealthy)
// when the awaited generation did not become SERVING: it became UNHEALTHY
// or STOPPED, was unloaded, or the wait timed out. It matches ErrUnhealthy.
type UnhealthyError struct {
	// Name is the plugin instance.
	Name string
	// Generation is the generation that was awaited.
	Generation uint64
	// Health is the last health record seen, nil if none (unloaded before
	// any record arrived).
	Health *plugincontrolv1.PluginHealth
	// Reason explains the failure: the record's reason, "unloaded", or the
	// context error of a timeout.
	Reason string
	// Err is the context error when the wait ran out of time, else nil.
	Err error
}

// ErrUnhealthy matches every *UnhealthyError.
var ErrUnhealthy = errors.New("plugincontrol: plugin did not become healthy")

// Error names the plugin, generation, last state and reason.
func (e *UnhealthyError) Error() string {
	state := "no health record"
	if e.Health != nil {
		state = e.Health.GetState().String()
	}
	return fmt.Sprintf("plugincontrol: plugin %q generation %d did not become SERVING (%s): %s", e.Name, e.Generation, state, e.Reason)
}

// Is matches ErrUnhealthy.
func (e *UnhealthyError) Is(target error) bool { return target == ErrUnhealthy }

// Unwrap returns the context error of a timeout, else nil.
func (e *UnhealthyError) Unwrap() error { return e.Err }

// wrapError turns an RPC error into the typed errors of this package. Errors
// that are not gRPC statuses (none come from grpc-go in practice) pass
// through unchanged.
func wrapError(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	se := &StatusError{Code: st.Code(), Message: st.Message(), st: st}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *plugincontrolv1.CandidateFailure:
			return &CandidateError{
				Stage:            d.GetStage(),
				Message:          d.GetMessage(),
				StderrTail:       d.GetStderrTail(),
				ActiveGeneration: d.GetActiveGeneration(),
				Status:           se,
			}
		case *pluginv1.PanicDetail:
			return &PanicError{Message: d.GetMessage(), Fingerprint: d.GetFingerprint(), Stack: d.GetStack(), Status: se}
		case *errdetails.BadRequest:
			if v := d.GetFieldViolations(); len(v) > 0 {
				return &InvalidArgumentError{Field: v[0].GetField(), Reason: v[0].GetDescription(), Status: se}
			}
		}
	}
	return se
}
