// Command etcd runs an embedded single-member etcd on loopback for tests
// written in other languages (the TypeScript SDK's fleet test): it prints
// "ready" on stdout once it serves and stops on SIGTERM or SIGINT.
//
//	etcd --dir DIR --client-url http://127.0.0.1:PORT --peer-url http://127.0.0.1:PORT
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/plugincontrol/plugincontrol/internal/etcdtest"
)

func main() {
	dir := flag.String("dir", "", "data directory (required)")
	clientURL := flag.String("client-url", "", "client URL, http://127.0.0.1:PORT (required)")
	peerURL := flag.String("peer-url", "", "peer URL, http://127.0.0.1:PORT (required)")
	flag.Parse()
	if *dir == "" || *clientURL == "" || *peerURL == "" {
		fmt.Fprintln(os.Stderr, "etcd: --dir, --client-url and --peer-url are required")
		os.Exit(2)
	}
	cu, err := url.Parse(*clientURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd: --client-url:", err)
		os.Exit(2)
	}
	pu, err := url.Parse(*peerURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd: --peer-url:", err)
		os.Exit(2)
	}
	m := &etcdtest.Member{Name: "test", Dir: *dir, ClientURL: *cu, PeerURL: *pu}
	e, err := m.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "etcd:", err)
	}
	e.Close()
}
