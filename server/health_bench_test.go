package server

import (
	"fmt"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager/record"
	protobuf "google.golang.org/protobuf/proto"
)

// BenchmarkDecodeHealth measures what a caller of Health spends decoding
// the response of all plugins, in the full view and in
// HEALTH_VIEW_COMPACT (go test -run '^$' -bench DecodeHealth ./server).
func BenchmarkDecodeHealth(b *testing.B) {
	for _, n := range []int{10, 100} {
		full := &pb.HealthResponse{Revision: 12345}
		for i := range n {
			h := record.Health{Name: fmt.Sprintf("echo-%03d", i), State: record.StateServing, Generation: 3, Since: time.Now(), Revision: 1000 + uint64(i)}
			for c := record.FailureClass(1); c < record.NumClasses; c++ {
				h.Failures = append(h.Failures, record.FailureCount{Class: c})
			}
			full.Plugins = append(full.Plugins, healthToProto(h))
		}
		compact := &pb.HealthResponse{Revision: full.Revision}
		for _, p := range full.Plugins {
			compact.Plugins = append(compact.Plugins, compactHealth(p))
		}
		for _, c := range []struct {
			name string
			m    *pb.HealthResponse
		}{{"full", full}, {"compact", compact}} {
			enc, err := protobuf.Marshal(c.m)
			if err != nil {
				b.Fatal(err)
			}
			b.Run(fmt.Sprintf("%s/plugins=%d/bytes=%d", c.name, n, len(enc)), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					var r pb.HealthResponse
					if err := protobuf.Unmarshal(enc, &r); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
