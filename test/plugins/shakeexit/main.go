// Command shakeexit is a misbehaving plugin that completes go-plugin's
// handshake (a listening socket, the handshake line on stdout) and then
// dies at once, before the host has spoken to it: with exit status 4 and a
// line on stderr, or with "-signal" killed by SIGKILL. The host's next
// stage meets a dead connection; the candidate's report must say the
// process exited and how.
package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/plugincontrol/plugincontrol/plugin"
)

func main() {
	if os.Getenv(plugin.MagicCookieKey) != plugin.MagicCookieValue {
		fmt.Fprintln(os.Stderr, "shakeexit: not started by plugind")
		os.Exit(1)
	}
	dir := os.Getenv("PLUGIN_UNIX_SOCKET_DIR")
	path := filepath.Join(dir, "shakeexit.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "shakeexit:", err)
		os.Exit(1)
	}
	// CORE-VERSION|APP-VERSION|NETWORK|ADDRESS|PROTOCOL, as go-plugin's
	// Serve prints it.
	fmt.Printf("1|%d|unix|%s|grpc\n", plugin.HandshakeVersion, path)
	lis.Close()
	// Dies a moment later, not at once: the host's connect then meets a
	// closed socket (Unavailable, which go-plugin's client tolerates) and
	// its next stage fails, rather than go-plugin's own cancellation by
	// the exit, which its Client() turns into an error that leaks its gRPC
	// connection (the host then reports stage handshake). Well within the
	// 100 ms the host gives an exit to show.
	time.Sleep(30 * time.Millisecond)
	if len(os.Args) > 1 && os.Args[1] == "-signal" {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	fmt.Fprintln(os.Stderr, "shakeexit: lost the database connection, giving up")
	os.Exit(4)
}
