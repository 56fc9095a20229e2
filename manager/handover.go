package manager

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/proc"
)

// A manager can hand its plugins to the next one without stopping them:
// plugind does it when it re-executes itself in place (a reload: same pid,
// plugins still its children) and, with live restore, when it starts after
// a crash (the plugins were left running). Freeze stops every mutation and
// background action and returns the state to hand over; the next manager
// gets it in Config.Inherit and its Restore attaches to each process
// (go-plugin's ReattachConfig) rather than launching one, checks it with
// its protocol's ready probe, and launches only those that fail.
//
//	old manager                      new manager
//	Freeze ──▶ Handover ──(plugind encodes it, execs)──▶ Config.Inherit ──▶ Restore: attach, ready, serve
//
// Nothing of a plugin changes across a handover that carries the hub (a
// reload): generations, pids, states, counts, failure windows, bakes and
// the health revision continue, and no health event is published for it.
// After a crash only the processes are known (PluginHandover.Full is
// false): each adopted plugin starts a fresh record at its generation.

// Handover is what one manager hands to the next.
type Handover struct {
	// Hub, when set, continues the health hub (a reload); nil after a
	// crash, where revisions continue from the store's mark as after any
	// restart.
	Hub *HubHandover
	// Plugins by name.
	Plugins map[string]*PluginHandover
	// ReaperPID and ReaperFD are the reaper process and this process's end
	// of its socket (a reload: the reaper is still a child, and the
	// descriptor survives the exec). 0: none.
	ReaperPID, ReaperFD int
}

// HubHandover is the health hub's state.
type HubHandover struct {
	// Revision is the last revision handed out.
	Revision uint64
	// History is the resume history, oldest first.
	History []Event
	// Latest is every plugin's latest health record.
	Latest []Health
}

// PluginHandover is one plugin: its lifecycle state and processes.
type PluginHandover struct {
	Name       string
	Spec       Spec
	Generation uint64
	PluginName string
	// Full is set when the lifecycle fields below are the plugin's
	// (a reload); false when only the processes are known (a crash).
	Full        bool
	State       State
	Since       time.Time
	Reason      string
	LastError   string
	Restarts    int
	Revision    uint64
	Endpoint    string
	RestartLog  []time.Time
	Consecutive int
	Faults      *FaultsHandover
	Bake        *BakeHandover
	// Active is the serving generation's process (nil: none serves);
	// Held the previous generation's process a bake keeps warm.
	Active, Held *ProcessHandover
}

// ProcessHandover is one generation's running process.
type ProcessHandover struct {
	Generation uint64
	PID        int
	// StartTicks is the process's start time (see proc.StartTicks): a
	// process whose pid was reused is never taken for the plugin.
	StartTicks uint64
	// Network and Address are where the plugin serves.
	Network, Address string
	// ProtocolVersion is the negotiated go-plugin protocol version.
	ProtocolVersion int
	SocketDir       string
	Cgroup          string
	// Mark is the generation's proc.MarkEnv value.
	Mark string
	// StdoutFD and StderrFD are the daemon's ends of the plugin's pipes in
	// the handing-over process (Freeze sets them; 0: not found).
	StdoutFD, StderrFD int
	// Stdout and Stderr are those ends in the receiving process: the
	// manager owns them from Config.Inherit on (nil: not handed over; the
	// plugin is replaced).
	Stdout, Stderr *os.File
	SHA256         string
	Version        string
	PluginName     string
	Services       []string
	UnaryMethods   []string
	StartedAt      time.Time
	// TLS is go-plugin's AutoMTLS client material (nil: plaintext).
	TLS *TLSHandover
	// Spec is what the process runs.
	Spec Spec
}

// TLSHandover is the client side of go-plugin's AutoMTLS with one process
// (DER; the key PKCS#8).
type TLSHandover struct {
	ClientCert, ClientKey, ServerCert []byte
}

// FaultsHandover are a plugin's failure windows and lifetime counts.
type FaultsHandover struct {
	Generation uint64
	Windows    map[FailureClass][]time.Time
	Lifetime   map[FailureClass]uint64
	Combined   []time.Time
	LastPanic  *PanicRecord
}

