package server

import (
	"context"

	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// ServicePrefix prefixes plugin names in the grpc.health.v1 mirror:
// "plugin/echo". The daemon itself is "".
const ServicePrefix = "plugin/"

// mirrorHealth keeps the standard grpc.health.v1 service in step with the
// manager's health events, so grpc_health_probe and Kubernetes gRPC probes
// work: SERVING for SERVING and DEGRADED, NOT_SERVING otherwise. It never
// calls health.Server.Resume, which would overwrite every plugin's status.
//
// startMirror applies the snapshot before it returns, so a probe that
// reaches a new server (a reload's new image, with callers waiting in the
// listen backlog) never sees a plugin it does not know yet.
func (s *Server) startMirror() {
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	w, err := s.m.Watch(nil, 0, manager.Internal())
	if err != nil {
		close(s.mirrorDone)
		return
	}
	evs, _ := w.Poll()
	s.mirror(evs)
	go s.mirrorHealth(w)
}

func (s *Server) mirrorHealth(w *manager.Watch) {
	defer close(s.mirrorDone)
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
		if !s.mirror(evs) {
			return
		}
	}
}

// mirror applies events to the health service; false once Shutdown began.
func (s *Server) mirror(evs []manager.Event) bool {
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
			return false // Shutdown already set everything NOT_SERVING.
		default:
		}
		s.health.SetServingStatus(ServicePrefix+e.Health.Name, st)
	}
	return true
}

// healthService is grpc-go's health server whose Watch streams end with
// Unavailable when the server drains (a shutdown or a reload's handover):
// grpc-go's own never end, and GracefulStop would wait for them.
type healthService struct {
	*health.Server
	s *Server
}

func (h healthService) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-h.s.shutdown:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := h.Server.Watch(req, watchStream{stream, ctx})
	if h.s.isDraining() {
		return h.s.ended()
	}
	return err
}

// watchStream is a Watch stream with its own context.
type watchStream struct {
	healthpb.Health_WatchServer
	ctx context.Context
}

func (w watchStream) Context() context.Context { return w.ctx }
