// Package rpcerr maps the manager's errors to gRPC statuses. It is the one
// place where codes are chosen, used by every edge of the daemon (package
// server's control API and gateway, package endpoint's forwarders):
// everything below wraps errors with %w and typed values, and Status reads
// them with errors.Is and errors.As.
//
// Every status made here carries a google.rpc.ErrorInfo with Domain
// "plugincontrol" and a Reason (the constants below), so a caller can tell
// a failure of plugind from one of the plugin it called: a plugin's own
// status (a *manager.CallError) passes through untouched, without one.
package rpcerr

import (
	"context"
	"errors"
	"strconv"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
)

// Domain is the ErrorInfo domain of every error plugind makes.
const Domain = "plugincontrol"

// ErrorInfo reasons.
const (
	ReasonInvalidField       = "INVALID_FIELD"
	ReasonLimitReached       = "LIMIT_REACHED"
	ReasonCandidateFailed    = "CANDIDATE_FAILED"
	ReasonGenerationMismatch = "GENERATION_MISMATCH"
	ReasonPluginNotFound     = "PLUGIN_NOT_FOUND"
	ReasonPluginExists       = "PLUGIN_EXISTS"
	ReasonPluginUnavailable  = "PLUGIN_UNAVAILABLE"
	ReasonNotNative          = "NOT_NATIVE"
	ReasonShuttingDown       = "SHUTTING_DOWN"
	// ReasonReloading: a stream ended because plugind reloads in place
	// (SIGHUP): resume it at once, the new image is about to serve.
	ReasonReloading        = "DAEMON_RELOADING"
	ReasonDeadlineExceeded = "DEADLINE_EXCEEDED"
	ReasonCanceled         = "CANCELED"
	ReasonInternal         = "INTERNAL"
	// ReasonGenerationStopped: the generation a forwarded call or stream
	// ran on was stopped under it (the drain timed out, or the process
	// exited).
	ReasonGenerationStopped = "GENERATION_STOPPED"
	// ReasonPluginNotSelected: a call on the shared TCP endpoint named no
	// plugin.
	ReasonPluginNotSelected = "PLUGIN_NOT_SELECTED"
	// ReasonResourceExhausted: plugind itself ran out of a resource (file
	// descriptors, memory, processes, disk); metadata "resource" names it.
	ReasonResourceExhausted = "RESOURCE_EXHAUSTED"
	// ReasonWatchEvicted: a WatchHealth stream fell behind by more than
	// the daemon's watch lag limit and was ended; resume from the last
	// revision received (metadata "last_revision": the last one sent).
	ReasonWatchEvicted = "WATCH_EVICTED"
	// ReasonResponseTooLarge: one item of a listing is larger than a
	// response may be; metadata "plugin" names it.
	ReasonResponseTooLarge = "RESPONSE_TOO_LARGE"
	// ReasonFleetDisabled: a FleetService call to a plugind without
	// --fleet-etcd.
	ReasonFleetDisabled = "FLEET_DISABLED"
	// ReasonFleetManaged: a local Load, Reload or Unload of a plugin the
	// fleet manages on this node; metadata "key" names its fleet key.
	ReasonFleetManaged = "FLEET_MANAGED"
	// ReasonFleetNotManaged: detaching a plugin the fleet does not manage on
	// the node, or attaching one that is not detached.
	ReasonFleetNotManaged = "FLEET_NOT_MANAGED"
	// ReasonFleetUnpinned: a fleet spec without sha256, not allowed
	// explicitly.
	ReasonFleetUnpinned = "FLEET_UNPINNED"
	// ReasonRolloutActive: a rollout of the fleet plugin is under way.
	ReasonRolloutActive = "ROLLOUT_ACTIVE"
	// ReasonRolloutState: the rollout is not in a state the operation
	// applies to.
	ReasonRolloutState = "ROLLOUT_STATE"
	// ReasonNothingToRoll: no live node is selected, or the plugin already
	// has the spec.
	ReasonNothingToRoll = "NOTHING_TO_ROLL"
	// ReasonFleetUnavailable: etcd could not be reached; nothing changed.
	ReasonFleetUnavailable = "FLEET_UNAVAILABLE"
	// ReasonStoreFull: the change could not be recorded: the store's disk is
	// full (or over quota). Nothing was changed.
	ReasonStoreFull = "STORE_FULL"
	// ReasonStoreUnavailable: the change could not be recorded for another
	// reason (an I/O error). Nothing was changed.
	ReasonStoreUnavailable = "STORE_UNAVAILABLE"
	// ReasonUnreadable: the plugin's stored record could not be read.
	ReasonUnreadable = "RECORD_UNREADABLE"
	// ReasonInternalService: a call on an endpoint to go-plugin's own
	// services (controller, broker, stdio), which only plugind may use.
	ReasonInternalService = "INTERNAL_SERVICE"
)

