//go:build linux

package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestConfigLayers: the command line wins over PLUGIND_* variables, which
// win over the --config file, which wins over the defaults; lists from the
// environment are comma-separated and replace the default.
func TestConfigLayers(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "plugind.yaml")
	if err := os.WriteFile(conf, []byte("state-dir: "+dir+"/from-file\nlog-level: warn\ndrain-timeout: 7s\nload:\n  - a\n  - b\nmax-plugins: 12\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseConfig([]string{"--config", conf, "--log-level", "debug"},
		[]string{"PLUGIND_DRAIN_TIMEOUT=9s", "PLUGIND_LISTEN=unix:///tmp/a.sock,unix:///tmp/b.sock", "PLUGIND_UNKNOWN=1", "HOME=/root"})
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case cfg.logLevel != "debug":
		t.Errorf("log-level %q: the command line wins", cfg.logLevel)
	case cfg.drainTimeout != 9*time.Second:
		t.Errorf("drain-timeout %v: the environment wins over the file", cfg.drainTimeout)
	case cfg.stateDir != dir+"/from-file":
		t.Errorf("state-dir %q: from the file", cfg.stateDir)
	case !slices.Equal(cfg.loads, []string{"a", "b"}):
		t.Errorf("load %q: the file's list", cfg.loads)
	case !slices.Equal(cfg.listen, []string{"unix:///tmp/a.sock", "unix:///tmp/b.sock"}):
		t.Errorf("listen %q: the environment's list", cfg.listen)
	case cfg.maxPlugins != 12 || cfg.maxWatchers != 10000:
		t.Errorf("max-plugins %d (file), max-watchers %d (default)", cfg.maxPlugins, cfg.maxWatchers)
	case cfg.endpointDir != filepath.Join(dir, "from-file", "plugins"):
		t.Errorf("endpoint-dir %q: derived from the state directory", cfg.endpointDir)
	}
}

// TestConfigErrorsNameTheirSource: a bad value says where it came from; an
// unknown key in the file is refused.
func TestConfigErrorsNameTheirSource(t *testing.T) {
	dir := t.TempDir()
	n := 0
	write := func(body string) string {
		n++
		p := filepath.Join(dir, "c"+strings.Repeat("x", n)+".yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tt := range []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"--config", write("no-such-flag: 1\n")}, nil, `unknown key "no-such-flag"`},
		{[]string{"--config", write("drain-timeout: soon\n")}, nil, "drain-timeout"},
		{[]string{"--config", write("log-level: [a, b]\n")}, nil, "takes one value, not a list"},
		{nil, []string{"PLUGIND_MAX_PLUGINS=many"}, "PLUGIND_MAX_PLUGINS"},
		{nil, []string{"PLUGIND_CONTAINMENT=jail"}, "want auto, subreaper or process-group"},
		{[]string{"--shutdown-timeout", "0s"}, nil, "--shutdown-timeout must be positive"},
	} {
		_, err := parseConfig(tt.args, tt.env)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q %q: %v, want an error with %q", tt.args, tt.env, err, tt.want)
		}
	}
}

// TestFleetAccessChecks: credentials come in pairs, need --fleet-etcd, and
// a password never crosses the network in clear text.
func TestFleetAccessChecks(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	for _, tt := range []struct {
		args []string
		want string // "" : accepted
	}{
		{[]string{"--fleet-etcd-user", "n1", "--fleet-etcd-password-file", pw}, "--fleet-etcd-user needs --fleet-etcd"},
		{[]string{"--fleet-etcd", "http://127.0.0.1:2379", "--fleet-etcd-user", "n1"}, "--fleet-etcd-user and --fleet-etcd-password-file go together"},
		{[]string{"--fleet-etcd", "http://etcd-1:2379", "--fleet-etcd-user", "n1", "--fleet-etcd-password-file", pw}, "clear text to http://etcd-1:2379"},
		{[]string{"--fleet-etcd", "etcd-1:2379,https://etcd-2:2379", "--fleet-etcd-user", "n1", "--fleet-etcd-password-file", pw}, "clear text to etcd-1:2379"},
		{[]string{"--fleet-etcd", "http://127.0.0.1:2379,http://[::1]:2379,http://localhost:2379", "--fleet-etcd-user", "n1", "--fleet-etcd-password-file", pw}, ""},
		{[]string{"--fleet-etcd", "https://etcd-1:2379", "--fleet-etcd-ca", "ca.pem", "--fleet-etcd-user", "n1", "--fleet-etcd-password-file", pw}, ""},
		{[]string{"--fleet-etcd", "http://127.0.0.1:2379", "--fleet-controller=false"}, ""},
		{[]string{"--fleet-etcd", "http://127.0.0.1:2379", "--fleet-node-retention", "-1h"}, "--fleet-node-retention -1h0m0s: want 0 (never) or more"},
		{[]string{"--fleet-etcd", "http://127.0.0.1:2379", "--fleet-node-retention", "0"}, ""},
	} {
		cfg, err := parseConfig(tt.args, nil)
		if err == nil {
			err = cfg.check()
		}
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%q: %v", tt.args, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%q: %v, want an error with %q", tt.args, err, tt.want)
		}
	}
	if err := os.WriteFile(pw, []byte("s3cret\nignored\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readPassword(pw); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a world-readable password file: %v", err)
	}
	if err := os.Chmod(pw, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := readPassword(pw); err != nil || got != "s3cret" {
		t.Errorf("password %q %v, want its first line", got, err)
	}
}
