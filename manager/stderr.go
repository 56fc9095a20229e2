package manager

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

// stderrSink receives a plugin's stderr from go-plugin: it keeps the last
// stderrTailSize bytes for error reports and forwards complete lines to the
// logger with the plugin's name and generation, at a level derived from the
// line (panics and fatal errors at Error).
type stderrSink struct {
	log *slog.Logger

	mu       sync.Mutex // guards tail, partial, skipping, inPanic
	tail     []byte
	partial  []byte
	skipping bool // the line being received was logged truncated: drop the rest
	inPanic  bool
}

func newStderrSink(log *slog.Logger) *stderrSink { return &stderrSink{log: log} }

func (s *stderrSink) Write(p []byte) (int, error) {
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
func (s *stderrSink) emit(line string) {
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

// Tail returns the last bytes written, at most stderrTailSize.
func (s *stderrSink) Tail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tail
	if len(t) > stderrTailSize {
		t = t[len(t)-stderrTailSize:]
	}
	return string(t)
}
