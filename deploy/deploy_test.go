// Tests of the deployment examples: the systemd unit, the example config
// file and the Kubernetes manifests. No service manager or cluster runs
// here, so the files are checked for structure, against the flags the real
// plugind has, and by running the built plugind the way each of them does
// (with host paths mapped into a temporary directory) and probing it the
// way the orchestrator would.
package deploy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// Host paths the examples use, mapped into a temporary directory when the
// built plugind runs them.
const (
	hostPlugind    = "/usr/local/bin/plugind"
	hostProbe      = "/usr/local/bin/grpc_health_probe"
	hostStateDir   = "/var/lib/plugind"
	hostRunDir     = "/run/plugind"
	hostSocket     = "unix:///run/plugind/plugind.sock"
	hostPluginDir  = "/usr/lib/plugind/plugins"
	hostConfigFile = "/etc/plugind/plugind.yaml"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		if left := testbin.ProcessesIn(bins.pluginDir); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "FAIL: plugin processes left running: %v\n", left)
			code = 1
		}
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// binaries are plugind, pluginctl, grpc-health-probe and the echo plugin,
// built once.
type binaries struct {
	dir, plugind, pluginctl, probe, pluginDir string
	flags                                     map[string]bool // plugind's flags: name -> takes a value
}

var (
	buildOnce sync.Once
	bins      binaries
	buildErr  error
)

func build(t *testing.T) binaries {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "deploy-")
		if err != nil {
			buildErr = err
			return
		}
		bins = binaries{dir: dir, plugind: filepath.Join(dir, "plugind"), pluginctl: filepath.Join(dir, "pluginctl"), pluginDir: filepath.Join(dir, "plugins")}
		if buildErr = testbin.Commands(dir); buildErr != nil {
			return
		}
		if bins.probe, buildErr = testbin.Tool(dir, "github.com/grpc-ecosystem/grpc-health-probe"); buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", bins.pluginDir+"/", "./examples/plugins/echo")
		cmd.Dir = testbin.Root()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building the echo plugin: %v\n%s", err, out)
			return
		}
		bins.flags, buildErr = plugindFlags(bins.plugind)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return bins
}

// plugindFlags reads the flags from "plugind --help": name -> whether it
// takes a value.
func plugindFlags(plugind string) (map[string]bool, error) {
	var out bytes.Buffer
	cmd := exec.Command(plugind, "--help")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("plugind --help: %v\n%s", err, out.String())
	}
	flags := map[string]bool{}
	// pflag's format: "      --name TYPE   usage" ("--name   usage" for a
	// boolean).
	re := regexp.MustCompile(`^\s+(?:-[a-z], )?--([a-z0-9-]+)(?: ([a-zA-Z]+))?\s{2,}`)
	for _, line := range strings.Split(out.String(), "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			flags[m[1]] = m[2] != ""
		}
	}
	for _, f := range []string{"config", "state-dir", "listen", "plugin-dir", "shutdown-timeout", "insecure-tcp"} {
		if _, ok := flags[f]; !ok {
			return nil, fmt.Errorf("plugind --help lacks -%s; parsed %v from:\n%s", f, flags, out.String())
		}
	}
	return flags, nil
}

// flagArg is one flag of a command line.
type flagArg struct{ name, value string }

// parseFlags splits a plugind command line into flags, failing on anything
// that is not one of plugind's flags (plugind takes no positional
// arguments).
func parseFlags(t *testing.T, flags map[string]bool, args []string) []flagArg {
	t.Helper()
	var out []flagArg
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			t.Errorf("argument %q is not a flag (plugind takes none)", a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		takesValue, ok := flags[name]
		if !ok {
			t.Errorf("%s: plugind has no flag -%s", a, name)
			continue
		}
		if takesValue && !hasValue {
			if i+1 == len(args) {
				t.Errorf("%s: no value", a)
				continue
			}
			i++
			value = args[i]
		}
		out = append(out, flagArg{name, value})
	}
	return out
}

func flagValues(fa []flagArg, name string) []string {
	var out []string
	for _, f := range fa {
		if f.name == name {
			out = append(out, f.value)
		}
	}
	return out
}