// BakeHandover is a bake's state.
type BakeHandover struct {
	Status             BakeStatus
	PreviousSpec       Spec
	PreviousPluginName string
}

// ErrFrozen is returned for mutations while the manager is frozen for a
// handover.
var ErrFrozen = errors.New("the daemon is handing its plugins over to a new image of itself (reload in place)")

// Freeze stops every mutation (it holds every plugin's operation lock,
// waiting up to ctx for operations in flight) and every background action
// (restarts, probes, bakes, the supervisor's reaction to a crash: they
// wait), so that what Handover returns stays true until the process execs.
// Nothing is stopped: the plugins keep running, and calls (Invoke, leases)
// are still admitted. A Load meanwhile fails with ErrFrozen. When ctx ends
// first, Freeze undoes what it did and fails; otherwise the caller hands
// over (and execs), or calls Thaw.
func (m *Manager) Freeze(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	if m.frozen {
		m.mu.Unlock()
		return errors.New("manager: already frozen")
	}
	m.frozen = true
	entries := make([]*entry, 0, len(m.plugins))
	for _, e := range m.plugins {
		entries = append(entries, e)
	}
	m.mu.Unlock()
	// Background actions hold the gate's read side while they act.
	if err := lockCtx(ctx, &m.gate); err != nil {
		m.unfreeze(nil)
		return fmt.Errorf("waiting for the supervisor's actions in flight: %w", err)
	}
	var locked []*entry
	for _, e := range entries {
		if err := e.lock(ctx); err != nil {
			m.gate.Unlock()
			m.unfreeze(locked)
			return err
		}
		locked = append(locked, e)
	}
	m.mu.Lock()
	m.frozenEntries, m.frozenDone = locked, true
	m.mu.Unlock()
	return nil
}

// Handover returns the state to hand over; the manager must be frozen.
// The stdio descriptors it names (ProcessHandover.StdoutFD, StderrFD) and
// the reaper's stay this process's: the caller makes them survive its
// exec.
func (m *Manager) Handover() (*Handover, error) {
	m.mu.RLock()
	frozen, entries := m.frozenDone, m.frozenEntries
	m.mu.RUnlock()
	if !frozen {
		return nil, errors.New("manager: Handover needs Freeze first")
	}
	h := &Handover{Plugins: make(map[string]*PluginHandover, len(entries))}
	// The daemon's ends of the plugins' pipes, found in one pass over this
	// process's descriptors (one pass per plugin is quadratic: 100 plugins
	// hold 600 descriptors).
	var pipes []string
	for _, e := range entries {
		for _, i := range e.instances() {
			pipes = append(pipes, i.pipes...)
		}
	}
	ends := proc.PipeEnds(pipes)
	for _, e := range entries {
		if p := m.handoverOf(e, ends); p != nil {
			h.Plugins[p.Name] = p
		}
	}
	h.ReaperPID, h.ReaperFD = m.reaper.Inherit()
	rev, history, latest := m.events.State()
	h.Hub = &HubHandover{Revision: rev, History: history, Latest: latest}
	return h, nil
}

// Thaw undoes Freeze: the manager goes on as before.
func (m *Manager) Thaw() {
	m.mu.Lock()
	if !m.frozenDone {
		m.mu.Unlock()
		return
	}
	locked := m.frozenEntries
	m.frozenEntries, m.frozenDone = nil, false
	m.mu.Unlock()
	m.gate.Unlock()
	m.unfreeze(locked)
}

func (m *Manager) unfreeze(locked []*entry) {
	for _, e := range locked {
		e.unlock()
	}
	m.mu.Lock()
	m.frozen = false
	m.mu.Unlock()
}

// lockCtx takes l's write side, giving up when ctx ends (the lock is then
// taken and released in the background).
func lockCtx(ctx context.Context, l interface {
	Lock()
	Unlock()
}) error {
	got := make(chan struct{})
	go func() { l.Lock(); close(got) }()
	select {
	case <-got:
		return nil
	case <-ctx.Done():
		go func() { <-got; l.Unlock() }()
		return ctx.Err()
	}
}

