package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/spf13/pflag"
)

const pin = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// parseSpec parses a load/reload style command line.
func parseSpec(t *testing.T, args ...string) (*specFlags, []string) {
	t.Helper()
	fs := pflag.NewFlagSet("load", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var sf specFlags
	sf.register(fs)
	fs.Bool("validate-only", false, "")
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parsing %q: %v", args, err)
	}
	return &sf, fs.Args()
}

func noFiles(name string) ([]byte, error) { return nil, errors.New("no files in this test: " + name) }

func TestLoadSpecDefaults(t *testing.T) {
	sf, pos := parseSpec(t, "echo")
	if len(pos) != 1 || pos[0] != "echo" {
		t.Fatalf("positional = %q", pos)
	}
	spec, err := sf.loadSpec("echo", noFiles)
	if err != nil {
		t.Fatal(err)
	}
	want := &plugincontrolv1.PluginSpec{Name: "echo", Binary: "echo"}
	if !proto.Equal(spec, want) {
		t.Errorf("spec = %v, want %v", spec, want)
	}
}

func TestLoadSpecAllFlags(t *testing.T) {
	// Flags after, between and before the name, in both - and -- forms.
	sf, pos := parseSpec(t,
		"--binary", "echo-v2", "greeter",
		"--sha256="+strings.ToUpper(pin),
		"--arg", "-v", "--arg=--port=0",
		"--env", "A=1", "--env", "B=x=y", "--env", "A=2",
		"--config", `{"k":1}`,
		"--start-timeout", "3s")
	if len(pos) != 1 || pos[0] != "greeter" {
		t.Fatalf("positional = %q", pos)
	}
	spec, err := sf.loadSpec(pos[0], noFiles)
	if err != nil {
		t.Fatal(err)
	}
	want := &plugincontrolv1.PluginSpec{
		Name:         "greeter",
		Binary:       "echo-v2",
		Sha256:       pin,
		Args:         []string{"-v", "--port=0"},
		Env:          map[string]string{"A": "2", "B": "x=y"},
		Config:       []byte(`{"k":1}`),
		StartTimeout: durationpb.New(3 * time.Second),
	}
	if !proto.Equal(spec, want) {
		t.Errorf("spec = %v\nwant %v", spec, want)
	}
}

func TestLoadSpecConfigFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "config.json")
	if err := os.WriteFile(f, []byte("from file"), 0o600); err != nil {
		t.Fatal(err)
	}
	sf, _ := parseSpec(t, "echo", "--config-file", f)
	c := &cli{stdin: strings.NewReader("from stdin")}
	spec, err := sf.loadSpec("echo", c.readFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(spec.GetConfig()) != "from file" {
		t.Errorf("config = %q", spec.GetConfig())
	}
	sf, _ = parseSpec(t, "echo", "--config-file", "-")
	if spec, err = sf.loadSpec("echo", c.readFile); err != nil {
		t.Fatal(err)
	}
	if string(spec.GetConfig()) != "from stdin" {
		t.Errorf("config = %q", spec.GetConfig())
	}
	sf, _ = parseSpec(t, "echo", "--config-file", filepath.Join(dir, "missing"))
	if _, err := sf.loadSpec("echo", c.readFile); err == nil || exitCode(err) != exitError {
		t.Errorf("missing config file: %v (exit %d)", err, exitCode(err))
	}
}

func TestSpecFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"echo", "--config", "x", "--config-file", "f"},
		{"echo", "--env", "NOEQUALS"},
		{"echo", "--env", "=v"},
		{"echo", "--sha256", "abc"},
		{"echo", "--sha256", strings.Repeat("g", 64)},
		{"echo", "--binary", ""},
		{"echo", "--start-timeout", "-1s"},
	} {
		sf, _ := parseSpec(t, args...)
		err := sf.validate()
		if err == nil {
			t.Errorf("%q: no error", args)
			continue
		}
		if exitCode(err) != exitUsage {
			t.Errorf("%q: %v: exit %d, want %d", args, err, exitCode(err), exitUsage)
		}
	}
	// Flags pflag itself rejects.
	for _, args := range [][]string{
		{"echo", "--start-timeout", "soon"},
		{"echo", "--bogus"},
		{"echo", "--binary"},
	} {
		if r := runCLI(context.Background(), "", append([]string{"load"}, args...)...); r.code != exitUsage {
			t.Errorf("%q: %+v, want a usage error", args, r)
		}
	}
}

