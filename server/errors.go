package server

import (
	"context"
	"errors"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
)

// toStatus maps a manager error to a gRPC status. It is the one place where
// errors get codes: everything below the server wraps errors with %w and
// typed values; this function reads them with errors.Is / errors.As.
func toStatus(err error) error {
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
		// Already a status (from a conversion in this package).
		return err
	}
	switch {
	case errors.As(err, &limit):
		return withDetails(codes.ResourceExhausted, err.Error(), &errdetails.QuotaFailure{
			Violations: []*errdetails.QuotaFailure_Violation{{Subject: limit.Limit, Description: err.Error()}},
		})
	case isInvalid:
		return withDetails(codes.InvalidArgument, err.Error(), &errdetails.BadRequest{
			FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: invalid.Field, Description: invalid.Reason}},
		})
	case isCand:
		code := codes.FailedPrecondition
		if cand.Stage == manager.StageResolve {
			// The binary named by the request is missing, escapes the
			// plugin directory or is not executable: bad input.
			code = codes.InvalidArgument
		}
		return withDetails(code, err.Error(), &pb.CandidateFailure{
			Stage:            stageToProto(cand.Stage),
			Message:          cand.Err.Error(),
			StderrTail:       cand.StderrTail,
			ActiveGeneration: cand.ActiveGeneration,
		})
	case errors.As(err, &mismatch):
		return status.Error(codes.Aborted, err.Error())
	case isCall:
		// The plugin's own status passes through unchanged (with its
		// details, such as a PanicDetail); a transport failure to the
		// plugin surfaces as the code grpc-go gave it (Unavailable).
		if st, ok := status.FromError(call.Err); ok {
			return st.Err()
		}
		return status.Error(codes.Unknown, err.Error())
	case errors.Is(err, manager.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, manager.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, manager.ErrUnavailable), errors.Is(err, manager.ErrClosed):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	default:
		return status.Error(codes.Internal, err.Error())
	}
}

func withDetails(c codes.Code, msg string, details ...protoadapt.MessageV1) error {
	st := status.New(c, msg)
	if d, err := st.WithDetails(details...); err == nil {
		st = d
	}
	return st.Err()
}

// invalid is an InvalidArgument for a request field that never reached the
// manager (such as a malformed Duration).
func invalid(field, reason string) error {
	return toStatus(&manager.InvalidError{Field: field, Reason: reason})
}
