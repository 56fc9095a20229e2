package manager

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"github.com/plugincontrol/plugincontrol/internal/proc"
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
	// Notes are remarks of the stages that passed (for example that a
	// foreign plugin serves no reflection, so describe was skipped).
	Notes []string
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
		err = resourceErr("starting the candidate", err)
		ce := &CandidateError{Plugin: c.spec.Name, Stage: stage, Err: err, ActiveGeneration: c.activeGen, Report: clock.r}
		if inst != nil {
			if inst.pid == 0 && inst.cmd != nil && inst.cmd.Process != nil {
				inst.pid = inst.cmd.Process.Pid
			}
			clock.r.CandidatePID = inst.pid
			// A plugin that died on its own (say, right after its
			// handshake) makes the stage fail with a connection error;
			// the exit is the news. Give the exit a moment to show.
			died := stage > StageStart && inst.pid > 0 && proc.ExitedWithin(inst.pid, 100*time.Millisecond)
			inst.stop()
			if died {
				ce.Err = fmt.Errorf("the plugin process %s%s (%w)", inst.exitDescription(), lastWords(inst.stderr), err)
			}
			ce.StderrTail = inst.stderr.PluginTail()
		}
		log.Warn("candidate failed", slog.String("stage", stage.String()), slog.String("error", err.Error()))
		return nil, clock.r, ce
	}
	p := m.protocolFor(&c.spec)

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

	// 2. start (and checksum, inside go-plugin's Start). The socket
	// directory's name is a short random id, not the plugin's: every name
	// the validator accepts fits in a unix socket path.
	sockDir, err := os.MkdirTemp(m.sockRoot, "")
	if err != nil {
		return fail(StageStart, resourceErr("the plugin's socket directory", err), nil)
	}
	sink := proc.NewStderrSink(log)
	inst := &instance{name: c.spec.Name, spec: c.spec, proto: p, sockDir: sockDir, stderr: sink}
	inst.gen.Store(c.gen)
	inst.gone, inst.cancelGone = context.WithCancel(context.Background())
	genID := fmt.Sprintf("%s.g%d.%s", c.spec.Name, c.gen, filepath.Base(sockDir))
	inst.mark = m.mark(genID)
	inst.stopped = func(cgErr error) {
		if cgErr != nil {
			log.Error("the generation's cgroup could not be emptied and removed: processes of it may be left", slog.String("error", cgErr.Error()))
		}
		m.pids.remove(inst.pid)
		m.sweeper.stopped(inst.mark)
	}

	cmd := exec.Command(path, c.spec.Args...)
	cmd.Env = pluginEnv(c.spec.Env, sockDir, inst.mark)
	cmd.Dir = m.pluginDir
	// Without a reaper the plugin dies with this process (Pdeathsig); with
	// one, the reaper sees to it, and the process may exec itself in place.
	cmd.SysProcAttr = proc.SysProcAttr(m.reaper == nil)
	switch {
	case m.cgroups != nil:
		// Its own cgroup, which it starts in: a stop kills everything it
		// started, wherever it went.
		g, err := m.cgroups.New(genID, limitsOf(c.spec.Resources))
		if err != nil {
			removeSockDir(sockDir)
			return fail(StageStart, err, nil)
		}
		g.Into(cmd.SysProcAttr)
		inst.cgroup = g
	case c.spec.Resources.Set():
		removeSockDir(sockDir)
		return fail(StageStart, fmt.Errorf("resource limits need cgroup containment, and this manager contains plugins with %s", m.containmentName()), nil)
	}

	startTimeout := c.spec.StartTimeout
	if startTimeout == 0 {
		startTimeout = m.cfg.StartTimeout
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < startTimeout {
		startTimeout = max(time.Until(dl), time.Millisecond)
	}
	plugins, versioned := p.clientSets()
	cfg := &goplugin.ClientConfig{
		HandshakeConfig:  p.Handshake,
		Plugins:          plugins,
		VersionedPlugins: versioned,
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		StartTimeout:     startTimeout,
		SkipHostEnv:      true,
		Stderr:           sink.Pipe(),
		SyncStderr:       sink,
		SyncStdout:       io.Discard,
		Logger:           sink.Logger(),
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
	// Started and registered under the read lock of the subreaper's
	// sweep: it never takes a plugin just started for an orphan.
	m.pids.start.RLock()
	_, err = client.Start()
	if cmd.Process != nil {
		inst.pid = cmd.Process.Pid
		m.pids.add(inst.pid)
	}
	m.pids.start.RUnlock()
	if inst.cgroup != nil {
		inst.cgroup.Started()
	}
	if err != nil {
		// go-plugin may report the failure on stdout's EOF before it has
		// read the plugin's stderr, which classifyStart judges by: stopping
		// the candidate first waits for both pipes, so the tail is whole.
		inst.stop()
		stage, msg := classifyStart(err, sink, cmd.ProcessState)
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
	// From here on, a SIGKILLed daemon's reaper kills the plugin's group
	// (with cgroups, the reaper kills the whole subtree anyway), or, with
	// live restore, keeps it and its stdio.
	inst.pipes = proc.StdioPipes(inst.pid)
	if m.cgroups == nil {
		m.reaper.Add(inst.pid)
	}
	inst.reap = m.reaper
	if m.cfg.LiveRestore != nil && len(inst.pipes) == 2 {
		ends := proc.PipeEnds(inst.pipes)
		m.reaper.Hold(inst.mark, c.spec.Name, ends[inst.pipes[0]], ends[inst.pipes[1]])
	}
	if cfg.TLSConfig != nil {
		// The plugin's certificate, for a handover: go-plugin keeps it only
		// in a CertPool.
		cfg.TLSConfig.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) > 0 {
				der := cs.PeerCertificates[0].Raw
				inst.serverCert.Store(&der)
			}
			return nil
		}
	}
	clock.r.CandidatePID = inst.pid
	if c.spec.SHA256 != "" {
		clock.done(StageChecksum)
		inst.sha256 = strings.ToLower(c.spec.SHA256)
	}
	clock.done(StageStart)

	// 3. handshake: connect and dispense; reject a launch without a client
	// or adapter.
	conn, err := inst.connect(client.NegotiatedVersion())
	if err != nil {
		return fail(StageHandshake, err, inst)
	}
	if cfg.TLSConfig != nil {
		// go-plugin's AutoMTLS material, for a handover (it writes it into
		// the config it was given).
		inst.tls = cfg.TLSConfig
	}
	clock.done(StageHandshake)

	// 4. describe
	dctx, cancel := context.WithTimeout(ctx, m.cfg.DescribeTimeout)
	desc, err := p.describe(dctx, conn)
	cancel()
	if err != nil {
		return fail(StageDescribe, err, inst)
	}
	if c.expectName != "" && desc.Name != c.expectName {
		return fail(StageDescribe, fmt.Errorf("candidate describes itself as %q, but instance %q runs plugin %q; unload and load to change the plugin",
			desc.Name, c.spec.Name, c.expectName), inst)
	}
	inst.pluginName = desc.Name
	inst.version = desc.Version
	inst.services = desc.Services
	if len(desc.UnaryMethods) > 0 {
		inst.unary = make(map[string]bool, len(desc.UnaryMethods))
		for _, m := range desc.UnaryMethods {
			inst.unary[m] = true
		}
	}
	clock.r.Version = inst.version
	if desc.Note != "" {
		clock.r.Notes = append(clock.r.Notes, desc.Note)
	}
	clock.done(StageDescribe)

	// 5. ready
	readyTimeout := c.spec.ReadyTimeout
	if readyTimeout == 0 {
		readyTimeout = m.cfg.ReadyTimeout
	}
	rctx, cancel := context.WithTimeout(ctx, readyTimeout)
	err = p.ready(rctx, conn, c.spec.Config)
	cancel()
	if err != nil {
		return fail(StageReady, err, inst)
	}
	clock.done(StageReady)

	if digest != nil {
		if d := <-digest; d != "" {
			inst.sha256 = d
		}
	}
	inst.startedAt = time.Now()
	// What names the process for a handover (read once it is ready: the
	// stages above run as soon as the handshake is in).
	inst.startTicks, _ = proc.StartTicks(inst.pid)
	return inst, clock.r, nil
}

