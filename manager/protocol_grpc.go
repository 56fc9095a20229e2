package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
)

// grpcDispenseName is what GRPCProtocol dispenses: the plugin's gRPC
// connection itself.
const grpcDispenseName = "grpc"

// DefaultReadyService is the grpc.health.v1 service GRPCProtocol probes
// when none is named: go-plugin registers it, SERVING, in every Go plugin.
const DefaultReadyService = goplugin.GRPCServiceName

// grpcProtocolName is the Name of GRPCProtocol's protocols.
const grpcProtocolName = "grpc"

// GRPCProtocol hosts any go-plugin gRPC plugin, in any language, given its
// handshake: the dispensed value is the plugin's *grpc.ClientConn (callers
// use their own typed clients on it), describe lists the plugin's services
// through server reflection when it serves it, and ready is a
// grpc.health.v1 Check of readyService ("" means DefaultReadyService).
func GRPCProtocol(h goplugin.HandshakeConfig, readyService string) *Protocol {
	return &Protocol{
		Name:      grpcProtocolName,
		Handshake: h,
		Plugins:   goplugin.PluginSet{grpcDispenseName: grpcConnPlugin{}},
		Dispense:  grpcDispenseName,
		Validate: func(v any) error {
			if c, ok := v.(*grpc.ClientConn); !ok || c == nil {
				return fmt.Errorf("dispense returned %T, not a gRPC connection", v)
			}
			return nil
		},
		Describe: ReflectionDescribe,
		Ready:    HealthReady(readyService),
	}
}

// grpcConnPlugin dispenses the plugin's gRPC connection.
type grpcConnPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
}

func (grpcConnPlugin) GRPCServer(*goplugin.GRPCBroker, *grpc.Server) error {
	return errors.New("grpcConnPlugin is host-side only")
}

func (grpcConnPlugin) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return c, nil
}

// HealthReady returns a Ready hook that asks the plugin's grpc.health.v1
// service for service ("" means DefaultReadyService) and passes only on
// SERVING. The config is not used.
func HealthReady(service string) func(context.Context, Conn, []byte) error {
	if service == "" {
		service = DefaultReadyService
	}
	return func(ctx context.Context, c Conn, _ []byte) error {
		return checkHealth(ctx, c.GRPC, service)
	}
}

// checkHealth is one grpc.health.v1 Check of service, with readable errors.
func checkHealth(ctx context.Context, conn *grpc.ClientConn, service string) error {
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	switch status.Code(err) {
	case codes.OK:
	case codes.Unimplemented:
		return fmt.Errorf("the plugin serves no grpc.health.v1 (go-plugin registers it in Go plugins; a plugin in another language must serve it, with service %q SERVING)", service)
	case codes.NotFound:
		return fmt.Errorf("grpc.health.v1 knows no service %q (set ready_service to one the plugin reports)", service)
	default:
		return fmt.Errorf("grpc.health.v1 Check of %q: %w", service, err)
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("grpc.health.v1 reports service %q %s", service, s)
	}
	return nil
}

// internalServices are services go-plugin serves in every plugin; they are
// not the plugin's own API.
var internalServices = []string{
	"plugin.GRPCBroker", "plugin.GRPCController", "plugin.GRPCStdio",
	"grpc.health.v1.Health",
	"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
}

// ReflectionDescribe is the default Describe hook: it lists the plugin's
// own services through gRPC server reflection (v1, else v1alpha; go-plugin
// registers both in Go plugins) and, from their descriptors, which methods
// are unary (an endpoint forwards those on a shorter path). A plugin
// without reflection is not an error: the description carries a note
// instead of services.
func ReflectionDescribe(ctx context.Context, c Conn) (Description, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	services, unary, err := reflectV1(ctx, c.GRPC)
	if status.Code(err) == codes.Unimplemented {
		services, err = listServicesV1alpha(ctx, c.GRPC)
	}
	if status.Code(err) == codes.Unimplemented {
		return Description{Note: "describe skipped: the plugin serves no gRPC reflection, so its services are unknown"}, nil
	}
	if err != nil {
		return Description{}, fmt.Errorf("reflection: %w", err)
	}
	own := make([]string, 0, len(services))
	for _, s := range services {
		if !slices.Contains(internalServices, s) {
			own = append(own, s)
		}
	}
	slices.Sort(own)
	return Description{Services: own, UnaryMethods: unary}, nil
}

