// Package consumer does what README.md tells an outside Go developer to do,
// verbatim, outside this repository and its workspace, against a module
// proxy made from this tree (internal/modproxy) in a clean GOPATH: build the
// plugin of "Writing a plugin" and the client program of "Go" (under
// Clients) as modules of their own, and go install the commands. It checks
// the module graph each drags in, loads the plugin into a real plugind and
// runs the client against it.
package consumer_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/client"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/modproxy"
	"github.com/plugincontrol/plugincontrol/internal/readme"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

var bins string

// The version the proxy serves the modules at: a prerelease, so that no
// real release is shadowed, and "latest" (the README's) resolves to it.
const version = "v0.0.0-test"

func TestMain(m *testing.M) {
	testbin.Main(m, &bins, func(dir string) error {
		if err := testbin.DaemonBinaries(dir); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		return modproxy.Build(ctx, testbin.Root(), filepath.Join(dir, "proxy"), version)
	})
}

// goEnv is the environment of an outside developer's go command: a clean
// GOPATH of its own (shared by the package's tests, removed with bins), the
// proxy made from this tree first, then the module cache this checkout
// already downloaded (so third-party modules come without the network), then
// the configured proxy; no workspace; no checksum database (it has never
// seen these modules).
func goEnv() []string {
	gopath := filepath.Join(bins, "gopath")
	cache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		panic(err)
	}
	upstream, err := exec.Command("go", "env", "GOPROXY").Output()
	if err != nil {
		panic(err)
	}
	proxy := "file://" + filepath.Join(bins, "proxy") + ",file://" + filepath.Join(strings.TrimSpace(string(cache)), "cache", "download") + "," + strings.TrimSpace(string(upstream))
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOPATH", "GOMODCACHE", "GOBIN", "GOPROXY", "GOSUMDB", "GOWORK", "GOFLAGS", "GONOSUMDB", "GOPRIVATE", "GONOPROXY", "CGO_ENABLED":
			continue
		}
		env = append(env, kv)
	}
	// -modcacherw: the module cache is removed with bins. -trimpath and
	// CGO_ENABLED=0, as the release build (make/release.sh) builds: with
	// -trimpath a package's compile does not depend on where the module
	// cache is, so the clean GOPATH reuses the packages the build cache
	// already holds (measured, go test -v -run GoInstall ./test/consumer: go install 48 s
	// without, 12 s with, 4.4 s once these flags have been built with).
	return append(env, "GOPATH="+gopath, "GOPROXY="+proxy, "GOSUMDB=off", "GOWORK=off", "GOFLAGS=-modcacherw -trimpath", "CGO_ENABLED=0", "GOTOOLCHAIN=local")
}

// consumer writes the README's go block of section as main.go in a fresh
// directory outside this repository, runs its sh block there as an outside
// developer (goEnv), and returns the directory.
func consumer(t *testing.T, section string) string {
	t.Helper()
	doc, err := readme.Read(filepath.Join(testbin.Root(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	code, err := doc.One(section, "go")
	if err != nil {
		t.Fatal(err)
	}
	script, err := doc.One(section, "sh")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pc-consumer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(code.Text), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script.Text)
	cmd.Dir = dir
	cmd.Env = goEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("README.md line %d (%s), run as written: %v\n%s", script.Line, section, err, out)
	}
	return dir
}

// modules lists the modules of the build of the module in dir.
func modules(t *testing.T, dir string) string {
	t.Helper()
	cmd := exec.Command("go", "list", "-m", "all")
	cmd.Dir = dir
	cmd.Env = goEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list -m all: %v\n%s", err, out)
	}
	return string(out)
}

// goLine returns the go directive of a go.mod.
func goLine(t *testing.T, gomod string) string {
	t.Helper()
	b, err := os.ReadFile(gomod)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "go "); ok {
			return v
		}
	}
	t.Fatalf("%s has no go directive", gomod)
	return ""
}

// The daemon's own dependencies, which neither a plugin nor a client may
// drag in (go-plugin is a plugin's, but not a client's).
var daemonOnly = []string{
	Path + " ", // the daemon's module itself
	"go.etcd.io/", "github.com/prometheus/", "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus",
	"sigs.k8s.io/yaml", "github.com/spf13/cobra", "github.com/knadh/koanf",
}

// Path is the daemon's module path.
const Path = modproxy.Path

// wantAt fails unless the module list mods has each of paths at version.
func wantAt(t *testing.T, mods string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if !strings.Contains(mods, p+" "+version+"\n") {
			t.Errorf("want %s at %s from the proxy:\n%s", p, version, mods)
		}
	}
}