// readFile returns the content of the file name; an error fails the test.
func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// configFile reads a plugind config file into a map.
func configFile(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

// shutdownTimeout is the config's shutdown-timeout, plugind's default when
// unset.
func shutdownTimeout(t *testing.T, cfg map[string]any) time.Duration {
	t.Helper()
	v, ok := cfg["shutdown-timeout"]
	if !ok {
		return 15 * time.Second
	}
	d, err := time.ParseDuration(fmt.Sprint(v))
	if err != nil {
		t.Fatalf("shutdown-timeout %v: %v", v, err)
	}
	return d
}

// daemon is a running plugind.
type daemon struct {
	cmd    *exec.Cmd
	socket string          // unix://...
	stderr *testbin.Buffer // read while plugind writes to it
	done   chan error
}

// pathMap maps host paths of an example into dir.
func pathMap(dir string) *strings.Replacer {
	return strings.NewReplacer(
		hostPlugind, bins.plugind,
		hostProbe, bins.probe,
		hostPluginDir, bins.pluginDir,
		hostStateDir, filepath.Join(dir, "state"),
		hostRunDir, filepath.Join(dir, "run"),
	)
}

// startPlugind runs the built plugind with args (host paths already
// mapped), in a clean environment, and waits until its daemon health is
// SERVING on socket.
func startPlugind(t *testing.T, socket string, args ...string) *daemon {
	t.Helper()
	d := &daemon{socket: socket, stderr: &testbin.Buffer{}, done: make(chan error, 1)}
	d.cmd = exec.Command(bins.plugind, args...)
	d.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	d.cmd.Stdout, d.cmd.Stderr = d.stderr, d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			<-d.done
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := d.probe("")
		if err == nil {
			return d
		}
		select {
		case err := <-d.done:
			t.Fatalf("plugind %q exited: %v\n%s", args, err, d.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("plugind %q never became SERVING: %v\n%s", args, err, d.stderr.String())
		}
		time.Sleep(50 * time.Millisecond) // polls: plugind is starting, its socket may not be there yet
	}
}

// probe runs grpc_health_probe against the daemon for service.
func (d *daemon) probe(service string) error {
	return run(bins.probe, "-addr="+d.socket, "-service="+service, "-connect-timeout=2s", "-rpc-timeout=2s")
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %q: %v\n%s", name, args, err, out)
	}
	return nil
}

// waitService waits until service is SERVING.
func (d *daemon) waitService(t *testing.T, service string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := d.probe(service)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q never SERVING: %v\n%s", service, err, d.stderr.String())
		}
		time.Sleep(50 * time.Millisecond) // polls grpc-health-probe, the probe a deployment runs (a process per probe)
	}
}

// stop sends SIGTERM and expects exit code 0 within limit, and no plugin
// process left.
func (d *daemon) stop(t *testing.T, limit time.Duration) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("plugind after SIGTERM: %v\n%s", err, d.stderr.String())
		}
	case <-time.After(limit):
		t.Fatalf("plugind did not stop within %s of SIGTERM\n%s", limit, d.stderr.String())
	}
	if left := testbin.ProcessesIn(bins.pluginDir); len(left) > 0 {
		t.Errorf("plugin processes left running after plugind stopped: %v", left)
	}
}

// pluginList is what "pluginctl -o json list" says.
func (d *daemon) pluginList(t *testing.T) map[string]string {
	t.Helper()
	out, err := exec.Command(bins.pluginctl, "--addr", d.socket, "-o", "json", "list").Output()
	if err != nil {
		t.Fatalf("pluginctl list: %v", err)
	}
	var resp struct {
		Plugins []struct{ Name, State string } `json:"plugins"`
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatalf("pluginctl list: %v\n%s", err, out)
	}
	states := map[string]string{}
	for _, p := range resp.Plugins {
		states[p.Name] = p.State
	}
	return states
}

// TestExampleConfig runs plugind with deploy/plugind.yaml, its paths
// overridden on the command line (which wins over the file), and checks that
// it starts, loads what the file says, and stops cleanly on SIGTERM.
func TestExampleConfig(t *testing.T) {
	b := build(t)
	cfg := configFile(t, readFile(t, "plugind.yaml"))
	for k, v := range cfg {
		takesValue, ok := b.flags[k]
		if !ok || k == "config" {
			t.Errorf("plugind.yaml: %q is not a plugind flag", k)
		}
		if _, isList := v.([]any); isList && !takesValue {
			t.Errorf("plugind.yaml: %q is a boolean flag, given a list", k)
		}
	}
	// The paths are the ones the systemd unit's directories hold.
	if cfg["state-dir"] != hostStateDir || cfg["plugin-dir"] != hostPluginDir || fmt.Sprint(cfg["listen"]) != "["+hostSocket+"]" {
		t.Errorf("plugind.yaml paths: state-dir %v, plugin-dir %v, listen %v", cfg["state-dir"], cfg["plugin-dir"], cfg["listen"])
	}
	if _, ok := cfg["auth-file"]; ok {
		t.Errorf("plugind.yaml sets auth-file; the example must run without one")
	}

	dir, err := os.MkdirTemp("", "pdcfg-") // short: unix socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := "unix://" + filepath.Join(dir, "plugind.sock")
	args := []string{"--config", "plugind.yaml", "--state-dir", filepath.Join(dir, "state"), "--listen", socket, "--plugin-dir", b.pluginDir}
	if _, ok := cfg["metrics-listen"]; ok {
		args = append(args, "--metrics-listen", "127.0.0.1:0")
	}
	d := startPlugind(t, socket, args...)
	for _, l := range cfg["load"].([]any) {
		name, _, _ := strings.Cut(fmt.Sprint(l), "=")
		d.waitService(t, "plugin/"+name)
	}
	if st := d.pluginList(t); st["echo"] != "PLUGIN_STATE_SERVING" {
		t.Errorf("plugins: %v", st)
	}
	d.stop(t, 2*shutdownTimeout(t, cfg))
}

