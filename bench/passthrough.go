package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	examplev1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/example/v1"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/manager"
	"google.golang.org/grpc"
)

// tickerSpec is the ticker example plugin, a foreign go-plugin plugin.
var tickerSpec = &pb.PluginSpec{Name: "ticker", Binary: "ticker",
	Handshake: &pb.Handshake{ProtocolVersion: 1, MagicCookieKey: "TICKER_PLUGIN", MagicCookieValue: "tick"}}

var kib = make([]byte, 1024)

func echoVia(c examplev1.TickerServiceClient) func(int) error {
	return func(int) error {
		_, err := c.Echo(callCtx, &examplev1.EchoRequest{Payload: kib})
		return err
	}
}

// runPassthrough compares a unary call with a 1 KiB payload (the ticker
// plugin's Echo) through the plugin's endpoint (caller → plugind's
// forwarder → plugin: two hops, raw frames) with the same call direct to
// the plugin's own socket (one hop) and through nginx's grpc_pass to the
// same plugin (two hops: the established peer). Then it reloads the plugin
// with 4 callers calling Echo and one bidi Chat stream going (streams of 20
// messages, back to back: a stream pins its generation until it ends, so a
// stream open forever would make every reload wait out drain_timeout), and
// counts failed calls; and it measures what an idle forwarded plugin costs
// plugind in RSS.
func runPassthrough(e *env) ([]row, error) {
	rounds, calls1, dur16 := 5, 3000, 2*time.Second
	if e.short {
		rounds, calls1, dur16 = 2, 300, 300*time.Millisecond
	}
	d, err := startDaemon(e)
	if err != nil {
		return nil, err
	}
	defer d.close()
	ctx, cancel := ctxT(10 * time.Minute)
	defer cancel()
	res, err := d.ctl.Load(ctx, &pb.LoadRequest{Spec: tickerSpec})
	if err != nil {
		return nil, err
	}
	epConn, err := dialPlain(res.GetPlugin().GetEndpoint())
	if err != nil {
		return nil, err
	}
	defer epConn.Close()
	// ticker is the only plugin of this daemon.
	socks, _ := filepath.Glob(filepath.Join(d.dir, "sockets", "*", "plugin*"))
	if len(socks) != 1 {
		return nil, fmt.Errorf("the ticker plugin's socket: found %v", socks)
	}
	directConn, err := dialPlain("unix://" + socks[0])
	if err != nil {
		return nil, err
	}
	defer directConn.Close()
	ngx, err := startNginx(e, socks[0])
	if err != nil {
		return nil, err
	}
	defer ngx.stop()
	ngxConn, err := dialPlain("unix://" + ngx.sock)
	if err != nil {
		return nil, err
	}
	defer ngxConn.Close()

	// The floor of any two-hop design on grpc-go: a plain grpc.Server whose
	// Echo calls the plugin with the typed client, nothing else.
	floor, err := startPlain(e, func(s *grpc.Server) {
		examplev1.RegisterTickerServiceServer(s, &echoProxy{c: examplev1.NewTickerServiceClient(directConn)})
	})
	if err != nil {
		return nil, err
	}
	defer floor.close()
	floorConn, err := dialPlain(floor.addr())
	if err != nil {
		return nil, err
	}
	defer floorConn.Close()

	one, _, rates, err := contend([]func(int) error{
		echoVia(examplev1.NewTickerServiceClient(epConn)),
		echoVia(examplev1.NewTickerServiceClient(directConn)),
		echoVia(examplev1.NewTickerServiceClient(ngxConn)),
		echoVia(examplev1.NewTickerServiceClient(floorConn)),
	}, rounds, calls1, dur16)
	if err != nil {
		return nil, err
	}
	p1 := ratio(float64(one[0].p50()), float64(one[1].p50()))
	pTyped := ratio(float64(one[0].p50()), float64(one[3].p50()))
	tr := ratio(medianF(rates[0]), medianF(rates[2]))
	lat := func(d dist) string { return fmtDur(d.p50()) + " / " + fmtDur(d.p99()) }
	rows := []row{
		{
			scenario: "passthrough, 1 caller", measure: fmt.Sprintf("unary 1 KiB latency p50 / p99, n=%d", len(one[0])),
			plugind: lat(one[0]), ref: "direct " + lat(one[1]) + "; nginx " + lat(one[2]) + "; grpc-go typed proxy " + lat(one[3]),
			ratio: p1, target: "p50 ≤ 1.5 × direct", ok: okIf(p1 <= 1.5),
		},
		{
			scenario: "passthrough, 1 caller", measure: "unary 1 KiB latency p50 against the grpc-go typed proxy's",
			plugind: fmtDur(one[0].p50()), ref: "grpc-go typed proxy " + fmtDur(one[3].p50()),
			ratio: pTyped, target: "p50 ≤ 1.0 × typed proxy", ok: okIf(pTyped <= 1.0), // issue 22
		},
		{
			scenario: "passthrough, 16 callers", measure: fmt.Sprintf("throughput, median of %d rounds of %v", rounds, dur16),
			plugind: fmtRate(medianF(rates[0])), ref: "nginx " + fmtRate(medianF(rates[2])) + "; direct " + fmtRate(medianF(rates[1])) + "; grpc-go typed proxy " + fmtRate(medianF(rates[3])),
			ratio: tr, target: "≥ 1.0 × nginx", ok: okIf(tr >= 1.0),
		},
	}
	ngx.stop()

	churn, err := passthroughChurn(e, d, epConn)
	rows = append(rows, churn...)
	if err != nil {
		return rows, err
	}
	idle, err := endpointRSS(e, d)
	if err != nil {
		return rows, err
	}
	return append(rows, idle...), nil
}

