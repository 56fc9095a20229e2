// Command forker is a plugin that starts a child process of its own (itself,
// re-executed with the argument "-child", which sleeps for five minutes) and
// reports the child's pid from its Invoke method "child". Tests use it to
// prove that a plugin's children die with it. With the argument "-inherit"
// the child inherits the plugin's stderr (as a shell-out with
// cmd.Stderr = os.Stderr would); with "-escape" it also leaves the plugin's
// process group and session (setsid), out of reach of a group kill.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/plugincontrol/plugincontrol/plugin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type forker struct{ pid int }

func (f *forker) Info() plugin.Info {
	return plugin.Info{Name: "forker", Version: "1.0.0", Methods: []string{"child"}}
}

func (f *forker) Ready(context.Context, []byte) error { return nil }

func (f *forker) Invoke(_ context.Context, method string, _ []byte) ([]byte, error) {
	if method != "child" {
		return nil, status.Errorf(codes.Unimplemented, "forker: unknown method %q (have child)", method)
	}
	return []byte(strconv.Itoa(f.pid)), nil
}

func main() {
	inherit, escape, daemon := false, false, false
	for _, a := range os.Args[1:] {
		switch a {
		case "-child":
			time.Sleep(5 * time.Minute)
			return
		case "-middle":
			middle()
			return
		case "-inherit":
			inherit = true
		case "-escape":
			inherit, escape = true, true
		case "-daemon":
			daemon = true
		}
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "forker:", err)
		os.Exit(1)
	}
	if daemon {
		// The intermediate process prints the grandchild's pid and exits.
		out, err := exec.Command(self, "-middle").Output()
		pid, perr := strconv.Atoi(string(out))
		if err != nil || perr != nil {
			fmt.Fprintln(os.Stderr, "forker: daemonizing the child:", err, perr)
			os.Exit(1)
		}
		plugin.Serve(&forker{pid: pid})
		return
	}
	child := exec.Command(self, "-child")
	if inherit {
		child.Stderr = os.Stderr
	}
	if escape {
		child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := child.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "forker: starting the child:", err)
		os.Exit(1)
	}
	go func() { _ = child.Wait() }()
	plugin.Serve(&forker{pid: child.Process.Pid})
}

// middle starts the daemonized child (setsid, stdio on /dev/null), prints
// its pid and exits without waiting for it.
func middle() {
	self, err := os.Executable()
	if err != nil {
		os.Exit(1)
	}
	child := exec.Command(self, "-child")
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := child.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "forker: starting the daemon:", err)
		os.Exit(1)
	}
	fmt.Print(child.Process.Pid)
}
