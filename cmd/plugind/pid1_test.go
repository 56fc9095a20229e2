package main_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// children lists the children of pid (all its threads') with their state
// letter.
func children(pid int) map[int]byte {
	out := map[int]byte{}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			c, _ := strconv.Atoi(s)
			st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c))
			if i := strings.LastIndexByte(string(st), ')'); i >= 0 && i+2 < len(st) {
				out[c] = st[i+2]
			}
		}
	}
	return out
}

// TestAsPID1ReapsOrphans: plugind as PID 1 of a PID namespace (a container
// without an init) reaps the orphans re-parented to it: the daemonized
// grandchildren of plugins, killed when their generation stops, leave no
// zombie behind.
func TestAsPID1ReapsOrphans(t *testing.T) {
	state, err := os.MkdirTemp("", "pd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	sock := filepath.Join(state, "plugind.sock")
	stderr := &testbin.Buffer{}
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
		filepath.Join(bins, "plugind"), "--plugin-dir", filepath.Join(bins, "plugins"), "--state-dir", state)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("unshare (util-linux): %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var daemon int // plugind's pid outside its namespace
	t.Cleanup(func() {
		// SIGTERM to plugind itself: it stops its plugins and removes its
		// cgroups (unshare would SIGKILL it, and the namespace's end would
		// take its reaper along).
		if daemon != 0 {
			_ = syscall.Kill(daemon, syscall.SIGTERM)
		} else {
			_ = cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctl := pb.NewPluginControlServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	spec := &pb.PluginSpec{Name: "fk", Binary: "forker", Args: []string{"-daemon"}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := ctl.Load(ctx, &pb.LoadRequest{Spec: spec})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Load on plugind as PID 1: %v\n%s", err, stderr)
		}
		time.Sleep(50 * time.Millisecond) // polls: plugind (PID 1 of a new namespace) is starting
	}
	for c := range children(cmd.Process.Pid) {
		daemon = c
	}
	if daemon == 0 {
		t.Fatal("no plugind under unshare")
	}
	if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", daemon)); !strings.Contains(string(b), "NSpid:\t"+strconv.Itoa(daemon)+"\t1\n") {
		t.Fatalf("plugind (%d) is not PID 1 of its namespace:\n%s", daemon, b)
	}
	for i := 0; i < 3; i++ {
		if _, err := ctl.Reload(ctx, &pb.ReloadRequest{Name: "fk"}); err != nil {
			t.Fatal(err)
		}
	}
	// Three generations' grandchildren were killed and re-parented to
	// plugind: none may stay a zombie.
	var zombies []int
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) { // polls /proc for zombies: reaping has no event outside plugind
		zombies = zombies[:0]
		for c, st := range children(daemon) {
			if st == 'Z' {
				zombies = append(zombies, c)
			}
		}
		if len(zombies) == 0 || time.Now().After(end) {
			break
		}
	}
	if len(zombies) > 0 {
		t.Fatalf("zombies left under plugind as PID 1: %v (children %v)", zombies, children(daemon))
	}
	if n := len(children(daemon)); n < 3 {
		// The plugin, its daemonized grandchild (re-parented to PID 1) and
		// the reaper at least.
		t.Fatalf("plugind has %d children: %v", n, children(daemon))
	}
}