// passthroughChurn reloads the plugin e.reloads times while 4 callers call
// Echo and one bidi stream chats through the endpoint; every call and every
// message must succeed.
func passthroughChurn(e *env, d *daemon, conn *grpc.ClientConn) ([]row, error) {
	ctx, cancel := ctxT(10 * time.Minute)
	defer cancel()
	tc := examplev1.NewTickerServiceClient(conn)
	stop, stopLoad := context.WithCancel(context.Background())
	var (
		wg              sync.WaitGroup
		during          load
		streams, chats  int
		chatErr, relErr error
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		during = closedLoop(stop, 4, 0, echoVia(tc))
	}()
	go func() {
		defer wg.Done()
		for stop.Err() == nil && chatErr == nil {
			var n int
			n, chatErr = chatStream(tc, 20)
			chats += n
			streams++
		}
	}()
	var reloads dist
	for range e.reloads {
		r0 := time.Now()
		if _, err := d.ctl.Reload(ctx, &pb.ReloadRequest{Name: "ticker"}); err != nil {
			relErr = fmt.Errorf("Reload: %w", err)
			break
		}
		reloads = append(reloads, time.Since(r0))
	}
	stopLoad()
	wg.Wait()
	if relErr != nil {
		return nil, relErr
	}
	failed := during.failed
	if chatErr != nil {
		failed++
	}
	r := row{
		scenario: fmt.Sprintf("passthrough during %d reloads", len(reloads)), measure: "failed calls (4 unary callers + 1 bidi stream at a time)",
		plugind: fmt.Sprintf("%d of %d calls, %d of %d streams (%d messages)", during.failed, during.failed+during.calls, b2i(chatErr != nil), streams, chats),
		ref:     "—", target: "0", ok: okIf(failed == 0),
		note: "reload p50 " + fmtDur(reloads.p50()),
	}
	if failed > 0 {
		err := during.firstErr
		if err == nil {
			err = chatErr
		}
		return []row{r}, fmt.Errorf("%d failed during reloads: %v", failed, err)
	}
	return []row{r}, nil
}

// chatStream runs one Chat stream of n round trips and ends it.
func chatStream(tc examplev1.TickerServiceClient, n int) (int, error) {
	s, err := tc.Chat(callCtx)
	if err != nil {
		return 0, err
	}
	for i := range n {
		if err := s.Send(&examplev1.ChatRequest{Text: strconv.Itoa(i)}); err != nil {
			return i, fmt.Errorf("chat send: %w", err)
		}
		m, err := s.Recv()
		if err != nil {
			return i, fmt.Errorf("chat recv: %w", err)
		}
		if m.GetText() != strconv.Itoa(i) {
			return i, fmt.Errorf("chat: got %q, want %d", m.GetText(), i)
		}
	}
	if err := s.CloseSend(); err != nil {
		return n, err
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		return n, fmt.Errorf("chat end: %v", err)
	}
	return n, nil
}

