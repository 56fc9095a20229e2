//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/knadh/koanf/parsers/yaml"
	envprovider "github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"

	"github.com/plugincontrol/plugincontrol/client"
	"github.com/plugincontrol/plugincontrol/manager"
)

// config is plugind's configuration. Every field is a flag; the same names
// work as keys of the --config YAML file and, upper-cased with "-" as "_"
// and a PLUGIND_ prefix, as environment variables. Precedence: command line,
// then environment, then file, then the default.
type config struct {
	configFile      string
	pluginDir       string
	stateDir        string
	listen          []string
	logLevel        string
	logFormat       string
	loads           []string
	startTimeout    time.Duration
	drainTimeout    time.Duration
	bake            time.Duration
	callTimeout     time.Duration
	shutdownTimeout time.Duration
	authFile        string
	tlsCert         string
	tlsKey          string
	tlsClientCA     string
	insecureTCP     bool
	requirePin      bool
	autoMTLS        bool
	metricsListen   string
	maxPlugins      int
	maxWatchers     int
	maxMessageBytes int
	maxStreams      uint
	endpointDir     string
	directSocket    string
	auditRetention  int
	containment     manager.Containment
	readyTimeout    time.Duration
	panicStacks     bool
	watchLagLimit   time.Duration
	// bookmarkInterval and healthHistory tune WatchHealth.
	bookmarkInterval time.Duration
	healthHistory    int
	auditMaxAge      time.Duration
	endpointListen   string
	endpointMaxMsg   int
	// The fleet (package fleet): etcd endpoints, key prefix, this node.
	fleetEtcd     string
	fleetPrefix   string
	nodeName      string
	nodeLabels    []string
	fleetCA       string
	fleetCert     string
	fleetKey      string
	fleetLeaseTTL time.Duration
	// fleetUser and fleetPasswordFile log in to an etcd with auth enabled;
	// fleetController says whether this node may lead rollouts.
	fleetUser         string
	fleetPasswordFile string
	fleetController   bool
	fleetAdoptLocal   bool
	// fleetNodeRetention: how long the leader keeps a departed node's keys.
	fleetNodeRetention time.Duration
	// liveRestore keeps plugins running when plugind dies (see
	// manager.LiveRestore); checkConfig only checks the configuration
	// (a reload runs the new binary so).
	liveRestore bool
	checkConfig bool
}

// containmentFlag is --containment.
type containmentFlag struct{ v *manager.Containment }

func (c containmentFlag) String() string {
	if c.v == nil {
		return "auto"
	}
	switch *c.v {
	case manager.ContainSubreaper:
		return "subreaper"
	case manager.ContainProcessGroup:
		return "process-group"
	}
	return "auto"
}

func (c containmentFlag) Type() string { return "mode" }

func (c containmentFlag) Set(s string) error {
	switch s {
	case "auto":
		*c.v = manager.ContainAuto
	case "subreaper":
		*c.v = manager.ContainSubreaper
	case "process-group":
		*c.v = manager.ContainProcessGroup
	default:
		return fmt.Errorf("%q: want auto, subreaper or process-group", s)
	}
	return nil
}

const usage = `plugind: the plugincontrol daemon.

Runs plugin binaries from --plugin-dir under hashicorp/go-plugin, reloads them
with try-activate semantics, supervises them, and serves the control API
(plugincontrol.v1.PluginControlService, PluginGatewayService, grpc.health.v1
and server reflection) on every --listen address. Desired state and the audit
record live in <state-dir>/plugind.db; plugins loaded before a restart are
relaunched at start.

"plugind" and "plugind serve" run the daemon; "plugind store check" and
"plugind store recover" check and recover the store with plugind stopped.

Every flag can also be set in the environment as PLUGIND_<NAME> (upper
case, "-" as "_"), for example PLUGIND_LOG_LEVEL=debug, and every one but
--config in the --config YAML file (same name as the key). The command line wins over the
environment, which wins over the file. See deploy/plugind.yaml for an example file.
Every subcommand reads the same configuration: "plugind store check --config
/etc/plugind/plugind.yaml" checks the state directory the daemon uses.`

