package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// NodeKVDir is the Node.js go-plugin plugin example, relative to Root.
const NodeKVDir = "examples/node-kv"

// NodePlugin installs the Node.js KV plugin (examples/node-kv: go-plugin's
// KV service written with @grpc/grpc-js) into pluginDir/node-kv, so that a
// spec with binary "node-kv/plugin.js" runs it: the script and its protos
// are copied, node_modules is linked (npm ci first when it is missing).
// It returns the PATH the plugin needs in its spec's env to find node.
func NodePlugin(pluginDir string) (path string, err error) {
	node, err := exec.LookPath("node")
	if err != nil {
		return "", fmt.Errorf("the Node.js plugin needs node: %w", err)
	}
	src := filepath.Join(Root(), NodeKVDir)
	if _, err := os.Stat(filepath.Join(src, "node_modules", "@grpc", "grpc-js")); err != nil {
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = src
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("npm ci in %s: %v\n%s", src, err, out)
		}
	}
	dst := filepath.Join(pluginDir, "node-kv")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return "", err
	}
	for _, f := range []string{"plugin.js", "kv.proto", "health.proto", "controller.proto"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			return "", err
		}
		mode := os.FileMode(0o644)
		if f == "plugin.js" {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dst, f), b, mode); err != nil {
			return "", err
		}
	}
	link := filepath.Join(dst, "node_modules")
	_ = os.Remove(link)
	if err := os.Symlink(filepath.Join(src, "node_modules"), link); err != nil {
		return "", err
	}
	return filepath.Dir(node) + ":/usr/local/bin:/usr/bin:/bin", nil
}