// reflectV1 lists the services through reflection v1 and, on the same
// stream, asks for the file of each one not go-plugin's, to learn which
// methods are unary. A plugin that lists services but cannot describe one
// yields the services without the methods (unary stays incomplete, which
// only means the longer forwarding path).
func reflectV1(ctx context.Context, conn *grpc.ClientConn) (services, unary []string, err error) {
	s, err := reflectionv1.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = s.CloseSend() }()
	ask := func(req *reflectionv1.ServerReflectionRequest) (*reflectionv1.ServerReflectionResponse, error) {
		// A Send error other than io.EOF is the stream's; io.EOF means the
		// server ended it, and Recv says with what status.
		if err := s.Send(req); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		resp, err := s.Recv()
		if err != nil {
			return nil, err
		}
		if e := resp.GetErrorResponse(); e != nil {
			return nil, status.Error(codes.Code(e.GetErrorCode()), e.GetErrorMessage())
		}
		return resp, nil
	}
	resp, err := ask(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}})
	if err != nil {
		return nil, nil, err
	}
	for _, svc := range resp.GetListServicesResponse().GetService() {
		services = append(services, svc.GetName())
	}
	for _, name := range services {
		if slices.Contains(internalServices, name) {
			continue
		}
		resp, err := ask(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: name}})
		if err != nil {
			continue
		}
		unary = append(unary, unaryMethods(name, resp.GetFileDescriptorResponse().GetFileDescriptorProto())...)
	}
	slices.Sort(unary)
	return services, unary, nil
}

// unaryMethods returns "/service/Method" of the unary methods of service
// found in the serialized FileDescriptorProtos files.
func unaryMethods(service string, files [][]byte) []string {
	var out []string
	for _, b := range files {
		var fd descriptorpb.FileDescriptorProto
		if err := proto.Unmarshal(b, &fd); err != nil {
			continue
		}
		for _, sd := range fd.GetService() {
			full := sd.GetName()
			if p := fd.GetPackage(); p != "" {
				full = p + "." + full
			}
			if full != service {
				continue
			}
			for _, md := range sd.GetMethod() {
				if !md.GetClientStreaming() && !md.GetServerStreaming() {
					out = append(out, "/"+service+"/"+md.GetName())
				}
			}
		}
	}
	return out
}

func listServicesV1alpha(ctx context.Context, conn *grpc.ClientConn) ([]string, error) {
	s, err := reflectionv1alpha.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = s.CloseSend() }()
	if err := s.Send(&reflectionv1alpha.ServerReflectionRequest{MessageRequest: &reflectionv1alpha.ServerReflectionRequest_ListServices{}}); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	resp, err := s.Recv()
	if err != nil {
		return nil, err
	}
	if e := resp.GetErrorResponse(); e != nil {
		return nil, status.Error(codes.Code(e.GetErrorCode()), e.GetErrorMessage())
	}
	var out []string
	for _, svc := range resp.GetListServicesResponse().GetService() {
		out = append(out, svc.GetName())
	}
	return out, nil
}

// gopluginHandshake is h as go-plugin spells it.
func gopluginHandshake(h *Handshake) goplugin.HandshakeConfig {
	return goplugin.HandshakeConfig{ProtocolVersion: h.ProtocolVersion, MagicCookieKey: h.MagicCookieKey, MagicCookieValue: h.MagicCookieValue}
}