// unit is a parsed systemd unit file: section -> key -> values.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, b []byte) unit {
	t.Helper()
	u := unit{}
	section := ""
	var pending string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if pending != "" {
			line = pending + " " + line
			pending = ""
		}
		if strings.HasSuffix(line, `\`) {
			pending = strings.TrimSuffix(line, `\`)
			continue
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			if u[section] != nil {
				t.Errorf("line %d: section [%s] twice", n, section)
			}
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Errorf("line %d: %q is not KEY=VALUE in a section", n, line)
				continue
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	if pending != "" {
		t.Errorf("the file ends in a line continuation")
	}
	return u
}

// one returns the single value of key in section.
func (u unit) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Errorf("[%s] %s: %d values, want 1", section, key, len(v))
		return ""
	}
	return v[0]
}

// TestSystemdUnit checks deploy/systemd/plugind.service: its structure, its
// ExecStart against plugind's flags and the directories the unit creates,
// runs that command line (paths mapped into a temporary directory) with
// deploy/plugind.yaml, and verifies the unit with systemd-analyze.
func TestSystemdUnit(t *testing.T) {
	b := build(t)
	raw := readFile(t, "systemd/plugind.service")
	u := parseUnit(t, raw)
	for _, s := range []string{"Unit", "Service", "Install"} {
		if u[s] == nil {
			t.Errorf("no [%s] section", s)
		}
	}
	want := map[string]string{
		"Type":                  "notify", // READY=1 after restore and listen
		"NotifyAccess":          "main",
		"RuntimeDirectory":      "plugind",
		"StateDirectory":        "plugind",
		"StateDirectoryMode":    "0700",
		"NoNewPrivileges":       "yes",
		"ProtectSystem":         "strict",
		"PrivateTmp":            "yes",
		"KillMode":              "process", // live restore: plugins outlive a crash of plugind
		"ExecReload":            "/bin/kill -HUP $MAINPID",
		"Delegate":              "yes", // cgroup containment (--containment auto)
		"ProtectControlGroups":  "no",  // else /sys/fs/cgroup is read-only
		"User":                  "plugind",
		"Restart":               "on-failure",
		"ProtectHome":           "yes",
		"CapabilityBoundingSet": "",
	}
	for k, v := range want {
		if got := u.one(t, "Service", k); got != v {
			t.Errorf("[Service] %s=%q, want %q", k, got, v)
		}
	}
	if u.one(t, "Install", "WantedBy") != "multi-user.target" {
		t.Errorf("[Install] WantedBy=%q", u["Install"]["WantedBy"])
	}
	rw := strings.Fields(u.one(t, "Service", "ReadWritePaths"))
	if !slices.Contains(rw, hostStateDir) || !slices.Contains(rw, hostRunDir) {
		t.Errorf("ReadWritePaths=%q lacks %s or %s", rw, hostStateDir, hostRunDir)
	}

	exe := strings.Fields(u.one(t, "Service", "ExecStart"))
	if len(exe) == 0 || exe[0] != hostPlugind {
		t.Fatalf("ExecStart=%q: want %s and flags", exe, hostPlugind)
	}
	fa := parseFlags(t, b.flags, exe[1:])
	if got := flagValues(fa, "state-dir"); len(got) != 1 || got[0] != "/var/lib/"+u.one(t, "Service", "StateDirectory") {
		t.Errorf("--state-dir %q is not the StateDirectory", got)
	}
	listen := flagValues(fa, "listen")
	if len(listen) != 1 || path.Dir(strings.TrimPrefix(listen[0], "unix://")) != "/run/"+u.one(t, "Service", "RuntimeDirectory") {
		t.Errorf("--listen %q is not a socket in the RuntimeDirectory", listen)
	}
	if got := flagValues(fa, "plugin-dir"); len(got) != 1 || got[0] != hostPluginDir {
		t.Errorf("--plugin-dir %q", got)
	}
	if got := flagValues(fa, "live-restore"); len(got) != 1 || (got[0] != "" && got[0] != "true") {
		t.Errorf("--live-restore %q: the unit's KillMode=process is there for it", got)
	}
	conf := flagValues(fa, "config")
	if len(conf) != 1 || conf[0] != hostConfigFile {
		t.Fatalf("--config %q: want %s (deploy/plugind.yaml installed)", conf, hostConfigFile)
	}
	cfg := configFile(t, readFile(t, "plugind.yaml"))
	stop, err := time.ParseDuration(u.one(t, "Service", "TimeoutStopSec"))
	if err != nil {
		t.Errorf("TimeoutStopSec: %v", err)
	} else if st := shutdownTimeout(t, cfg); stop < 2*st {
		// The server drain and the plugins' stop each take up to
		// shutdown-timeout.
		t.Errorf("TimeoutStopSec=%s is less than twice plugind's shutdown-timeout (%s)", stop, st)
	}

	// Run the unit's command line.
	dir, err := os.MkdirTemp("", "pdunit-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pm := pathMap(dir)
	var args []string
	for _, a := range exe[1:] {
		args = append(args, strings.ReplaceAll(pm.Replace(a), hostConfigFile, "plugind.yaml"))
	}
	d := startPlugind(t, pm.Replace(listen[0]), args...)
	d.waitService(t, "plugin/echo")
	if fi, err := os.Stat(filepath.Join(dir, "state")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state directory: %v %v", fi.Mode(), err)
	}
	d.stop(t, stop)

	// systemd's own check, when it is installed (apt-get install systemd).
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze is not installed (apt-get install systemd; .ci/run does): %v", err)
	}
	// verify also checks that ExecStart's binary exists: use the built one.
	vdir := t.TempDir()
	file := filepath.Join(vdir, "plugind.service")
	if err := os.WriteFile(file, bytes.ReplaceAll(raw, []byte(hostPlugind), []byte(b.plugind)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", file)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_LEVEL=notice")
	out, err := cmd.CombinedOutput()
	// verify exits 0 on warnings (unknown keys, bad values are ignored):
	// any word about the unit file fails the test.
	if err != nil || bytes.Contains(out, []byte("plugind.service")) {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	} else {
		t.Logf("systemd-analyze verify: ok")
	}
}

// doc is one parsed Kubernetes object.
type doc = map[string]any

// get walks keys (string) and indexes (int) into v.
func get(v any, keys ...any) any {
	for _, k := range keys {
		switch k := k.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any, keys ...any) string {
	s, _ := get(v, keys...).(string)
	return s
}

func list(v any, keys ...any) []any {
	l, _ := get(v, keys...).([]any)
	return l
}

// loadManifests parses every document of deploy/kubernetes/*.yaml.
func loadManifests(t *testing.T) []doc {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	sep := regexp.MustCompile(`(?m)^---[ \t]*$`)
	var docs []doc
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, part := range sep.Split(string(b), -1) {
			var d doc
			if err := yaml.UnmarshalStrict([]byte(part), &d); err != nil {
				t.Fatalf("%s, document %d: %v", f, i, err)
			}
			if d == nil {
				continue // comments only
			}
			if str(d, "apiVersion") == "" || str(d, "kind") == "" || str(d, "metadata", "name") == "" {
				t.Errorf("%s, document %d: no apiVersion, kind or metadata.name", f, i)
			}
			docs = append(docs, d)
		}
	}
	return docs
}

func find(docs []doc, kind, name string) doc {
	for _, d := range docs {
		if str(d, "kind") == kind && (name == "" || str(d, "metadata", "name") == name) {
			return d
		}
	}
	return nil
}

// plugindContainer is the pod's container named plugind (the last one of
// that name), nil if none.
func plugindContainer(pod any) any {
	var c any
	for _, x := range list(pod, "containers") {
		if str(x, "name") == "plugind" {
			c = x
		}
	}
	return c
}

// checkProbe checks that a probe is an httpGet of path on the container's
// metrics port (plugind's --metrics-listen: /readyz, /healthz), and that its
// timeout is set.
func checkProbe(t *testing.T, name string, p any, path string, metricsPort float64) {
	t.Helper()
	if p == nil {
		t.Errorf("no %s", name)
		return
	}
	if get(p, "exec") != nil || get(p, "grpc") != nil {
		t.Errorf("%s: want an httpGet probe of %s (an exec probe forks a process every period; a native grpc probe dials the pod IP in plaintext, which plugind refuses)", name, path)
		return
	}
	if got := str(p, "httpGet", "path"); got != path {
		t.Errorf("%s: httpGet path %q, want %s", name, got, path)
	}
	switch port := get(p, "httpGet", "port").(type) {
	case string: // a named port: the caller checks it against the container
	case float64:
		if port != metricsPort {
			t.Errorf("%s: port %v, but metrics are on %v", name, port, metricsPort)
		}
	default:
		t.Errorf("%s: httpGet without a port", name)
	}
	if timeout, ok := get(p, "timeoutSeconds").(float64); !ok || timeout < 1 {
		t.Errorf("%s: timeoutSeconds %v", name, get(p, "timeoutSeconds"))
	}
}

// TestKubernetesManifests checks the structure of deploy/kubernetes/*.yaml.
func TestKubernetesManifests(t *testing.T) {
	b := build(t)
	docs := loadManifests(t)
	kinds := map[string]string{"Namespace": "v1", "ServiceAccount": "v1", "ConfigMap": "v1", "DaemonSet": "apps/v1"}
	ns := find(docs, "Namespace", "")
	for _, d := range docs {
		kind := str(d, "kind")
		if v, ok := kinds[kind]; !ok || str(d, "apiVersion") != v {
			t.Errorf("%s %s: unexpected kind or apiVersion %s", kind, str(d, "metadata", "name"), str(d, "apiVersion"))
		}
		if kind != "Namespace" && ns != nil && str(d, "metadata", "namespace") != str(ns, "metadata", "name") {
			t.Errorf("%s %s is not in namespace %s", kind, str(d, "metadata", "name"), str(ns, "metadata", "name"))
		}
	}
	ds := find(docs, "DaemonSet", "")
	if ds == nil {
		t.Fatal("no DaemonSet")
	}
	pod := get(ds, "spec", "template", "spec")

	// The selector matches the template's labels.
	sel, _ := get(ds, "spec", "selector", "matchLabels").(map[string]any)
	labels, _ := get(ds, "spec", "template", "metadata", "labels").(map[string]any)
	if len(sel) == 0 {
		t.Error("DaemonSet without spec.selector.matchLabels")
	}
	for k, v := range sel {
		if labels[k] != v {
			t.Errorf("selector %s=%v does not match the template's labels %v", k, v, labels)
		}
	}
	if sa := str(pod, "serviceAccountName"); sa != "" && find(docs, "ServiceAccount", sa) == nil {
		t.Errorf("serviceAccountName %q is not in the manifests", sa)
	}
	if get(ds, "spec", "updateStrategy", "rollingUpdate", "maxSurge") != float64(0) {
		t.Errorf("maxSurge must be 0: two pods on a node would share the store")
	}

	// Volumes: one source each, all used, every mount declared.
	volumes := map[string]any{}
	for _, v := range list(pod, "volumes") {
		name := str(v, "name")
		if _, dup := volumes[name]; dup {
			t.Errorf("volume %q twice", name)
		}
		volumes[name] = v
		if n := len(v.(map[string]any)); n != 2 {
			t.Errorf("volume %q: %d keys, want name and one source", name, n)
		}
		if cm := str(v, "configMap", "name"); cm != "" && find(docs, "ConfigMap", cm) == nil {
			t.Errorf("volume %q: ConfigMap %q is not in the manifests", name, cm)
		}
	}
	used := map[string]bool{}
	containers := slices.Concat(list(pod, "initContainers"), list(pod, "containers"))
	for _, c := range containers {
		cname := str(c, "name")
		if img := str(c, "image"); !regexp.MustCompile(`^[a-z0-9./-]+:[A-Za-z0-9._-]+$`).MatchString(img) || strings.HasSuffix(img, ":latest") {
			t.Errorf("container %s: image %q needs a fixed tag", cname, img)
		}
		if get(c, "securityContext", "allowPrivilegeEscalation") != false || get(c, "securityContext", "readOnlyRootFilesystem") != true ||
			!slices.Contains(list(c, "securityContext", "capabilities", "drop"), any("ALL")) {
			t.Errorf("container %s: securityContext must forbid privilege escalation, drop ALL capabilities and make the root read-only: %v", cname, get(c, "securityContext"))
		}
		if get(c, "resources", "limits", "memory") == nil || get(c, "resources", "requests") == nil {
			t.Errorf("container %s: no resource requests or memory limit", cname)
		}
		paths := map[string]bool{}
		for _, m := range list(c, "volumeMounts") {
			if _, ok := volumes[str(m, "name")]; !ok {
				t.Errorf("container %s mounts undeclared volume %q", cname, str(m, "name"))
			}
			if paths[str(m, "mountPath")] {
				t.Errorf("container %s mounts %s twice", cname, str(m, "mountPath"))
			}
			paths[str(m, "mountPath")] = true
			used[str(m, "name")] = true
		}
	}
	for name := range volumes {
		if !used[name] {
			t.Errorf("volume %q is not mounted", name)
		}
	}
	if get(pod, "securityContext", "runAsNonRoot") != true || get(pod, "securityContext", "seccompProfile", "type") != "RuntimeDefault" {
		t.Errorf("pod securityContext: %v", get(pod, "securityContext"))
	}

	// The plugind container.
	c := plugindContainer(pod)
	if c == nil {
		t.Fatal("no container named plugind")
	}
	if cmd := list(c, "command"); len(cmd) != 1 || cmd[0] != hostPlugind {
		t.Errorf("command %v: want [%s]", cmd, hostPlugind)
	}
	var args []string
	for _, a := range list(c, "args") {
		args = append(args, fmt.Sprint(a))
	}
	fa := parseFlags(t, b.flags, args)
	mountOf := func(p string) (any, bool) {
		var best any
		bestLen := -1
		for _, m := range list(c, "volumeMounts") {
			mp := str(m, "mountPath")
			if (p == mp || strings.HasPrefix(p, mp+"/")) && len(mp) > bestLen {
				best, bestLen = m, len(mp)
			}
		}
		return best, best != nil
	}
	writable := func(what, p string) {
		if m, ok := mountOf(p); !ok || get(m, "readOnly") == true {
			t.Errorf("%s %s is not on a writable volume (the root filesystem is read-only)", what, p)
		}
	}
	state := flagValues(fa, "state-dir")
	if len(state) != 1 {
		t.Fatalf("--state-dir %q", state)
	}
	if got := flagValues(fa, "live-restore"); len(got) != 1 || (got[0] != "" && got[0] != "true") {
		t.Errorf("--live-restore %q: want it on", got)
	}
	writable("--state-dir", state[0])
	listen := flagValues(fa, "listen")
	if len(listen) != 1 || !strings.HasPrefix(listen[0], "unix:///") {
		t.Fatalf("--listen %q: want one unix socket", listen)
	}
	socketDir := path.Dir(strings.TrimPrefix(listen[0], "unix://"))
	writable("the socket directory", socketDir)
	if m, _ := mountOf(socketDir); get(volumes[str(m, "name")], "hostPath", "path") != socketDir {
		t.Errorf("the socket directory %s is not a hostPath of the same path (node-local clients)", socketDir)
	}
	writable("TMPDIR", "/tmp")

	// The config file comes from the ConfigMap.
	conf := flagValues(fa, "config")
	if len(conf) != 1 {
		t.Fatalf("--config %q", conf)
	}
	m, ok := mountOf(conf[0])
	cm := find(docs, "ConfigMap", str(volumes[str(m, "name")], "configMap", "name"))
	if !ok || cm == nil || get(m, "readOnly") != true {
		t.Fatalf("--config %s is not on a read-only ConfigMap volume", conf[0])
	}
	key := strings.TrimPrefix(conf[0], str(m, "mountPath")+"/")
	cfgText := str(cm, "data", key)
	if cfgText == "" {
		t.Fatalf("ConfigMap %s has no key %q", str(cm, "metadata", "name"), key)
	}
	cfg := configFile(t, []byte(cfgText))
	for k := range cfg {
		if _, ok := b.flags[k]; !ok || k == "config" {
			t.Errorf("ConfigMap %s: %q is not a plugind flag", key, k)
		}
	}
	grace, _ := get(pod, "terminationGracePeriodSeconds").(float64)
	if st := shutdownTimeout(t, cfg); time.Duration(grace)*time.Second < 2*st {
		t.Errorf("terminationGracePeriodSeconds %v is less than twice shutdown-timeout %s", grace, st)
	}

	// Probes: httpGet of /readyz and /healthz on the metrics port.
	ml, ok := cfg["metrics-listen"]
	if !ok {
		t.Fatal("the config serves no metrics-listen: the probes need it")
	}
	_, mport, _ := strings.Cut(fmt.Sprint(ml), ":")
	metricsPort, _ := strconv.ParseFloat(mport, 64)
	for name, p := range map[string]string{"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		checkProbe(t, name, get(c, name), p, metricsPort)
		if port, ok := get(c, name, "httpGet", "port").(string); ok {
			named := false
			for _, cp := range list(c, "ports") {
				if str(cp, "name") == port && get(cp, "containerPort") == metricsPort {
					named = true
				}
			}
			if !named {
				t.Errorf("%s: port %q is not the container's metrics port %v", name, port, metricsPort)
			}
		}
	}
	// Metrics: the port is declared when the config serves them.
	if ml, ok := cfg["metrics-listen"]; ok {
		_, port, _ := strings.Cut(fmt.Sprint(ml), ":")
		found := false
		for _, p := range list(c, "ports") {
			if strconv.Itoa(int(get(p, "containerPort").(float64))) == port {
				found = true
			}
		}
		if !found {
			t.Errorf("metrics-listen %v: no containerPort %s", ml, port)
		}
	}
}

// TestKubernetesPodRuns runs the built plugind with the DaemonSet's
// arguments and the ConfigMap's config (host paths mapped into a temporary
// directory), runs the pod's probe commands against it, and stops it the
// way the kubelet does.
func TestKubernetesPodRuns(t *testing.T) {
	build(t)
	docs := loadManifests(t)
	ds := find(docs, "DaemonSet", "")
	pod := get(ds, "spec", "template", "spec")
	c := plugindContainer(pod)
	cm := find(docs, "ConfigMap", "")
	if c == nil || cm == nil {
		t.Fatal("no plugind container or ConfigMap")
	}
	dir, err := os.MkdirTemp("", "pdk8s-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The ConfigMap volume, as the kubelet projects it.
	confDir := filepath.Join(dir, "etc")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, _ := get(cm, "data").(map[string]any)
	for _, k := range slices.Sorted(maps.Keys(data)) {
		if err := os.WriteFile(filepath.Join(confDir, k), []byte(fmt.Sprint(data[k])), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pm := pathMap(dir)
	var args []string
	socket := ""
	for _, a := range list(c, "args") {
		s := strings.ReplaceAll(pm.Replace(fmt.Sprint(a)), "/etc/plugind", confDir)
		if v, ok := strings.CutPrefix(s, "--listen="); ok {
			socket = v
		}
		args = append(args, s)
	}
	// The pod IP's metrics port is not free here: any port on loopback.
	args = append(args, "--metrics-listen=127.0.0.1:0")
	d := startPlugind(t, socket, args...)

	cfg := configFile(t, []byte(fmt.Sprint(data["plugind.yaml"])))
	for _, l := range list(cfg, "load") {
		name, _, _ := strings.Cut(fmt.Sprint(l), "=")
		d.waitService(t, "plugin/"+name)
	}
	// The probes, as the kubelet runs them, on the metrics address.
	addr := d.metricsAddr(t)
	for _, name := range []string{"startupProbe", "readinessProbe", "livenessProbe"} {
		if code := httpGet(addr, str(c, name, "httpGet", "path")); code != http.StatusOK {
			t.Errorf("%s: HTTP %d", name, code)
		}
	}
	grace, _ := get(pod, "terminationGracePeriodSeconds").(float64)
	d.stop(t, time.Duration(grace)*time.Second)
	// Once stopped, the probes fail.
	if code := httpGet(addr, "/healthz"); code == http.StatusOK {
		t.Error("the liveness probe passes after plugind stopped")
	}
}

// httpGet returns the status code of GET http://addr+path (0 when it
// fails).
func httpGet(addr, path string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// metricsAddr reads the metrics address plugind logged.
func (d *daemon) metricsAddr(t *testing.T) string {
	t.Helper()
	re := regexp.MustCompile(`http://(127\.0\.0\.1:\d+)/metrics`)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) { // polls the log: plugind writes the line when it listens
		if m := re.FindStringSubmatch(d.stderr.String()); m != nil {
			return m[1]
		}
	}
	t.Fatalf("no metrics address in the log:\n%s", d.stderr)
	return ""
}

