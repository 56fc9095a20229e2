package record

import (
	"encoding/hex"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Spec is the desired state of one plugin instance. The zero values of the
// optional fields take the defaults documented on each field.
type Spec struct {
	// Name is the instance name: ^[a-z][a-z0-9-]{0,62}$.
	Name string
	// Binary is a path relative to the plugin directory. Absolute paths and
	// ".." elements are rejected here; symlinks leaving the directory are
	// rejected when the binary is resolved, at every start.
	Binary string
	// Args are passed to the binary.
	Args []string
	// Env is the plugin's whole environment besides go-plugin's handshake
	// variables: nothing of the daemon's environment is inherited.
	Env map[string]string
	// SHA256 optionally pins the binary (hex); verified at every start.
	SHA256 string
	// Config is handed to the plugin's Ready probe.
	Config []byte
	// StartTimeout bounds launch and handshake; 0 means Config.StartTimeout.
	StartTimeout time.Duration
	// Policy tunes panic tracking and restarts.
	Policy HealthPolicy
	// Handshake, when set, makes the plugin a foreign go-plugin gRPC plugin
	// launched with GRPCProtocol and this handshake; nil means the native
	// contract (plugin.Serve). It is part of the durable spec.
	Handshake *Handshake
	// ReadyService is the grpc.health.v1 service probed as the ready stage
	// of a foreign plugin ("" means DefaultReadyService, "plugin"). Only
	// with Handshake.
	ReadyService string
	// Resources limit the plugin's processes through its cgroup; they
	// need Config.Containment ContainAuto on a host that gives plugind the
	// controllers (a candidate fails at stage start otherwise).
	Resources Resources
	// ReadyTimeout bounds the ready stage of a candidate (its readiness
	// probe); 0 means Config.ReadyTimeout.
	ReadyTimeout time.Duration
}

// Action is what happens when a plugin becomes unhealthy.
type Action int

// Actions on unhealthy.
const (
	ActionNone Action = iota
	ActionRestart
	ActionStop
)

func (a Action) String() string {
	switch a {
	case ActionNone:
		return "none"
	case ActionRestart:
		return "restart"
	case ActionStop:
		return "stop"
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// HealthPolicy tunes failure tracking, liveness probing and restarts; zero
// fields take defaults.
type HealthPolicy struct {
	// PanicThreshold panics or crashes of a generation within PanicWindow
	// make the plugin UNHEALTHY (default 3): the rule of every version so
	// far, kept beside the per-class limits.
	PanicThreshold int
	// PanicWindow is its sliding window (default 1m), and the default
	// window of every failure class.
	PanicWindow time.Duration
	// Panics, Crashes, Hangs, Timeouts and StartFailures judge each failure
	// class on its own: Threshold failures within Window make the plugin
	// UNHEALTHY (for crashes and failed restarts: the supervisor stops
	// restarting it). A zero Threshold counts the class without judging
	// it, except Hangs (default 1: a hang is already LivenessFailures
	// failed probes in a row); a zero Window is PanicWindow.
	Panics, Crashes, Hangs, Timeouts, StartFailures FailureLimit
	// LivenessInterval, when set, probes the serving generation that often,
	// each probe bounded by the interval (at most the manager's
	// ReadyTimeout), never two at once (default 0: off). One probe in ten
	// calls the plugin (native plugins: Ready; foreign ones: grpc.health.v1
	// Check of the ready service), and so does every probe after a failed
	// call; the others read the process's state (stopped or gone fails).
	LivenessInterval time.Duration
	// LivenessFailures probes in a row that fail make a hang failure
	// (default 3).
	LivenessFailures int
	// RestartLimit restarts within RestartPeriod are allowed (default 5).
	RestartLimit int
	// RestartPeriod (default 1m).
	RestartPeriod time.Duration
	// BackoffInitial is the first restart delay (default 100ms).
	BackoffInitial time.Duration
	// BackoffMax caps the restart delay (default 10s).
	BackoffMax time.Duration
	// OnUnhealthy runs once per transition to UNHEALTHY.
	OnUnhealthy Action
}

// FailureLimit judges one failure class: Threshold failures within Window.
type FailureLimit struct {
	// Threshold failures make the plugin UNHEALTHY; 0: counted only.
	Threshold int
	// Window is the sliding window; 0: HealthPolicy.PanicWindow.
	Window time.Duration
}

// Limit returns the limit of class c; a zero Window is PanicWindow.
func (p *HealthPolicy) Limit(c FailureClass) FailureLimit {
	var l FailureLimit
	switch c {
	case FailurePanic:
		l = p.Panics
	case FailureCrash:
		l = p.Crashes
	case FailureHang:
		l = p.Hangs
	case FailureTimeout:
		l = p.Timeouts
	case FailureStart:
		l = p.StartFailures
	}
	if l.Window == 0 {
		l.Window = p.PanicWindow
	}
	return l
}

// MarkEnv is the variable plugind sets in every plugin process to mark it
// as the plugin's (internal/proc.MarkEnv: a manager test pins they agree);
// a spec may not set it.
const MarkEnv = "PLUGINCONTROL_CONTAIN"

// Limits on spec fields, so a request cannot make the daemon hold or pass on
// unbounded data.
const (
	maxArgs      = 64
	maxArgLen    = 4096
	maxEnv       = 128
	maxEnvLen    = 8192
	maxEnvKeyLen = 256
	maxConfigLen = 1 << 20
	maxBinaryLen = 255
	// MaxTimeout bounds StartTimeout, ReadyTimeout and a reload's drain.
	MaxTimeout = 10 * time.Minute
	// MaxFailureLimit bounds every threshold and limit of a HealthPolicy.
	MaxFailureLimit = 1000
)

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ValidateName checks an instance name.
func ValidateName(name string) error {
	if !ValidName(name) {
		return &InvalidError{Field: "name", Reason: fmt.Sprintf("%q must match ^[a-z][a-z0-9-]{0,62}$", truncate(name, 80))}
	}
	return nil
}

// nameRE is the rule validName implements (a fuzz test checks they agree).
var nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

// ValidName reports whether name matches ^[a-z][a-z0-9-]{0,62}$. It runs on
// every Invoke (lookup), so it is a loop rather than a regexp (~10x faster).
func ValidName(name string) bool {
	if len(name) == 0 || len(name) > 63 || name[0] < 'a' || name[0] > 'z' {
		return false
	}
	for i := 1; i < len(name); i++ {
		if c := name[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// Validate checks every field of s without touching the filesystem. It
// returns an *InvalidError naming the first bad field.
func (s *Spec) Validate() error {
	if err := ValidateName(s.Name); err != nil {
		return err
	}
	if err := ValidateBinary(s.Binary); err != nil {
		return err
	}
	if len(s.Args) > maxArgs {
		return &InvalidError{Field: "args", Reason: fmt.Sprintf("%d arguments, at most %d allowed", len(s.Args), maxArgs)}
	}
	for i, a := range s.Args {
		if len(a) > maxArgLen || strings.ContainsRune(a, 0) || !utf8.ValidString(a) {
			return &InvalidError{Field: fmt.Sprintf("args[%d]", i), Reason: fmt.Sprintf("must be valid UTF-8 without NUL, at most %d bytes", maxArgLen)}
		}
	}
	if len(s.Env) > maxEnv {
		return &InvalidError{Field: "env", Reason: fmt.Sprintf("%d variables, at most %d allowed", len(s.Env), maxEnv)}
	}
	for k, v := range s.Env {
		if len(k) > maxEnvKeyLen || !envKeyRE.MatchString(k) {
			return &InvalidError{Field: "env", Reason: fmt.Sprintf("variable name %q must match ^[A-Za-z_][A-Za-z0-9_]*$, at most %d bytes", truncate(k, 80), maxEnvKeyLen)}
		}
		if strings.HasPrefix(k, "PLUGIN_") {
			return &InvalidError{Field: "env", Reason: fmt.Sprintf("variable %q: the PLUGIN_ prefix is reserved for go-plugin's handshake", k)}
		}
		if k == MarkEnv {
			return &InvalidError{Field: "env", Reason: fmt.Sprintf("variable %q is set by plugind (it marks the plugin's processes)", k)}
		}
		if len(v) > maxEnvLen || strings.ContainsRune(v, 0) {
			return &InvalidError{Field: "env", Reason: fmt.Sprintf("value of %q must be at most %d bytes without NUL", k, maxEnvLen)}
		}
	}
	if s.SHA256 != "" {
		b, err := hex.DecodeString(s.SHA256)
		if err != nil || len(b) != 32 {
			return &InvalidError{Field: "sha256", Reason: fmt.Sprintf("%q is not 64 hex digits", truncate(s.SHA256, 80))}
		}
	}
	if len(s.Config) > maxConfigLen {
		return &InvalidError{Field: "config", Reason: fmt.Sprintf("%d bytes, at most %d allowed", len(s.Config), maxConfigLen)}
	}
	if s.StartTimeout < 0 || s.StartTimeout > MaxTimeout {
		return &InvalidError{Field: "start_timeout", Reason: fmt.Sprintf("%v is outside 0..%v", s.StartTimeout, MaxTimeout)}
	}
	if s.ReadyTimeout < 0 || s.ReadyTimeout > MaxTimeout {
		return &InvalidError{Field: "ready_timeout", Reason: fmt.Sprintf("%v is outside 0..%v", s.ReadyTimeout, MaxTimeout)}
	}
	if err := s.Resources.validate(); err != nil {
		return err
	}
	if err := s.validateProtocol(); err != nil {
		return err
	}
	return s.Policy.validate()
}

// maxServiceLen bounds ReadyService.
const maxServiceLen = 255

// serviceRE is what a grpc.health.v1 service name may look like here: a
// (possibly empty) dotted name, or go-plugin's "plugin".
var serviceRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*(/[A-Za-z0-9_.-]+)*$`)

// validateProtocol checks the fields that choose how the plugin is spoken
// to.
func (s *Spec) validateProtocol() error {
	if s.Handshake == nil {
		if s.ReadyService != "" {
			return &InvalidError{Field: "ready_service", Reason: "only foreign plugins (with a handshake) are probed through grpc.health.v1; native plugins answer Ready"}
		}
		return nil
	}
	if err := s.Handshake.validate(); err != nil {
		return err
	}
	if _, ok := s.Env[s.Handshake.MagicCookieKey]; ok {
		return &InvalidError{Field: "env", Reason: fmt.Sprintf("variable %q is the handshake's magic cookie key: go-plugin sets it", s.Handshake.MagicCookieKey)}
	}
	if len(s.Config) > 0 {
		return &InvalidError{Field: "config", Reason: "only native plugins receive config (in their Ready probe); pass settings to a foreign plugin in args or env"}
	}
	if len(s.ReadyService) > maxServiceLen || (s.ReadyService != "" && !serviceRE.MatchString(s.ReadyService)) {
		return &InvalidError{Field: "ready_service", Reason: fmt.Sprintf("%q is not a gRPC service name (at most %d bytes)", truncate(s.ReadyService, 80), maxServiceLen)}
	}
	return nil
}

func (p *HealthPolicy) validate() error {
	switch {
	case p.PanicThreshold < 0 || p.PanicThreshold > MaxFailureLimit:
		return &InvalidError{Field: "health_policy.panic_threshold", Reason: fmt.Sprintf("%d is outside 0..%d", p.PanicThreshold, MaxFailureLimit)}
	case p.RestartLimit < 0 || p.RestartLimit > MaxFailureLimit:
		return &InvalidError{Field: "health_policy.restart_limit", Reason: fmt.Sprintf("%d is outside 0..%d", p.RestartLimit, MaxFailureLimit)}
	case p.OnUnhealthy < ActionNone || p.OnUnhealthy > ActionStop:
		return &InvalidError{Field: "health_policy.unhealthy_action", Reason: fmt.Sprintf("unknown action %d", p.OnUnhealthy)}
	case p.LivenessFailures < 0 || p.LivenessFailures > MaxFailureLimit:
		return &InvalidError{Field: "health_policy.liveness_failures", Reason: fmt.Sprintf("%d is outside 0..%d", p.LivenessFailures, MaxFailureLimit)}
	case p.LivenessInterval != 0 && (p.LivenessInterval < MinLiveness || p.LivenessInterval > 24*time.Hour):
		return &InvalidError{Field: "health_policy.liveness_interval", Reason: fmt.Sprintf("%v is outside %v..24h (0: off)", p.LivenessInterval, MinLiveness)}
	}
	for _, l := range []struct {
		field string
		l     FailureLimit
	}{{"panics", p.Panics}, {"crashes", p.Crashes}, {"hangs", p.Hangs}, {"timeouts", p.Timeouts}, {"start_failures", p.StartFailures}} {
		if l.l.Threshold < 0 || l.l.Threshold > MaxFailureLimit {
			return &InvalidError{Field: "health_policy." + l.field + ".threshold", Reason: fmt.Sprintf("%d is outside 0..%d", l.l.Threshold, MaxFailureLimit)}
		}
		if l.l.Window < 0 || l.l.Window > 24*time.Hour {
			return &InvalidError{Field: "health_policy." + l.field + ".window", Reason: fmt.Sprintf("%v is outside 0..24h", l.l.Window)}
		}
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{
		{"panic_window", p.PanicWindow}, {"restart_period", p.RestartPeriod},
		{"backoff_initial", p.BackoffInitial}, {"backoff_max", p.BackoffMax},
	} {
		if d.v < 0 || d.v > 24*time.Hour {
			return &InvalidError{Field: "health_policy." + d.field, Reason: fmt.Sprintf("%v is outside 0..24h", d.v)}
		}
	}
	return nil
}

// WithDefaults returns p with zero fields set to their defaults.
func (p HealthPolicy) WithDefaults() HealthPolicy {
	if p.PanicThreshold == 0 {
		p.PanicThreshold = 3
	}
	if p.PanicWindow == 0 {
		p.PanicWindow = time.Minute
	}
	if p.RestartLimit == 0 {
		p.RestartLimit = 5
	}
	if p.RestartPeriod == 0 {
		p.RestartPeriod = time.Minute
	}
	if p.BackoffInitial == 0 {
		p.BackoffInitial = 100 * time.Millisecond
	}
	if p.BackoffMax == 0 {
		p.BackoffMax = 10 * time.Second
	}
	if p.Hangs.Threshold == 0 {
		p.Hangs.Threshold = 1
	}
	if p.LivenessFailures == 0 {
		p.LivenessFailures = 3
	}
	return p
}

// MinLiveness is the shortest liveness interval.
const MinLiveness = 10 * time.Millisecond

// ValidateBinary checks the syntax of a binary name: a relative path that
// stays inside the plugin directory lexically. Symlinks are checked when the
// binary is resolved (by the manager, at every start).
func ValidateBinary(b string) error {
	switch {
	case b == "":
		return &InvalidError{Field: "binary", Reason: "required: the name of a file in the plugin directory"}
	case len(b) > maxBinaryLen:
		return &InvalidError{Field: "binary", Reason: fmt.Sprintf("longer than %d bytes", maxBinaryLen)}
	case !utf8.ValidString(b) || strings.ContainsAny(b, "\x00\\"):
		return &InvalidError{Field: "binary", Reason: fmt.Sprintf("%q contains invalid characters", truncate(b, 80))}
	case filepath.IsAbs(b):
		return &InvalidError{Field: "binary", Reason: fmt.Sprintf("%q is an absolute path; name a file inside the plugin directory", b)}
	}
	for _, el := range strings.Split(b, "/") {
		if el == ".." {
			return &InvalidError{Field: "binary", Reason: fmt.Sprintf("%q contains \"..\"; name a file inside the plugin directory", b)}
		}
	}
	if filepath.Clean(b) != b {
		return &InvalidError{Field: "binary", Reason: fmt.Sprintf("%q is not a clean path (want %q)", b, filepath.Clean(b))}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Clone returns a deep copy, so callers cannot mutate a stored spec.
func (s Spec) Clone() Spec {
	s.Args = append([]string(nil), s.Args...)
	if s.Env != nil {
		env := make(map[string]string, len(s.Env))
		for k, v := range s.Env {
			env[k] = v
		}
		s.Env = env
	}
	s.Config = append([]byte(nil), s.Config...)
	if s.Handshake != nil {
		h := *s.Handshake
		s.Handshake = &h
	}
	return s
}

// Handshake is a foreign plugin's go-plugin handshake (PluginSpec.handshake):
// the plugin is launched with GRPCProtocol.
type Handshake struct {
	// ProtocolVersion is the application protocol version the plugin
	// speaks (go-plugin's HandshakeConfig.ProtocolVersion), at least 1.
	ProtocolVersion uint
	// MagicCookieKey is the environment variable carrying the cookie.
	MagicCookieKey string
	// MagicCookieValue is the cookie.
	MagicCookieValue string
}

func (h *Handshake) validate() error {
	switch {
	case h.ProtocolVersion < 1 || h.ProtocolVersion > 1<<16:
		return &InvalidError{Field: "handshake.protocol_version", Reason: fmt.Sprintf("%d is outside 1..65536 (the plugin's go-plugin ProtocolVersion)", h.ProtocolVersion)}
	case !envKeyRE.MatchString(h.MagicCookieKey):
		return &InvalidError{Field: "handshake.magic_cookie_key", Reason: fmt.Sprintf("%q must be an environment variable name (^[A-Za-z_][A-Za-z0-9_]*$)", truncate(h.MagicCookieKey, 80))}
	case strings.HasPrefix(h.MagicCookieKey, "PLUGIN_"):
		return &InvalidError{Field: "handshake.magic_cookie_key", Reason: fmt.Sprintf("%q: the PLUGIN_ prefix is reserved for go-plugin's own variables", h.MagicCookieKey)}
	case h.MagicCookieValue == "" || len(h.MagicCookieValue) > maxEnvLen || strings.ContainsRune(h.MagicCookieValue, 0):
		return &InvalidError{Field: "handshake.magic_cookie_value", Reason: fmt.Sprintf("required, at most %d bytes without NUL", maxEnvLen)}
	}
	return nil
}

// Resources are resource limits of a plugin's processes, enforced by its
// cgroup (Containment ContainAuto on a host that delegates the
// controllers); zero fields are not limited.
type Resources struct {
	// MemoryMax caps memory in bytes (memory.max).
	MemoryMax int64
	// PidsMax caps the number of processes (pids.max).
	PidsMax int64
	// CPUMax caps CPU as cpu.max does: "QUOTA PERIOD" in microseconds
	// ("50000 100000" is half a CPU).
	CPUMax string
}

// Set reports whether any limit is set.
func (r Resources) Set() bool { return r != Resources{} }

func (r Resources) validate() error {
	switch {
	case r.MemoryMax < 0 || (r.MemoryMax > 0 && r.MemoryMax < 1<<20):
		return &InvalidError{Field: "resources.memory_max_bytes", Reason: fmt.Sprintf("%d: want 0 (unlimited) or at least 1 MiB", r.MemoryMax)}
	case r.PidsMax < 0:
		return &InvalidError{Field: "resources.pids_max", Reason: fmt.Sprintf("%d is negative", r.PidsMax)}
	case r.CPUMax != "":
		f := strings.Fields(r.CPUMax)
		var quota, period uint64
		var err1, err2 error
		if len(f) == 2 {
			quota, err1 = strconv.ParseUint(f[0], 10, 32)
			period, err2 = strconv.ParseUint(f[1], 10, 32)
		}
		if len(f) != 2 || err1 != nil || err2 != nil || quota < 1000 || period < 1000 || period > 1000000 {
			return &InvalidError{Field: "resources.cpu_max", Reason: fmt.Sprintf("%q: want \"QUOTA PERIOD\" in microseconds (quota at least 1000, period 1000..1000000), such as \"50000 100000\" for half a CPU", truncate(r.CPUMax, 40))}
		}
	}
	return nil
}
