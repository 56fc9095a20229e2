package metrics_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/plugincontrol/plugincontrol/metrics"
)

// BenchmarkObserveCall is the cost the call metrics add to every Invoke
// and endpoint call, from parallel callers of one plugin and method.
func BenchmarkObserveCall(b *testing.B) {
	m := metrics.New()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.ObserveCall("echo", "echo", codes.OK, time.Millisecond)
		}
	})
}
