// Package record is the manager's durable data: the plugin Spec and its
// validation, the records and audit chain a Store keeps, and the Store
// interface itself.
//
// It imports nothing of the manager's runtime (no go-plugin, no process
// control), so a Store implementation (package store), the wire encoding
// and tools that read a state directory depend on the data alone. Package
// manager re-exports every name here as an alias, so embedders keep
// writing manager.Spec.
package record