func TestReadmePluginAndClientAsOutsideModules(t *testing.T) {
	for _, m := range []string{"plugin", "client", "gen"} {
		if v := goLine(t, filepath.Join(testbin.Root(), m, "go.mod")); v != "1.22" {
			t.Errorf("%s/go.mod says go %s, want 1.22 (the lowest its dependencies allow)", m, v)
		}
	}

	pluginDir := consumer(t, "## Writing a plugin")
	mods := modules(t, pluginDir)
	for _, bad := range daemonOnly {
		if strings.Contains(mods, bad) {
			t.Errorf("a plugin module depends on %s:\n%s", bad, mods)
		}
	}
	if !strings.Contains(mods, "github.com/hashicorp/go-plugin") {
		t.Errorf("a plugin module without go-plugin?\n%s", mods)
	}
	wantAt(t, mods, Path+"/plugin", Path+"/gen")

	clientDir := consumer(t, "### Go")
	mods = modules(t, clientDir)
	for _, bad := range append(daemonOnly, "github.com/hashicorp/go-plugin", "github.com/hashicorp/go-hclog", "github.com/hashicorp/yamux") {
		if strings.Contains(mods, bad) {
			t.Errorf("a client module depends on %s:\n%s", bad, mods)
		}
	}
	wantAt(t, mods, Path+"/client", Path+"/gen")

	// The plugin works in a real plugind, and the client program against it.
	plugins := filepath.Join(t.TempDir(), "plugins")
	if err := os.MkdirAll(plugins, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct{ from, to string }{{filepath.Join(pluginDir, "hello"), "hello"}, {filepath.Join(bins, "plugins", "echo"), "echo"}} {
		b, err := os.ReadFile(p.from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(plugins, p.to), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d := testbin.StartDaemon(t, testbin.DaemonOptions{Bin: bins, PluginDir: plugins, Load: []string{"echo"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, d.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Load(ctx, &pb.PluginSpec{Name: "hello", Binary: "hello"}); err != nil {
		t.Fatalf("loading the README's plugin: %v", err)
	}
	out, _, err := c.Invoke(ctx, "hello", "greet", []byte("world"))
	if err != nil || string(out) != "hello, world" {
		t.Fatalf("the README's plugin answered %q %v", out, err)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(clientDir, "ctl"))
	cmd.Env = append(os.Environ(), "PLUGIND_ADDR="+d.Addr())
	got, err := cmd.CombinedOutput()
	for _, want := range []string{"echo 1 PLUGIN_STATE_SERVING", "hello 1 PLUGIN_STATE_SERVING", "hello from generation 1"} {
		if err != nil || !strings.Contains(string(got), want) {
			t.Fatalf("the README's client program: %v, want %q in:\n%s", err, want, got)
		}
	}
}

// TestLicenses: the repository and every published package carry the
// Apache-2.0 license text, the same file.
func TestLicenses(t *testing.T) {
	root := testbin.Root()
	want, err := os.ReadFile(filepath.Join(root, "LICENSE"))
	if err != nil || !strings.Contains(string(want), "Apache License\n                           Version 2.0, January 2004") {
		t.Fatalf("LICENSE at the root is not Apache-2.0 (%v)", err)
	}
	for _, d := range []string{"client", "plugin", "gen", "sdk/ts"} {
		got, err := os.ReadFile(filepath.Join(root, d, "LICENSE"))
		if err != nil || string(got) != string(want) {
			t.Errorf("%s/LICENSE differs from the root's (%v)", d, err)
		}
	}
	pkg, err := os.ReadFile(filepath.Join(root, "sdk/ts/package.json"))
	if err != nil || !strings.Contains(string(pkg), `"license": "Apache-2.0"`) {
		t.Errorf("sdk/ts/package.json does not declare Apache-2.0 (%v)", err)
	}
}

// TestGoInstall: the commands install with go install …@VERSION, the
// one-line install of the tools plugind sits beside, in a clean GOPATH; each
// says the version it was installed at.
func TestGoInstall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "install", Path+"/cmd/plugind@"+version, Path+"/cmd/pluginctl@"+version)
	cmd.Dir = t.TempDir() // outside any module
	cmd.Env = goEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install: %v\n%s", err, out)
	}
	t.Logf("go install of plugind and pluginctl@%s in a clean GOPATH: %v", version, time.Since(start).Round(time.Millisecond))
	gobin := filepath.Join(bins, "gopath", "bin")
	for _, c := range [][]string{{"plugind", "--version"}, {"pluginctl", "--version"}} {
		out, err := exec.CommandContext(ctx, filepath.Join(gobin, c[0]), c[1:]...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), c[0]+" "+version) {
			t.Errorf("%s: %v, want %q in:\n%s", strings.Join(c, " "), err, c[0]+" "+version, out)
		}
	}
}

// TestBuildsOffLinux: the client, the plugin SDK, the store and pluginctl
// build for macOS, Windows and FreeBSD; plugind builds there too, as a
// command that says it runs on Linux only. One go build per system, in the
// workspace, compiles all of them (and their dependencies) once.
func TestBuildsOffLinux(t *testing.T) {
	root := testbin.Root()
	pkgs := []string{"./store/...", "./cmd/pluginctl", "./cmd/plugind", "./client/...", "./plugin/..."}
	for _, goos := range []string{"darwin", "windows", "freebsd"} {
		// Several packages: go build compiles them and keeps nothing.
		cmd := exec.Command("go", append([]string{"build"}, pkgs...)...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH=amd64", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("GOOS=%s go build %s: %v\n%s", goos, strings.Join(pkgs, " "), err, out)
		}
	}
}
