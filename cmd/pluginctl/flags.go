package main

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// durationValue is a duration flag that also takes a bare number of
// seconds ("5" is 5s), and says what it wants when given neither.
type durationValue time.Duration

func (d *durationValue) String() string { return time.Duration(*d).String() }
func (d *durationValue) Type() string   { return "duration" }

func (d *durationValue) Set(s string) error {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		*d = durationValue(time.Duration(f * float64(time.Second)))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as 30s, 1m30s or 500ms, or a number of seconds")
	}
	*d = durationValue(v)
	return nil
}

// durationFlag registers a durationValue flag.
func durationFlag(fs *pflag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	fs.Var((*durationValue)(p), name, usage)
}

// oneOf is a string flag with a fixed set of values, completed by the
// shells and checked when set.
type oneOf struct {
	value   *string
	allowed []string
}

func (o oneOf) String() string { return *o.value }
func (o oneOf) Type() string   { return strings.Join(o.allowed, "|") }

func (o oneOf) Set(s string) error {
	for _, a := range o.allowed {
		if s == a {
			*o.value = s
			return nil
		}
	}
	return fmt.Errorf("want %s", strings.Join(o.allowed, ", "))
}

// oneOfFlag registers a oneOf flag on cmd, with its completion.
func oneOfFlag(cmd *cobra.Command, fs *pflag.FlagSet, p *string, name, short, value, usage string, allowed ...string) {
	*p = value
	fs.VarP(oneOf{value: p, allowed: allowed}, name, short, usage)
	_ = cmd.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(allowed, cobra.ShellCompDirectiveNoFileComp))
}

// specFlags are the flags of load and reload that describe a PluginSpec.
type specFlags struct {
	fs           *pflag.FlagSet
	binary       string
	sha256       string
	args         []string
	env          []string
	config       string
	configFile   string
	startTimeout time.Duration
	handshake    string
	hsVersion    uint
	readyService string
}

// specFlagNames are the flags specFlags registers.
var specFlagNames = []string{"binary", "sha256", "arg", "env", "config", "config-file", "start-timeout", "handshake", "handshake-version", "ready-service"}

func (s *specFlags) register(fs *pflag.FlagSet) {
	s.fs = fs
	fs.StringVar(&s.binary, "binary", "", "binary name inside the daemon's plugin directory (load: default NAME)")
	fs.StringVar(&s.sha256, "sha256", "", "pin the binary to this SHA-256 (64 hex digits; reload: \"\" removes the pin)")
	fs.StringArrayVar(&s.args, "arg", nil, "argument for the binary (repeatable; reload: replaces all arguments)")
	fs.StringArrayVar(&s.env, "env", nil, "environment variable K=V of the plugin (repeatable; reload: replaces the whole environment)")
	fs.StringVar(&s.config, "config", "", "config handed to the plugin")
	fs.StringVar(&s.configFile, "config-file", "", `read the config from this file ("-" for standard input)`)
	durationFlag(fs, &s.startTimeout, "start-timeout", 0, "launch and handshake timeout (default: the daemon's, 10s)")
	fs.StringVar(&s.handshake, "handshake", "", "a foreign go-plugin plugin: its handshake magic cookie KEY=VALUE; its own API is served at its endpoint")
	fs.UintVar(&s.hsVersion, "handshake-version", 1, "the foreign plugin's protocol version")
	fs.StringVar(&s.readyService, "ready-service", "", `grpc.health.v1 service probed as a foreign plugin's ready stage (default "plugin")`)
}

