// Package fleet keeps the desired plugins of a fleet of plugind nodes in
// etcd and makes each node converge to them through its own try-activate
// pipeline. etcd holds the fleet's desired state and each node's liveness
// (a lease) and reports; every plugind keeps doing the actual work, and
// keeps running what it has when etcd is out of reach (fail static).
//
// Keys under the prefix P (plugind --fleet-prefix, default /plugincontrol),
// values protobuf-encoded messages of plugincontrol.v1 (buf breaking guards
// their field numbers, TestRecordEncoding their bytes):
//
//	P/schema                   the layout of these keys: "2" (SchemaVersion)
//	                           for a fleet this plugind started, "1" for an
//	                           older one; both are read and written
//	P/plugins/NAME             FleetPlugin: the desired spec and selector
//	P/nodes/NODE               FleetNode, under the node's lease
//	P/reports/NODE/NAME        FleetPluginStatus, under the node's lease
//	                           (layout 2; layout 1 keeps them by plugin, at
//	                           P/status/NAME/NODE). By node first: all a
//	                           node writes is under P/nodes/NODE,
//	                           P/reports/NODE/, P/managed/NODE/ and
//	                           P/detached/NODE/, so an etcd role can confine
//	                           it to its own keys
//	P/targets/NODE/NAME        FleetTarget: during a rollout, the spec this
//	                           node must run instead of the plugin's (and
//	                           its bake); written by the controller
//	P/rollouts/NAME            Rollout: the last rollout of a plugin and all
//	                           its progress
//	P/election                 the controller's election (concurrency.Election)
//	P/detached/NODE/NAME       a plugin this node no longer follows the fleet
//	                           for (pluginctl fleet detach): it keeps it as
//	                           its own
//	P/managed/NODE/NAME        the spec digest a node was told to run: the
//	                           node's own record of what the fleet manages,
//	                           so that a plugin deleted while the node was
//	                           away is still unloaded when it comes back
//
// The managed and detached keys of a node gone for longer than the node
// retention (ControllerConfig.NodeRetention) are deleted by the leader; the
// node remembers both sets on disk too (AgentConfig.Memory) and writes them
// again when it comes back.
//
// An Agent (one per fleet-enabled plugind) runs this loop per lease:
//
//	      +--------------------------------------------------+
//	      v                                                  |
//	[session] --lease granted--> [register] --> [resync] --> [watch]
//	      ^                                        ^           |  |
//	      |           a watch ended (compaction,   |           |  | plugin key changed:
//	      |           lost leader), a failed read: +-----------+  | reconcile that plugin
//	      |           same lease, backoff                         |
//	      +---- lease lost (etcd out of reach past its TTL), backoff
//
// Only the lease's end ends a session (and, on a clean stop, revokes the
// lease: the node leaves ListNodes at once); a watch error never does.
//
// Reconciling a plugin compares the desired spec (the node's target when a
// rollout set one, else the plugin's spec when this node's labels match the
// selector) with the plugin the local manager runs:
//
//	desired, not loaded        -> record managed, Load
//	desired, another spec      -> record managed, Reload (try-activate)
//	desired, same spec         -> record managed (adopt)
//	not desired, managed       -> Unload, forget managed
//	not desired, not managed   -> nothing (a local plugin)
//
// A spec that failed on this node (its candidate failed, or its bake
// reverted it) is not tried again until it changes; the node reports it as
// failed_spec_digest.
// Nothing is ever unloaded because etcd is unreachable: only a key read
// from etcd makes a node unload.
//
// Nor because the keys vanished: P/schema is read with every resync and at
// the revision of every delete a node sees. An etcd whose P/schema is gone
// or names another layout (an etcdctl del --prefix, a cluster rebuilt or
// restored from a snapshot older than the fleet) is not desired state. The
// node is fenced: it logs why at Error, reports it (FleetStatus.fenced),
// keeps every plugin it runs as it is and acts on nothing until P/schema is
// back (`pluginctl fleet apply` writes it), then resyncs. A node that
// manages no fleet plugin yet (a new fleet) is not fenced by a missing key.
//
// Nor because etcd is another one: a node remembers on disk the cluster id
// of its etcd and the highest revision it saw (AgentConfig.Memory, see
// memory.go). A resync that finds another cluster id, or a revision behind
// the remembered one (a restore from an older snapshot, which still holds
// P/schema), fences the node the same way, until an operator adopts that
// etcd (AdoptFleetEtcd; `pluginctl fleet adopt`). A restore can keep the
// node's lease and so its session, and the client resumes its watches
// silently (from a revision the restored etcd has not reached: they just
// wait): the node also checks the cluster id and revision in every answer
// to its lease's keep-alives, and a mismatch ends its watches for a
// resync, whose linearizable read decides.
package fleet