// moreHelp follows the flags in --help.
const moreHelp = `
Containment (--containment): the mode in use is in the "plugind started" log
line. auto: a cgroup v2 per plugin generation under plugind's own cgroup,
stopped with cgroup.kill (root with cgroup v2 mounted, or systemd
Delegate=yes); else subreaper: plugind is a child subreaper and kills what
stopped plugins left behind (told apart by PLUGINCONTROL_CONTAIN in their
environment). Either way a killed plugind's reaper and the next plugind on the
same --state-dir kill the leftovers (unless --live-restore: then it adopts
them).

Spec limits (InvalidArgument naming the field): name ^[a-z][a-z0-9-]{0,62}$;
binary 255 bytes; 64 args of 4 KiB; 128 env variables, names of 256 bytes,
values of 8 KiB; config 1 MiB; start_timeout and ready_timeout up to 10m
(defaults --start-timeout, --ready-timeout); health policy thresholds up to
1000, windows up to 24h; resources (cgroup mode with the controllers
delegated) memory_max_bytes at least 1 MiB, cpu_max "QUOTA PERIOD". All in
docs/api.md (PluginSpec).

systemd: with Type=notify, READY=1 is sent once the plugins are restored and
the listeners serve, RELOADING=1 then READY=1 around a reload, STOPPING=1 at
shutdown; with WatchdogSec, WATCHDOG=1 at half the interval while the
manager answers. --metrics-listen also serves /healthz (200 while serving)
and /readyz (200 once ready, until shutdown) for HTTP probes.

Signals: SIGHUP reloads plugind in place ("systemctl reload"): the binary at
its path (upgraded or not) checks the configuration, then plugind
re-executes it with the same pid, handing over its plugins (none restarts,
no call fails: connections wait in the sockets' backlog, streams end with
Unavailable and clients resume). A configuration or binary that fails the
check leaves plugind running unchanged, saying why. SIGTERM or SIGINT:
health goes NOT_SERVING, WatchHealth streams end with Unavailable, calls in
flight finish (up to --shutdown-timeout), plugins stop, then plugind exits
0. A crash (SIGKILL, an OOM kill) stops the plugins too, unless
--live-restore: then they keep running and the next plugind on the same
--state-dir adopts them.

Exit codes: 0 clean stop, 1 runtime failure, 2 bad flags or configuration,
3 the store file is damaged (see plugind store).
`