// anySet reports whether any spec flag was given.
func (s *specFlags) anySet() bool {
	for _, n := range specFlagNames {
		if s.fs.Changed(n) {
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
	set := s.fs.Changed
	if set("binary") && s.binary == "" {
		return usagef("--binary must not be empty")
	}
	if s.sha256 != "" {
		b, err := hex.DecodeString(s.sha256)
		if err != nil || len(b) != 32 {
			return usagef("--sha256 %q: want the 64 hex digits of a SHA-256", s.sha256)
		}
	}
	if set("config") && set("config-file") {
		return usagef("--config and --config-file are mutually exclusive")
	}
	if set("config-file") && s.configFile == "" {
		return usagef("--config-file must not be empty")
	}
	if s.startTimeout < 0 {
		return usagef("--start-timeout must not be negative")
	}
	if _, err := parseEnv(s.env); err != nil {
		return err
	}
	if set("handshake") {
		if k, _, ok := strings.Cut(s.handshake, "="); !ok || k == "" {
			return usagef("--handshake %q: want the magic cookie as KEY=VALUE", s.handshake)
		}
	}
	if (set("handshake-version") || set("ready-service")) && !set("handshake") {
		return usagef("--handshake-version and --ready-service describe a foreign plugin: give its --handshake too")
	}
	return nil
}

// apply replaces the fields of spec whose flags were given; validate has
// run. readFile reads --config-file ("-" meaning standard input).
func (s *specFlags) apply(spec *plugincontrolv1.PluginSpec, readFile func(string) ([]byte, error)) error {
	set := s.fs.Changed
	if set("binary") {
		spec.Binary = s.binary
	}
	if set("sha256") {
		spec.Sha256 = strings.ToLower(s.sha256)
	}
	if set("arg") {
		spec.Args = append([]string(nil), s.args...)
	}
	if set("env") {
		env, err := parseEnv(s.env)
		if err != nil {
			return err
		}
		spec.Env = env
	}
	if set("config") {
		spec.Config = []byte(s.config)
	}
	if set("config-file") {
		b, err := readFile(s.configFile)
		if err != nil {
			return fmt.Errorf("--config-file: %w", err)
		}
		spec.Config = b
	}
	if set("start-timeout") {
		spec.StartTimeout = durationpb.New(s.startTimeout)
	}
	if set("handshake") {
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

// defaultWaitTimeout is the default of --wait-timeout.
const defaultWaitTimeout = 30 * time.Second

// waitFlags are --wait-healthy, --wait-timeout and --settle of load and
// reload.
type waitFlags struct {
	fs      *pflag.FlagSet
	enabled bool
	timeout time.Duration
	settle  time.Duration
}

func (w *waitFlags) register(fs *pflag.FlagSet) {
	w.fs = fs
	fs.BoolVar(&w.enabled, "wait-healthy", false, "once loaded or swapped, wait until exactly the new generation is SERVING (exit 7 when it is UNHEALTHY or STOPPED, is replaced by a newer generation or unloaded, or, within --settle, leaves SERVING)")
	durationFlag(fs, &w.timeout, "wait-timeout", defaultWaitTimeout, "with --wait-healthy: give up (exit 7) after this long, --settle included")
	durationFlag(fs, &w.settle, "settle", 0, "with --wait-healthy: the new generation must stay SERVING this long (default 0: return at its first SERVING)")
}

// validate checks the flags; validateOnly is reload's --validate-only.
func (w *waitFlags) validate(validateOnly bool) error {
	if !w.enabled {
		for _, n := range []string{"wait-timeout", "settle"} {
			if w.fs.Changed(n) {
				return usagef("--%s needs --wait-healthy", n)
			}
		}
		return nil
	}
	switch {
	case validateOnly:
		return usagef("--wait-healthy and --validate-only are mutually exclusive (a dry run starts no generation)")
	case w.timeout <= 0:
		return usagef("--wait-timeout must be positive")
	case w.settle < 0:
		return usagef("--settle must not be negative")
	case w.settle >= w.timeout:
		return usagef("--settle (%s) must be shorter than --wait-timeout (%s)", w.settle, w.timeout)
	}
	return nil
}

// closestFlag is the flag of fs nearest to the unknown name (at most 2
// edits away), "" when none is: the "did you mean" of a mistyped flag.
// (cobra suggests commands, not flags.)
func closestFlag(fs *pflag.FlagSet, name string) string {
	best, bestDist := "", 3
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		if d := editDistance(name, f.Name); d < bestDist {
			best, bestDist = f.Name, d
		}
	})
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
