package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"github.com/plugincontrol/plugincontrol/client"
	"github.com/plugincontrol/plugincontrol/endpoint"
	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	"github.com/plugincontrol/plugincontrol/metrics"
	"github.com/plugincontrol/plugincontrol/plugin"
	"github.com/plugincontrol/plugincontrol/server"
	"github.com/plugincontrol/plugincontrol/store"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
)

// daemon is plugind in this process, wired as cmd/plugind's serve does by
// default (keep the two in step): a bbolt store in the state directory, the
// Prometheus metrics interceptors and candidate observer, the peer-credential
// listener on a unix socket, default limits, and a text logger at the given
// level writing to io.Discard (formatting is paid, writing is not).
// Measured calls use a plain gRPC connection configured like package
// client's (the same as the references use); sdk is package client itself.
type daemon struct {
	env     *env
	keepDir bool // close leaves dir (restoreFrom reuses it)
	eps     *endpoint.Server
	m       *manager.Manager
	srv     *server.Server
	st      *store.DB
	dir     string
	sock    string
	done    chan struct{}
	conn    *grpc.ClientConn
	ctl     pb.PluginControlServiceClient
	gw      pb.PluginGatewayServiceClient
	sdk     *client.Client
	direct  net.Listener // the direct socket
}

func startDaemon(e *env, tweaks ...func(*manager.Config)) (*daemon, error) {
	dir, err := os.MkdirTemp(e.tmp, "d-")
	if err != nil {
		return nil, err
	}
	d := &daemon{env: e, dir: dir, sock: filepath.Join(dir, "plugind.sock"), done: make(chan struct{})}
	d.st, err = store.Open(dir, store.Options{})
	if err != nil {
		return nil, err
	}
	met := metrics.New()
	d.eps, err = endpoint.New(filepath.Join(dir, "plugins"), endpoint.WithLogger(e.log), endpoint.WithCallObserver(met.ObserveCall),
		endpoint.WithServerOptions(grpc.ChainStreamInterceptor(server.EndpointInterceptors(nil, e.log)...)))
	if err != nil {
		d.st.Close()
		return nil, err
	}
	cfg := manager.Config{
		PluginDir:   e.pluginDir,
		SocketDir:   filepath.Join(dir, "sockets"),
		Logger:      e.log,
		Store:       d.st,
		OnCandidate: met.ObserveCandidate,
		Endpoints:   d.eps,
	}
	for _, t := range tweaks {
		t(&cfg)
	}
	d.m, err = manager.New(cfg)
	if err != nil {
		d.st.Close()
		return nil, err
	}
	met.Attach(d.m)
	lis, err := net.Listen("unix", d.sock)
	if err != nil {
		d.close()
		return nil, err
	}
	directSock := filepath.Join(dir, "direct.sock")
	dlis, err := net.Listen("unix", directSock)
	if err != nil {
		lis.Close()
		d.close()
		return nil, err
	}
	metU, metS := met.ServerInterceptors()
	d.srv = server.New(d.m, server.WithLogger(e.log), server.WithLimits(4<<20, 1024),
		server.WithInterceptors([]grpc.UnaryServerInterceptor{metU}, []grpc.StreamServerInterceptor{metS}),
		server.WithCallObserver(met.ObserveCall), server.WithDirectSocket(directSock, metrics.CallDurationBuckets()))
	met.InitializeServer(d.srv.GRPCServer())
	go func() {
		defer close(d.done)
		_ = d.srv.Serve(server.PeerCredListener(lis))
	}()
	d.direct = dlis
	go func() { _ = d.srv.ServeDirect(dlis) }()
	if d.conn, err = dialPlain(d.addr()); err != nil {
		d.close()
		return nil, err
	}
	d.ctl, d.gw = pb.NewPluginControlServiceClient(d.conn), pb.NewPluginGatewayServiceClient(d.conn)
	if d.sdk, err = client.Dial(context.Background(), d.addr()); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

func (d *daemon) addr() string { return "unix://" + d.sock }

// load loads the echo binary as name through the gRPC API.
func (d *daemon) load(ctx context.Context, name string, policy *pb.HealthPolicy) error {
	_, err := d.ctl.Load(ctx, &pb.LoadRequest{Spec: &pb.PluginSpec{Name: name, Binary: "echo", HealthPolicy: policy}})
	return err
}

// close stops the server, the manager and the store; every plugin process
// is gone when it returns.
func (d *daemon) close() {
	if d.sdk != nil {
		_ = d.sdk.Close()
	}
	if d.conn != nil {
		_ = d.conn.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if d.direct != nil {
		_ = d.direct.Close()
	}
	if d.srv != nil {
		d.srv.Shutdown(ctx)
		select {
		case <-d.done:
		case <-ctx.Done():
		}
	}
	if d.m != nil {
		_ = d.m.Close(ctx)
	}
	if d.eps != nil {
		d.eps.Shutdown()
	}
	if d.st != nil {
		_ = d.st.Close()
		d.st = nil
	}
	if !d.keepDir {
		_ = os.RemoveAll(d.dir)
	}
}

// rawPlugin is the reference: the echo binary launched by go-plugin from
// this process, configured as manager/launch.go does (gRPC only,
// SkipHostEnv, own process group and Pdeathsig, own socket directory, a
// fresh SecureConfig when pinned), with no daemon in between.
type rawPlugin struct {
	client  *goplugin.Client
	conn    *plugin.Conn
	pid     int
	sockDir string
}

// rawLaunch starts the echo binary, handshakes, dispenses and makes the
// first call (Describe). The returned duration covers exactly that.
func rawLaunch(e *env, pin []byte) (*rawPlugin, time.Duration, error) {
	start := time.Now()
	sockDir, err := os.MkdirTemp(e.rawSock, "r-")
	if err != nil {
		return nil, 0, err
	}
	cmd := exec.Command(e.echo)
	cmd.Env = []string{goplugin.EnvUnixSocketDir + "=" + sockDir}
	cmd.Dir = e.pluginDir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cfg := &goplugin.ClientConfig{
		HandshakeConfig:  plugin.HandshakeConfig(),
		Plugins:          goplugin.PluginSet{plugin.DispenseName: &plugin.GRPCPlugin{}},
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		StartTimeout:     10 * time.Second,
		SkipHostEnv:      true,
		Stderr:           io.Discard,
		SyncStderr:       io.Discard,
		SyncStdout:       io.Discard,
		Logger:           hclog.New(&hclog.LoggerOptions{Output: io.Discard, Level: hclog.Off}),
	}
	if pin != nil {
		cfg.SecureConfig = &goplugin.SecureConfig{Checksum: pin, Hash: sha256.New()}
	}
	r := &rawPlugin{client: goplugin.NewClient(cfg), sockDir: sockDir}
	fail := func(err error) (*rawPlugin, time.Duration, error) {
		r.kill()
		return nil, 0, err
	}
	if _, err := r.client.Start(); err != nil {
		return fail(fmt.Errorf("raw go-plugin start: %w", err))
	}
	if rc := r.client.ReattachConfig(); rc != nil {
		r.pid = rc.Pid
	}
	rpc, err := r.client.Client()
	if err != nil {
		return fail(fmt.Errorf("raw go-plugin client: %w", err))
	}
	raw, err := rpc.Dispense(plugin.DispenseName)
	if err != nil {
		return fail(fmt.Errorf("raw go-plugin dispense: %w", err))
	}
	conn, ok := raw.(*plugin.Conn)
	if !ok {
		return fail(fmt.Errorf("dispense returned %T", raw))
	}
	r.conn = conn
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	desc, err := conn.Client.Describe(ctx, &pluginv1.DescribeRequest{})
	cancel()
	if err != nil {
		return fail(fmt.Errorf("raw first call: %w", err))
	}
	if desc.GetName() != "echo" {
		return fail(fmt.Errorf("raw plugin describes itself as %q", desc.GetName()))
	}
	return r, time.Since(start), nil
}

// kill stops the raw plugin and its process group and removes its socket
// directory.
func (r *rawPlugin) kill() {
	if r.client != nil {
		r.client.Kill()
	}
	if r.pid > 0 {
		if err := syscall.Kill(-r.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			_ = syscall.Kill(r.pid, syscall.SIGKILL)
		}
	}
	_ = os.RemoveAll(r.sockDir)
}

// plainServer is a grpc.Server with default options in this process, on a
// unix socket: the peers plugind is compared with.
type plainServer struct {
	srv  *grpc.Server
	dir  string
	sock string
	done chan struct{}
}

func startPlain(e *env, register func(*grpc.Server), opts ...grpc.ServerOption) (*plainServer, error) {
	dir, err := os.MkdirTemp(e.tmp, "p-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "s.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	p := &plainServer{srv: grpc.NewServer(opts...), dir: dir, sock: sock, done: make(chan struct{})}
	register(p.srv)
	go func() {
		defer close(p.done)
		_ = p.srv.Serve(lis)
	}()
	return p, nil
}

func (p *plainServer) addr() string { return "unix://" + p.sock }

func (p *plainServer) close() {
	p.srv.Stop()
	<-p.done
	_ = os.RemoveAll(p.dir)
}

// healthRef is the peer reference for health: grpc-go's own health.Server
// on a plain grpc.Server.
type healthRef struct {
	*plainServer
	hs *health.Server
}

const refService = "bench"

func startHealthRef(e *env) (*healthRef, error) {
	hs := health.NewServer()
	hs.SetServingStatus(refService, healthpb.HealthCheckResponse_SERVING)
	p, err := startPlain(e, func(s *grpc.Server) { healthpb.RegisterHealthServer(s, hs) })
	if err != nil {
		return nil, err
	}
	return &healthRef{plainServer: p, hs: hs}, nil
}

func (h *healthRef) close() {
	h.hs.Shutdown()
	h.plainServer.close()
}

// bareProxy is the floor of the two-hop design: a plain grpc.Server whose
// Invoke forwards to a raw go-plugin connection, with nothing else (no
// interceptors, no registry, no generations, no drain accounting).
type bareProxy struct {
	pb.UnimplementedPluginGatewayServiceServer
	c pluginv1.PluginServiceClient
}

func (p *bareProxy) Invoke(ctx context.Context, req *pb.InvokeRequest) (*pb.InvokeResponse, error) {
	r, err := p.c.Invoke(ctx, &pluginv1.InvokeRequest{Method: req.GetMethod(), Payload: req.GetPayload()})
	if err != nil {
		return nil, err
	}
	return &pb.InvokeResponse{Payload: r.GetPayload(), Generation: 1}, nil
}

// dialPlain is a client connection with package client's transport settings
// (plaintext over the unix socket, the same keepalive), for servers that are
// not plugind and for the watcher process.
func dialPlain(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}))
}