// pluginEnv is the plugin's whole environment: the spec's variables, the
// socket directory and the mark of the generation's processes
// (proc.MarkEnv). go-plugin adds its handshake variables; SkipHostEnv keeps
// the daemon's own environment (and its secrets) out.
func pluginEnv(env map[string]string, sockDir, mark string) []string {
	out := make([]string, 0, len(env)+2)
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return append(out, goplugin.EnvUnixSocketDir+"="+sockDir, proc.MarkEnv+"="+mark)
}

// classifyStart maps an error of go-plugin's Start to the stage that failed
// and a readable message. go-plugin reports failures as plain strings, so
// this matches its texts (go-plugin v1.8.0, pinned in go.mod; the tests
// with the misbehaving example plugins fail if they change).
func classifyStart(err error, sink *proc.StderrSink, ps *os.ProcessState) (Stage, string) {
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
		how := proc.ExitDescription(ps)
		if how == "" {
			how = "exited"
		}
		return StageStart, "the plugin process " + how + " before completing the handshake" + lastWords(sink)
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

// lastWords is ": " and the stderr line that best says why the plugin
// stopped, or "".
func lastWords(sink *proc.StderrSink) string {
	if w := sink.LastWords(); w != "" {
		return ": " + w
	}
	return ""
}

// connect is stage 3 of a started or attached generation: go-plugin's
// connection, the hidden conn plugin (exit context) and the protocol's
// dispensed value, validated.
func (i *instance) connect(protocolVersion int) (Conn, error) {
	rpc, err := i.client.Client()
	if err != nil {
		return Conn{}, fmt.Errorf("connect: %w", err)
	}
	gc, ok := rpc.(*goplugin.GRPCClient)
	if !ok || gc == nil || gc.Conn == nil {
		return Conn{}, fmt.Errorf("go-plugin returned %T, not a gRPC client", rpc)
	}
	hc, err := gc.Dispense(connPluginName)
	if err != nil {
		return Conn{}, fmt.Errorf("dispense: %w", err)
	}
	i.done, i.rpc = hc.(*hostConn).done, gc.Conn
	raw, err := gc.Dispense(i.proto.Dispense)
	if err != nil {
		return Conn{}, fmt.Errorf("dispense %q: %w", i.proto.Dispense, err)
	}
	if err := i.proto.validate(raw); err != nil {
		return Conn{}, err
	}
	i.dispensed = raw
	i.native = nativeClient(raw)
	i.protocolVersion = protocolVersion
	conn := Conn{Dispensed: raw, GRPC: gc.Conn, ProtocolVersion: protocolVersion}
	i.hooks = conn
	return conn, nil
}
