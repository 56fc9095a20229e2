package plugin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"

	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// recoverUnary turns a handler panic into codes.Internal carrying a
// PanicDetail, so one bad call does not kill the process and every other call
// in flight with it (go-plugin's default).
func recoverUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = PanicError(r, 3)
		}
	}()
	return handler(ctx, req)
}

// PanicError builds the status error for a recovered panic value r. skip is
// the number of stack frames above the panicking frame to leave out of the
// fingerprint, counted from the caller of PanicError (runtime frames are
// always left out).
func PanicError(r any, skip int) error {
	msg := fmt.Sprint(r)
	d := &pluginv1.PanicDetail{
		Message:     msg,
		Stack:       string(debug.Stack()),
		Fingerprint: Fingerprint(skip + 1),
	}
	st, err := status.New(codes.Internal, "plugin panic: "+msg).WithDetails(d)
	if err != nil {
		return status.Error(codes.Internal, "plugin panic: "+msg)
	}
	return st.Err()
}

// Fingerprint hashes the call sites on the current stack (function name and
// file:line of each non-runtime frame, no addresses), skipping skip frames
// above its caller. The result is stable for the same panic site across runs
// of the same binary, so a host can group panics by cause.
func Fingerprint(skip int) string {
	pcs := make([]uintptr, 32)
	n := runtime.Callers(skip+2, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	h := sha256.New()
	for {
		f, more := frames.Next()
		if f.Function != "" && !strings.HasPrefix(f.Function, "runtime.") {
			h.Write([]byte(f.Function))
			h.Write([]byte{' '})
			h.Write([]byte(f.File))
			h.Write([]byte{':'})
			h.Write([]byte(strconv.Itoa(f.Line)))
			h.Write([]byte{'\n'})
		}
		if !more {
			break
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}
