// Package manager is the core of plugincontrol: a registry of plugin
// instances, the candidate pipeline that launches and validates them, the
// try-activate swap and drain, crash supervision, the panic tracker and the
// health hub. It has no transport code: embed it in your own host, or run
// it behind gRPC with package server (as plugind does).
//
// # Embedding it with your own protocol
//
// A host that already speaks go-plugin keeps its handshake, plugin set and
// typed interface; the manager adds try-activate reloads, drain, crash
// restarts and health around it. Describe the protocol once, load plugins
// with it, and reach the active generation through a lease (a runnable
// program doing this with go-plugin's own KV example is in
// examples/embed):
//
//	kv := &manager.Protocol{
//		Name:      "kv",
//		Handshake: shared.Handshake,                                   // the plugin's go-plugin handshake
//		Plugins:   goplugin.PluginSet{"kv": &shared.KVGRPCPlugin{}},  // your GRPCPlugin, broker and all
//		Dispense:  "kv",
//	}
//	m, _ := manager.New(manager.Config{PluginDir: "plugins"})
//	defer m.Close(ctx)
//	_, err := m.Load(ctx, manager.Spec{Name: "kv", Binary: "kv", Protocol: kv})
//
//	l, err := m.Acquire(ctx, "kv") // the active generation, held until Release
//	if err != nil { ... }
//	defer l.Release()
//	v, err := l.Value.(shared.KV).Get("key")
//
//	_, err = m.Reload(ctx, manager.ReloadRequest{Name: "kv"}) // new calls go to the new generation; leases drain
//
// A Protocol's hooks (Validate, Describe, Ready) default to what works for
// any go-plugin gRPC plugin: a non-nil dispensed value, server reflection,
// and a grpc.health.v1 Check of "plugin". GRPCProtocol does that for a
// plugin you only know by its handshake (Spec.Handshake, what plugind's
// API takes), and NativeProtocol is the plugincontrol.plugin.v1 contract of
// plugins built with package plugin, which Invoke calls.
//
// # Concurrency
//
// Manager.mu guards the registry map. Each plugin entry has an operation
// semaphore that serializes Load/Reload/Unload of that plugin (different
// plugins proceed in parallel) and an atomic pointer to the active
// generation, so reads (List, Invoke, Acquire) never wait behind a reload.
package manager