// gated runs a background action holding the freeze gate's read side:
// while the manager is frozen for a handover it waits (forever, when the
// process execs), so nothing acts on a plugin between the state handed
// over and the exec. Only goroutines of their own call it, first thing,
// never code holding an operation lock or the gate already (the gate's
// writer would deadlock them).
func (m *Manager) gated(f func()) {
	m.gate.RLock()
	defer m.gate.RUnlock()
	f()
}

// instances are e's processes: the active generation and the one a bake
// keeps warm.
func (e *entry) instances() []*instance {
	var out []*instance
	if i := e.active.Load(); i != nil {
		out = append(out, i)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.bake != nil && e.bake.prev != nil {
		out = append(out, e.bake.prev)
	}
	return out
}

// handoverOf is e's part of a handover (ends: PipeEnds of its processes'
// pipes); the caller holds e's operation lock. nil for a plugin being
// removed.
func (m *Manager) handoverOf(e *entry, ends map[string]int) *PluginHandover {
	active := e.active.Load()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.removed || e.unreadable {
		return nil
	}
	p := &PluginHandover{
		Name: e.name, Spec: e.spec.Clone(), Generation: e.generation, PluginName: e.pluginName, Full: true,
		State: e.state, Since: e.since, Reason: e.reason, LastError: e.lastError, Restarts: e.restarts,
		Revision: e.revision, Endpoint: e.endpoint, RestartLog: append([]time.Time(nil), e.restartLog...),
		Consecutive: e.consecutive, Faults: e.faults.handover(),
	}
	if active != nil {
		p.Active = active.handover(ends)
	}
	if b := e.bake; b != nil {
		p.Bake = &BakeHandover{Status: b.status(), PreviousSpec: b.prevSpec.Clone(), PreviousPluginName: b.prevPluginName}
		if b.prev != nil && b.Result == BakeBaking {
			p.Held = b.prev.handover(ends)
		}
	}
	return p
}

// handover is the process part of a handover, with the descriptors of its
// stdio in this process (ends: PipeEnds of its pipes).
func (i *instance) handover(ends map[string]int) *ProcessHandover {
	p := i.runtime()
	switch {
	case len(i.stdio) == 2:
		// Attached: the descriptors are this manager's own files.
		p.StdoutFD, p.StderrFD = fileFD(i.stdio[0]), fileFD(i.stdio[1])
	case len(i.pipes) == 2:
		p.StdoutFD, p.StderrFD = ends[i.pipes[0]], ends[i.pipes[1]]
	}
	return p
}

// runtime is what names and reaches the process.
func (i *instance) runtime() *ProcessHandover {
	p := &ProcessHandover{
		Generation: i.generation(), PID: i.pid, StartTicks: i.startTicks, ProtocolVersion: i.protocolVersion,
		SocketDir: i.sockDir, SHA256: i.sha256, Version: i.version, PluginName: i.pluginName,
		Services: append([]string(nil), i.services...), StartedAt: i.startedAt, Spec: i.spec.Clone(),
	}
	for m := range i.unary {
		p.UnaryMethods = append(p.UnaryMethods, m)
	}
	if i.cgroup != nil {
		p.Cgroup = i.cgroup.Path()
	}
	if i.mark != "" {
		p.Mark = i.mark
	}
	if i.client != nil {
		if rc := i.client.ReattachConfig(); rc != nil && rc.Addr != nil {
			p.Network, p.Address = rc.Addr.Network(), rc.Addr.String()
		}
	}
	if i.tls != nil {
		p.TLS = tlsHandover(i)
	}
	return p
}

// fileFD is f's descriptor without (*os.File).Fd's side effect of making
// it blocking.
func fileFD(f *os.File) int {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0
	}
	fd := 0
	_ = rc.Control(func(u uintptr) { fd = int(u) })
	return fd
}

// handover copies the tracker.
func (t *tracker) handover() *FaultsHandover {
	f := &FaultsHandover{Generation: t.gen, Windows: map[FailureClass][]time.Time{}, Lifetime: map[FailureClass]uint64{},
		Combined: append([]time.Time(nil), t.combined...)}
	for _, c := range Classes {
		if len(t.windows[c]) > 0 {
			f.Windows[c] = append([]time.Time(nil), t.windows[c]...)
		}
		if t.lifetime[c] > 0 {
			f.Lifetime[c] = t.lifetime[c]
		}
	}
	if t.last != nil {
		r := *t.last
		f.LastPanic = &r
	}
	return f
}

