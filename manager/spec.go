package manager

import (
	"context"

	"github.com/plugincontrol/plugincontrol/manager/hub"
	"github.com/plugincontrol/plugincontrol/manager/record"
)

// The manager's data types live in package record, so a Store, the wire
// encoding and tools that read a state directory need none of the
// manager's runtime; these aliases keep them manager.Spec and so on for
// embedders.
type (
	// Spec is the desired state of one plugin instance (record.Spec).
	Spec = record.Spec
	// Action is what happens when a plugin becomes unhealthy.
	Action = record.Action
	// HealthPolicy tunes failure tracking, liveness probing and restarts.
	HealthPolicy = record.HealthPolicy
	// FailureLimit judges one failure class.
	FailureLimit = record.FailureLimit
	// FailureClass is a kind of plugin failure.
	FailureClass = record.FailureClass
	// Handshake is a foreign plugin's go-plugin handshake.
	Handshake = record.Handshake
	// Resources are resource limits of a plugin's processes.
	Resources = record.Resources
	// InvalidError is a request that names a bad field.
	InvalidError = record.InvalidError
	// Store keeps the daemon's desired state and its audit log durably.
	Store = record.Store
	// Change is one change of the desired state and its audit record.
	Change = record.Change
	// PluginRecord is the durable desired state of one plugin.
	PluginRecord = record.PluginRecord
	// AuditRecord is one mutation.
	AuditRecord = record.AuditRecord
	// AuditQuery selects a page of the audit log.
	AuditQuery = record.AuditQuery
	// AuditPage is a page of the audit log, newest first.
	AuditPage = record.AuditPage
	// AuditCheckpoint is the last record retention removed from the log.
	AuditCheckpoint = record.AuditCheckpoint
	// State is a plugin's health state.
	State = record.State
	// Health is the health record of one plugin instance.
	Health = record.Health
	// PanicRecord is the last panic of a plugin.
	PanicRecord = record.PanicRecord
	// FailureCount is a class's count in a plugin's health record.
	FailureCount = record.FailureCount
	// BakeResult says how a bake went.
	BakeResult = record.BakeResult
	// BakeStatus describes the current or last bake of a plugin.
	BakeStatus = record.BakeStatus
	// EventType says what an Event is.
	EventType = hub.EventType
	// Event is one item of a health watch.
	Event = hub.Event
	// Watch is a subscription to health events (see hub.Watch).
	Watch = hub.Watch
	// WatchOption configures Watch.
	WatchOption = hub.WatchOption
	// EvictedError is what Watch.Next returns for a watch evicted for
	// falling behind.
	EvictedError = hub.EvictedError
)

// States, numbered as plugincontrol.v1.PluginState.
const (
	StateUnknown   = record.StateUnknown
	StateStarting  = record.StateStarting
	StateServing   = record.StateServing
	StateDegraded  = record.StateDegraded
	StateUnhealthy = record.StateUnhealthy
	StateStopped   = record.StateStopped
)

// Bake results, numbered as plugincontrol.v1.BakeResult.
const (
	BakeUnknown   = record.BakeUnknown
	BakeBaking    = record.BakeBaking
	BakeKept      = record.BakeKept
	BakeReverted  = record.BakeReverted
	BakeCancelled = record.BakeCancelled
)

// Event types, numbered as plugincontrol.v1.HealthEventType.
const (
	EventUnknown  = hub.EventUnknown
	EventSnapshot = hub.EventSnapshot
	EventSynced   = hub.EventSynced
	EventChanged  = hub.EventChanged
	EventRemoved  = hub.EventRemoved
	EventBookmark = hub.EventBookmark
)

// Internal marks a watch the daemon makes for itself (the server's
// grpc.health.v1 mirror): Config.MaxWatchers and Watchers count only the
// others, so the limit is the number of client streams it says.
func Internal() WatchOption { return hub.Internal() }

// Actions on unhealthy.
const (
	ActionNone    = record.ActionNone
	ActionRestart = record.ActionRestart
	ActionStop    = record.ActionStop
)

// Failure classes, numbered as plugincontrol.v1.FailureClass.
const (
	FailureUnknown = record.FailureUnknown
	FailurePanic   = record.FailurePanic
	FailureCrash   = record.FailureCrash
	FailureHang    = record.FailureHang
	FailureTimeout = record.FailureTimeout
	FailureStart   = record.FailureStart
)

// Classes lists the failure classes in order.
var Classes = record.Classes

// ValidateName checks an instance name.
func ValidateName(name string) error { return record.ValidateName(name) }

// WithCaller returns a context naming the caller of a mutation, recorded in
// the audit log (the server sets it from the authenticated identity).
func WithCaller(ctx context.Context, caller string) context.Context {
	return record.WithCaller(ctx, caller)
}

// CallerFrom returns the caller named by WithCaller, or "plugind" (the
// daemon itself: restarts, policy actions, restore).
func CallerFrom(ctx context.Context) string { return record.CallerFrom(ctx) }
