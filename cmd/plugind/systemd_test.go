package main_test

import (
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
// it serves, WATCHDOG=1 at half the watchdog interval, RELOADING=1 then
// READY=1 around a reload (SIGHUP), and STOPPING=1 on SIGTERM.
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
	// SIGHUP reloads in place: RELOADING=1 (with MONOTONIC_USEC, as
	// Type=notify-reload wants), then READY=1 from the new image, which
	// pings the watchdog in turn; the plugin is the same process.
	pid := st.GetPid()
	if err := d.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	reloading := next("RELOADING=1", 5*time.Second)
	mustContain(t, "RELOADING message", reloading, "MONOTONIC_USEC=")
	ready = next("READY=1", 10*time.Second)
	mustContain(t, "READY after the reload", ready, "reloaded from")
	next("WATCHDOG=1", time.Second)
	if st := statuses(t, ctl)["echo"]; st.GetPid() != pid || st.GetGeneration() != 1 {
		t.Fatalf("after the reload echo is pid %d generation %d, was pid %d generation 1", st.GetPid(), st.GetGeneration(), pid)
	}
	if err := d.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next("STOPPING=1", 10*time.Second)
	d.Stop(t)
}
