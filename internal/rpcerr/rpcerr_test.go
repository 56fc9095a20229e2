package rpcerr

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
)

// TestStatus maps each kind of manager error to its code and ErrorInfo
// reason, wrapped or not, with the details a client reads.
func TestStatus(t *testing.T) {
	cand := &manager.CandidateError{Plugin: "p", Stage: manager.StageReady, Err: errors.New("not ready"), ActiveGeneration: 2, StderrTail: "tail"}
	for _, tt := range []struct {
		name   string
		err    error
		code   codes.Code
		reason string
	}{
		{"invalid", &manager.InvalidError{Field: "name", Reason: "bad"}, codes.InvalidArgument, ReasonInvalidField},
		{"candidate", cand, codes.FailedPrecondition, ReasonCandidateFailed},
		{"candidate at resolve", &manager.CandidateError{Plugin: "p", Stage: manager.StageResolve, Err: errors.New("no such binary")}, codes.InvalidArgument, ReasonCandidateFailed},
		{"mismatch", &manager.GenerationMismatchError{Plugin: "p", Expected: 1, Active: 2}, codes.Aborted, ReasonGenerationMismatch},
		{"limit", &manager.LimitError{Limit: "max_plugins", Value: 3}, codes.ResourceExhausted, ReasonLimitReached},
		{"store full", &manager.StoreError{Op: "load", Err: syscall.ENOSPC}, codes.ResourceExhausted, ReasonStoreFull},
		{"store down", &manager.StoreError{Op: "load", Err: errors.New("io")}, codes.Unavailable, ReasonStoreUnavailable},
		{"not found", fmt.Errorf("plugin %q: %w", "p", manager.ErrNotFound), codes.NotFound, ReasonPluginNotFound},
		{"exists", manager.ErrAlreadyExists, codes.AlreadyExists, ReasonPluginExists},
		{"unavailable", manager.ErrUnavailable, codes.Unavailable, ReasonPluginUnavailable},
		{"frozen manager closed", manager.ErrClosed, codes.Unavailable, ReasonShuttingDown},
		{"not native", manager.ErrNotNative, codes.FailedPrecondition, ReasonNotNative},
		{"unreadable", manager.ErrUnreadable, codes.FailedPrecondition, ReasonUnreadable},
		{"deadline", fmt.Errorf("waiting: %w", context.DeadlineExceeded), codes.DeadlineExceeded, ReasonDeadlineExceeded},
		{"canceled", context.Canceled, codes.Canceled, ReasonCanceled},
		{"anything else", errors.New("boom"), codes.Internal, ReasonInternal},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := Status(fmt.Errorf("outer: %w", tt.err))
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code %v, want %v (%v)", got, tt.code, err)
			}
			ei := Info(err)
			if ei == nil || ei.GetReason() != tt.reason || ei.GetDomain() != Domain {
				t.Fatalf("ErrorInfo %v, want reason %s", ei, tt.reason)
			}
		})
	}
	// The details clients read first come first.
	st := status.Convert(Status(cand))
	if cf, ok := st.Details()[0].(*pb.CandidateFailure); !ok || cf.GetStage() != pb.CandidateStage_CANDIDATE_STAGE_READY || cf.GetActiveGeneration() != 2 || cf.GetStderrTail() != "tail" {
		t.Fatalf("first detail of a candidate failure: %v", st.Details()[0])
	}
	st = status.Convert(Status(&manager.InvalidError{Field: "spec.name", Reason: "bad"}))
	if br, ok := st.Details()[0].(*errdetails.BadRequest); !ok || br.GetFieldViolations()[0].GetField() != "spec.name" {
		t.Fatalf("first detail of a bad request: %v", st.Details()[0])
	}
	// A plugin's own status passes through, untouched and without ours.
	own := status.Error(codes.NotFound, "key not found")
	call := &manager.CallError{Plugin: "kv", Generation: 1, Err: own}
	if got := Status(call); status.Code(got) != codes.NotFound || Info(got) != nil {
		t.Fatalf("a plugin's own status: %v (info %v)", got, Info(got))
	}
	if Status(nil) != nil {
		t.Fatal("nil is not nil")
	}
}
