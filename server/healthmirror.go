package server

import (
	"context"

	"github.com/plugincontrol/plugincontrol/manager"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// ServicePrefix prefixes plugin names in the grpc.health.v1 mirror:
// "plugin/echo". The daemon itself is "".
const ServicePrefix = "plugin/"

// mirrorHealth keeps the standard grpc.health.v1 service in step with the
// manager's health events, so grpc_health_probe and Kubernetes gRPC probes
// work: SERVING for SERVING and DEGRADED, NOT_SERVING otherwise. It never
// calls health.Server.Resume, which would overwrite every plugin's status.
func (s *Server) mirrorHealth() {
	defer close(s.mirrorDone)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	w, err := s.m.Watch(nil, 0, manager.Internal())
	if err != nil {
		return
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-s.shutdown
		cancel()
	}()
	for {
		evs, err := w.Next(ctx)
		if err != nil {
			return
		}
		for _, e := range evs {
			if e.Type == manager.EventSynced || e.Type == manager.EventBookmark {
				continue
			}
			st := healthpb.HealthCheckResponse_NOT_SERVING
			if e.Type != manager.EventRemoved && (e.Health.State == manager.StateServing || e.Health.State == manager.StateDegraded) {
				st = healthpb.HealthCheckResponse_SERVING
			}
			select {
			case <-s.shutdown:
				return // Shutdown already set everything NOT_SERVING.
			default:
			}
			s.health.SetServingStatus(ServicePrefix+e.Health.Name, st)
		}
	}
}