// bindFlags defines plugind's flags on fs, bound to cfg: the one place
// their names, defaults and help live.
func bindFlags(fs *pflag.FlagSet, cfg *config) {
	fs.StringVar(&cfg.configFile, "config", "", "YAML file with flag values (keys are flag names)")
	fs.StringVar(&cfg.pluginDir, "plugin-dir", "plugins", "directory plugin binaries are resolved in (nothing outside it is ever run)")
	fs.StringVar(&cfg.stateDir, "state-dir", client.DefaultStateDir(), "directory for the socket, the store and plugin sockets (created mode 0700)")
	fs.StringArrayVar(&cfg.listen, "listen", nil, "address to serve on, repeatable: unix://PATH or tcp://HOST:PORT (TCP needs --tls-cert, or loopback with --auth-file or --insecure-tcp) (default unix://<state-dir>/plugind.sock)")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "log format: text or json")
	fs.StringArrayVar(&cfg.loads, "load", nil, "load a plugin at start unless restored: NAME or NAME=BINARY (repeatable)")
	fs.DurationVar(&cfg.startTimeout, "start-timeout", 10*time.Second, "default launch+handshake timeout of a plugin")
	fs.DurationVar(&cfg.readyTimeout, "ready-timeout", 5*time.Second, "default timeout of a candidate's readiness probe (a spec's ready_timeout overrides it)")
	fs.DurationVar(&cfg.drainTimeout, "drain-timeout", 30*time.Second, "default time in-flight calls get to finish before a generation is stopped")
	fs.DurationVar(&cfg.bake, "bake", 0, "default bake period of a Reload that sets none: the previous generation's process is kept warm that long and plugind reverts to it if the new one becomes UNHEALTHY or crashes (0: no bake)")
	fs.DurationVar(&cfg.callTimeout, "call-timeout", 60*time.Second, "deadline of every call sent to a plugin when the caller set none shorter")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long SIGTERM waits for streams and calls before stopping hard, then as long again for plugins to stop")
	fs.StringVar(&cfg.authFile, "auth-file", "", "YAML file of bearer tokens and client-certificate identities with roles (mode 0600); unset: no authentication")
	fs.StringVar(&cfg.tlsCert, "tls-cert", "", "server certificate (PEM) for TCP listeners")
	fs.StringVar(&cfg.tlsKey, "tls-key", "", "server private key (PEM) for TCP listeners")
	fs.StringVar(&cfg.tlsClientCA, "tls-client-ca", "", "CA bundle (PEM): require and verify client certificates (mTLS)")
	fs.BoolVar(&cfg.insecureTCP, "insecure-tcp", false, "allow plaintext TCP on a loopback address without --auth-file (tests only)")
	fs.BoolVar(&cfg.requirePin, "require-pin", false, "refuse plugin specs without a sha256 pin")
	fs.BoolVar(&cfg.panicStacks, "expose-panic-stacks", false, "send the stack of a plugin's panic (PanicDetail.stack, with its source paths) to every Invoke caller; without it only callers with the operator role get it")
	fs.BoolVar(&cfg.autoMTLS, "auto-mtls", false, "use go-plugin's automatic mutual TLS between plugind and its plugins")
	fs.StringVar(&cfg.metricsListen, "metrics-listen", "", "HOST:PORT for Prometheus metrics over HTTP at /metrics (unset: off)")
	fs.IntVar(&cfg.maxPlugins, "max-plugins", 1000, "most plugins loaded at once")
	fs.IntVar(&cfg.maxWatchers, "max-watchers", 10000, "most WatchHealth streams at once")
	fs.DurationVar(&cfg.bookmarkInterval, "watch-bookmark-interval", 30*time.Second, "how often an idle WatchHealth stream gets a BOOKMARK event carrying the current revision")
	fs.IntVar(&cfg.healthHistory, "health-history", 4096, "health events kept for WatchHealth resumes (since_revision); older resume points get a reset snapshot")
	fs.DurationVar(&cfg.watchLagLimit, "watch-lag-limit", 30*time.Second, "end a WatchHealth stream (ResourceExhausted; clients resume from their last revision) whose oldest undelivered event has waited longer than this (0: never)")
	fs.IntVar(&cfg.maxMessageBytes, "max-message-bytes", 4<<20, "largest message received or sent (requests and responses)")
	fs.UintVar(&cfg.maxStreams, "max-streams-per-conn", 1024, "concurrent streams per client connection")
	cfg.containment = manager.ContainAuto
	fs.Var(containmentFlag{&cfg.containment}, "containment", "how plugin processes and everything they start are kept from outliving them: auto (a cgroup v2 per generation, killed with cgroup.kill, when plugind may create cgroups: root, or systemd Delegate=yes; else subreaper), subreaper (plugind is a child subreaper and kills what stopped plugins left) or process-group (the mode in use is in the \"plugind started\" log line: containment=...)")
	fs.IntVar(&cfg.auditRetention, "audit-retention", 100000, "audit records kept; older ones are removed, a checkpoint keeping the chain verifiable")
	fs.DurationVar(&cfg.auditMaxAge, "audit-max-age", 0, "also remove audit records older than this (0: keep by count only)")
	fs.StringVar(&cfg.endpointDir, "endpoint-dir", "", "directory of the plugin endpoints: each plugin's own gRPC API is served at DIR/NAME.sock (mode 0600), forwarded to its active generation (default <state-dir>/plugins)")
	fs.StringVar(&cfg.directSocket, "direct-socket", "", "unix socket where local callers that leased a plugin (PluginDirectService, the Go client's DialDirect) receive a connection of their own to its process (mode 0600, like the control socket; \"off\": no direct path) (default <state-dir>/direct.sock)")
	fs.StringVar(&cfg.endpointListen, "endpoint-listen", "", "also serve every plugin endpoint on tcp://HOST:PORT, the plugin named per call in the plugincontrol-plugin metadata key (same TLS and auth rules as --listen; unset: off)")
	fs.IntVar(&cfg.endpointMaxMsg, "endpoint-max-message-bytes", 16<<20, "largest message forwarded through a plugin endpoint, either way")
	fs.StringVar(&cfg.fleetEtcd, "fleet-etcd", "", "join a fleet: etcd endpoints (comma-separated URLs) holding the fleet's desired plugins; this node converges to those that select it (unset: no fleet)")
	fs.StringVar(&cfg.fleetPrefix, "fleet-prefix", "/plugincontrol", "prefix of the fleet's etcd keys")
	fs.StringVar(&cfg.nodeName, "node-name", "", "this node's name in the fleet (default: the host name)")
	fs.StringArrayVar(&cfg.nodeLabels, "node-label", nil, "a label K=V of this node, matched by fleet selectors (repeatable)")
	fs.StringVar(&cfg.fleetCA, "fleet-etcd-ca", "", "CA bundle (PEM) verifying the etcd servers")
	fs.StringVar(&cfg.fleetCert, "fleet-etcd-cert", "", "client certificate (PEM) for etcd")
	fs.StringVar(&cfg.fleetKey, "fleet-etcd-key", "", "client private key (PEM) for etcd")
	fs.BoolVar(&cfg.liveRestore, "live-restore", false, "keep plugins running when plugind dies (kill -9, an OOM kill, a crash): its reaper keeps draining their output, and the next plugind on this --state-dir adopts them (same pids and generations) instead of restarting them; a clean stop (SIGTERM) still stops them")
	fs.BoolVar(&cfg.checkConfig, "check-config", false, "check the configuration (flags, environment, --config file and the files it names), print what a reload needs to know as JSON and exit (0: fine, 2: not)")
	fs.StringVar(&cfg.fleetUser, "fleet-etcd-user", "", "etcd user to log in as (etcd with auth enabled); needs --fleet-etcd-password-file")
	fs.StringVar(&cfg.fleetPasswordFile, "fleet-etcd-password-file", "", "file holding the etcd user's password (its first line; keep it mode 0600)")
	fs.BoolVar(&cfg.fleetAdoptLocal, "fleet-adopt-local", false, "let a fleet plugin take over a plugin of this node's own with its name (reloading it to the fleet's spec); without it the node keeps its own and reports the fleet plugin as refused")
	fs.BoolVar(&cfg.fleetController, "fleet-controller", true, "let this node lead the fleet's rollouts (it campaigns for the election; false: it only follows what the leader writes)")
	fs.DurationVar(&cfg.fleetNodeRetention, "fleet-node-retention", 7*24*time.Hour, "how long a node may be gone from the fleet before the leading controller deletes its managed and detached keys (it writes them again from its state directory when it comes back); 0: never")
	fs.DurationVar(&cfg.fleetLeaseTTL, "fleet-lease-ttl", 10*time.Second, "TTL of this node's etcd lease: a node that stops renewing it leaves the fleet's node list after that long (whole seconds, at least 2s)")
}