// TestKubernetesManifestsDecodeStrictly decodes every manifest into its
// k8s.io/api type, refusing unknown fields (a typo such as periodSecond or
// imagePullPolcy fails), and proves the decoding strict with such a typo.
func TestKubernetesManifestsDecodeStrictly(t *testing.T) {
	docs := rawManifests(t)
	if len(docs) == 0 {
		t.Fatal("no manifests")
	}
	for _, d := range docs {
		if err := decodeTyped(d.text); err != nil {
			t.Errorf("%s: %v", d.where, err)
		}
	}
	for _, typo := range []struct{ from, to string }{{"periodSeconds:", "periodSecond:"}, {"imagePullPolicy:", "imagePullPolcy:"}} {
		for _, d := range docs {
			if strings.Contains(d.text, typo.from) {
				if err := decodeTyped(strings.Replace(d.text, typo.from, typo.to, 1)); err == nil {
					t.Errorf("%s with %s decoded without an error", d.where, typo.to)
				}
			}
		}
	}
}

// rawDoc is one YAML document of the manifests.
type rawDoc struct{ where, text string }

func rawManifests(t *testing.T) []rawDoc {
	t.Helper()
	files, _ := filepath.Glob("kubernetes/*.yaml")
	sep := regexp.MustCompile(`(?m)^---[ \t]*$`)
	var out []rawDoc
	for _, f := range files {
		for i, part := range sep.Split(string(readFile(t, strings.TrimPrefix(f, "./"))), -1) {
			if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(part, "")) == "" {
				continue
			}
			out = append(out, rawDoc{fmt.Sprintf("%s, document %d", f, i), part})
		}
	}
	return out
}

