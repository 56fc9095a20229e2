package manager

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	"github.com/plugincontrol/plugincontrol/plugin"
)

// StageTiming is how long one pipeline stage took.
type StageTiming struct {
	Stage    Stage
	Duration time.Duration
}

// Report describes one run of the candidate pipeline.
type Report struct {
	Stages        []StageTiming
	Total         time.Duration
	CandidatePID  int
	Version       string
	DrainedCalls  int
	DrainTimedOut bool
}

// stageClock records stage timings of one pipeline run.
type stageClock struct {
	r     *Report
	begin time.Time
	last  time.Time
}

func newStageClock() *stageClock {
	now := time.Now()
	return &stageClock{r: &Report{}, begin: now, last: now}
}

func (c *stageClock) done(s Stage) {
	now := time.Now()
	c.r.Stages = append(c.r.Stages, StageTiming{Stage: s, Duration: now.Sub(c.last)})
	c.last = now
	c.r.Total = now.Sub(c.begin)
}

// candidate is the input of one pipeline run.
type candidate struct {
	// action names the operation for metrics and logs.
	action string
	spec   Spec
	gen    uint64
	// expectName is the plugin name the active generation described itself
	// with; empty for a first Load.
	expectName string
	// activeGen is reported in a CandidateError (0: none).
	activeGen uint64
}

// launch runs stages 1-5 of the candidate pipeline: resolve, (checksum,)
// start, handshake, describe, ready. On success the caller owns the instance;
// on failure the candidate is already killed and its socket removed.
func (m *Manager) launch(ctx context.Context, c candidate) (inst *instance, rep *Report, err error) {
	if f := m.cfg.OnCandidate; f != nil {
		start := time.Now()
		defer func() {
			failed := StageUnknown
			var ce *CandidateError
			if errors.As(err, &ce) {
				failed = ce.Stage
			}
			f(c.spec.Name, c.action, failed, time.Since(start))
		}()
	}
	return m.runPipeline(ctx, c)
}

