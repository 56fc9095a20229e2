package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

func TestExitCode(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{nil, 0},
		{usagef("bad"), 2},
		{fmt.Errorf("wrapped: %w", usagef("bad")), 2},
		{errors.New("local failure"), 1},
		{status.Error(codes.Unavailable, "down"), 3},
		{status.Error(codes.NotFound, "no such plugin"), 4},
		{status.Error(codes.FailedPrecondition, "candidate failed"), 5},
		{status.Error(codes.Aborted, "generation mismatch"), 6},
		{status.Error(codes.InvalidArgument, "bad name"), 1},
		{status.Error(codes.AlreadyExists, "loaded"), 1},
		{status.Error(codes.Internal, "panic"), 1},
		{status.Error(codes.Unauthenticated, "no token"), 1},
		{status.Error(codes.PermissionDenied, "wrong token"), 1},
		{status.Error(codes.DeadlineExceeded, "timeout"), 1},
		{status.Error(codes.Unknown, "?"), 1},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

func TestPrintErrorCandidateFailure(t *testing.T) {
	st, err := status.New(codes.FailedPrecondition,
		`reload "echo": candidate failed at stage ready: not ready: warming up; generation 3 keeps serving`).
		WithDetails(&plugincontrolv1.CandidateFailure{
			Stage:            plugincontrolv1.CandidateStage_CANDIDATE_STAGE_READY,
			Message:          "not ready: warming up",
			StderrTail:       "line one\nline two\n",
			ActiveGeneration: 3,
		})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	code := printError(&buf, "unix:///x.sock", nil, st.Err())
	if code != exitCandidate {
		t.Errorf("exit code %d, want %d", code, exitCandidate)
	}
	got := buf.String()
	for _, want := range []string{
		"pluginctl: reload \"echo\": candidate failed at stage ready",
		"  stage: ready\n",
		"  active generation: 3 (keeps serving)\n",
		"  stderr tail:\n    | line one\n    | line two\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "reason:") {
		t.Errorf("the reason already in the message is repeated:\n%s", got)
	}
	if !strings.HasPrefix(got, "pluginctl: ") {
		t.Errorf("output does not start with pluginctl: %q", got)
	}
}

func TestPrintErrorPanicDetail(t *testing.T) {
	st, err := status.New(codes.Internal, "plugin panicked").WithDetails(&pluginv1.PanicDetail{
		Message:     "boom",
		Stack:       "goroutine 1 [running]:\n...",
		Fingerprint: "abc123",
	})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if code := printError(&buf, "", nil, st.Err()); code != exitError {
		t.Errorf("exit code %d, want %d", code, exitError)
	}
	want := "pluginctl: plugin panicked\n  panic: boom\n  fingerprint: abc123\n"
	if buf.String() != want {
		t.Errorf("output %q, want %q", buf.String(), want)
	}
}

func TestPrintErrorConnect(t *testing.T) {
	err := status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial unix /x.sock: connect: no such file or directory"`)
	var buf bytes.Buffer
	if code := printError(&buf, "unix:///x.sock", nil, err); code != exitUnavailable {
		t.Errorf("exit code %d", code)
	}
	if !strings.Contains(buf.String(), "cannot connect to unix:///x.sock") {
		t.Errorf("output %q", buf.String())
	}
	// A daemon-side Unavailable is printed as is.
	buf.Reset()
	if code := printError(&buf, "unix:///x.sock", nil, status.Error(codes.Unavailable, `plugin "echo" is restarting`)); code != exitUnavailable {
		t.Errorf("exit code %d", code)
	}
	if buf.String() != "pluginctl: plugin \"echo\" is restarting\n" {
		t.Errorf("output %q", buf.String())
	}
}

func TestPrintErrorDetailsNotInMessage(t *testing.T) {
	st, err := status.New(codes.FailedPrecondition, "candidate failed").WithDetails(&plugincontrolv1.CandidateFailure{
		Stage:   plugincontrolv1.CandidateStage_CANDIDATE_STAGE_START,
		Message: "exit status 3",
	})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	printError(&buf, "", nil, st.Err())
	want := "pluginctl: candidate failed\n  stage: start\n  reason: exit status 3\n  active generation: none\n"
	if buf.String() != want {
		t.Errorf("output %q, want %q", buf.String(), want)
	}
}