// decodeTyped decodes a manifest into the k8s.io/api type of its kind,
// with unknown fields an error.
func decodeTyped(text string) error {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal([]byte(text), &meta); err != nil {
		return err
	}
	var obj any
	switch meta.APIVersion + " " + meta.Kind {
	case "v1 Namespace":
		obj = &corev1.Namespace{}
	case "v1 ServiceAccount":
		obj = &corev1.ServiceAccount{}
	case "v1 ConfigMap":
		obj = &corev1.ConfigMap{}
	case "apps/v1 DaemonSet":
		obj = &appsv1.DaemonSet{}
	default:
		return fmt.Errorf("unexpected %s %s", meta.APIVersion, meta.Kind)
	}
	return yaml.UnmarshalStrict([]byte(text), obj)
}

// TestDockerfile checks that the image deploy/Dockerfile builds holds what
// the DaemonSet runs, and that what it builds exists.
func TestDockerfile(t *testing.T) {
	text := strings.ReplaceAll(string(readFile(t, "Dockerfile")), "\\\n", " ")
	// Where COPY puts each built file: /out/X -> destination.
	dest := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "COPY" || !strings.HasPrefix(f[1], "--from=") {
			continue
		}
		to := f[len(f)-1]
		for _, src := range f[2 : len(f)-1] {
			if strings.HasSuffix(src, "/") {
				dest[src] = to
			} else {
				dest[path.Base(src)] = path.Join(to, path.Base(src))
			}
		}
	}
	docs := loadManifests(t)
	ds := find(docs, "DaemonSet", "")
	for _, c := range list(ds, "spec", "template", "spec", "containers") {
		if str(c, "name") != "plugind" {
			continue
		}
		if want := str(c, "command", 0); dest["plugind"] != want {
			t.Errorf("the DaemonSet runs %s; the image has plugind at %q", want, dest["plugind"])
		}
		if !slices.Contains(slices.Collect(maps.Values(dest)), hostPluginDir+"/") || !slices.ContainsFunc(list(c, "args"), func(a any) bool { return a == "--plugin-dir="+hostPluginDir }) {
			t.Errorf("the image's plugins (%v) are not the DaemonSet's --plugin-dir", dest)
		}
	}
	if !regexp.MustCompile(`(?m)^USER 65532`).MatchString(text) {
		t.Error("the image does not run as uid 65532, which owns the host directories")
	}
	buildStage(t, text, dest)
}