func TestReloadSpec(t *testing.T) {
	current := &plugincontrolv1.PluginSpec{
		Name:         "echo",
		Binary:       "echo",
		Args:         []string{"--old"},
		Env:          map[string]string{"OLD": "1"},
		Sha256:       pin,
		Config:       []byte("cfg"),
		StartTimeout: durationpb.New(time.Second),
		HealthPolicy: &plugincontrolv1.HealthPolicy{PanicThreshold: 7},
	}
	orig := proto.Clone(current)

	sf, _ := parseSpec(t, "echo", "--binary", "echo-v2", "--sha256", "", "--env", "NEW=2")
	if !sf.anySet() {
		t.Fatal("anySet = false with spec flags")
	}
	spec, err := sf.reloadSpec("echo", current, noFiles)
	if err != nil {
		t.Fatal(err)
	}
	want := &plugincontrolv1.PluginSpec{
		Name:         "echo",
		Binary:       "echo-v2",
		Args:         []string{"--old"},
		Env:          map[string]string{"NEW": "2"},
		Config:       []byte("cfg"),
		StartTimeout: durationpb.New(time.Second),
		HealthPolicy: &plugincontrolv1.HealthPolicy{PanicThreshold: 7},
	}
	if !proto.Equal(spec, want) {
		t.Errorf("spec = %v\nwant %v", spec, want)
	}
	if !proto.Equal(current, orig) {
		t.Errorf("current spec modified: %v", current)
	}

	sf, _ = parseSpec(t, "echo", "--validate-only")
	if sf.anySet() {
		t.Error("anySet = true without spec flags")
	}
}

func TestDoubleDash(t *testing.T) {
	tests := []struct {
		args []string
		pos  []string
		argv []string
	}{
		{[]string{"echo", "--", "--binary", "x"}, []string{"echo", "--binary", "x"}, nil},
		{[]string{"echo", "--arg", "--", "x"}, []string{"echo", "x"}, []string{"--"}},
		{[]string{"--validate-only", "--", "-x"}, []string{"-x"}, nil},
		{[]string{"a", "-", "b"}, []string{"a", "-", "b"}, nil},
	}
	for _, tt := range tests {
		sf, pos := parseSpec(t, tt.args...)
		if strings.Join(pos, "|") != strings.Join(tt.pos, "|") {
			t.Errorf("%q: positional %q, want %q", tt.args, pos, tt.pos)
		}
		if strings.Join(sf.args, "|") != strings.Join(tt.argv, "|") {
			t.Errorf("%q: --arg %q, want %q", tt.args, sf.args, tt.argv)
		}
	}
}

func TestLoadSpecForeign(t *testing.T) {
	sf, _ := parseSpec(t, "kv", "--handshake", "BASIC_PLUGIN=hello", "--handshake-version", "2", "--ready-service", "proto.KV")
	if err := sf.validate(); err != nil {
		t.Fatal(err)
	}
	spec, err := sf.loadSpec("kv", noFiles)
	if err != nil {
		t.Fatal(err)
	}
	want := &plugincontrolv1.PluginSpec{Name: "kv", Binary: "kv", ReadyService: "proto.KV",
		Handshake: &plugincontrolv1.Handshake{ProtocolVersion: 2, MagicCookieKey: "BASIC_PLUGIN", MagicCookieValue: "hello"}}
	if !proto.Equal(spec, want) {
		t.Errorf("spec = %v, want %v", spec, want)
	}
	for _, bad := range [][]string{{"kv", "--handshake", "novalue"}, {"kv", "--ready-service", "x"}, {"kv", "--handshake", "=v"}} {
		sf, _ := parseSpec(t, bad...)
		if err := sf.validate(); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}
