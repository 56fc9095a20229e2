package plugin

import (
	"context"
	"strings"
	"testing"

	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func panicky(ctx context.Context, req any) (any, error) { panic("kaboom") }

func callRecovered(t *testing.T) error {
	t.Helper()
	_, err := recoverUnary(context.Background(), nil, &grpc.UnaryServerInfo{}, panicky)
	return err
}

func TestRecoveredPanicCarriesDetail(t *testing.T) {
	// The same call path twice gives the same fingerprint.
	var errs []error
	for range 2 {
		errs = append(errs, callRecovered(t))
	}
	err := errs[0]
	st := status.Convert(err)
	if st.Code() != codes.Internal || !strings.Contains(st.Message(), "kaboom") {
		t.Fatalf("status: %v", err)
	}
	if len(st.Details()) != 1 {
		t.Fatalf("details: %v", st.Details())
	}
	d, ok := st.Details()[0].(*pluginv1.PanicDetail)
	if !ok || d.GetMessage() != "kaboom" || !strings.Contains(d.GetStack(), "panicky") || len(d.GetFingerprint()) != 16 {
		t.Fatalf("detail: %v", st.Details()[0])
	}
	// Another panic site gives another fingerprint.
	again := status.Convert(errs[1]).Details()[0].(*pluginv1.PanicDetail)
	if again.GetFingerprint() != d.GetFingerprint() {
		t.Fatalf("fingerprint not stable: %s vs %s", again.GetFingerprint(), d.GetFingerprint())
	}
	other := status.Convert(func() error {
		_, err := recoverUnary(context.Background(), nil, &grpc.UnaryServerInfo{}, func(context.Context, any) (any, error) { panic("kaboom") })
		return err
	}()).Details()[0].(*pluginv1.PanicDetail)
	if other.GetFingerprint() == d.GetFingerprint() {
		t.Fatalf("different panic sites share fingerprint %s", d.GetFingerprint())
	}
}

func TestInvokeErrorsKeepTheirCode(t *testing.T) {
	s := &server{impl: fakePlugin{}}
	_, err := s.Invoke(context.Background(), &pluginv1.InvokeRequest{Method: "status"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("status error: %v", err)
	}
	_, err = s.Invoke(context.Background(), &pluginv1.InvokeRequest{Method: "plain"})
	if status.Code(err) != codes.Unknown || !strings.Contains(err.Error(), "plain failure") {
		t.Fatalf("plain error: %v", err)
	}
	r, _ := s.Ready(context.Background(), &pluginv1.ReadyRequest{Config: []byte("bad")})
	if r.GetReady() || r.GetReason() != "config bad" {
		t.Fatalf("ready: %v", r)
	}
}

type fakePlugin struct{}

func (fakePlugin) Info() Info { return Info{Name: "fake"} }
func (fakePlugin) Ready(_ context.Context, c []byte) error {
	if string(c) == "bad" {
		return errString("config bad")
	}
	return nil
}
func (fakePlugin) Invoke(_ context.Context, m string, _ []byte) ([]byte, error) {
	if m == "status" {
		return nil, status.Error(codes.NotFound, "no such thing")
	}
	return nil, errString("plain failure")
}

type errString string

func (e errString) Error() string { return string(e) }
