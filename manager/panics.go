package manager

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"regexp"
	"runtime/debug"
	"strings"

	"github.com/plugincontrol/plugincontrol/plugin"
)

// Recover records a panic of the caller's goroutine against plugin, for
// embedders' own goroutines that work on a plugin's behalf:
//
//	go func() {
//		defer m.Recover("echo", "sync")
//		...
//	}()
//
// It must be deferred directly. The panic is swallowed after it is counted
// like a recovered plugin panic. When there is no panic it does nothing and
// allocates nothing.
func (m *Manager) Recover(pluginName, op string) {
	r := recover()
	if r == nil {
		return
	}
	m.recordRecovered(pluginName, op, r)
}

// recordRecovered is Recover's slow path, kept out of line so the fast path
// stays allocation-free.
//
//go:noinline
func (m *Manager) recordRecovered(pluginName, op string, r any) {
	msg := fmt.Sprintf("%s: %v", op, r)
	fp := plugin.Fingerprint(2)
	m.log.Error("recovered panic", slog.String("plugin", pluginName), slog.String("op", op),
		slog.String("panic", msg), slog.String("fingerprint", fp), slog.String("stack", string(debug.Stack())))
	m.mu.RLock()
	e := m.plugins[pluginName]
	m.mu.RUnlock()
	if e == nil {
		return
	}
	e.mu.Lock()
	gen := e.generation
	e.mu.Unlock()
	m.recordFault(e, gen, FailurePanic, &PanicRecord{Message: msg, Fingerprint: fp}, "")
}

var (
	panicLineRE = regexp.MustCompile(`(?m)^panic: (.*)$`)
	frameArgsRE = regexp.MustCompile(`\(.*\)$`)
	frameOffRE  = regexp.MustCompile(` \+0x[0-9a-f]+$`)
)

// panicFromStderr extracts the panic message and a fingerprint from a Go
// crash trace on stderr. The fingerprint hashes the panicking goroutine's
// frames (function and file:line, no arguments or offsets), so it is stable
// across crashes of the same binary at the same site.
func panicFromStderr(tail string) *PanicRecord {
	loc := panicLineRE.FindStringSubmatchIndex(tail)
	if loc == nil {
		return nil
	}
	msg := strings.TrimSpace(tail[loc[2]:loc[3]])
	rest := tail[loc[1]:]
	h := sha256.New()
	inTrace := false
	for _, line := range strings.Split(rest, "\n") {
		switch {
		case strings.HasPrefix(line, "goroutine "):
			if inTrace {
				goto done
			}
			inTrace = true
		case !inTrace || line == "":
			if inTrace && line == "" {
				goto done
			}
		case strings.HasPrefix(line, "\t"):
			h.Write([]byte(frameOffRE.ReplaceAllString(strings.TrimSpace(line), "")))
			h.Write([]byte{'\n'})
		default:
			h.Write([]byte(frameArgsRE.ReplaceAllString(line, "")))
			h.Write([]byte{' '})
		}
	}
done:
	return &PanicRecord{Message: msg, Fingerprint: hex.EncodeToString(h.Sum(nil)[:8])}
}