// Status maps err to a gRPC status error (nil for nil).
func Status(err error) error {
	if err == nil {
		return nil
	}
	var (
		invalid  *manager.InvalidError
		cand     *manager.CandidateError
		mismatch *manager.GenerationMismatchError
		call     *manager.CallError
		limit    *manager.LimitError
	)
	// One errors.As per type. The typed manager errors that may wrap a
	// status are looked up first, in the order of the switch below, which
	// reads the results; the first found wins there, so the lookups stop
	// at it.
	isInvalid := errors.As(err, &invalid)
	isCand := !isInvalid && errors.As(err, &cand)
	isCall := !isInvalid && !isCand && errors.As(err, &call)
	if _, ok := status.FromError(err); ok && !isInvalid && !isCand && !isCall {
		// Already a status (from a conversion at the edge).
		return err
	}
	var (
		storeErr *manager.StoreError
		resErr   *manager.ResourceError
	)
	switch {
	case errors.As(err, &resErr):
		details := []protoadapt.MessageV1{&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: resErr.Resource, Description: err.Error()}}}}
		if isCand {
			details = append(details, &pb.CandidateFailure{Stage: Stage(cand.Stage), Message: cand.Err.Error(), StderrTail: cand.StderrTail, ActiveGeneration: cand.ActiveGeneration})
		}
		return New(codes.ResourceExhausted, ReasonResourceExhausted, err.Error(), map[string]string{"resource": resErr.Resource}, details...)
	case errors.As(err, &storeErr):
		if storeErr.ResourceExhausted() {
			return New(codes.ResourceExhausted, ReasonStoreFull, err.Error(), map[string]string{"resource": "disk"},
				&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: "disk", Description: err.Error()}}})
		}
		return New(codes.Unavailable, ReasonStoreUnavailable, err.Error(), nil)
	case errors.As(err, &limit):
		return New(codes.ResourceExhausted, ReasonLimitReached, err.Error(), map[string]string{"limit": limit.Limit},
			&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: limit.Limit, Description: err.Error()}}})
	case isInvalid:
		return New(codes.InvalidArgument, ReasonInvalidField, err.Error(), map[string]string{"field": invalid.Field},
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: invalid.Field, Description: invalid.Reason}}})
	case isCand:
		code := codes.FailedPrecondition
		if cand.Stage == manager.StageResolve {
			// The binary named by the request is missing, escapes the
			// plugin directory or is not executable: bad input.
			code = codes.InvalidArgument
		}
		return New(code, ReasonCandidateFailed, err.Error(),
			map[string]string{"plugin": cand.Plugin, "stage": cand.Stage.String(), "active_generation": strconv.FormatUint(cand.ActiveGeneration, 10)},
			&pb.CandidateFailure{
				Stage:            Stage(cand.Stage),
				Message:          cand.Err.Error(),
				StderrTail:       cand.StderrTail,
				ActiveGeneration: cand.ActiveGeneration,
			})
	case errors.As(err, &mismatch):
		return New(codes.Aborted, ReasonGenerationMismatch, err.Error(),
			map[string]string{"plugin": mismatch.Plugin, "active_generation": strconv.FormatUint(mismatch.Active, 10)})
	case isCall:
		// The plugin's own status passes through unchanged (with its
		// details, such as a PanicDetail); a transport failure to the
		// plugin surfaces as the code grpc-go gave it (Unavailable).
		if st, ok := status.FromError(call.Err); ok {
			return st.Err()
		}
		return status.Error(codes.Unknown, err.Error())
	case errors.Is(err, manager.ErrNotFound):
		return New(codes.NotFound, ReasonPluginNotFound, err.Error(), nil)
	case errors.Is(err, manager.ErrAlreadyExists):
		return New(codes.AlreadyExists, ReasonPluginExists, err.Error(), nil)
	case errors.Is(err, manager.ErrUnreadable):
		return New(codes.FailedPrecondition, ReasonUnreadable, err.Error(), nil)
	case errors.Is(err, manager.ErrNotNative):
		return New(codes.FailedPrecondition, ReasonNotNative, err.Error(), nil)
	case errors.Is(err, manager.ErrUnavailable):
		return New(codes.Unavailable, ReasonPluginUnavailable, err.Error(), nil)
	case errors.Is(err, manager.ErrClosed):
		return New(codes.Unavailable, ReasonShuttingDown, err.Error(), nil)
	case errors.Is(err, context.DeadlineExceeded):
		return New(codes.DeadlineExceeded, ReasonDeadlineExceeded, err.Error(), nil)
	case errors.Is(err, context.Canceled):
		return New(codes.Canceled, ReasonCanceled, err.Error(), nil)
	default:
		return New(codes.Internal, ReasonInternal, err.Error(), nil)
	}
}

// New makes a status error with details, then an ErrorInfo of Domain,
// reason and meta. The ErrorInfo comes last so that clients written before
// it existed, which read the first detail (a CandidateFailure, a
// BadRequest), still find theirs there.
func New(c codes.Code, reason, msg string, meta map[string]string, details ...protoadapt.MessageV1) error {
	st := status.New(c, msg)
	all := append(details, &errdetails.ErrorInfo{Domain: Domain, Reason: reason, Metadata: meta})
	if d, err := st.WithDetails(all...); err == nil {
		st = d
	}
	return st.Err()
}

// Invalid is an InvalidArgument for a request field that never reached the
// manager (such as a malformed Duration).
func Invalid(field, reason string) error {
	return Status(&manager.InvalidError{Field: field, Reason: reason})
}

// Stage converts a pipeline stage (numbered like the proto enum).
func Stage(s manager.Stage) pb.CandidateStage { return pb.CandidateStage(s) }

// Info returns the ErrorInfo of a status error made by plugind, or nil (for
// a plugin's own status, or an error that is no status).
func Info(err error) *errdetails.ErrorInfo {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetDomain() == Domain {
			return ei
		}
	}
	return nil
}
