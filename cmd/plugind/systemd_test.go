package main_test

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// TestSystemdNotify plays systemd's part for a Type=notify unit with
// WatchdogSec: plugind sends READY=1 only once its plugins are restored and
// it serves, WATCHDOG=1 at half the watchdog interval, survives SIGHUP (it
// logs that there is nothing to reload), and sends STOPPING=1 on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	next := func(want string, within time.Duration) string {
		t.Helper()
		deadline := time.After(within)
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notify socket closed waiting for %s", want)
				}
				if strings.Contains(m, want) {
					return m
				}
			case <-deadline:
				t.Fatalf("no %s within %v", want, within)
			}
		}
	}
	d := &daemon{testbin.StartDaemon(t, testbin.DaemonOptions{
		Bin: bins, Load: []string{"echo"},
		Env: []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=400000"},
	})}
	ready := next("READY=1", 20*time.Second)
	// Ready means restored and serving: echo is SERVING right away.
	ctl, _ := d.dial(t)
	st := statuses(t, ctl)["echo"]
	if st.GetState() != pb.PluginState_PLUGIN_STATE_SERVING || !strings.Contains(ready, "STATUS=serving 1 plugins") {
		t.Fatalf("at READY=1 (%q) echo is %v", ready, st)
	}
	for range 3 {
		next("WATCHDOG=1", time.Second) // every 200ms
	}
	if err := d.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	next("WATCHDOG=1", time.Second)
	if _, err := ctl.ListPlugins(context.Background(), &pb.ListPluginsRequest{}); err != nil {
		t.Fatalf("after SIGHUP: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(d.Stderr.String(), "SIGHUP ignored") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	mustContain(t, "log after SIGHUP", d.Stderr.String(), "SIGHUP ignored")
	if err := d.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next("STOPPING=1", 10*time.Second)
	d.Stop(t)
}
