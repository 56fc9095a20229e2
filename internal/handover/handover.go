// Package handover encodes what one plugind image hands to the next
// (plugincontrol.handover.v1, schema 1): on a reload the whole Handover on
// an inherited memfd, with live restore each plugin's record in
// <state-dir>/run. It owns the schema's meaning; package manager owns the
// state (manager.Handover) and package launch the processes.
package handover

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	handoverv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/handover/v1"
	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/healthwire"
	"github.com/plugincontrol/plugincontrol/internal/wire"
	"github.com/plugincontrol/plugincontrol/manager"
)

// Schema is the version of the handover's meaning this build writes and
// reads.
const Schema = 1

// EnvFD is the environment variable naming the handover's descriptor in
// the new image.
const EnvFD = "PLUGIND_HANDOVER_FD"

// Daemon is what a plugind hands over besides the manager's state.
type Daemon struct {
	// Version is the version of the image that wrote it.
	Version string
	// BootID is the kernel's boot id when it was written.
	BootID string
	// Listeners are the inherited listening sockets by key ("listen:ADDR",
	// "endpoint:NAME", "endpoint-tcp", "metrics") and descriptor.
	Listeners map[string]int
	// FleetLease and FleetNode are the node's etcd lease (0: none).
	FleetLease int64
	FleetNode  string
	// ReloadStarted is when the reload was asked for; Written when the
	// handover was written, right before the exec (set by Decode).
	ReloadStarted time.Time
	Written       time.Time
	// CloseFDs are descriptors of the old image left open across the exec
	// for the new image to close once it serves (see the schema).
	CloseFDs []int
}