func (m *Manager) runPipeline(ctx context.Context, c candidate) (*instance, *Report, error) {
	clock := newStageClock()
	log := m.log.With(slog.String("plugin", c.spec.Name), slog.Uint64("generation", c.gen))
	fail := func(stage Stage, err error, inst *instance) (*instance, *Report, error) {
		ce := &CandidateError{Plugin: c.spec.Name, Stage: stage, Err: err, ActiveGeneration: c.activeGen, Report: clock.r}
		if inst != nil {
			if inst.pid == 0 && inst.cmd != nil && inst.cmd.Process != nil {
				inst.pid = inst.cmd.Process.Pid
			}
			clock.r.CandidatePID = inst.pid
			inst.stop()
			ce.StderrTail = inst.stderr.Tail()
		}
		log.Warn("candidate failed", slog.String("stage", stage.String()), slog.String("error", err.Error()))
		return nil, clock.r, ce
	}

	// 1. resolve
	path, err := resolveBinary(m.pluginDir, c.spec.Binary)
	if err != nil {
		return fail(StageResolve, err, nil)
	}
	clock.done(StageResolve)
	if err := ctx.Err(); err != nil {
		return fail(StageResolve, err, nil)
	}
	// Unpinned: the digest of what was resolved is reported in the status.
	// Hash it while the plugin starts rather than after it is ready (cached
	// by file identity, so an unchanged binary is hashed once).
	var digest chan string
	if c.spec.SHA256 == "" {
		digest = make(chan string, 1)
		go func() {
			d, _ := m.digests.digest(path)
			digest <- d
		}()
	}

	// 2. start (and checksum, inside go-plugin's Start)
	sockDir, err := os.MkdirTemp(m.sockRoot, c.spec.Name+"-")
	if err != nil {
		return fail(StageStart, fmt.Errorf("socket directory: %w", err), nil)
	}
	sink := newStderrSink(log)
	inst := &instance{name: c.spec.Name, gen: c.gen, spec: c.spec, sockDir: sockDir, stderr: sink}

	cmd := exec.Command(path, c.spec.Args...)
	cmd.Env = pluginEnv(c.spec.Env, sockDir)
	cmd.Dir = m.pluginDir
	// Own process group (so a kill reaches the plugin's children) and
	// Pdeathsig (so the plugin dies with the daemon: go-plugin sets neither).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	startTimeout := c.spec.StartTimeout
	if startTimeout == 0 {
		startTimeout = m.cfg.StartTimeout
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < startTimeout {
		startTimeout = max(time.Until(dl), time.Millisecond)
	}
	cfg := &goplugin.ClientConfig{
		HandshakeConfig:  plugin.HandshakeConfig(),
		Plugins:          goplugin.PluginSet{plugin.DispenseName: &plugin.GRPCPlugin{}},
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		StartTimeout:     startTimeout,
		SkipHostEnv:      true,
		Stderr:           sink,
		SyncStderr:       sink,
		SyncStdout:       io.Discard,
		Logger:           hclog.New(&hclog.LoggerOptions{Output: io.Discard, Level: hclog.Off}),
		AutoMTLS:         m.cfg.AutoMTLS,
	}
	if c.spec.SHA256 != "" {
		sum, _ := hex.DecodeString(c.spec.SHA256)
		// A fresh SecureConfig per start: its hash is never reset.
		cfg.SecureConfig = &goplugin.SecureConfig{Checksum: sum, Hash: sha256.New()}
	}
	client := goplugin.NewClient(cfg)
	inst.client = client
	inst.cmd = cmd
	if _, err := client.Start(); err != nil {
		// go-plugin may report the failure on stdout's EOF before it has
		// read the plugin's stderr, which classifyStart judges by: stopping
		// the candidate first waits for both pipes, so the tail is whole.
		if cmd.Process != nil {
			inst.pid = cmd.Process.Pid
		}
		inst.stop()
		stage, msg := classifyStart(err, sink)
		switch {
		case stage == StageChecksum:
			err = fmt.Errorf("binary %q does not match the sha256 pin %s", c.spec.Binary, c.spec.SHA256)
		case msg != "":
			err = errors.New(msg)
		}
		return fail(stage, err, inst)
	}
	if rc := client.ReattachConfig(); rc != nil {
		inst.pid = rc.Pid
	}
	// From here on, a SIGKILLed daemon's reaper kills the plugin's group.
	m.reaper.add(inst.pid)
	inst.reap = m.reaper
	inst.pipes = stdioPipes(inst.pid)
	clock.r.CandidatePID = inst.pid
	if c.spec.SHA256 != "" {
		clock.done(StageChecksum)
		inst.sha256 = strings.ToLower(c.spec.SHA256)
	}
	clock.done(StageStart)

	// 3. handshake: connect and dispense; reject a launch without a client
	// or adapter.
	rpc, err := client.Client()
	if err != nil {
		return fail(StageHandshake, fmt.Errorf("connect: %w", err), inst)
	}
	if rpc == nil {
		return fail(StageHandshake, errors.New("go-plugin returned no client"), inst)
	}
	raw, err := rpc.Dispense(plugin.DispenseName)
	if err != nil {
		return fail(StageHandshake, fmt.Errorf("dispense: %w", err), inst)
	}
	conn, ok := raw.(*plugin.Conn)
	if !ok || conn == nil || conn.Client == nil {
		return fail(StageHandshake, fmt.Errorf("dispense returned %T, not a plugin connection", raw), inst)
	}
	inst.conn = conn
	clock.done(StageHandshake)

	// 4. describe
	dctx, cancel := context.WithTimeout(ctx, m.cfg.DescribeTimeout)
	desc, err := conn.Client.Describe(dctx, &pluginv1.DescribeRequest{})
	cancel()
	if err != nil {
		return fail(StageDescribe, fmt.Errorf("Describe: %w", err), inst)
	}
	if desc.GetProtocol() != plugin.Protocol {
		return fail(StageDescribe, fmt.Errorf("plugin speaks protocol %d, this daemon supports %d", desc.GetProtocol(), plugin.Protocol), inst)
	}
	if desc.GetName() == "" {
		return fail(StageDescribe, errors.New("plugin describes itself with an empty name"), inst)
	}
	if c.expectName != "" && desc.GetName() != c.expectName {
		return fail(StageDescribe, fmt.Errorf("candidate describes itself as %q, but instance %q runs plugin %q; unload and load to change the plugin",
			desc.GetName(), c.spec.Name, c.expectName), inst)
	}
	inst.pluginName = desc.GetName()
	inst.version = desc.GetVersion()
	clock.r.Version = inst.version
	clock.done(StageDescribe)

	// 5. ready
	rctx, cancel := context.WithTimeout(ctx, m.cfg.ReadyTimeout)
	ready, err := conn.Client.Ready(rctx, &pluginv1.ReadyRequest{Config: c.spec.Config})
	cancel()
	if err != nil {
		return fail(StageReady, fmt.Errorf("Ready: %w", err), inst)
	}
	if !ready.GetReady() {
		reason := ready.GetReason()
		if reason == "" {
			reason = "no reason given"
		}
		return fail(StageReady, fmt.Errorf("plugin reports not ready: %s", reason), inst)
	}
	clock.done(StageReady)

	if digest != nil {
		if d := <-digest; d != "" {
			inst.sha256 = d
		}
	}
	inst.startedAt = time.Now()
	return inst, clock.r, nil
}

// pluginEnv is the plugin's whole environment: the spec's variables and the
// socket directory. go-plugin adds its handshake variables; SkipHostEnv keeps
// the daemon's own environment (and its secrets) out.
func pluginEnv(env map[string]string, sockDir string) []string {
	out := make([]string, 0, len(env)+1)
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return append(out, goplugin.EnvUnixSocketDir+"="+sockDir)
}

// classifyStart maps an error of go-plugin's Start to the stage that failed
// and a readable message. go-plugin reports failures as plain strings, so
// this matches its texts (go-plugin v1.8.0, pinned in go.mod; the tests
// with the misbehaving example plugins fail if they change).
func classifyStart(err error, sink *stderrSink) (Stage, string) {
	full := err.Error()
	msg := strings.ToLower(full)
	// Drop go-plugin's generic troubleshooting notes.
	if i := strings.Index(full, "\nThis usually means"); i >= 0 {
		full = full[:i]
	}
	switch {
	case errors.Is(err, goplugin.ErrChecksumsDoNotMatch) || strings.Contains(msg, "error verifying checksum"):
		return StageChecksum, full
	case strings.Contains(msg, "exited before we could connect") || strings.Contains(msg, "failed to read any lines from plugin's stdout"):
		// The process exited before its handshake line. A go-plugin plugin
		// given the wrong cookie says so on stderr and exits: that is a
		// handshake failure, not a crash at start.
		if strings.Contains(sink.Tail(), "This binary is a plugin") {
			return StageHandshake, "plugin rejected the handshake cookie (built for another host or plugin system) and exited"
		}
		return StageStart, "process exited before completing the handshake (see stderr_tail)"
	case strings.Contains(msg, "timeout while waiting for plugin to start"):
		return StageStart, "timeout while waiting for the plugin's handshake (start_timeout)"
	case strings.Contains(msg, "unrecognized remote plugin message"):
		return StageHandshake, strings.SplitN(full, "\n", 2)[0] + " (the plugin wrote to stdout before its handshake line)"
	case strings.Contains(msg, "incompatible api version"),
		strings.Contains(msg, "incompatible core api version"),
		strings.Contains(msg, "error parsing"),
		strings.Contains(msg, "unsupported plugin protocol"):
		return StageHandshake, strings.SplitN(full, "\n", 2)[0]
	default:
		return StageStart, full
	}
}
