// Package manager is the core of plugincontrol: a registry of plugin
// instances, the candidate pipeline that launches and validates them, the
// try-activate swap and drain, crash supervision and the panic tracker,
// over two packages of its own: manager/record (the data: specs, health
// records, the Store interface and what it keeps; every name is aliased
// here) and manager/hub (the health hub behind Watch and Health). It has
// no transport code: embed it in your own host, or run it behind gRPC with
// package server (as plugind does).
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
//	m, _ := manager.New(manager.Config{PluginDir: "plugins",
//		Protocol: func(manager.Spec) *manager.Protocol { return kv }}) // chosen per spec, at every launch
//	defer m.Close(ctx)
//	_, err := m.Load(ctx, manager.Spec{Name: "kv", Binary: "kv"})
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
// # Lifecycle
//
// Each plugin has one state machine, in lifecycle.go: the table transitions
// says which lifecycle event leads from which state to which, and
// transitionLocked is the only code that changes a plugin's state, its
// since and its reason, and the only code that publishes its health.
// lifecycle.go also owns the rest of the lifecycle: activateLocked is the
// one way a generation becomes active (its generation, spec and plugin name
// with it), takeActive and deactivate the ways it stops being, and
// failedLocked (or a failure event's reason) the last error. A refused
// event is a bug: it is logged, counted (RefusedTransitions, the
// plugincontrol_lifecycle_refused_transitions_total metric), and fails the
// tests.
//
//	          launch (Load, restore)
//	                    │
//	                    ▼
//	 exited ┌──────► STARTING ─────────────── gave-up ──────────────┐
//	 (crash,│          │  ↺ exited (a restart's candidate failed)   │
//	restart │ activated│                                             ▼
//	pending)│          ▼                                         UNHEALTHY ↺ fault
//	        ├────── SERVING ◄──── activated (reload, restart ───────┤
//	        │        │  ▲         on unhealthy, revert)             │
//	        │   fault│  │recovered, activated                      │
//	        │        ▼  │                                           │
//	        └────── DEGRADED ─────────── fault-limit ──────────────►┘
//	                 ↺ fault          (also SERVING ─ fault-limit ─►)
//
//	STARTING, SERVING, DEGRADED, UNHEALTHY ── stopped ──► STOPPED ── activated ──► SERVING
//	any state ── removed ──► gone (Unload, a failed first Load)
//
// The whole table (updated, allowed in every state, keeps the state):
//
//	from \ event  activated  fault      fault-limit  recovered  exited    gave-up    stopped
//	STARTING      SERVING    -          -            -          STARTING  UNHEALTHY  STOPPED
//	SERVING       SERVING    DEGRADED   UNHEALTHY    -          STARTING  UNHEALTHY  STOPPED
//	DEGRADED      SERVING    DEGRADED   UNHEALTHY    SERVING    STARTING  UNHEALTHY  STOPPED
//	UNHEALTHY     SERVING    UNHEALTHY  UNHEALTHY    -          STARTING  UNHEALTHY  STOPPED
//	STOPPED       SERVING    -          -            -          -         -          STOPPED
//
// Failures are counted per class (recovered panics, crashes, hangs found
// by liveness probing, calls timing out inside the plugin, failed
// restarts), each against its own threshold in the HealthPolicy; panics,
// hangs and timeouts make the active generation DEGRADED, then UNHEALTHY at
// a threshold (once per generation). Crashes and failed restarts are
// judged by the supervisor, which restarts with backoff until a limit,
// then gives up. A Reload with a bake keeps the previous generation's
// process warm: if the new generation becomes UNHEALTHY or crashes during
// the bake, the manager reverts to that process by itself.
//
// # Containment
//
// Config.Containment says how a plugin's descendants are kept from
// outliving it (contain.go): ContainProcessGroup (the default: nothing of
// the embedding process changes), ContainAuto (a cgroup v2 per generation,
// stopped with cgroup.kill; else ContainSubreaper) or ContainSubreaper (the
// process is a child subreaper; what a stopped generation left, known by
// the proc.MarkEnv variable every plugin process inherits, is killed, and
// orphans are reaped). Config.Reaper adds a process that kills it all if
// this one is SIGKILLed.
//
// # Concurrency
//
// Manager.mu guards the registry map. Each plugin entry has an operation
// semaphore that serializes Load/Reload/Unload, restarts, reverts and the
// end of a bake of that plugin (different plugins proceed in parallel), an
// atomic pointer to the active generation, so reads (List, Invoke, Acquire)
// never wait behind a reload, and a mutex (entry.mu) for its state, counts
// and spec, held only for memory updates: the store is written under the
// operation semaphore, never under entry.mu, so List and Health never wait
// on an fsync. Lock order: Manager.gate (background actions, read side;
// Freeze, write side), then an entry's operation semaphore, then
// Manager.mu, then entry.mu; the hub's lock (manager/hub) is taken under
// entry.mu and Manager.mu (publishing never blocks and never touches the disk: the
// durable revision mark is raised half a block ahead, in the background;
// TestReadersNeverWaitForTheStore holds the store and shows List, Health
// and Watch still answering).
package manager
