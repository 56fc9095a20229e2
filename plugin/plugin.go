// Package plugin is the SDK for plugin authors: implement [Plugin] and call
// [Serve] from main. The SDK speaks go-plugin's gRPC transport and the
// plugincontrol.plugin.v1.PluginService contract, and recovers handler panics
// into errors the host can count instead of letting them kill the process.
//
// The host side of the same transport ([GRPCPlugin], [Conn]) lives here too,
// as go-plugin expects one type to know both ends.
package plugin

import (
	"context"
	"fmt"
	"os"

	goplugin "github.com/hashicorp/go-plugin"
)

// Protocol is the version of plugincontrol.plugin.v1 this SDK speaks. The host
// rejects a plugin that describes itself with another.
const Protocol = 1

// Handshake values shared by host and plugins. The cookie is not security: it
// only stops a plugin binary from being run by hand by mistake.
const (
	// HandshakeVersion is go-plugin's application protocol version.
	HandshakeVersion = 1
	// MagicCookieKey is the environment variable carrying the cookie.
	MagicCookieKey = "PLUGINCONTROL_PLUGIN"
	// MagicCookieValue is the cookie value.
	MagicCookieValue = "4f1c2d9e-plugincontrol-v1"
	// DispenseName is the name the plugin is dispensed under.
	DispenseName = "plugin"
)

// HandshakeConfig returns the go-plugin handshake both ends must agree on.
func HandshakeConfig() goplugin.HandshakeConfig {
	return goplugin.HandshakeConfig{
		ProtocolVersion:  HandshakeVersion,
		MagicCookieKey:   MagicCookieKey,
		MagicCookieValue: MagicCookieValue,
	}
}

// Info describes a plugin.
type Info struct {
	// Name is what the plugin is ("echo"). The host may run it under other
	// instance names but never swaps an instance to a plugin of another Name.
	Name string
	// Version is free-form, reported in the host's status.
	Version string
	// Methods lists the methods Invoke accepts.
	Methods []string
}

// Plugin is what a plugin author implements.
type Plugin interface {
	// Info describes the plugin; it is called for every Describe.
	Info() Info
	// Ready receives the spec's config and reports whether the plugin can
	// serve with it: nil means ready, an error's text is the reason it is not.
	Ready(ctx context.Context, config []byte) error
	// Invoke runs one method. Return a gRPC status error to choose the code
	// the caller sees; other errors become codes.Unknown. A panic is
	// recovered and reported to the host as codes.Internal with a PanicDetail.
	Invoke(ctx context.Context, method string, payload []byte) ([]byte, error)
}

// Option changes how [Serve] runs.
type Option func(*goplugin.ServeConfig)

// WithHandshake replaces the handshake. Only useful to build a plugin that
// deliberately fails the handshake, as the project's tests do.
func WithHandshake(h goplugin.HandshakeConfig) Option {
	return func(c *goplugin.ServeConfig) { c.HandshakeConfig = h }
}

// Serve serves impl to the host and returns when the host stops the plugin.
// Nothing may be written to stdout before Serve: go-plugin's handshake is the
// first line of stdout.
func Serve(impl Plugin, opts ...Option) {
	if impl == nil {
		fmt.Fprintln(os.Stderr, "plugin.Serve: nil Plugin")
		os.Exit(2)
	}
	cfg := &goplugin.ServeConfig{
		HandshakeConfig: HandshakeConfig(),
		Plugins:         goplugin.PluginSet{DispenseName: &GRPCPlugin{Impl: impl}},
		GRPCServer:      newGRPCServer,
	}
	for _, o := range opts {
		o(cfg)
	}
	goplugin.Serve(cfg)
}
