package etcdtest

import (
	"net"
	"strconv"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// A closed embedded etcd's HTTP keep-alive connections time out
		// on their own (net/http's, created by etcd).
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"))
}

func TestFreePortBelowEphemeralRange(t *testing.T) {
	start, end := portRange()
	if low, _ := ephemeralRange(); end > low && start < low {
		t.Fatalf("FreePort picks in [%d, %d), which overlaps the ephemeral range from %d", start, end, low)
	}
	for range 20 {
		addr, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		port, _ := strconv.Atoi(p)
		if port < start || port >= end {
			t.Fatalf("FreePort = %s, want a port in [%d, %d)", addr, start, end)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("FreePort's %s cannot be bound: %v", addr, err)
		}
		l.Close()
	}
}

func TestStartNewServes(t *testing.T) {
	m, e, err := StartNew("t", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if got := e.Clients[0].Addr().String(); got != m.ClientURL.Host {
		t.Fatalf("etcd serves clients on %s, Member says %s", got, m.ClientURL.Host)
	}
}
