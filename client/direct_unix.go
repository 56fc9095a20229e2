//go:build unix

package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// directMagic opens a request on the daemon's direct socket (wire version
// 1; server.DirectMagic).
const directMagic = "PDF1"

// receiveConn presents ticket on the daemon's direct socket at path and
// returns the connection it passes back (SCM_RIGHTS).
func receiveConn(ctx context.Context, path string, ticket []byte) (net.Conn, error) {
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("the direct socket: %w", err)
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	if dl, ok := ctx.Deadline(); ok {
		_ = uc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = uc.Close() })
	defer stop()
	if _, err := uc.Write(append([]byte(directMagic), ticket...)); err != nil {
		return nil, fmt.Errorf("the direct socket: %w", err)
	}
	buf := make([]byte, 1024)
	oob := make([]byte, syscall.CmsgSpace(4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("the direct socket: %w", err)
	}
	var fds []int
	if oobn > 0 {
		msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, fmt.Errorf("the direct socket: %w", err)
		}
		for _, m := range msgs {
			got, err := syscall.ParseUnixRights(&m)
			if err == nil {
				fds = append(fds, got...)
			}
		}
	}
	if n == 0 || buf[0] != 0 || len(fds) != 1 {
		for _, fd := range fds {
			syscall.Close(fd)
		}
		if n > 1 && buf[0] == 1 {
			// The daemon refused: read the rest of its reason.
			for n < len(buf) {
				m, err := uc.Read(buf[n:])
				n += m
				if err != nil {
					break
				}
			}
			return nil, fmt.Errorf("the daemon refused the direct connection: %s", buf[1:n])
		}
		return nil, errors.New("the direct socket answered with no connection")
	}
	f := os.NewFile(uintptr(fds[0]), "plugin")
	defer f.Close()
	conn, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("the passed connection: %w", err)
	}
	return conn, nil
}
