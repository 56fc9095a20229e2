package proc

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
)

const (
	stderrTailSize = 4096
	maxLogLine     = 4096
)

// StderrSink receives a plugin's stderr from go-plugin: it keeps the last
// stderrTailSize bytes for error reports and forwards complete lines to the
// logger with the plugin's name and generation, at a level derived from the
// line (panics and fatal errors at Error).
type StderrSink struct {
	log *slog.Logger

	mu       sync.Mutex // guards tail, partial, skipping, inPanic
	tail     []byte
	partial  []byte
	skipping bool // the line being received was logged truncated: drop the rest
	inPanic  bool
}

// NewStderrSink returns a sink logging to log.
func NewStderrSink(log *slog.Logger) *StderrSink { return &StderrSink{log: log} }

func (s *StderrSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tail = append(s.tail, p...)
	if len(s.tail) > 2*stderrTailSize {
		s.tail = append(s.tail[:0], s.tail[len(s.tail)-stderrTailSize:]...)
	}
	s.partial = append(s.partial, p...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		if s.skipping {
			s.skipping = false // the end of a line already logged truncated
		} else {
			s.emit(string(s.partial[:i]))
		}
		s.partial = s.partial[i+1:]
	}
	switch {
	case s.skipping:
		s.partial = s.partial[:0]
	case len(s.partial) > maxLogLine:
		// Log a long line once, truncated, and drop the rest of it as it
		// arrives (go-plugin hands it over in chunks).
		s.emit(string(s.partial[:maxLogLine]) + "…(truncated)")
		s.partial = s.partial[:0]
		s.skipping = true
	}
	return len(p), nil
}

// emit logs one line; s.mu is held.
func (s *StderrSink) emit(line string) {
	if len(line) > maxLogLine {
		line = line[:maxLogLine] + "…(truncated)"
	}
	level := slog.LevelInfo
	switch {
	case strings.HasPrefix(line, "{\"@level\":\"debug\"") || strings.HasPrefix(line, "{\"@level\":\"trace\""):
		// go-plugin's own JSON log lines from inside the plugin.
		level = slog.LevelDebug
	case strings.HasPrefix(line, "{\"@level\":\"warn\""):
		level = slog.LevelWarn
	case strings.HasPrefix(line, "{\"@level\":\"error\""):
		level = slog.LevelError
	case strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: "):
		s.inPanic = true
		level = slog.LevelError
	case s.inPanic:
		level = slog.LevelError
	case strings.Contains(line, "[ERROR]") || strings.Contains(line, "level=ERROR"):
		level = slog.LevelError
	case strings.Contains(line, "[WARN]") || strings.Contains(line, "level=WARN"):
		level = slog.LevelWarn
	case strings.Contains(line, "[DEBUG]") || strings.Contains(line, "[TRACE]") || strings.Contains(line, "level=DEBUG"):
		level = slog.LevelDebug
	}
	s.log.Log(context.Background(), level, line, slog.String("stream", "stderr"))
}

// PluginTail is Tail without the JSON log lines at debug and trace level
// that go-plugin writes from inside a Go plugin (such as its "plugin
// address" line): what a candidate's failure report shows.
func (s *StderrSink) PluginTail() string {
	t := s.Tail()
	var b strings.Builder
	for _, line := range strings.SplitAfter(t, "\n") {
		if strings.HasPrefix(line, "{\"@level\":\"debug\"") || strings.HasPrefix(line, "{\"@level\":\"trace\"") {
			continue
		}
		b.WriteString(line)
	}
	return b.String()
}

// LastWords is the line of a plugin's stderr that best says why it
// stopped: its Go panic message when there is one, else its last line that
// is not a go-plugin debug line (at most 300 bytes); "" when there is none.
func (s *StderrSink) LastWords() string {
	tail := s.PluginTail()
	lines := strings.Split(strings.TrimRight(tail, "\n"), "\n")
	for _, l := range lines {
		if strings.HasPrefix(l, "panic: ") || strings.HasPrefix(l, "fatal error: ") {
			return truncateLine(l)
		}
	}
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return truncateLine(l)
		}
	}
	return ""
}

func truncateLine(l string) string {
	if len(l) > 300 {
		return l[:300] + "…"
	}
	return l
}

// Tail returns the last bytes written, at most stderrTailSize.
func (s *StderrSink) Tail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tail
	if len(t) > stderrTailSize {
		t = t[len(t)-stderrTailSize:]
	}
	return string(t)
}
