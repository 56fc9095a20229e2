package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/proc"
	"github.com/plugincontrol/plugincontrol/manager/hub"
)

// Config configures a Manager.
type Config struct {
	// PluginDir is the only directory binaries are resolved in. Required.
	PluginDir string
	// SocketDir is where per-plugin socket directories are created. Empty
	// means a fresh directory under os.TempDir, removed by Close. Keep it
	// short: unix socket paths are limited to 107 bytes.
	SocketDir string
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
	// StartTimeout is the default launch+handshake timeout (10s).
	StartTimeout time.Duration
	// DescribeTimeout bounds the Describe call (5s).
	DescribeTimeout time.Duration
	// ReadyTimeout bounds the Ready probe (5s).
	ReadyTimeout time.Duration
	// DrainTimeout is the default drain timeout for Reload and Unload (30s).
	DrainTimeout time.Duration
	// AutoMTLS enables go-plugin's automatic mutual TLS to plugins.
	AutoMTLS bool
	// RequirePin refuses specs without a sha256 pin.
	RequirePin bool
	// HealthHistory is how many health events are kept for WatchHealth
	// resumption (4096). Older revisions get a reset snapshot.
	HealthHistory int
	// Store keeps desired state and the audit record durably; nil keeps
	// them in memory (lost at exit).
	Store Store
	// CallTimeout bounds every Invoke sent to a plugin whose caller set no
	// shorter deadline (0: 60s).
	CallTimeout time.Duration
	// MaxPlugins caps loaded plugins (0: 1000).
	MaxPlugins int
	// MaxWatchers caps concurrent health watches (0: 10000); Internal
	// watches are not counted.
	MaxWatchers int
	// WatchLagLimit evicts a health watch whose oldest undelivered event
	// has waited longer than this (0: 30s; negative: never); see Watch.
	WatchLagLimit time.Duration
	// OnCandidate, if set, is called after every candidate pipeline run
	// (for metrics): action is load, reload, validate, restart, restore or
	// unhealthy-restart; failed is the failing stage, StageUnknown on
	// success. It must not block.
	OnCandidate func(plugin, action string, failed Stage, took time.Duration)
	// DefaultBake is the bake period of a Reload that asks for none (0:
	// no bake); see ReloadRequest.Bake.
	DefaultBake time.Duration
	// Endpoints, if set, serves every plugin's own gRPC API at a stable
	// address (Status.Endpoint); see Endpoints.
	Endpoints Endpoints
	// Containment says how plugin processes and their descendants are
	// contained (default ContainProcessGroup). ContainID names the
	// cgroup subtree of ContainAuto (plugind derives it from its state
	// directory): a manager of the same ID kills what a killed one left
	// there. Empty: a random one.
	Containment Containment
	ContainID   string
	// Reaper starts a reaper process that kills the plugins' processes
	// (process groups, and the cgroup subtree) when this process dies,
	// even by SIGKILL. It is the process's own binary run again: main
	// must call ReaperMain first thing. Off by default.
	Reaper bool
	// Protocol, if set, chooses the embedder's own protocol for a spec.
	// It is asked whenever the manager speaks to a plugin it has not
	// spoken to yet: at Load and Reload, at every restart, at Restore and
	// when it attaches to a running plugin after a reload in place, so a
	// spec stays data (stored and sent as is) and the protocol, a Go
	// value, is resolved where it is used. Nil, or a nil result: the
	// spec's Handshake (GRPCProtocol) or the native contract.
	Protocol func(Spec) *Protocol
	// Inherit, if set, is what the manager before this one handed over
	// (see Freeze): Restore attaches to its running plugins instead of
	// launching them. The manager owns its files from New on.
	Inherit *Handover
	// LiveRestore, if set, keeps the plugins running when this process
	// dies (kill -9, an OOM kill, a crash): needs Reaper. See LiveRestore.
	LiveRestore *LiveRestore
}

// LiveRestore is how a manager leaves its plugins for the next one when
// its process dies: the reaper keeps them (it kills nothing) and drains
// their stdout and stderr until the next process takes them from Handoff;
// Save records each active generation's process (Remove forgets a
// plugin's), for the next manager's Config.Inherit. Save and Remove are
// called after each change of a plugin's active process, under its
// operation lock, never under a lock readers take.
type LiveRestore struct {
	// Handoff is the path of the reaper's handoff socket.
	Handoff string
	// Save records p (its Active process; Full is false).
	Save func(p *PluginHandover)
	// Remove forgets plugin name's record.
	Remove func(name string)
}

