package manager

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/launch"
	"github.com/plugincontrol/plugincontrol/internal/proc"
)

// inherited returns the handover of plugin name (Config.Inherit), or nil.
func (m *Manager) inherited(name string) *PluginHandover {
	if h := m.cfg.Inherit; h != nil {
		return h.Plugins[name]
	}
	return nil
}

// attached ends a takeover (entry.attaching): calls waiting for it go on.
func (e *entry) attached() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.attaching != nil {
		close(e.attaching)
		e.attaching = nil
	}
}

// adoptOne takes over the running process a handover names for e: attach,
// connect, ready probe. When that fails (the process is gone, its pid was
// reused, it does not answer), the failure is audited as reattach-failed
// and the plugin is relaunched, as a restart would. The caller holds e's
// operation lock.
func (m *Manager) adoptOne(ctx context.Context, e *entry, r PluginRecord, p *PluginHandover) (adopted []*instance) {
	spec := e.spec
	inst, err := m.attach(ctx, e.name, p.Active, spec)
	if err == nil && p.Active.Generation != e.generation && !p.Full {
		// A crash's record is written after the store's: a mismatch means
		// the daemon died between the two, and the store says what should
		// run.
		inst.stop()
		inst, err = nil, fmt.Errorf("the running process is generation %d, the store's is %d", p.Active.Generation, e.generation)
	}
	if err != nil {
		why := fmt.Sprintf("generation %d (pid %d) could not be taken over: %v", p.Active.Generation, p.Active.PID, err)
		m.log.Warn("plugin not adopted: relaunching it", slog.String("plugin", e.name), slog.String("reason", why))
		m.auditFailure(ctx, "reattach-failed", e.name, e.generation, nil, spec, fmt.Errorf("%s", why))
		e.mu.Lock()
		if p.Full && e.state != StateStarting && e.state != StateStopped {
			// It was serving as handed over: it no longer is.
			m.transitionLocked(e, evExited, why+"; relaunching")
		}
		e.failedLocked(why)
		e.mu.Unlock()
		r.Generation = max(r.Generation, e.generation)
		m.restoreOne(ctx, e, r)
		return nil
	}
	adopted = append(adopted, inst)
	if !p.Full {
		// After a crash: a fresh record at its generation, audited.
		e.mu.Lock()
		e.restarts = p.Restarts
		e.mu.Unlock()
		a := auditRecord(ctx, "adopt", e.name, e.generation, e.generation, inst, spec, nil)
		if err := m.commit("the adoption of "+e.name, Change{Audit: a}); err != nil {
			m.log.Error("adoption not recorded in the audit log", slog.String("plugin", e.name), slog.String("error", err.Error()))
		}
		if !m.activate(e, inst, false) {
			inst.stop()
			return nil
		}
		m.log.Info("plugin adopted after a daemon crash", slog.String("plugin", e.name), slog.Uint64("generation", inst.generation()), slog.Int("pid", inst.pid))
		return adopted
	}
	// A reload: everything continues as it was; nothing is published.
	if !m.startBackground(func() { m.watchExit(e, inst) }, func() {
		e.mu.Lock()
		e.resumeLocked(inst)
		e.mu.Unlock()
		m.startLiveness(e, inst)
	}) {
		inst.stop()
		return nil
	}
	if held := m.resumeBake(ctx, e, p); held != nil {
		adopted = append(adopted, held)
	}
	e.mu.Lock()
	if e.state == StateDegraded {
		m.armRecovery(e)
	}
	e.mu.Unlock()
	m.saveRuntime(e)
	return adopted
}

// resumeBake takes over the process a bake in progress keeps warm and
// re-arms the bake's timer for the time it had left; it cancels the bake
// when that process cannot be taken over. It returns the held instance.
func (m *Manager) resumeBake(ctx context.Context, e *entry, p *PluginHandover) *instance {
	e.mu.Lock()
	b := e.bake
	baking := b != nil && b.Result == BakeBaking
	e.mu.Unlock()
	if !baking {
		return nil
	}
	var held *instance
	err := fmt.Errorf("no process was handed over")
	if p.Held != nil {
		held, err = m.attach(ctx, e.name, p.Held, b.prevSpec)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		b.Result, b.Reason = BakeCancelled, "the previous generation's process could not be taken over by the reloaded daemon: "+err.Error()
		m.transitionLocked(e, evUpdated, "")
		return nil
	}
	held.hold()
	b.prev = held
	gen := b.Generation
	b.timer = time.AfterFunc(max(time.Until(b.Until), 0), func() { m.startBackground(func() { m.gated(func() { m.endBake(e, gen) }) }) })
	m.startBackground(func() { m.watchExit(e, held) })
	return held
}

