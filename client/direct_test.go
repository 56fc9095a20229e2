package client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	examplev1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/example/v1"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var tickerSpec = &plugincontrolv1.PluginSpec{Name: "ticker", Binary: "ticker",
	Handshake: &plugincontrolv1.Handshake{ProtocolVersion: 1, MagicCookieKey: "TICKER_PLUGIN", MagicCookieValue: "tick"}}

func freeTCP(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// scrape returns the value of the metric line that starts with prefix
// (0 when absent).
func scrape(t *testing.T, addr, prefix string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	return 0
}

// TestDialDirect: a direct connection reaches the plugin's process with
// no hop (it keeps answering while plugind is SIGKILLed), follows reloads
// with no failed call, moves on after plugind came back, and its calls
// show in the daemon's metrics.
func TestDialDirect(t *testing.T) {
	metricsAddr := freeTCP(t)
	d := newDaemon(t, daemonConfig{flags: []string{"--live-restore", "--metrics-listen", metricsAddr}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Dial(ctx, d.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Load(ctx, tickerSpec)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := c.DialDirect(ctx, "ticker")
	if err != nil {
		t.Fatal(err)
	}
	ticker := examplev1.NewTickerServiceClient(conn)
	who, err := ticker.Whoami(ctx, &examplev1.WhoamiRequest{})
	if err != nil || who.GetPid() != st.GetPid() {
		t.Fatalf("Whoami: %v %v, want pid %d", who, err, st.GetPid())
	}

	// Load while reloading: no call fails, and after each reload the calls
	// reach the new process.
	var calls, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	payload := bytes.Repeat([]byte("x"), 1024)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := ticker.Echo(ctx, &examplev1.EchoRequest{Payload: payload})
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	for i := range 10 {
		rs, err := c.Reload(ctx, "ticker")
		if err != nil {
			t.Fatal(err)
		}
		for {
			who, err := ticker.Whoami(ctx, &examplev1.WhoamiRequest{})
			if err != nil {
				t.Fatalf("reload %d: Whoami: %v", i, err)
			}
			if who.GetPid() == rs.GetPlugin().GetPid() {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("reload %d: still on pid %d, want %d", i, who.GetPid(), rs.GetPlugin().GetPid())
			}
		}
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d calls failed across 10 reloads; first: %v", failed.Load(), calls.Load(), firstErr.Load())
	}
	if calls.Load() == 0 {
		t.Fatal("no calls made")
	}

	// Counted by the daemon, from the client's reports, in the metric the
	// forwarded path counts into.
	metric := `plugincontrol_plugin_calls_total{code="OK",method="/plugincontrol.example.v1.TickerService/Echo",plugin="ticker"}`
	for scrape(t, metricsAddr, metric) < float64(calls.Load()) {
		if ctx.Err() != nil {
			t.Fatalf("%s = %v, want %d", metric, scrape(t, metricsAddr, metric), calls.Load())
		}
		time.Sleep(100 * time.Millisecond) // time is what this waits for: reports go every second, and only /metrics shows them
	}

	// plugind dies (live restore keeps the plugin): the connection does
	// not go through it, so calls go on.
	cur, err := c.Get(ctx, "ticker")
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	done := d.done
	d.mu.Unlock()
	<-done
	for i := range 50 {
		who, err := ticker.Whoami(ctx, &examplev1.WhoamiRequest{})
		if err != nil || who.GetPid() != cur.GetPid() {
			t.Fatalf("call %d with plugind dead: %v %v, want pid %d", i, who, err, cur.GetPid())
		}
	}
	// Back (adopting the plugin), a reload moves the connection again.
	nd, err := startDaemon(daemonConfig{sock: d.sock, flags: []string{"--live-restore", "--state-dir", d.dirs[0], "--metrics-listen", metricsAddr}})
	if err != nil {
		t.Fatal(err)
	}
	d.replace(nd)
	if _, err := c.WaitServing(ctx, "ticker", 0); err != nil {
		t.Fatal(err)
	}
	// The connection takes its lease again (until then a reload would not
	// wait for its calls).
	leases := `plugincontrol_plugin_direct_leases{plugin="ticker"}`
	for scrape(t, metricsAddr, leases) < 1 {
		if ctx.Err() != nil {
			t.Fatalf("%s stays 0 after plugind came back", leases)
		}
		time.Sleep(20 * time.Millisecond) // polls /metrics: no API event says the lease was taken again
	}
	rs, err := c.Reload(ctx, "ticker")
	if err != nil {
		t.Fatal(err)
	}
	for {
		who, err := ticker.Whoami(ctx, &examplev1.WhoamiRequest{})
		if err != nil {
			t.Fatalf("after plugind came back: %v", err)
		}
		if who.GetPid() == rs.GetPlugin().GetPid() {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("after plugind came back: still on pid %d, want %d", who.GetPid(), rs.GetPlugin().GetPid())
		}
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DialDirect(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown plugin: %v", err)
	}
}

// TestDirectRefused: who may not have a direct connection is told why, and
// the direct socket's wire format (version 1) answers a bad request with
// its reason.
func TestDirectRefused(t *testing.T) {
	dir := t.TempDir()
	authFile := filepath.Join(dir, "auth.yaml")
	if err := os.WriteFile(authFile, []byte(`tokens:
- {name: op, token: operator-token-0123456789, roles: [operator]}
- {name: inv, token: invoker-token-0123456789, roles: [invoker]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tcp := freeTCP(t)
	d := newDaemon(t, daemonConfig{flags: []string{"--auth-file", authFile, "--listen", "tcp://" + tcp}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	op, err := Dial(ctx, d.addr(), WithToken("operator-token-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	if _, err := op.Load(ctx, tickerSpec); err != nil {
		t.Fatal(err)
	}
	if _, err := op.DialDirect(ctx, "ticker"); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("an operator without the invoker role: %v", err)
	}
	overTCP, err := Dial(ctx, "tcp://"+tcp, WithToken("invoker-token-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	defer overTCP.Close()
	if _, err := overTCP.DialDirect(ctx, "ticker"); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "unix socket") {
		t.Fatalf("over TCP: %v", err)
	}
	inv, err := Dial(ctx, d.addr(), WithToken("invoker-token-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	conn, err := inv.DialDirect(ctx, "ticker")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := examplev1.NewTickerServiceClient(conn).Whoami(ctx, &examplev1.WhoamiRequest{}); err != nil {
		t.Fatalf("an invoker's direct call: %v", err)
	}
	conn.Close()

	sock := filepath.Join(d.dirs[0], "direct.sock")
	for _, c := range []struct{ req, want string }{
		{"PDF1" + strings.Repeat("\x00", 32), "unknown or expired ticket"},
		{"HTTP" + strings.Repeat("\x00", 32), `not a direct-socket request of version 1 (want "PDF1" first)`},
	} {
		raw, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := raw.Write([]byte(c.req)); err != nil {
			t.Fatal(err)
		}
		reply, err := io.ReadAll(raw)
		raw.Close()
		if err != nil || len(reply) == 0 || reply[0] != 1 || !strings.Contains(string(reply[1:]), c.want) {
			t.Fatalf("request %q: reply %q (%v), want 0x01 and %q", c.req[:4], reply, err, c.want)
		}
	}
}

// TestDirectUnload: an unload does not wait out the drain deadline for an
// idle direct connection: told that its generation drains, the connection
// lets go of it.
func TestDirectUnload(t *testing.T) {
	d := newDaemon(t, daemonConfig{flags: []string{"--drain-timeout", "1m"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Dial(ctx, d.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Load(ctx, tickerSpec); err != nil {
		t.Fatal(err)
	}
	conn, err := c.DialDirect(ctx, "ticker")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := examplev1.NewTickerServiceClient(conn).Whoami(ctx, &examplev1.WhoamiRequest{}); err != nil {
		t.Fatal(err)
	}
	// The drain timeout (a minute) is longer than this context: an unload
	// that waited for the lease would fail the test.
	uctx, ucancel := context.WithTimeout(ctx, 20*time.Second)
	defer ucancel()
	if _, err := c.Unload(uctx, "ticker"); err != nil {
		t.Fatalf("Unload with a direct connection open: %v", err)
	}
	if _, err := examplev1.NewTickerServiceClient(conn).Whoami(ctx, &examplev1.WhoamiRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("a call after the unload: %v, want Unavailable", err)
	}
}