// envPrefix prefixes the environment variable of every flag.
const envPrefix = "PLUGIND_"

// resolve completes cfg, whose flags were parsed into fs from the command
// line: every flag not set there takes its PLUGIND_<NAME> environment
// variable, else its key of the --config YAML file, else its default.
// koanf reads the environment and the file; each value is then set through
// the flag itself, so it is parsed and checked the one way, and an error
// names where it came from.
func resolve(fs *pflag.FlagSet, cfg *config, environ []string) error {
	isList := func(f *pflag.Flag) bool { return f.Value.Type() == "stringArray" }
	env := koanf.New(".")
	if err := env.Load(envprovider.Provider(".", envprovider.Opt{
		Prefix:      envPrefix,
		EnvironFunc: func() []string { return environ },
		TransformFunc: func(k, v string) (string, any) {
			name := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, envPrefix), "_", "-"))
			f := fs.Lookup(name)
			if f == nil || v == "" {
				return "", nil // not one of plugind's flags
			}
			if isList(f) {
				return name, strings.Split(v, ",")
			}
			return name, v
		},
	}), nil); err != nil {
		return err
	}
	conf := koanf.New(".")
	if cfg.configFile != "" {
		if err := conf.Load(file.Provider(cfg.configFile), yaml.Parser()); err != nil {
			return fmt.Errorf("--config %s: %w", cfg.configFile, err)
		}
		for _, k := range conf.Keys() {
			if f := fs.Lookup(k); f == nil || k == "config" {
				return fmt.Errorf("--config %s: unknown key %q (keys are plugind's flag names)", cfg.configFile, k)
			}
		}
	}
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || errs != nil {
			return
		}
		var (
			from string
			v    any
		)
		switch key := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_")); {
		case env.Exists(f.Name):
			from, v = key, env.Get(f.Name)
		case conf.Exists(f.Name) && f.Name != "config":
			from, v = "--config "+cfg.configFile+": "+f.Name, conf.Get(f.Name)
		default:
			return
		}
		items, err := values(v, isList(f))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", from, err))
			return
		}
		if isList(f) {
			// The environment or the file replaces the default list.
			_ = f.Value.(pflag.SliceValue).Replace(nil)
		}
		for _, it := range items {
			if err := f.Value.Set(it); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", from, err))
				return
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if len(cfg.listen) == 0 {
		cfg.listen = []string{"unix://" + cfg.stateDir + "/plugind.sock"}
	}
	if cfg.endpointDir == "" {
		cfg.endpointDir = filepath.Join(cfg.stateDir, "plugins")
	}
	switch cfg.directSocket {
	case "":
		cfg.directSocket = filepath.Join(cfg.stateDir, "direct.sock")
	case "off":
		cfg.directSocket = ""
	}
	return cfg.check()
}

