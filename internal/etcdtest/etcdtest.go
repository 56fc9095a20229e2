// Package etcdtest starts embedded etcd members (go.etcd.io/etcd/server/v3/
// embed) on loopback for the fleet's tests, its benchmark and the
// TypeScript SDK's test helper.
package etcdtest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Member is one etcd member.
type Member struct {
	// Name and Dir (its data directory) are required.
	Name, Dir string
	// ClientURL and PeerURL are where it serves (see LoopbackURL).
	ClientURL, PeerURL url.URL
	// Cluster is the initial cluster, name=peerURL,...; empty: this member
	// alone.
	Cluster string
	// TLS, when set, makes clients present a certificate of its CA
	// (ClientURL's scheme must be https).
	TLS *transport.TLSInfo
}

// FreePort is 127.0.0.1:PORT with a port that was free a moment ago, for
// a server a test starts later on it (etcd takes URLs, not listeners).
//
// The port is picked below the kernel's ephemeral range, not by listening
// on port 0: a port from that range, closed again, is handed to the next
// outgoing connection of any process on the machine, and a CI run of many
// test binaries in parallel lost an etcd start to exactly that ("bind:
// address already in use"). Ports below the range are only ever taken by
// an explicit bind.
func FreePort() (string, error) {
	start, end := portRange()
	if start >= end {
		return "", fmt.Errorf("no ports outside the ephemeral range (/proc/sys/net/ipv4/ip_local_port_range) to pick from")
	}
	for range 200 {
		addr := fmt.Sprintf("127.0.0.1:%d", start+rand.IntN(end-start))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue // taken: try another
		}
		l.Close()
		return addr, nil
	}
	return "", fmt.Errorf("no free port in [%d, %d) on 127.0.0.1 after 200 tries", start, end)
}

// portRange is where FreePort picks: [10000, the ephemeral range's low
// end), or above the range when it starts at 10000 or lower.
func portRange() (start, end int) {
	low, high := ephemeralRange()
	if low <= 10000 {
		return high + 1, 65536
	}
	return 10000, low
}

// ephemeralRange is the kernel's range for outgoing connections' ports
// (Linux's default when it cannot be read).
func ephemeralRange() (low, high int) {
	low, high = 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return low, high
	}
	if f := strings.Fields(string(b)); len(f) == 2 {
		l, err1 := strconv.Atoi(f[0])
		h, err2 := strconv.Atoi(f[1])
		if err1 == nil && err2 == nil && 0 < l && l <= h && h < 65536 {
			return l, h
		}
	}
	return low, high
}

// LoopbackURL is scheme://FreePort().
func LoopbackURL(scheme string) (url.URL, error) {
	addr, err := FreePort()
	if err != nil {
		return url.URL{}, err
	}
	return url.URL{Scheme: scheme, Host: addr}, nil
}

// New is a member alone on fresh loopback URLs.
func New(name, dir string) (*Member, error) {
	cu, err := LoopbackURL("http")
	if err != nil {
		return nil, err
	}
	pu, err := LoopbackURL("http")
	if err != nil {
		return nil, err
	}
	return &Member{Name: name, Dir: dir, ClientURL: cu, PeerURL: pu}, nil
}

// StartNew starts a member alone on fresh loopback URLs (New, then Start).
// If a port was taken between its pick and etcd's bind, it starts again on
// other ports (at most three times).
func StartNew(name, dir string) (*Member, *embed.Etcd, error) {
	for try := 1; ; try++ {
		m, err := New(name, dir)
		if err != nil {
			return nil, nil, err
		}
		e, err := m.Start()
		if err == nil {
			return m, e, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || try == 3 {
			return nil, nil, err
		}
	}
}

// Start starts the member and waits (at most a minute) until it serves: a
// member of a cluster serves once a quorum is up. Its logs are discarded
// (its shutdown logs errors that are none).
func (m *Member) Start() (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.Dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{m.ClientURL}, []url.URL{m.ClientURL}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{m.PeerURL}, []url.URL{m.PeerURL}
	cfg.InitialCluster = m.Cluster
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	}
	if m.TLS != nil {
		cfg.ClientTLSInfo = *m.TLS
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting etcd %s: %w", m.Name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(time.Minute):
		e.Close()
		return nil, fmt.Errorf("etcd %s not ready within a minute", m.Name)
	}
}

// Clients starts a member alone for t (closed when t ends) and returns a
// factory of clients to it, each with opts and closed when t ends.
func Clients(t testing.TB, name string) func(opts ...grpc.DialOption) *clientv3.Client {
	t.Helper()
	m, e, err := StartNew(name, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return func(opts ...grpc.DialOption) *clientv3.Client {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.ClientURL.String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(), DialOptions: opts})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
}
