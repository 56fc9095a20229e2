package manager

import (
	"context"
	"errors"
	"fmt"

	goplugin "github.com/hashicorp/go-plugin"
	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	"github.com/plugincontrol/plugincontrol/plugin"
)

// NativeProtocol is the contract of plugins built with plugin.Serve:
// plugincontrol.plugin.v1.PluginService. Describe must report a protocol
// this daemon speaks and a name; Ready hands the plugin the spec's Config.
// Invoke (and the gateway) work only on plugins of this protocol.
func NativeProtocol() *Protocol {
	return &Protocol{
		Name:      "native",
		Handshake: plugin.HandshakeConfig(),
		Plugins:   goplugin.PluginSet{plugin.DispenseName: &plugin.GRPCPlugin{}},
		Dispense:  plugin.DispenseName,
		Validate: func(v any) error {
			if c, ok := v.(*plugin.Conn); !ok || c == nil || c.Client == nil {
				return fmt.Errorf("dispense returned %T, not a plugin connection", v)
			}
			return nil
		},
		Describe: describeNative,
		Ready:    readyNative,
	}
}

func describeNative(ctx context.Context, c Conn) (Description, error) {
	desc, err := c.Dispensed.(*plugin.Conn).Client.Describe(ctx, &pluginv1.DescribeRequest{})
	if err != nil {
		return Description{}, fmt.Errorf("Describe: %w", err)
	}
	if desc.GetProtocol() != plugin.Protocol {
		return Description{}, fmt.Errorf("plugin speaks protocol %d, this daemon supports %d", desc.GetProtocol(), plugin.Protocol)
	}
	if desc.GetName() == "" {
		return Description{}, errors.New("plugin describes itself with an empty name")
	}
	return Description{
		Name:     desc.GetName(),
		Version:  desc.GetVersion(),
		Services: []string{pluginv1.PluginService_ServiceDesc.ServiceName},
		UnaryMethods: []string{
			pluginv1.PluginService_Describe_FullMethodName,
			pluginv1.PluginService_Ready_FullMethodName,
			pluginv1.PluginService_Invoke_FullMethodName,
		},
	}, nil
}

func readyNative(ctx context.Context, c Conn, config []byte) error {
	ready, err := c.Dispensed.(*plugin.Conn).Client.Ready(ctx, &pluginv1.ReadyRequest{Config: config})
	if err != nil {
		return fmt.Errorf("Ready: %w", err)
	}
	if !ready.GetReady() {
		reason := ready.GetReason()
		if reason == "" {
			reason = "no reason given"
		}
		return fmt.Errorf("plugin reports not ready: %s", reason)
	}
	return nil
}

// nativeClient returns the PluginService client of a generation of the
// native protocol, or nil.
func nativeClient(dispensed any) pluginv1.PluginServiceClient {
	if c, ok := dispensed.(*plugin.Conn); ok && c != nil {
		return c.Client
	}
	return nil
}
