//go:build !unix

package client

import (
	"context"
	"errors"
	"net"
)

// receiveConn: file descriptors pass over unix sockets on unix systems
// only.
func receiveConn(context.Context, string, []byte) (net.Conn, error) {
	return nil, errors.New("direct connections need a unix system: use DialPlugin")
}