// Manager runs plugin instances. Create it with New; Close stops every plugin.
type Manager struct {
	cfg       Config
	log       *slog.Logger
	pluginDir string // absolute, symlinks resolved
	sockRoot  string
	ownSock   bool // sockRoot was created by New and is removed by Close
	digests   digestCache
	events    *hub.Hub
	store     Store
	reaper    *proc.Reaper  // kills plugin processes if the process is killed; nil: none
	cgroups   *proc.Cgroups // the plugins' cgroup subtree (ContainAuto); nil: none
	subreaper bool          // the process is a child subreaper (ContainSubreaper, or Auto's fallback)
	// unsetSubreaper: New made the process a subreaper; Close undoes it.
	unsetSubreaper bool
	pid1           bool          // the process is PID 1: it reaps every orphan
	containID      string        // Config.ContainID, or a random one
	sweeper        *sweeper      // kills and reaps re-parented processes; nil: not needed
	pids           pidSet        // plugin processes started and not stopped
	native         *Protocol     // the protocol of specs with neither a Config.Protocol nor a Handshake
	refused        atomic.Uint64 // lifecycle events refused (bugs): RefusedTransitions

	mu      sync.RWMutex // guards plugins, closed, frozen, frozenDone and frozenEntries
	plugins map[string]*entry
	closed  bool
	// frozen: Freeze began; no plugin is registered. frozenDone: it
	// completed, and frozenEntries' operation locks (and the gate) are
	// held until Thaw.
	frozen        bool
	frozenDone    bool
	frozenEntries []*entry
	// gate is held (read side) by background actions while they act, and
	// (write side) by Freeze: a frozen manager acts on nothing. Taken
	// before an entry's operation lock, never after it.
	gate sync.RWMutex

	// ctx is cancelled by Close; background work (restarts, actions on
	// unhealthy) runs under it.
	ctx    context.Context
	cancel context.CancelFunc

	bgMu     sync.Mutex     // guards bgClosed and bg.Add (never held with other locks' waits)
	bgClosed bool           // no new background goroutines
	bg       sync.WaitGroup // exit watchers, restarts, actions on unhealthy
}

// entry is one plugin instance name and its generations.
type entry struct {
	name string
	// op serializes mutations of this plugin (a 1-slot semaphore rather than
	// a mutex so waiting honours the caller's context).
	op chan struct{}
	// active is the serving generation; nil while starting or stopped.
	active atomic.Pointer[instance]

	mu         sync.Mutex // guards the fields below
	spec       Spec
	generation uint64 // of the active (or last active) generation
	pluginName string // what the plugin described itself as
	state      State  // changed only by transitionLocked, with since and reason
	since      time.Time
	reason     string // why the plugin is in state ("" when SERVING)
	lastError  string // the last failure of any kind, for the status
	endpoint   string // address of the plugin's own API ("" without Endpoints)
	restarts   int
	removed    bool // unloaded, or a failed first Load
	unreadable bool // restored from a stored record that could not be read: no spec
	revision   uint64
	faults     tracker // failure windows and lifetime counts, per class
	// attaching, while open, says a reload's takeover of the plugin's
	// process is under way: calls wait on it rather than fail.
	attaching   chan struct{}
	restartLog  []time.Time // supervisor restarts within the restart period
	consecutive int         // restarts since the plugin last stayed up a period
	bake        *bake       // the current or last bake (nil: none yet)
}

func (e *entry) lock(ctx context.Context) error {
	select {
	case e.op <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("plugin %q: waiting for another operation on it: %w", e.name, ctx.Err())
	}
}

func (e *entry) unlock() { <-e.op }

