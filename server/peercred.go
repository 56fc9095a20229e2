package server

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"google.golang.org/grpc/peer"
)

// PeerCredListener wraps a unix socket listener so every connection carries
// the peer's uid and pid (SO_PEERCRED): the audit log names unix-socket
// callers "uid:N" without any credentials on the wire. Other listeners are
// returned unchanged.
func PeerCredListener(l net.Listener) net.Listener {
	if _, ok := l.(*net.UnixListener); !ok {
		return l
	}
	return &credListener{Listener: l}
}

type credListener struct{ net.Listener }

func (l *credListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return c, nil
	}
	uid, pid, err := peerCred(uc)
	if err != nil {
		return c, nil
	}
	return &credConn{UnixConn: uc, addr: PeerAddr{UID: uid, PID: pid}}, nil
}

// peerCred returns the uid and pid of c's peer (SO_PEERCRED).
func peerCred(c *net.UnixConn) (uint32, int32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if cerr != nil {
		return 0, 0, cerr
	}
	return cred.Uid, cred.Pid, nil
}

type credConn struct {
	*net.UnixConn
	addr PeerAddr
}

func (c *credConn) RemoteAddr() net.Addr { return c.addr }

// PeerAddr is the remote address of a unix-socket caller.
type PeerAddr struct {
	UID uint32
	PID int32
}

// Network implements net.Addr.
func (PeerAddr) Network() string { return "unix" }

func (a PeerAddr) String() string { return fmt.Sprintf("uid:%d,pid:%d", a.UID, a.PID) }

// peerIdentity names an unauthenticated caller: "uid:N" on a unix socket,
// the remote address otherwise.
func peerIdentity(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "unknown"
	}
	if a, ok := p.Addr.(PeerAddr); ok {
		return fmt.Sprintf("uid:%d", a.UID)
	}
	return "addr:" + p.Addr.String()
}
