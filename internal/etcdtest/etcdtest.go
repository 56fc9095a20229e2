// Package etcdtest starts embedded etcd members (go.etcd.io/etcd/server/v3/
// embed) on loopback for the fleet's tests, its benchmark and the
// TypeScript SDK's test helper.
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
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

// LoopbackURL is scheme://127.0.0.1:PORT with a port that was free.
func LoopbackURL(scheme string) (url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, err
	}
	defer l.Close()
	return url.URL{Scheme: scheme, Host: l.Addr().String()}, nil
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
	m, err := New(name, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e, err := m.Start()
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
