package server

import (
	"github.com/plugincontrol/plugincontrol/internal/rpcerr"
)

// toStatus maps a manager error to a gRPC status (see package rpcerr, the
// one place codes are chosen).
func toStatus(err error) error { return rpcerr.Status(err) }

// invalid is an InvalidArgument for a request field that never reached the
// manager (such as a malformed Duration).
func invalid(field, reason string) error { return rpcerr.Invalid(field, reason) }
