package manager

import (
	"context"
	"errors"
	"fmt"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// Protocol says how the manager talks to one kind of plugin: go-plugin's
// handshake and plugin set, the plugin to dispense, and the hooks of the
// candidate pipeline's validate, describe and ready stages. A Protocol is
// a value: the embedder builds one per plugin kind and chooses it per spec
// with Config.Protocol (a Spec is data and does not carry it). Two ship with the manager: NativeProtocol (the
// plugincontrol.plugin.v1.PluginService contract of plugin.Serve) and
// GRPCProtocol (any go-plugin gRPC plugin, in any language).
//
// The manager uses the Protocol's own GRPCPlugin to dispense, so whatever
// the embedder's plugin type does at dispense time, go-plugin's broker
// included, keeps working.
type Protocol struct {
	// Name identifies the protocol in Status.Protocol and logs ("native",
	// "grpc", or the embedder's own).
	Name string
	// Handshake is go-plugin's handshake config (protocol version and
	// magic cookie) for Plugins.
	Handshake goplugin.HandshakeConfig
	// Plugins is the plugin set of Handshake.ProtocolVersion.
	Plugins goplugin.PluginSet
	// VersionedPlugins are plugin sets by protocol version, for plugins
	// that negotiate one (go-plugin's ClientConfig.VersionedPlugins).
	VersionedPlugins map[int]goplugin.PluginSet
	// Dispense names the plugin to dispense from the negotiated set; its
	// value is what leases hand out (Lease.Value).
	Dispense string
	// Validate checks the dispensed value. Nil: any non-nil value passes.
	// An error fails the candidate at stage handshake.
	Validate func(dispensed any) error
	// Describe asks the candidate what it is. Nil: ReflectionDescribe. An
	// error fails the candidate at stage describe.
	Describe func(ctx context.Context, c Conn) (Description, error)
	// Ready probes readiness with the spec's Config. Nil:
	// HealthReady("plugin"), the service go-plugin registers in every Go
	// plugin. An error fails the candidate at stage ready.
	Ready func(ctx context.Context, c Conn, config []byte) error
	// Live is the liveness probe of a serving generation, when the spec's
	// policy turns liveness on. Nil: Ready with the spec's Config.
	Live func(ctx context.Context, c Conn, config []byte) error
}

// Conn is what the hooks of a Protocol get: one generation's connection.
type Conn struct {
	// Dispensed is the value the Protocol's plugin returned from Dispense.
	Dispensed any
	// GRPC is go-plugin's connection to the plugin's gRPC server.
	GRPC *grpc.ClientConn
	// ProtocolVersion is the negotiated go-plugin protocol version.
	ProtocolVersion int
}

// Description is what a candidate says about itself at stage describe.
type Description struct {
	// Name is the plugin's own name. When set, a Reload or restart must
	// describe the same name as the generation it replaces, so an instance
	// is never silently replaced by a different plugin. Empty: not
	// checked.
	Name string
	// Version is free-form, reported in the status.
	Version string
	// Services are the gRPC services the plugin serves (its own API),
	// where known.
	Services []string
	// UnaryMethods are the full names ("/pkg.Service/Method") of the
	// plugin's unary methods, where known: an endpoint forwards those on a
	// shorter path (Lease.Unary).
	UnaryMethods []string
	// Note, when set, goes into the candidate report (for example that
	// the plugin serves no reflection, so describe was skipped).
	Note string
}

// connPluginName is the hidden plugin the manager adds to every plugin set
// to learn go-plugin's done context and connection, whatever the
// Protocol's own plugin returns. Dispensing on the host side never talks to
// the plugin, so the plugin does not need to know this name.
const connPluginName = "plugincontrol.internal.conn"

// connPlugin is the host side of connPluginName.
type connPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
}

// hostConn is what connPlugin dispenses.
type hostConn struct {
	done context.Context // cancelled when the plugin process exits
	conn *grpc.ClientConn
}

func (connPlugin) GRPCServer(*goplugin.GRPCBroker, *grpc.Server) error {
	return errors.New("connPlugin is host-side only")
}

func (connPlugin) GRPCClient(done context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &hostConn{done: done, conn: c}, nil
}