// attach takes over one running generation's process: go-plugin attached
// with its ReattachConfig, its stdio followed, the connection dispensed
// and the protocol's ready probe passed. On failure nothing of it is kept:
// the process, when it is still the plugin's, is stopped.
func (m *Manager) attach(ctx context.Context, name string, pr *ProcessHandover, spec Spec) (*instance, error) {
	if pr.Spec.Name != "" {
		spec = pr.Spec // what the process runs (a bake's held process: the previous spec)
	}
	p := m.protocolFor(&spec)
	log := m.log.With(slog.String("plugin", name), slog.Uint64("generation", pr.Generation))
	sink := proc.NewStderrSink(log)
	inst := &instance{
		name: name, spec: spec, proto: p, sockDir: pr.SocketDir, stderr: sink, pid: pr.PID, startTicks: pr.StartTicks,
		mark: pr.Mark, sha256: pr.SHA256, version: pr.Version, pluginName: pr.PluginName,
		services: append([]string(nil), pr.Services...), startedAt: pr.StartedAt,
	}
	if len(pr.UnaryMethods) > 0 {
		inst.unary = make(map[string]bool, len(pr.UnaryMethods))
		for _, u := range pr.UnaryMethods {
			inst.unary[u] = true
		}
	}
	inst.gen.Store(pr.Generation)
	inst.gone, inst.cancelGone = context.WithCancel(context.Background())
	if pr.Cgroup != "" && m.cgroups != nil && filepath.Dir(pr.Cgroup) == m.cgroups.Root {
		inst.cgroup = proc.CgroupAt(pr.Cgroup)
	}
	inst.stopped = func(cgErr error) {
		if cgErr != nil {
			log.Error("the generation's cgroup could not be emptied and removed: processes of it may be left", slog.String("error", cgErr.Error()))
		}
		m.pids.remove(inst.pid)
		m.sweeper.stopped(inst.mark)
	}
	if pr.Stdout == nil || pr.Stderr == nil {
		closeFiles(pr.Stdout, pr.Stderr)
		m.killInherited(pr)
		return nil, fmt.Errorf("its stdout and stderr were not handed over (they had no reader: the plugin would die of SIGPIPE at its next write)")
	}
	inst.stdio = []*os.File{pr.Stdout, pr.Stderr}
	pr.Stdout, pr.Stderr = nil, nil // the instance owns them now
	var err error
	if pr.TLS != nil {
		if inst.tls, err = pr.TLS.config(); err != nil {
			closeFiles(inst.stdio...)
			m.killInherited(pr)
			return nil, err
		}
	}
	_, versioned := p.clientSets()
	client, runner, err := launch.Attach(launch.Target{
		PID: pr.PID, StartTicks: pr.StartTicks, Network: pr.Network, Address: pr.Address,
		ProtocolVersion: pr.ProtocolVersion, Plugins: versioned, TLS: inst.tls,
		Logger: sink.Logger(), Stderr: sink,
	})
	if err != nil {
		closeFiles(inst.stdio...)
		m.killInherited(pr)
		return nil, err
	}
	inst.client, inst.attached = client, runner
	m.pids.add(inst.pid)
	go func() { _, _ = io.Copy(io.Discard, inst.stdio[0]) }()
	go sink.Follow(inst.stdio[1])
	inst.pipes = proc.StdioPipes(inst.pid)
	inst.reap = m.reaper
	if m.cgroups == nil {
		m.reaper.Add(inst.pid)
	}
	if m.cfg.LiveRestore != nil {
		m.reaper.Hold(inst.mark, name, fileFD(inst.stdio[0]), fileFD(inst.stdio[1]))
	}
	conn, err := inst.connect(pr.ProtocolVersion)
	if err != nil {
		inst.stop()
		return nil, err
	}
	timeout := spec.ReadyTimeout
	if timeout == 0 {
		timeout = m.cfg.ReadyTimeout
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	err = p.ready(rctx, conn, spec.Config)
	cancel()
	if err != nil {
		inst.stop()
		return nil, fmt.Errorf("ready probe: %w", err)
	}
	return inst, nil
}

// killInherited stops a handed-over process that is not taken over: its
// process group (when the pid is still the plugin's), its cgroup and its
// socket directory.
func (m *Manager) killInherited(pr *ProcessHandover) {
	if ok, _ := proc.SameProcess(pr.PID, pr.StartTicks); ok {
		proc.KillGroup(pr.PID)
	}
	if pr.Cgroup != "" && m.cgroups != nil && filepath.Dir(pr.Cgroup) == m.cgroups.Root {
		if err := proc.CgroupAt(pr.Cgroup).Kill(); err != nil {
			m.log.Error("a handed-over generation's cgroup could not be removed", slog.String("cgroup", pr.Cgroup), slog.String("error", err.Error()))
		}
	}
	removeSockDir(pr.SocketDir)
	closeFiles(pr.Stdout, pr.Stderr)
	pr.Stdout, pr.Stderr = nil, nil
	m.reaper.Release(pr.Mark)
}

func closeFiles(fs ...*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}

// dropInherited ends, once Restore is done, every handed-over process no
// plugin took over (its plugin was unloaded meanwhile, or failed to be
// taken over), and what else of a previous image's generations is left.
func (m *Manager) dropInherited() {
	h := m.cfg.Inherit
	if h == nil {
		return
	}
	keep := map[string]bool{}
	keepCg := map[string]bool{}
	keepSock := map[string]bool{}
	m.mu.RLock()
	for _, e := range m.plugins {
		insts := []*instance{e.active.Load()}
		e.mu.Lock()
		if e.bake != nil {
			insts = append(insts, e.bake.prev)
		}
		e.mu.Unlock()
		for _, i := range insts {
			if i == nil {
				continue
			}
			keep[i.mark] = true
			keepSock[filepath.Base(i.sockDir)] = true
			if i.cgroup != nil {
				keepCg[filepath.Base(i.cgroup.Path())] = true
			}
		}
	}
	m.mu.RUnlock()
	for _, p := range h.Plugins {
		for _, pr := range []*ProcessHandover{p.Active, p.Held} {
			if pr != nil && !keep[pr.Mark] {
				m.log.Warn("a handed-over plugin process is not taken over: stopping it", slog.String("plugin", p.Name), slog.Int("pid", pr.PID))
				m.killInherited(pr)
			}
		}
	}
	if n := proc.KillMarkedExcept(m.containID+"/", keep); n > 0 {
		m.log.Warn("killed processes left by plugins of the previous daemon", slog.Int("processes", n))
	}
	if m.cgroups != nil {
		if err := m.cgroups.KillExcept(keepCg); err != nil {
			m.log.Error("removing the previous daemon's leftover cgroups", slog.String("error", err.Error()))
		}
	}
	// Socket directories of generations no longer running (New kept them
	// all for the handover).
	ents, _ := os.ReadDir(m.sockRoot)
	for _, d := range ents {
		if d.IsDir() && !keepSock[d.Name()] {
			removeSockDir(filepath.Join(m.sockRoot, d.Name()))
		}
	}
}

// saveRuntime records e's active process for the next manager after a
// crash (Config.LiveRestore). The caller holds e's operation lock.
func (m *Manager) saveRuntime(e *entry) {
	lr := m.cfg.LiveRestore
	if lr == nil || lr.Save == nil {
		return
	}
	inst := e.active.Load()
	if inst == nil {
		return
	}
	e.mu.Lock()
	p := &PluginHandover{Name: e.name, Spec: e.spec.Clone(), Generation: e.generation, PluginName: e.pluginName, Restarts: e.restarts, Endpoint: e.endpoint}
	e.mu.Unlock()
	p.Active = inst.runtime()
	lr.Save(p)
}

// forgetRuntime removes e's record of Config.LiveRestore.
func (m *Manager) forgetRuntime(name string) {
	if lr := m.cfg.LiveRestore; lr != nil && lr.Remove != nil {
		lr.Remove(name)
	}
}
