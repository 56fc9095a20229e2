// Package testbin builds the project's binaries (example plugins, plugind,
// pluginctl, pinned tools) for tests that run real processes.
package testbin

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Root returns the repository root.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Plugins builds every example plugin (examples/plugins) and every test
// plugin (test/plugins: the misbehaving ones) into dir, one binary per
// directory, named after it, and, as "kv", go-plugin's own gRPC example
// plugin (a real third-party plugin: its KV service, handshake cookie
// BASIC_PLUGIN=hello, protocol 1).
func Plugins(dir string) error {
	if err := goBuild(dir, "", "./examples/plugins/...", "./test/plugins/..."); err != nil {
		return err
	}
	return goBuildAs(filepath.Join(dir, "kv"), KVPluginPackage)
}

// KVPluginPackage is go-plugin's examples/grpc plugin, built from the
// go-plugin module.
const KVPluginPackage = "github.com/hashicorp/go-plugin/examples/grpc/plugin-go-grpc"

// KVHandshake is the handshake of go-plugin's examples/grpc plugin.
var KVHandshake = struct {
	ProtocolVersion                  uint
	MagicCookieKey, MagicCookieValue string
}{1, "BASIC_PLUGIN", "hello"}

// goBuildAs builds pkg into the file out.
func goBuildAs(out, pkg string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = Root()
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build -o %s %s: %v\n%s", out, pkg, err, b)
	}
	return nil
}

// Commands builds plugind and pluginctl into dir.
func Commands(dir string) error {
	return goBuild(dir, "", "./cmd/plugind", "./cmd/pluginctl")
}

// Tool builds a tool pinned in tools/go.mod (such as
// "github.com/fullstorydev/grpcurl/cmd/grpcurl") into dir and returns its path.
func Tool(dir, pkg string) (string, error) {
	if err := goBuild(dir, "tools/go.mod", pkg); err != nil {
		return "", err
	}
	return filepath.Join(dir, filepath.Base(pkg)), nil
}

func goBuild(dir, modfile string, pkgs ...string) error {
	args := []string{"build"}
	if modfile != "" {
		args = append(args, "-modfile="+modfile)
	}
	args = append(args, "-o", dir+string(filepath.Separator))
	args = append(args, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = Root()
	if modfile != "" {
		cmd.Env = append(os.Environ(), "GOWORK=off") // -modfile is for one module, not the workspace
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// Alive reports whether a process with pid exists and is not a zombie.
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// WaitGone waits up to d for pid to disappear and reports whether it did.
func WaitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !Alive(pid) {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return !Alive(pid)
}

// ProcessesIn returns the pids of running processes whose executable lies in
// dir. Tests use it to prove no plugin process outlived them.
func ProcessesIn(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil {
			continue
		}
		if strings.HasPrefix(exe, dir+string(filepath.Separator)) && Alive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// PluginCgroups lists the plugin cgroup subtree of the plugind whose state
// directory is stateDir (plugind-<12 hex digits of the SHA-256 of its
// absolute path>, under the cgroup v2 mount), when it is still there.
// Other tests' daemons, running in parallel, have subtrees of their own.
func PluginCgroups(stateDir string) []string {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return nil
	}
	sum := sha256.Sum256([]byte(abs))
	name := "plugind-" + hex.EncodeToString(sum[:6])
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		for i, x := range f {
			if x == "-" && i+1 < len(f) && f[i+1] == "cgroup2" && len(f) > 4 {
				_ = filepath.WalkDir(f[4], func(p string, d os.DirEntry, err error) error {
					if err != nil || !d.IsDir() {
						return nil
					}
					if d.Name() == name {
						out = append(out, p)
						return filepath.SkipDir
					}
					return nil
				})
			}
		}
	}
	return out
}
