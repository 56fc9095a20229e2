// Command ticker is a foreign go-plugin plugin: built on hashicorp/go-plugin
// directly (its own handshake cookie, TICKER_PLUGIN=tick, protocol 1), not
// on plugincontrol's plugin SDK, serving its own API
// (plugincontrol.example.v1.TickerService) with one method of each gRPC
// kind. Every answer carries the process id, so a caller sees which
// generation served it. Load it with its handshake:
//
//	{"spec":{"name":"ticker","binary":"ticker","handshake":{"protocol_version":1,"magic_cookie_key":"TICKER_PLUGIN","magic_cookie_value":"tick"}}}
package main

import (
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	examplev1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/example/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Handshake is the ticker's go-plugin handshake.
var Handshake = goplugin.HandshakeConfig{ProtocolVersion: 1, MagicCookieKey: "TICKER_PLUGIN", MagicCookieValue: "tick"}

type ticker struct {
	examplev1.UnimplementedTickerServiceServer
	pid int64
}

func (t *ticker) Whoami(ctx context.Context, _ *examplev1.WhoamiRequest) (*examplev1.WhoamiResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	seen := make(map[string]string, len(md))
	for k, v := range md {
		if len(v) > 0 {
			seen[k] = v[0]
		}
	}
	pid := strconv.FormatInt(t.pid, 10)
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-ticker-pid", pid))
	_ = grpc.SetTrailer(ctx, metadata.Pairs("x-ticker-done", pid))
	return &examplev1.WhoamiResponse{Pid: t.pid, Metadata: seen}, nil
}

func (t *ticker) Echo(_ context.Context, req *examplev1.EchoRequest) (*examplev1.EchoResponse, error) {
	return &examplev1.EchoResponse{Payload: req.GetPayload()}, nil
}

func (t *ticker) Ticks(req *examplev1.TicksRequest, s grpc.ServerStreamingServer[examplev1.TicksResponse]) error {
	every := time.Duration(req.GetIntervalMs()) * time.Millisecond
	for i := uint32(1); i <= req.GetCount(); i++ {
		if i > 1 {
			select {
			case <-time.After(every):
			case <-s.Context().Done():
				return s.Context().Err()
			}
		}
		if err := s.Send(&examplev1.TicksResponse{Seq: i, Pid: t.pid}); err != nil {
			return err
		}
	}
	return nil
}

func (t *ticker) Chat(s grpc.BidiStreamingServer[examplev1.ChatRequest, examplev1.ChatResponse]) error {
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.Send(&examplev1.ChatResponse{Text: m.GetText(), Pid: t.pid}); err != nil {
			return err
		}
	}
}

func (t *ticker) Collect(s grpc.ClientStreamingServer[examplev1.CollectRequest, examplev1.CollectResponse]) error {
	var texts []string
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return s.SendAndClose(&examplev1.CollectResponse{Count: uint32(len(texts)), Joined: strings.Join(texts, ","), Pid: t.pid})
		}
		if err != nil {
			return err
		}
		texts = append(texts, m.GetText())
	}
}

// tickerPlugin is the go-plugin glue (plugin side only).
type tickerPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	impl *ticker
}

func (p *tickerPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	examplev1.RegisterTickerServiceServer(s, p.impl)
	return nil
}

func (p *tickerPlugin) GRPCClient(context.Context, *goplugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	return nil, errors.New("ticker: plugin side only")
}

func main() {
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         goplugin.PluginSet{"ticker": &tickerPlugin{impl: &ticker{pid: int64(os.Getpid())}}},
		GRPCServer:      goplugin.DefaultGRPCServer,
	})
}
