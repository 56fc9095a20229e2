//go:build linux

package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/plugincontrol/plugincontrol/server"
)

// listener is one open --listen address.
type listener struct {
	key  string // the address as configured (a reload hands it over under it)
	addr string
	lis  net.Listener
	path string // unix socket file, removed at exit
}

// wrap makes unix sockets carry the peer's credentials; TLS on TCP is the
// server's (server.WithTLS), so client certificates reach the auth check.
func (l listener) wrap() net.Listener {
	return server.PeerCredListener(l.lis)
}

func (l listener) cleanup() {
	if l.path != "" {
		_ = os.Remove(l.path)
	}
}

// openListeners opens every --listen address, or takes the socket an
// earlier image of this daemon handed over for it (inherited, by
// "listen:"+address; taken ones are removed from the map).
func openListeners(cfg config, haveTLS, haveAuth bool, inherited map[string]net.Listener) ([]listener, error) {
	var out []listener
	fail := func(err error) ([]listener, error) {
		for _, l := range out {
			l.lis.Close()
			l.cleanup()
		}
		return nil, err
	}
	for _, addr := range cfg.listen {
		if l, ok := inherited["listen:"+addr]; ok {
			delete(inherited, "listen:"+addr)
			path := ""
			if p, ok := strings.CutPrefix(addr, "unix://"); ok {
				path = p
			}
			shown := addr
			if strings.HasPrefix(addr, "tcp://") {
				shown = "tcp://" + l.Addr().String()
			}
			out = append(out, listener{key: addr, addr: shown, lis: l, path: path})
			continue
		}
		switch {
		case strings.HasPrefix(addr, "unix://"):
			l, err := listenUnix("--listen", addr)
			if err != nil {
				return fail(err)
			}
			out = append(out, l)
		case strings.HasPrefix(addr, "tcp://"):
			l, err := openTCP("--listen", addr, cfg, haveTLS, haveAuth, nil)
			if err != nil {
				return fail(err)
			}
			out = append(out, l)
		default:
			return fail(fmt.Errorf("--listen %q: want unix://PATH or tcp://HOST:PORT", addr))
		}
	}
	return out, nil
}

// openTCP opens a tcp:// address of flag: TLS, or a loopback address with
// --auth-file or --insecure-tcp (plaintext TCP is never opened to the
// network).
func openTCP(flag, addr string, cfg config, haveTLS, haveAuth bool, inherited net.Listener) (listener, error) {
	hostport := strings.TrimPrefix(addr, "tcp://")
	if !haveTLS {
		host, _, err := net.SplitHostPort(hostport)
		if err != nil {
			return listener{}, fmt.Errorf("%s %q: %w", flag, addr, err)
		}
		switch {
		case !isLoopback(host):
			return listener{}, fmt.Errorf("%s %q: TCP needs TLS (--tls-cert and --tls-key)", flag, addr)
		case !haveAuth && !cfg.insecureTCP:
			return listener{}, fmt.Errorf("%s %q: plaintext TCP on loopback is open to every local user; set --auth-file, TLS, or --insecure-tcp", flag, addr)
		}
	}
	lis := inherited
	if lis == nil {
		var err error
		if lis, err = listenTCP(hostport); err != nil {
			return listener{}, fmt.Errorf("%s %q: %w", flag, addr, err)
		}
	}
	return listener{key: addr, addr: "tcp://" + lis.Addr().String(), lis: lis}, nil
}

func listenTCP(hostport string) (net.Listener, error) { return net.Listen("tcp", hostport) }

// listenUnix opens a unix socket (of flag) mode 0600. A stale socket file
// from a crashed daemon is replaced; a live one is not.
func listenUnix(flag, addr string) (listener, error) {
	path := strings.TrimPrefix(addr, "unix://")
	if path == "" {
		return listener{}, fmt.Errorf("%s %q: empty socket path", flag, addr)
	}
	if len(path) > 107 {
		return listener{}, fmt.Errorf("%s %q: the path is %d bytes, more than the 107 a unix socket path holds: listen on a shorter path (the default is <state-dir>/plugind.sock)", flag, addr, len(path))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return listener{}, err
	}
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return listener{}, fmt.Errorf("%s %q: another daemon is serving on this socket", flag, addr)
		}
		if err := os.Remove(path); err != nil {
			return listener{}, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	old := syscall.Umask(0o077)
	lis, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return listener{}, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return listener{}, err
	}
	// net.UnixListener removes the file on Close; keep our own cleanup too.
	return listener{key: addr, addr: addr, lis: lis, path: path}, nil
}

// openDirect opens the --direct-socket, or takes the one an earlier image
// handed over ("direct").
func openDirect(path string, inherited net.Listener) (*listener, error) {
	if inherited != nil {
		return &listener{key: "direct", addr: "unix://" + path, lis: inherited, path: path}, nil
	}
	l, err := listenUnix("--direct-socket", "unix://"+path)
	if err != nil {
		return nil, err
	}
	l.key = "direct"
	return &l, nil
}

// serverTLS builds the TLS config for TCP listeners, with client
// certificate verification when --tls-client-ca is set.
func serverTLS(cfg config) (*tls.Config, error) {
	if cfg.tlsCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.tlsCert, cfg.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	t := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}
	if cfg.tlsClientCA != "" {
		pem, err := os.ReadFile(cfg.tlsClientCA)
		if err != nil {
			return nil, fmt.Errorf("--tls-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("--tls-client-ca: no PEM certificates found")
		}
		t.ClientCAs = pool
		t.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return t, nil
}
