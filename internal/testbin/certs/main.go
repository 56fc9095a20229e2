// Command certs writes the test PKI of testbin.TLSFiles into a directory
// (ca.pem, cert.pem and key.pem for a server on 127.0.0.1, ::1 and
// localhost; client.pem and client-key.pem for mTLS): for tests in other
// languages (the TypeScript SDK's) that need TLS without openssl.
//
//	go run ./internal/testbin/certs DIR
package main

import (
	"fmt"
	"os"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: certs DIR")
		os.Exit(2)
	}
	if _, _, _, err := testbin.TLSFiles(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "certs:", err)
		os.Exit(1)
	}
}