// restore sets the tracker from a handover.
func (t *tracker) restore(f *FaultsHandover) {
	if f == nil {
		return
	}
	t.gen = f.Generation
	for c, w := range f.Windows {
		if c > 0 && int(c) < numClasses {
			t.windows[c] = append([]time.Time(nil), w...)
		}
	}
	for c, n := range f.Lifetime {
		if c > 0 && int(c) < numClasses {
			t.lifetime[c] = n
		}
	}
	t.combined = append([]time.Time(nil), f.Combined...)
	if f.LastPanic != nil {
		r := *f.LastPanic
		t.last = &r
	}
}

// genIDOf is the generation id in a mark ("CONTAINID/GENID"), "" when the
// mark is not this manager's.
func (m *Manager) genIDOf(mark string) string {
	id, ok := strings.CutPrefix(mark, m.containID+"/")
	if !ok || id == "" || strings.ContainsAny(id, "/"+string(filepath.Separator)) {
		return ""
	}
	return id
}

// startReaper starts the reaper (Config.Reaper), or takes over the one of
// the image this process replaced (Config.Inherit), and sets its mode.
func (m *Manager) startReaper() error {
	if h := m.cfg.Inherit; h != nil && h.ReaperPID > 0 {
		r, err := proc.AdoptReaper(m.log, h.ReaperPID, h.ReaperFD)
		if err != nil {
			m.log.Warn("the reaper was not handed over: starting a new one", "error", err.Error())
		} else {
			m.reaper = r
		}
	}
	if m.reaper == nil && m.cfg.Reaper {
		m.reaper = proc.StartReaper(m.log)
	}
	lr := m.cfg.LiveRestore
	switch {
	case lr != nil && m.reaper == nil:
		return errors.New("manager: LiveRestore needs a reaper (Config.Reaper), and none could be started")
	case lr != nil:
		m.reaper.Keep(lr.Handoff)
	default:
		m.reaper.Keep("") // an inherited reaper may have been in keep mode
	}
	return nil
}

// inheritedMarks are the marks and cgroup names of the processes handed
// over: the cgroup sweep at New spares them (Restore adopts them, or kills
// them).
func (m *Manager) inheritedMarks() (marks, cgroups map[string]bool) {
	h := m.cfg.Inherit
	if h == nil {
		return nil, nil
	}
	marks, cgroups = map[string]bool{}, map[string]bool{}
	for _, p := range h.Plugins {
		for _, pr := range []*ProcessHandover{p.Active, p.Held} {
			if pr == nil {
				continue
			}
			if pr.Mark != "" {
				marks[pr.Mark] = true
			}
			if pr.Cgroup != "" {
				cgroups[filepath.Base(pr.Cgroup)] = true
			}
		}
	}
	return marks, cgroups
}

// tlsHandover is the AutoMTLS material of a generation (nil when it is
// not complete).
func tlsHandover(i *instance) *TLSHandover {
	cfg := i.tls
	srv := i.serverCert.Load()
	if len(cfg.Certificates) == 0 || len(cfg.Certificates[0].Certificate) == 0 || srv == nil {
		return nil
	}
	key, err := x509.MarshalPKCS8PrivateKey(cfg.Certificates[0].PrivateKey)
	if err != nil {
		return nil
	}
	return &TLSHandover{ClientCert: cfg.Certificates[0].Certificate[0], ClientKey: key, ServerCert: *srv}
}

// config rebuilds the TLS config go-plugin made for the process
// (go-plugin's AutoMTLS: each side trusts the other's certificate).
func (t *TLSHandover) config() (*tls.Config, error) {
	key, err := x509.ParsePKCS8PrivateKey(t.ClientKey)
	if err != nil {
		return nil, fmt.Errorf("auto-mtls key: %w", err)
	}
	srv, err := x509.ParseCertificate(t.ServerCert)
	if err != nil {
		return nil, fmt.Errorf("auto-mtls plugin certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(srv)
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{t.ClientCert}, PrivateKey: key}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
		ServerName:   "localhost",
		RootCAs:      pool,
		ClientCAs:    pool,
	}, nil
}