// values are the flag values of v, a value from the file or the
// environment: a list only for a repeatable flag.
func values(v any, list bool) ([]string, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case []any:
		if !list {
			return nil, errors.New("takes one value, not a list")
		}
		out := make([]string, 0, len(x))
		for _, it := range x {
			out = append(out, scalar(it))
		}
		return out, nil
	case []string:
		return slices.Clone(x), nil
	case map[string]any:
		return nil, errors.New("takes a value, not a mapping")
	}
	return []string{scalar(v)}, nil
}

// scalar is a YAML scalar as a flag value: integers without a fraction.
func scalar(v any) string {
	if f, ok := v.(float64); ok && f == float64(int64(f)) {
		return fmt.Sprint(int64(f))
	}
	return fmt.Sprint(v)
}

// labels parses --node-label.
func (c *config) labels() (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range c.nodeLabels {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--node-label %q: want KEY=VALUE", kv)
		}
		out[k] = v
	}
	return out, nil
}

func (c *config) check() error {
	var errs []error
	if (c.tlsCert == "") != (c.tlsKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	if c.tlsClientCA != "" && c.tlsCert == "" {
		errs = append(errs, errors.New("--tls-client-ca needs --tls-cert and --tls-key"))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"start-timeout", c.startTimeout}, {"ready-timeout", c.readyTimeout}, {"drain-timeout", c.drainTimeout}, {"call-timeout", c.callTimeout}, {"shutdown-timeout", c.shutdownTimeout}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("--%s must be positive", d.name))
		}
	}
	if c.maxPlugins <= 0 || c.maxWatchers <= 0 || c.maxMessageBytes < 1024 || c.maxStreams < 16 {
		errs = append(errs, errors.New("--max-plugins and --max-watchers must be positive, --max-message-bytes at least 1024, --max-streams-per-conn at least 16"))
	}
	if c.auditRetention < 1 || c.auditMaxAge < 0 {
		errs = append(errs, errors.New("--audit-retention must be positive and --audit-max-age not negative"))
	}
	if c.bookmarkInterval <= 0 || c.healthHistory < 1 {
		errs = append(errs, errors.New("--watch-bookmark-interval must be positive and --health-history at least 1"))
	}
	if c.watchLagLimit < 0 {
		errs = append(errs, errors.New("--watch-lag-limit must not be negative (0: never)"))
	}
	if c.bake < 0 || c.bake > 24*time.Hour {
		errs = append(errs, errors.New("--bake must be within 0..24h"))
	}
	if c.endpointMaxMsg < 1024 {
		errs = append(errs, errors.New("--endpoint-max-message-bytes must be at least 1024"))
	}
	if c.fleetEtcd == "" {
		for _, f := range []struct{ name, v string }{{"node-name", c.nodeName}, {"fleet-etcd-ca", c.fleetCA}, {"fleet-etcd-cert", c.fleetCert}, {"fleet-etcd-key", c.fleetKey},
			{"fleet-etcd-user", c.fleetUser}, {"fleet-etcd-password-file", c.fleetPasswordFile}} {
			if f.v != "" {
				errs = append(errs, fmt.Errorf("--%s needs --fleet-etcd", f.name))
			}
		}
		if len(c.nodeLabels) > 0 {
			errs = append(errs, errors.New("--node-label needs --fleet-etcd"))
		}
	}
	if _, err := c.labels(); err != nil {
		errs = append(errs, err)
	}
	if (c.fleetCert == "") != (c.fleetKey == "") {
		errs = append(errs, errors.New("--fleet-etcd-cert and --fleet-etcd-key go together"))
	}
	if (c.fleetUser == "") != (c.fleetPasswordFile == "") {
		errs = append(errs, errors.New("--fleet-etcd-user and --fleet-etcd-password-file go together"))
	}
	if c.fleetUser != "" && c.fleetCA == "" {
		for _, ep := range plaintextRemote(c.fleetEtcd) {
			errs = append(errs, fmt.Errorf("--fleet-etcd-user: the password would cross the network in clear text to %s (use https:// endpoints with --fleet-etcd-ca, or a loopback etcd)", ep))
		}
	}
	if c.fleetNodeRetention < 0 {
		errs = append(errs, fmt.Errorf("--fleet-node-retention %s: want 0 (never) or more", c.fleetNodeRetention))
	}
	if c.fleetLeaseTTL < 2*time.Second || c.fleetLeaseTTL%time.Second != 0 {
		errs = append(errs, fmt.Errorf("--fleet-lease-ttl %s: want whole seconds, at least 2s", c.fleetLeaseTTL))
	}
	if c.endpointListen != "" && !strings.HasPrefix(c.endpointListen, "tcp://") {
		errs = append(errs, fmt.Errorf("--endpoint-listen %q: want tcp://HOST:PORT", c.endpointListen))
	}
	return errors.Join(errs...)
}

// parseConfig is the configuration a command line and an environment give
// (what "plugind ARGS" would run with): a reload checks the configuration
// it would re-execute with this way.
func parseConfig(args []string, environ []string) (config, error) {
	var cfg config
	fs := pflag.NewFlagSet("plugind", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	bindFlags(fs, &cfg)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 && fs.Arg(0) != "serve" {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return cfg, resolve(fs, &cfg, environ)
}

// plaintextRemote returns the endpoints of list (comma-separated URLs)
// that are neither TLS (https://, unixs://) nor on this machine (loopback
// hosts, unix sockets).
func plaintextRemote(list string) []string {
	var out []string
	for _, ep := range strings.Split(list, ",") {
		ep = strings.TrimSpace(ep)
		if ep == "" {
			continue
		}
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" {
			u, err = url.Parse("http://" + ep) // a bare HOST:PORT is plaintext
			if err != nil {
				out = append(out, ep)
				continue
			}
		}
		switch u.Scheme {
		case "https", "unixs", "unix":
			continue
		}
		if isLoopback(u.Hostname()) {
			continue
		}
		out = append(out, ep)
	}
	return out
}

// isLoopback reports whether host names this machine: "localhost" or a
// loopback address.
func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}
