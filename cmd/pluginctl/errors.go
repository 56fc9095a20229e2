package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plugincontrol/plugincontrol/client"
	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// Exit codes, documented in the usage text.
const (
	exitOK          = 0
	exitError       = 1  // any other error
	exitUsage       = 2  // bad flags or arguments
	exitUnavailable = 3  // cannot connect, or codes.Unavailable
	exitNotFound    = 4  // codes.NotFound
	exitCandidate   = 5  // codes.FailedPrecondition: the candidate failed
	exitAborted     = 6  // codes.Aborted: generation mismatch
	exitNotHealthy  = 7  // --wait-healthy: the new generation did not become (or stay) SERVING
	exitReverted    = 8  // reload --bake --wait: the bake did not keep the new generation
	exitAuditBroken = 9  // audit --verify: the audit log's chain does not verify
	exitDiffers     = 10 // diff --exit-code: the file and the daemon differ
)

// differsError is diff --exit-code when there are differences.
type differsError struct{ n int }

func (e *differsError) Error() string { return fmt.Sprintf("%d plugin(s) differ", e.n) }

// usageError is a problem with the command line.
// auditBrokenError is audit --verify on a chain that does not verify.
type auditBrokenError struct{ msg string }

func (e *auditBrokenError) Error() string { return "audit chain broken: " + e.msg }

// bakeError is reload --bake --wait when the bake reverted or was cancelled.
type bakeError struct{ msg string }

func (e *bakeError) Error() string { return e.msg }

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...)}
}

// exitCode maps an error to the process exit code.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	var nh *client.UnhealthyError
	if errors.As(err, &nh) {
		return exitNotHealthy
	}
	var de *differsError
	if errors.As(err, &de) {
		return exitDiffers
	}
	var be *bakeError
	if errors.As(err, &be) {
		return exitReverted
	}
	var ab *auditBrokenError
	if errors.As(err, &ab) {
		return exitAuditBroken
	}
	st, ok := grpcStatus(err)
	if !ok {
		return exitError
	}
	switch st.Code() {
	case codes.OK:
		return exitOK
	case codes.Unavailable:
		return exitUnavailable
	case codes.NotFound:
		return exitNotFound
	case codes.FailedPrecondition:
		return exitCandidate
	case codes.Aborted:
		return exitAborted
	default:
		return exitError
	}
}

// grpcStatus is the status err carries, as the daemon sent it (the typed
// errors of package client add their own words to Error, which
// status.FromError would take as the message).
func grpcStatus(err error) (*status.Status, bool) {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus(), true
	}
	return status.FromError(err)
}

// isConnectError reports whether st is grpc-go's own Unavailable for a
// connection that could not be made (rather than the daemon saying a plugin
// is unavailable).
func isConnectError(st *status.Status) bool {
	if st.Code() != codes.Unavailable {
		return false
	}
	m := st.Message()
	return strings.HasPrefix(m, "connection error") || strings.Contains(m, "Error while dialing")
}

// printError writes err to w the way the CLI reports it: one line
// "pluginctl: <message>", followed by the details the daemon attached
// (candidate failure stage and stderr tail, panic message and fingerprint).
// addr names the daemon in connection errors. It returns the exit code.
func printError(w io.Writer, addr string, tried []string, err error) int {
	code := exitCode(err)
	var nh *client.UnhealthyError
	if errors.As(err, &nh) {
		reason := nh.Reason
		switch reason {
		case "unloaded":
			reason = nh.Name + " was unloaded"
		case "not loaded":
			reason = nh.Name + " is not loaded"
		}
		fmt.Fprintf(w, "pluginctl: %s generation %d is not healthy: %s\n", nh.Name, nh.Generation, reason)
		if h := nh.Health; h != nil {
			fmt.Fprintf(w, "  last health: generation %d %s", h.GetGeneration(), stateName(h.GetState()))
			if r := oneLine(h.GetReason()); r != "" && !strings.Contains(nh.Reason, r) {
				fmt.Fprintf(w, ": %s", r)
			}
			fmt.Fprintln(w)
		}
		return code
	}
	st, ok := grpcStatus(err)
	if !ok || code == exitUsage {
		fmt.Fprintf(w, "pluginctl: %v\n", err)
		return code
	}
	if isConnectError(st) {
		fmt.Fprintf(w, "pluginctl: cannot connect to %s (is plugind running?): %s\n", addr, st.Message())
		if len(tried) > 0 {
			fmt.Fprintf(w, "  address from: %s\n", strings.Join(tried, "; "))
		}
		return code
	}
	msg := oneLine(st.Message())
	fmt.Fprintf(w, "pluginctl: %s\n", msg)
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *plugincontrolv1.CandidateFailure:
			fmt.Fprintf(w, "  stage: %s\n", stageName(d.GetStage()))
			if m := oneLine(d.GetMessage()); m != "" && !strings.Contains(msg, m) {
				fmt.Fprintf(w, "  reason: %s\n", oneLine(m))
			}
			if g := d.GetActiveGeneration(); g != 0 {
				fmt.Fprintf(w, "  active generation: %d (keeps serving)\n", g)
			} else {
				fmt.Fprintf(w, "  active generation: none\n")
			}
			if tail := strings.TrimRight(d.GetStderrTail(), "\n"); tail != "" {
				fmt.Fprintf(w, "  stderr tail:\n")
				for _, line := range strings.Split(tail, "\n") {
					fmt.Fprintf(w, "    | %s\n", line)
				}
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				if desc := oneLine(v.GetDescription()); !strings.Contains(msg, desc) {
					fmt.Fprintf(w, "  %s: %s\n", v.GetField(), desc)
				}
			}
		case *pluginv1.PanicDetail:
			fmt.Fprintf(w, "  panic: %s\n", oneLine(d.GetMessage()))
			if fp := d.GetFingerprint(); fp != "" {
				fmt.Fprintf(w, "  fingerprint: %s\n", fp)
			}
		}
	}
	return code
}
