package server

import (
	"context"
	"crypto/tls"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
)

// WithTLS serves TLS (and verifies client certificates when cfg asks for
// them) on TCP connections. Unix-socket connections stay plaintext: the
// socket's file mode protects them, and their peer is identified by
// SO_PEERCRED (PeerCredListener). One grpc.Server can so listen on both.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) { o.tls = cfg }
}

// mixedCreds is TLS for TCP, pass-through for unix sockets.
type mixedCreds struct {
	tls credentials.TransportCredentials
}

func newMixedCreds(cfg *tls.Config) credentials.TransportCredentials {
	return &mixedCreds{tls: credentials.NewTLS(cfg)}
}

// unixAuthInfo marks a unix-socket connection.
type unixAuthInfo struct{ credentials.CommonAuthInfo }

func (unixAuthInfo) AuthType() string { return "unix" }

func (c *mixedCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if conn.RemoteAddr() != nil && conn.RemoteAddr().Network() == "unix" {
		return conn, unixAuthInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
	}
	return c.tls.ServerHandshake(conn)
}

func (c *mixedCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("server credentials used on a client")
}

func (c *mixedCreds) Info() credentials.ProtocolInfo { return c.tls.Info() }

func (c *mixedCreds) Clone() credentials.TransportCredentials {
	return &mixedCreds{tls: c.tls.Clone()}
}

func (c *mixedCreds) OverrideServerName(string) error { return nil } //nolint:staticcheck // interface method