// check reports what is wrong with p, as an *InvalidError on field
// "protocol".
func (p *Protocol) check() error {
	bad := func(format string, args ...any) error {
		return &InvalidError{Field: "protocol", Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case p.Handshake.MagicCookieKey == "" || p.Handshake.MagicCookieValue == "":
		return bad("%s: the handshake needs a magic cookie key and value", p.label())
	case p.Dispense == "":
		return bad("%s: Dispense names no plugin", p.label())
	case p.Dispense == connPluginName:
		return bad("%s: Dispense %q is reserved", p.label(), connPluginName)
	case len(p.Plugins) == 0 && len(p.VersionedPlugins) == 0:
		return bad("%s: no plugin set", p.label())
	}
	for v, set := range p.sets() {
		raw, ok := set[p.Dispense]
		if !ok {
			return bad("%s: the plugin set of protocol version %d has no plugin %q to dispense", p.label(), v, p.Dispense)
		}
		if _, ok := raw.(goplugin.GRPCPlugin); !ok {
			return bad("%s: plugin %q (%T) is not a go-plugin GRPCPlugin", p.label(), p.Dispense, raw)
		}
	}
	return nil
}

func (p *Protocol) label() string {
	if p.Name == "" {
		return "protocol"
	}
	return "protocol " + p.Name
}

// sets returns the plugin sets by version, as go-plugin merges them.
func (p *Protocol) sets() map[int]goplugin.PluginSet {
	out := make(map[int]goplugin.PluginSet, len(p.VersionedPlugins)+1)
	for v, s := range p.VersionedPlugins {
		out[v] = s
	}
	if _, ok := out[int(p.Handshake.ProtocolVersion)]; !ok && p.Plugins != nil {
		out[int(p.Handshake.ProtocolVersion)] = p.Plugins
	}
	return out
}

// clientSets returns copies of the plugin sets with the hidden conn plugin
// added, for go-plugin's ClientConfig (the embedder's maps are not
// modified).
func (p *Protocol) clientSets() (plugins goplugin.PluginSet, versioned map[int]goplugin.PluginSet) {
	versioned = make(map[int]goplugin.PluginSet)
	for v, s := range p.sets() {
		c := make(goplugin.PluginSet, len(s)+1)
		for k, pl := range s {
			c[k] = pl
		}
		c[connPluginName] = connPlugin{}
		versioned[v] = c
	}
	return versioned[int(p.Handshake.ProtocolVersion)], versioned
}

func (p *Protocol) validate(v any) error {
	if p.Validate != nil {
		return p.Validate(v)
	}
	if v == nil {
		return errors.New("dispense returned nil")
	}
	return nil
}

func (p *Protocol) describe(ctx context.Context, c Conn) (Description, error) {
	if p.Describe != nil {
		return p.Describe(ctx, c)
	}
	return ReflectionDescribe(ctx, c)
}

func (p *Protocol) ready(ctx context.Context, c Conn, config []byte) error {
	if p.Ready != nil {
		return p.Ready(ctx, c, config)
	}
	return HealthReady("")(ctx, c, config)
}

func (p *Protocol) live(ctx context.Context, c Conn, config []byte) error {
	if p.Live != nil {
		return p.Live(ctx, c, config)
	}
	return p.ready(ctx, c, config)
}

// protocolName is the name of protocolFor(s), without building a generic
// gRPC protocol for it (Status of a plugin with no running generation).
func (m *Manager) protocolName(s *Spec) string {
	if f := m.cfg.Protocol; f != nil {
		if p := f(*s); p != nil {
			return p.Name
		}
	}
	if s.Handshake != nil {
		return grpcProtocolName
	}
	return m.native.Name
}

// protocolFor returns the protocol a spec is launched with: the embedder's
// (Config.Protocol), else the generic gRPC protocol when the spec names a
// foreign handshake, else the native one.
func (m *Manager) protocolFor(s *Spec) *Protocol {
	if f := m.cfg.Protocol; f != nil {
		if p := f(*s); p != nil {
			return p
		}
	}
	switch {
	case s.Handshake != nil:
		return GRPCProtocol(gopluginHandshake(s.Handshake), s.ReadyService)
	default:
		return m.native
	}
}
