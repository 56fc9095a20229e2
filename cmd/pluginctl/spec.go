package main

import (
	"encoding/hex"
	"flag"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// specFlags are the flags of load and reload that describe a PluginSpec.
type specFlags struct {
	fs           *flag.FlagSet
	binary       string
	sha256       string
	args         stringList
	env          stringList
	config       string
	configFile   string
	startTimeout time.Duration
	handshake    string
	hsVersion    uint
	readyService string
}

func (s *specFlags) register(fs *flag.FlagSet) {
	s.fs = fs
	fs.StringVar(&s.binary, "binary", "", "binary name inside the daemon's plugin directory")
	fs.StringVar(&s.sha256, "sha256", "", "pin the binary's SHA-256 (hex)")
	fs.Var(&s.args, "arg", "argument for the binary (repeatable)")
	fs.Var(&s.env, "env", "environment variable K=V (repeatable)")
	fs.StringVar(&s.config, "config", "", "config handed to the plugin")
	fs.StringVar(&s.configFile, "config-file", "", `read the config from this file ("-" for standard input)`)
	fs.DurationVar(&s.startTimeout, "start-timeout", 0, "launch and handshake timeout")
	fs.StringVar(&s.handshake, "handshake", "", "a foreign plugin's handshake magic cookie KEY=VALUE")
	fs.UintVar(&s.hsVersion, "handshake-version", 1, "a foreign plugin's protocol version")
	fs.StringVar(&s.readyService, "ready-service", "", "grpc.health.v1 service probed as a foreign plugin's ready stage")
}

// isSet reports whether the flag name was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// anySet reports whether any spec flag was given.
func (s *specFlags) anySet() bool {
	for _, f := range specFlagSpecs {
		if isSet(s.fs, f.name) {
			return true
		}
	}
	return false
}

// parseEnv turns K=V flags into a map; the last value of a key wins.
func parseEnv(kvs []string) (map[string]string, error) {
	env := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usagef("--env %q: want KEY=VALUE", kv)
		}
		env[k] = v
	}
	return env, nil
}

// validate checks the flags that were given, without reading files.
func (s *specFlags) validate() error {
	if isSet(s.fs, "binary") && s.binary == "" {
		return usagef("--binary must not be empty")
	}
	if s.sha256 != "" {
		b, err := hex.DecodeString(s.sha256)
		if err != nil || len(b) != 32 {
			return usagef("--sha256 %q: want the 64 hex digits of a SHA-256", s.sha256)
		}
	}
	if isSet(s.fs, "config") && isSet(s.fs, "config-file") {
		return usagef("--config and --config-file are mutually exclusive")
	}
	if isSet(s.fs, "config-file") && s.configFile == "" {
		return usagef("--config-file must not be empty")
	}
	if s.startTimeout < 0 {
		return usagef("--start-timeout must not be negative")
	}
	if _, err := parseEnv(s.env); err != nil {
		return err
	}
	if isSet(s.fs, "handshake") {
		if k, _, ok := strings.Cut(s.handshake, "="); !ok || k == "" {
			return usagef("--handshake %q: want the magic cookie as KEY=VALUE", s.handshake)
		}
	}
	if (isSet(s.fs, "handshake-version") || isSet(s.fs, "ready-service")) && !isSet(s.fs, "handshake") {
		return usagef("--handshake-version and --ready-service describe a foreign plugin: give its --handshake too")
	}
	return nil
}

// apply replaces the fields of spec whose flags were given; load and reload
// have called validate already. readFile reads --config-file ("-" meaning
// standard input).
func (s *specFlags) apply(spec *plugincontrolv1.PluginSpec, readFile func(string) ([]byte, error)) error {
	if isSet(s.fs, "binary") {
		spec.Binary = s.binary
	}
	if isSet(s.fs, "sha256") {
		spec.Sha256 = strings.ToLower(s.sha256)
	}
	if isSet(s.fs, "arg") {
		spec.Args = append([]string(nil), s.args...)
	}
	if isSet(s.fs, "env") {
		env, err := parseEnv(s.env)
		if err != nil {
			return err
		}
		spec.Env = env
	}
	if isSet(s.fs, "config") {
		spec.Config = []byte(s.config)
	}
	if isSet(s.fs, "config-file") {
		b, err := readFile(s.configFile)
		if err != nil {
			return fmt.Errorf("--config-file: %w", err)
		}
		spec.Config = b
	}
	if isSet(s.fs, "start-timeout") {
		spec.StartTimeout = durationpb.New(s.startTimeout)
	}
	if isSet(s.fs, "handshake") {
		k, v, _ := strings.Cut(s.handshake, "=")
		spec.Handshake = &plugincontrolv1.Handshake{ProtocolVersion: uint32(s.hsVersion), MagicCookieKey: k, MagicCookieValue: v}
		spec.ReadyService = s.readyService
	}
	return nil
}

// loadSpec builds the spec of `load NAME`: the binary defaults to NAME.
func (s *specFlags) loadSpec(name string, readFile func(string) ([]byte, error)) (*plugincontrolv1.PluginSpec, error) {
	spec := &plugincontrolv1.PluginSpec{Name: name, Binary: name}
	if err := s.apply(spec, readFile); err != nil {
		return nil, err
	}
	return spec, nil
}

// reloadSpec builds the spec of `reload NAME` from the current one with the
// given fields replaced. The current spec is not modified.
func (s *specFlags) reloadSpec(name string, current *plugincontrolv1.PluginSpec, readFile func(string) ([]byte, error)) (*plugincontrolv1.PluginSpec, error) {
	spec := proto.Clone(current).(*plugincontrolv1.PluginSpec)
	spec.Name = name
	if err := s.apply(spec, readFile); err != nil {
		return nil, err
	}
	return spec, nil
}
