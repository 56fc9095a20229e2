package server_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Serve a manager on a unix socket and call it.
func Example() {
	m, _ := manager.New(manager.Config{PluginDir: pluginDir, Logger: slog.New(slog.DiscardHandler)})
	dir, _ := os.MkdirTemp("", "plugind-")
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "plugind.sock")
	lis, _ := net.Listen("unix", sock)
	srv := server.New(m, server.WithLogger(slog.New(slog.DiscardHandler)))
	go srv.Serve(server.PeerCredListener(lis))

	conn, _ := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	ctl := pb.NewPluginControlServiceClient(conn)
	res, err := ctl.Load(context.Background(), &pb.LoadRequest{Spec: &pb.PluginSpec{Name: "echo", Binary: "echo"}})
	if err != nil {
		fmt.Println(err)
	} else {
		fmt.Println(res.GetPlugin().GetName(), res.GetPlugin().GetGeneration(), res.GetPlugin().GetState())
	}

	conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	m.Close(ctx)
	// Output: echo 1 PLUGIN_STATE_SERVING
}