// buildStage builds the image with a container runtime that runs here
// (docker or podman: "X info" answers); where none does, it says so and runs
// the build stage's commands on this machine instead: WORKDIR /src is this
// checkout, /out a temporary directory, its ARGs and ENVs the environment.
// Either way the built plugind carries the VERSION build argument, and every
// file the final stage copies (dest's sources) is built.
func buildStage(t *testing.T, text string, dest map[string]string) {
	const stamp = "v0.0.0-image"
	var why []string
	for _, rt := range []string{"docker", "podman"} {
		if _, err := exec.LookPath(rt); err != nil {
			why = append(why, rt+": not installed")
			continue
		}
		if out, err := exec.Command(rt, "info").CombinedOutput(); err != nil {
			why = append(why, fmt.Sprintf("%s info: %v: %s", rt, err, lastLine(out)))
			continue
		}
		tag := "plugincontrol-deploy-test:" + strconv.Itoa(os.Getpid())
		cmd := exec.Command(rt, "build", "-f", "deploy/Dockerfile", "--build-arg", "VERSION="+stamp, "-t", tag, ".")
		cmd.Dir = testbin.Root()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s build: %v\n%s", rt, err, out)
		}
		defer exec.Command(rt, "rmi", "-f", tag).Run()
		out, err := exec.Command(rt, "run", "--rm", tag, "--version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "plugind "+stamp) {
			t.Errorf("%s run %s --version: %v\n%s", rt, tag, err, out)
		}
		return
	}
	t.Logf("no container runtime runs here (%s): running the Dockerfile's build stage on this machine", strings.Join(why, "; "))

	out := t.TempDir()
	env := append(os.Environ(), "VERSION="+stamp)
	stage := false
	var runs []string
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch f[0] {
		case "FROM":
			stage = len(f) == 4 && strings.EqualFold(f[2], "AS") && f[3] == "build"
		case "WORKDIR":
			if stage && f[1] != "/src" {
				t.Fatalf("the build stage works in %s, not /src (where COPY . . puts the checkout)", f[1])
			}
		case "ARG", "ENV":
			if stage {
				for _, kv := range f[1:] {
					if k, v, _ := strings.Cut(kv, "="); v != "" || f[0] == "ENV" {
						env = append(env, k+"="+v)
					}
				}
			}
		case "RUN":
			if stage {
				runs = append(runs, strings.Join(f[1:], " "))
			}
		}
	}
	if len(runs) == 0 {
		t.Fatal("the Dockerfile has no build stage (FROM ... AS build) with RUN lines")
	}
	for _, r := range runs {
		cmd := exec.Command("sh", "-ec", strings.ReplaceAll(r, "/out/", out+"/"))
		cmd.Dir = testbin.Root()
		cmd.Env = env
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("RUN %s: %v\n%s", r, err, b)
		}
	}
	for src := range dest {
		if _, err := os.Stat(filepath.Join(out, strings.TrimPrefix(src, "/out/"))); err != nil {
			t.Errorf("the final stage copies %s, which the build stage did not build: %v", src, err)
		}
	}
	b, err := exec.Command(filepath.Join(out, "plugind"), "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(b), "plugind "+stamp) {
		t.Errorf("the build stage's plugind --version: %v %q, want the VERSION build argument %s", err, b, stamp)
	}
}

// lastLine is the last non-empty line of out.
func lastLine(out []byte) string {
	l := strings.Split(strings.TrimSpace(string(out)), "\n")
	return l[len(l)-1]
}