// Encode encodes a reload's handover. Descriptors are written as the
// numbers they have in this process: the exec keeps them.
func Encode(h *manager.Handover, d Daemon) ([]byte, error) {
	msg := &handoverv1.Handover{
		Schema:          Schema,
		FromVersion:     d.Version,
		WrittenAt:       wire.Timestamp(time.Now()),
		BootId:          d.BootID,
		ReloadStartedAt: wire.Timestamp(d.ReloadStarted),
	}
	if hub := h.Hub; hub != nil {
		msg.Hub = &handoverv1.Hub{Revision: hub.Revision}
		for _, e := range hub.History {
			msg.Hub.History = append(msg.Hub.History, healthwire.EventProto(e))
		}
		for _, l := range hub.Latest {
			msg.Hub.Latest = append(msg.Hub.Latest, healthwire.HealthProto(l))
		}
	}
	for _, p := range h.Plugins {
		msg.Plugins = append(msg.Plugins, pluginProto(p, true))
	}
	for k, fd := range d.Listeners {
		msg.Listeners = append(msg.Listeners, &handoverv1.Listener{Key: k, Fd: int32(fd)})
	}
	if h.ReaperPID > 0 {
		msg.Reaper = &handoverv1.Reaper{Pid: int32(h.ReaperPID), Fd: int32(h.ReaperFD)}
	}
	if d.FleetLease != 0 {
		msg.Fleet = &handoverv1.FleetLease{LeaseId: d.FleetLease, Node: d.FleetNode}
	}
	for _, fd := range d.CloseFDs {
		msg.CloseFds = append(msg.CloseFds, int32(fd))
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(msg)
}

// Decode decodes a reload's handover. Every descriptor it names (plugin
// stdio) becomes an *os.File the manager owns; the listeners' stay numbers
// for the daemon to take (Daemon.Listeners). A schema this build does not
// know is an error: the caller then restarts the plugins, as a restart
// does (and closes what it does not use).
func Decode(b []byte) (*manager.Handover, Daemon, error) {
	var msg handoverv1.Handover
	if err := proto.Unmarshal(b, &msg); err != nil {
		return nil, Daemon{}, fmt.Errorf("handover: %w", err)
	}
	if msg.GetSchema() != Schema {
		return nil, Daemon{}, fmt.Errorf("handover: schema %d, this plugind reads schema %d", msg.GetSchema(), Schema)
	}
	d := Daemon{
		Version: msg.GetFromVersion(), BootID: msg.GetBootId(), Listeners: map[string]int{},
		ReloadStarted: wire.Time(msg.GetReloadStartedAt()), Written: wire.Time(msg.GetWrittenAt()),
	}
	for _, l := range msg.GetListeners() {
		d.Listeners[l.GetKey()] = int(l.GetFd())
	}
	if f := msg.GetFleet(); f != nil {
		d.FleetLease, d.FleetNode = f.GetLeaseId(), f.GetNode()
	}
	for _, fd := range msg.GetCloseFds() {
		d.CloseFDs = append(d.CloseFDs, int(fd))
	}
	h := &manager.Handover{Plugins: map[string]*manager.PluginHandover{}}
	if hub := msg.GetHub(); hub != nil {
		h.Hub = &manager.HubHandover{Revision: hub.GetRevision()}
		for _, e := range hub.GetHistory() {
			h.Hub.History = append(h.Hub.History, healthwire.Event(e))
		}
		for _, l := range hub.GetLatest() {
			h.Hub.Latest = append(h.Hub.Latest, healthwire.Health(l))
		}
	}
	if r := msg.GetReaper(); r != nil {
		h.ReaperPID, h.ReaperFD = int(r.GetPid()), int(r.GetFd())
	}
	for _, p := range msg.GetPlugins() {
		mp, err := plugin(p, true)
		if err != nil {
			return nil, Daemon{}, err
		}
		h.Plugins[mp.Name] = mp
	}
	return h, d, nil
}

// pluginProto encodes one plugin; withFDs writes the stdio descriptors
// (a reload), else leaves them out (a live-restore file).
func pluginProto(p *manager.PluginHandover, withFDs bool) *handoverv1.PluginRuntime {
	out := &handoverv1.PluginRuntime{
		Name: p.Name, Spec: wire.SpecProto(p.Spec), Generation: p.Generation, PluginName: p.PluginName,
		Restarts: uint32(p.Restarts), Endpoint: p.Endpoint,
		Active: processProto(p.Active, withFDs), Held: processProto(p.Held, withFDs),
	}
	if p.Full {
		out.State = pb.PluginState(p.State)
		out.Since = wire.Timestamp(p.Since)
		out.Reason, out.LastError, out.Revision, out.Consecutive = p.Reason, p.LastError, p.Revision, uint32(p.Consecutive)
		for _, t := range p.RestartLog {
			out.RestartLog = append(out.RestartLog, wire.Timestamp(t))
		}
		if f := p.Faults; f != nil {
			out.Faults = &handoverv1.Faults{Generation: f.Generation, LastPanic: healthwire.PanicProto(f.LastPanic)}
			for _, t := range f.Combined {
				out.Faults.Combined = append(out.Faults.Combined, wire.Timestamp(t))
			}
			for _, c := range manager.Classes {
				fc := &handoverv1.FaultClass{Class: pb.FailureClass(c), Lifetime: f.Lifetime[c]}
				for _, t := range f.Windows[c] {
					fc.Window = append(fc.Window, wire.Timestamp(t))
				}
				if fc.Lifetime > 0 || len(fc.Window) > 0 {
					out.Faults.Classes = append(out.Faults.Classes, fc)
				}
			}
		}
		if b := p.Bake; b != nil {
			out.Bake = &handoverv1.Bake{Status: healthwire.BakeProto(b.Status), PreviousSpec: wire.SpecProto(b.PreviousSpec), PreviousPluginName: b.PreviousPluginName}
		}
	}
	return out
}

// plugin decodes one plugin; withFDs takes its stdio descriptors.
func plugin(p *handoverv1.PluginRuntime, withFDs bool) (*manager.PluginHandover, error) {
	spec, err := wire.Spec(p.GetSpec())
	if err != nil {
		return nil, fmt.Errorf("handover of plugin %q: %w", p.GetName(), err)
	}
	out := &manager.PluginHandover{
		Name: p.GetName(), Spec: spec, Generation: p.GetGeneration(), PluginName: p.GetPluginName(),
		Restarts: int(p.GetRestarts()), Endpoint: p.GetEndpoint(),
	}
	// A record with a state is a reload's (a live-restore file has none).
	if p.GetState() != pb.PluginState_PLUGIN_STATE_UNSPECIFIED {
		out.Full = true
		out.State = manager.State(p.GetState())
		out.Since = wire.Time(p.GetSince())
		out.Reason, out.LastError, out.Revision, out.Consecutive = p.GetReason(), p.GetLastError(), p.GetRevision(), int(p.GetConsecutive())
		for _, t := range p.GetRestartLog() {
			out.RestartLog = append(out.RestartLog, wire.Time(t))
		}
		if f := p.GetFaults(); f != nil {
			fh := &manager.FaultsHandover{Generation: f.GetGeneration(), Windows: map[manager.FailureClass][]time.Time{},
				Lifetime: map[manager.FailureClass]uint64{}, LastPanic: healthwire.Panic(f.GetLastPanic())}
			for _, t := range f.GetCombined() {
				fh.Combined = append(fh.Combined, wire.Time(t))
			}
			for _, c := range f.GetClasses() {
				cl := manager.FailureClass(c.GetClass())
				fh.Lifetime[cl] = c.GetLifetime()
				for _, t := range c.GetWindow() {
					fh.Windows[cl] = append(fh.Windows[cl], wire.Time(t))
				}
			}
			out.Faults = fh
		}
		if b := p.GetBake(); b != nil {
			prev, err := wire.Spec(b.GetPreviousSpec())
			if err != nil && b.GetPreviousSpec() != nil {
				return nil, fmt.Errorf("handover of plugin %q: bake: %w", p.GetName(), err)
			}
			out.Bake = &manager.BakeHandover{Status: healthwire.Bake(b.GetStatus()), PreviousSpec: prev, PreviousPluginName: b.GetPreviousPluginName()}
		}
	}
	if out.Active, err = process(p.GetActive(), withFDs); err != nil {
		return nil, fmt.Errorf("handover of plugin %q: %w", p.GetName(), err)
	}
	if out.Held, err = process(p.GetHeld(), withFDs); err != nil {
		return nil, fmt.Errorf("handover of plugin %q: %w", p.GetName(), err)
	}
	return out, nil
}

func processProto(p *manager.ProcessHandover, withFDs bool) *handoverv1.Process {
	if p == nil {
		return nil
	}
	out := &handoverv1.Process{
		Generation: p.Generation, Pid: int32(p.PID), StartTicks: p.StartTicks, Network: p.Network, Address: p.Address,
		ProtocolVersion: int32(p.ProtocolVersion), SocketDir: p.SocketDir, Cgroup: p.Cgroup, Mark: p.Mark,
		Sha256: p.SHA256, Version: p.Version, Services: p.Services, UnaryMethods: p.UnaryMethods,
		StartedAt: wire.Timestamp(p.StartedAt), Spec: wire.SpecProto(p.Spec), PluginName: p.PluginName,
	}
	if withFDs {
		out.StdoutFd, out.StderrFd = int32(p.StdoutFD), int32(p.StderrFD)
	}
	if t := p.TLS; t != nil {
		out.Tls = &handoverv1.TLS{ClientCert: t.ClientCert, ClientKey: t.ClientKey, ServerCert: t.ServerCert}
	}
	return out
}

func process(p *handoverv1.Process, withFDs bool) (*manager.ProcessHandover, error) {
	if p == nil {
		return nil, nil
	}
	spec, err := wire.Spec(p.GetSpec())
	if err != nil && p.GetSpec() != nil {
		return nil, fmt.Errorf("process %d: %w", p.GetPid(), err)
	}
	out := &manager.ProcessHandover{
		Generation: p.GetGeneration(), PID: int(p.GetPid()), StartTicks: p.GetStartTicks(), Network: p.GetNetwork(), Address: p.GetAddress(),
		ProtocolVersion: int(p.GetProtocolVersion()), SocketDir: p.GetSocketDir(), Cgroup: p.GetCgroup(), Mark: p.GetMark(),
		SHA256: p.GetSha256(), Version: p.GetVersion(), Services: p.GetServices(), UnaryMethods: p.GetUnaryMethods(),
		StartedAt: wire.Time(p.GetStartedAt()), Spec: spec, PluginName: p.GetPluginName(),
	}
	if withFDs && p.GetStdoutFd() > 2 && p.GetStderrFd() > 2 {
		out.Stdout = fdFile(int(p.GetStdoutFd()), "plugin-stdout")
		out.Stderr = fdFile(int(p.GetStderrFd()), "plugin-stderr")
	}
	if t := p.GetTls(); t != nil {
		out.TLS = &manager.TLSHandover{ClientCert: t.GetClientCert(), ClientKey: t.GetClientKey(), ServerCert: t.GetServerCert()}
	}
	return out, nil
}

// fdFile takes an inherited descriptor: close-on-exec again (plugins must
// not inherit it) and owned by the returned file.
func fdFile(fd int, name string) *os.File {
	unix.CloseOnExec(fd)
	_ = unix.SetNonblock(fd, true)
	return os.NewFile(uintptr(fd), name)
}

// RunDir is the directory of live-restore records in a state directory.
func RunDir(stateDir string) string { return filepath.Join(stateDir, "run") }

// HandoffPath is the reaper's handoff socket in a state directory.
func HandoffPath(stateDir string) string { return filepath.Join(RunDir(stateDir), "reaper.sock") }

// EncodePlugin encodes one plugin's live-restore record.
func EncodePlugin(p *manager.PluginHandover, bootID string) ([]byte, error) {
	msg := pluginProto(p, false)
	msg.WrittenAt = wire.Timestamp(time.Now())
	msg.BootId = bootID
	return proto.MarshalOptions{Deterministic: true}.Marshal(msg)
}

// DecodePlugin decodes one plugin's live-restore record and the boot id it
// was written in.
func DecodePlugin(b []byte) (*manager.PluginHandover, string, error) {
	var msg handoverv1.PluginRuntime
	if err := proto.Unmarshal(b, &msg); err != nil {
		return nil, "", err
	}
	p, err := plugin(&msg, false)
	if err != nil {
		return nil, "", err
	}
	p.Full = false
	return p, msg.GetBootId(), nil
}

// Records is the live-restore records of a state directory (RunDir), one
// file per plugin (NAME.pb), written with rename so that a crash leaves
// either the old record or the new one. They live as long as the plugins
// they describe: a clean stop removes them.
type Records struct {
	dir    string
	bootID string
}

// NewRecords returns the records of stateDir, creating RunDir (mode 0700).
func NewRecords(stateDir, bootID string) (*Records, error) {
	dir := RunDir(stateDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("live-restore directory: %w", err)
	}
	return &Records{dir: dir, bootID: bootID}, nil
}

// Save writes p's record (not synced: the record matters only while the
// machine keeps running, and the boot id tells an old one apart).
func (r *Records) Save(p *manager.PluginHandover) error {
	b, err := EncodePlugin(p, r.bootID)
	if err != nil {
		return err
	}
	tmp := filepath.Join(r.dir, "."+p.Name+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(r.dir, p.Name+".pb"))
}

// Remove forgets plugin name's record.
func (r *Records) Remove(name string) error {
	err := os.Remove(filepath.Join(r.dir, name+".pb"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Load reads every record written in this boot; records of another boot
// (their pids mean nothing) and unreadable ones are reported in skipped
// and removed.
func (r *Records) Load() (map[string]*manager.PluginHandover, []string) {
	out := map[string]*manager.PluginHandover{}
	var skipped []string
	ents, _ := os.ReadDir(r.dir)
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".pb")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		path := filepath.Join(r.dir, e.Name())
		b, err := os.ReadFile(path)
		var p *manager.PluginHandover
		var boot string
		if err == nil {
			p, boot, err = DecodePlugin(b)
		}
		switch {
		case err != nil:
			skipped = append(skipped, fmt.Sprintf("%s: unreadable: %v", e.Name(), err))
		case boot != r.bootID:
			skipped = append(skipped, fmt.Sprintf("%s: written before the last reboot", e.Name()))
		case p.Name != name:
			skipped = append(skipped, fmt.Sprintf("%s: names plugin %q", e.Name(), p.Name))
		default:
			out[name] = p
			continue
		}
		_ = os.Remove(path)
	}
	return out, skipped
}

// Clear removes every record (a clean stop: nothing is left running).
func (r *Records) Clear() error {
	ents, _ := os.ReadDir(r.dir)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".pb") || strings.HasSuffix(e.Name(), ".tmp") {
			_ = os.Remove(filepath.Join(r.dir, e.Name()))
		}
	}
	return nil
}
