package manager

import (
	"context"
	"fmt"

	pluginv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/plugin/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// InvokeResult is a plugin's answer.
type InvokeResult struct {
	Payload    []byte
	Generation uint64
}

// maxMethodLen bounds method names.
const maxMethodLen = 256

// Invoke calls method on the active generation of the named plugin. It never
// waits behind a reload: a call admitted on a generation finishes there even
// if a swap happens meanwhile.
func (m *Manager) Invoke(ctx context.Context, name, method string, payload []byte) (*InvokeResult, error) {
	if method == "" || len(method) > maxMethodLen {
		return nil, &InvalidError{Field: "method", Reason: fmt.Sprintf("must be 1..%d bytes", maxMethodLen)}
	}
	e, err := m.lookup(name)
	if err != nil {
		return nil, err
	}
	inst, err := admit(ctx, e)
	if err != nil {
		return nil, err
	}
	defer inst.release()
	if inst.native == nil {
		e.mu.Lock()
		where := e.endpoint
		e.mu.Unlock()
		if where == "" {
			where = "through a lease (Manager.Acquire)"
		}
		return nil, fmt.Errorf("plugin %q speaks protocol %q, not the native contract Invoke calls: call its own API at %s: %w", name, inst.proto.Name, where, ErrNotNative)
	}
	gen := inst.generation()
	ctx, cancel := context.WithTimeout(ctx, m.cfg.CallTimeout)
	defer cancel()
	resp, err := inst.native.Invoke(ctx, &pluginv1.InvokeRequest{Method: method, Payload: payload})
	if err != nil {
		if status.Code(err) == codes.Canceled && ctx.Err() == nil {
			// The caller did not cancel: the generation's connection was
			// closed under the call (the process crashed or was stopped).
			// That is the plugin being unavailable, which callers retry.
			err = status.Errorf(codes.Unavailable, "plugin %q generation %d went away during the call", name, gen)
		}
		ce := &CallError{Plugin: name, Generation: gen, Err: err, Panic: m.recordCallError(e, gen, err)}
		return nil, ce
	}
	return &InvokeResult{Payload: resp.GetPayload(), Generation: gen}, nil
}

// recordCallError counts a call's error that is a failure of the plugin (a
// recovered panic, a timeout inside it) against generation gen, and returns
// the panic, if it was one.
func (m *Manager) recordCallError(e *entry, gen uint64, err error) *PanicInfo {
	class, p := classOfCallError(err)
	switch class {
	case FailurePanic:
		m.recordFault(e, gen, FailurePanic, &PanicRecord{Message: p.Message, Fingerprint: p.Fingerprint}, "")
	case FailureTimeout:
		m.recordFault(e, gen, FailureTimeout, nil, "")
	}
	return p
}

// admit returns the active generation with one call admitted on it. A
// generation refuses calls once it drains; a swap publishes the new one
// before draining the old, so retrying on the new pointer always makes
// progress.
func admit(ctx context.Context, e *entry) (*instance, error) {
	for {
		inst := e.active.Load()
		if inst == nil {
			e.mu.Lock()
			st, reason, attaching := e.state, e.lastError, e.attaching
			e.mu.Unlock()
			if attaching != nil {
				// A reload's takeover of the serving process: wait for it.
				select {
				case <-attaching:
					continue
				case <-ctx.Done():
					return nil, fmt.Errorf("plugin %q: waiting for the reloaded daemon to take it over: %w", e.name, ctx.Err())
				}
			}
			if reason != "" {
				return nil, fmt.Errorf("plugin %q is %s (%s): %w", e.name, st, reason, ErrUnavailable)
			}
			return nil, fmt.Errorf("plugin %q is %s: %w", e.name, st, ErrUnavailable)
		}
		if inst.acquire() {
			return inst, nil
		}
		if e.active.Load() == inst {
			return nil, fmt.Errorf("plugin %q is stopping: %w", e.name, ErrUnavailable)
		}
	}
}