// New checks cfg and returns a Manager.
func New(cfg Config) (*Manager, error) {
	if cfg.PluginDir == "" {
		return nil, errors.New("manager: Config.PluginDir is required")
	}
	abs, err := filepath.Abs(cfg.PluginDir)
	if err != nil {
		return nil, fmt.Errorf("manager: plugin directory: %w", err)
	}
	dir, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("manager: plugin directory: %w", err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("manager: plugin directory %s is not a directory", dir)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	if cfg.DescribeTimeout <= 0 {
		cfg.DescribeTimeout = 5 * time.Second
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 5 * time.Second
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 60 * time.Second
	}
	if cfg.DefaultBake < 0 || cfg.DefaultBake > maxBake {
		return nil, fmt.Errorf("manager: Config.DefaultBake %v is outside 0..%v", cfg.DefaultBake, maxBake)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	m := &Manager{cfg: cfg, log: log, pluginDir: dir, plugins: make(map[string]*entry)}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if cfg.MaxPlugins <= 0 {
		m.cfg.MaxPlugins = 1000
	}
	lagLimit := cfg.WatchLagLimit
	switch {
	case lagLimit == 0:
		lagLimit = 30 * time.Second
	case lagLimit < 0:
		lagLimit = 0
	}
	if cfg.MaxWatchers <= 0 {
		m.cfg.MaxWatchers = 10000
	}
	m.store = cfg.Store
	if m.store == nil {
		m.store = newMemStore()
	}
	// Revisions continue above anything an earlier run may have handed out
	// (the store's durable mark); the hub reserves the next blocks.
	prev, err := m.store.ReserveRevisions(0)
	if err != nil {
		return nil, fmt.Errorf("manager: reading the revision mark: %w", err)
	}
	logMark := func(err error) { log.Error("persisting the revision mark failed", slog.String("error", err.Error())) }
	m.events = hub.New(hub.Config{History: cfg.HealthHistory, LagLimit: lagLimit, Reserve: m.store.ReserveRevisions, Log: logMark})
	rev, history, latest := prev, []Event(nil), []Health(nil)
	if h := cfg.Inherit; h != nil && h.Hub != nil {
		// A reload: the hub continues where it was, below the mark
		// reserved for it.
		rev, history, latest = h.Hub.Revision, h.Hub.History, h.Hub.Latest
	}
	if err := m.events.Start(rev, prev, history, latest); err != nil {
		logMark(err) // health goes on in memory; the hub retries in the background
	}
	if cfg.SocketDir == "" {
		d, err := os.MkdirTemp("", "plugind-")
		if err != nil {
			return nil, fmt.Errorf("manager: socket directory: %w", err)
		}
		m.sockRoot, m.ownSock = d, true
	} else {
		// Absolute: plugins run with the plugin directory as their cwd.
		d, err := filepath.Abs(cfg.SocketDir)
		if err != nil {
			return nil, fmt.Errorf("manager: socket directory: %w", err)
		}
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("manager: socket directory: %w", err)
		}
		m.sockRoot = d
	}
	if err := m.startReaper(); err != nil {
		return nil, err
	}
	m.setupContainment()
	m.native = NativeProtocol()
	return m, nil
}

// PluginDir is the resolved plugin directory.
func (m *Manager) PluginDir() string { return m.pluginDir }

func (m *Manager) lookup(name string) (*entry, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return nil, ErrClosed
	}
	e, ok := m.plugins[name]
	if !ok {
		return nil, fmt.Errorf("plugin %q: %w", name, ErrNotFound)
	}
	return e, nil
}

// List returns the status of every plugin, sorted by name.
func (m *Manager) List() []Status {
	m.mu.RLock()
	entries := make([]*entry, 0, len(m.plugins))
	for _, e := range m.plugins {
		entries = append(entries, e)
	}
	m.mu.RUnlock()
	out := make([]Status, 0, len(entries))
	for _, e := range entries {
		out = append(out, m.status(e))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get returns the status of one plugin.
func (m *Manager) Get(name string) (Status, error) {
	e, err := m.lookup(name)
	if err != nil {
		return Status{}, err
	}
	return m.status(e), nil
}

// Close stops every plugin (draining calls up to ctx's deadline) and refuses
// further operations. It is safe to call more than once.
func (m *Manager) Close(ctx context.Context) error {
	m.Thaw() // a manager frozen for a handover that did not happen
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	entries := make([]*entry, 0, len(m.plugins))
	for _, e := range m.plugins {
		entries = append(entries, e)
	}
	m.plugins = map[string]*entry{}
	m.mu.Unlock()
	m.bgMu.Lock()
	m.bgClosed = true
	m.bgMu.Unlock()
	m.cancel() // pending restarts and actions give up

	drain := m.cfg.DrainTimeout
	if dl, ok := ctx.Deadline(); ok {
		drain = max(time.Until(dl), 0)
	}
	var wg sync.WaitGroup
	for _, e := range entries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Wait for a running operation so its candidate is not leaked;
			// a Load/Reload in progress sees closed and stops it.
			_ = e.lock(context.Background())
			defer e.unlock()
			m.cancelBake(e, "the daemon is shutting down")
			inst := e.takeActive()
			e.mu.Lock()
			e.faults.reset(0)
			if e.state != StateUnknown {
				m.transitionLocked(e, evStopped, "daemon shutting down")
			}
			e.mu.Unlock()
			if inst != nil {
				inst.drain(drain)
				inst.stop()
			}
			m.closeEndpoint(e)
		}()
	}
	wg.Wait()
	m.bg.Wait()
	m.events.Close()
	m.closeContainment()
	// Every plugin stopped: the reaper leaves keep mode and ends.
	m.reaper.Stop()
	if m.ownSock {
		_ = os.RemoveAll(m.sockRoot)
	}
	return nil
}