// endpointRSS measures plugind's resident memory per idle endpoint: n
// endpoints opened on the daemon's endpoint server (with nothing behind
// them), RSS before and after; and the RSS of the ticker plugin process.
func endpointRSS(e *env, d *daemon) ([]row, error) {
	n := 500
	if e.short {
		n = 200
	}
	noop := func(context.Context) (*manager.Lease, error) { return nil, manager.ErrUnavailable }
	goBefore := goMemAfterGC()
	before := rssAfterGC()
	for i := range n {
		if _, err := d.eps.Open(fmt.Sprintf("idle-%d", i), noop); err != nil {
			return nil, err
		}
	}
	time.Sleep(100 * time.Millisecond) // the servers' goroutines are up
	after := rssAfterGC()
	goAfter := goMemAfterGC()
	for i := range n {
		d.eps.Close(fmt.Sprintf("idle-%d", i))
	}
	per := (after - before) / float64(n)
	goPer := (goAfter - goBefore) / float64(n)
	st, err := d.sdk.List(callCtx)
	if err != nil {
		return nil, err
	}
	var plugRSS float64
	for _, p := range st {
		if p.GetName() == "ticker" {
			plugRSS = procRSS(int(p.GetPid()))
		}
	}
	return []row{{
		scenario: "passthrough, idle", measure: fmt.Sprintf("plugind RSS per idle endpoint (%d opened)", n),
		plugind: fmtBytes(per) + " (Go heap and stacks in use: " + fmtBytes(goPer) + ")", ref: "the plugin process itself " + fmtBytes(plugRSS),
	}}, nil
}

// goMemAfterGC is the Go heap and goroutine stacks in use, after a GC: a
// steadier measure than RSS, which the runtime returns to the OS lazily.
func goMemAfterGC() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapInuse + ms.StackInuse)
}

// rssAfterGC is this process's RSS after a GC that returns every free page
// to the OS (debug.FreeOSMemory): after a plain GC the pages freed by an
// earlier scenario went back to the OS during the measurement and made
// the RSS per endpoint negative (-2228 B in the full run of 2026-12-05).
func rssAfterGC() float64 {
	debug.FreeOSMemory()
	return procRSS(os.Getpid())
}

// procRSS is VmRSS of pid in bytes.
func procRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(v), "%f", &kb)
			return kb * 1024
		}
	}
	return 0
}

// echoProxy is the grpc-go floor of a two-hop pass-through.
type echoProxy struct {
	examplev1.UnimplementedTickerServiceServer
	c examplev1.TickerServiceClient
}

func (p *echoProxy) Echo(ctx context.Context, req *examplev1.EchoRequest) (*examplev1.EchoResponse, error) {
	return p.c.Echo(ctx, req)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// nginx is Debian's nginx (nginx-core) proxying gRPC to one plugin socket
// with grpc_pass: the peer of the endpoint forwarder.
type nginx struct {
	cmd  *exec.Cmd
	dir  string
	sock string
	once sync.Once
}

// startNginx runs nginx in the foreground (daemon off) with a generated
// config: as many workers as CPUs, access log off, upstream keepalive, an
// HTTP/2 listener on a unix socket, grpc_pass to the plugin's socket.
func startNginx(e *env, pluginSock string) (*nginx, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			return nil, fmt.Errorf("the passthrough scenario compares with nginx grpc_pass: install Debian's nginx-core (.ci/run does): %w", err)
		}
		bin = "/usr/sbin/nginx"
	}
	dir, err := os.MkdirTemp(e.tmp, "ngx-")
	if err != nil {
		return nil, err
	}
	n := &nginx{dir: dir, sock: filepath.Join(dir, "n.sock")}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // workers must reach the plugin's root-owned socket
	}
	conf := fmt.Sprintf(`%s
worker_processes auto;
daemon off;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[2]s/body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    upstream plugin {
        server unix:%[3]s;
        keepalive 64;
    }
    server {
        listen unix:%[4]s http2;
        location / {
            grpc_pass grpc://plugin;
        }
    }
}
`, user, dir, pluginSock, n.sock)
	cf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	n.cmd = exec.Command(bin, "-p", dir, "-c", cf)
	n.cmd.Stderr = os.Stderr
	if err := n.cmd.Start(); err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(n.sock); err == nil {
			return n, nil
		}
		if i > 200 {
			n.stop()
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return nil, fmt.Errorf("nginx did not come up:\n%s", log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (n *nginx) stop() {
	n.once.Do(func() {
		if n.cmd.Process != nil {
			_ = n.cmd.Process.Signal(os.Interrupt) // fast shutdown
			done := make(chan struct{})
			go func() { _ = n.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = n.cmd.Process.Kill()
				<-done
			}
		}
		_ = os.RemoveAll(n.dir)
	})
}
