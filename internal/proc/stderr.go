package proc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

const (
	stderrTailSize = 4096
	maxLogLine     = 4096
	maxPanicStack  = 64 << 10
	// panicQuiet ends a panic's stack trace: the lines after a "panic: "
	// line that arrive within it of each other are its stack.
	panicQuiet = 100 * time.Millisecond
)

// StderrSink receives a plugin generation's stderr from go-plugin and
// turns it into log records with the plugin's name and generation. It keeps
// the last stderrTailSize bytes for error reports.
//
// go-plugin hands stderr over on two paths. The process's stderr pipe is
// read by go-plugin itself: it writes each chunk to Pipe (kept for the
// tail) and then logs the line through Logger, having parsed hclog JSON
// lines (level, message, fields) and "[LEVEL]" prefixes, and marked the
// lines after a Go panic as errors. What a Go plugin writes to os.Stderr
// after plugin.Serve comes over go-plugin's stdio stream to Write, which
// splits and logs the lines itself. Both paths meet in one place that
// makes a panic and its stack trace one Error record (the stack as the
// "stack" attribute), and truncates long lines to maxLogLine bytes, logged
// once.
type StderrSink struct {
	log *slog.Logger

	mu      sync.Mutex // guards every field below
	tail    []byte
	partial []byte // the stdio stream's incomplete line
	// skipping: the stdio stream's line being received was logged
	// truncated: drop the rest of it.
	skipping bool
	// pipeLine is how many bytes of the pipe's current line go-plugin has
	// written, so that Logger tells the first chunk of a long line (logged,
	// truncated) from the rest (dropped).
	pipeLine int
	// A panic being collected: its first line and stack, flushed after
	// panicQuiet without a line, or by Close.
	panicMsg   string
	panicStack []string
	panicSize  int
	panicTimer *time.Timer
	closed     bool
}

// NewStderrSink returns a sink logging to log.
func NewStderrSink(log *slog.Logger) *StderrSink { return &StderrSink{log: log} }

// keep appends p to the tail; s.mu is held.
func (s *StderrSink) keep(p []byte) {
	s.tail = append(s.tail, p...)
	if len(s.tail) > 2*stderrTailSize {
		s.tail = append(s.tail[:0], s.tail[len(s.tail)-stderrTailSize:]...)
	}
}

// Pipe is go-plugin's ClientConfig.Stderr: the raw bytes of the process's
// stderr pipe, for the tail (go-plugin logs them through Logger).
func (s *StderrSink) Pipe() io.Writer { return pipeWriter{s} }

type pipeWriter struct{ s *StderrSink }

func (w pipeWriter) Write(p []byte) (int, error) {
	s := w.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keep(p)
	if i := bytes.LastIndexByte(p, '\n'); i >= 0 {
		s.pipeLine = len(p) - i - 1
	} else {
		s.pipeLine += len(p)
	}
	return len(p), nil
}

// Write is go-plugin's ClientConfig.SyncStderr: what the plugin wrote to
// os.Stderr, over go-plugin's stdio stream.
func (s *StderrSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keep(p)
	s.partial = append(s.partial, p...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		if s.skipping {
			s.skipping = false // the end of a line already logged truncated
		} else {
			line := string(s.partial[:i])
			s.record(lineLevel(line), line, nil)
		}
		s.partial = s.partial[i+1:]
	}
	switch {
	case s.skipping:
		s.partial = s.partial[:0]
	case len(s.partial) > maxLogLine:
		// Log a long line once, truncated, and drop the rest of it as it
		// arrives (go-plugin hands it over in chunks).
		s.record(lineLevel(string(s.partial[:maxLogLine])), string(s.partial[:maxLogLine]), nil)
		s.partial = s.partial[:0]
		s.skipping = true
	}
	return len(p), nil
}

// lineLevel guesses the level of a plain line, as go-plugin does for the
// pipe ("[ERROR]" prefixes), and from slog's text format.
func lineLevel(line string) slog.Level {
	switch {
	case strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: "),
		strings.HasPrefix(line, "[ERROR]"), strings.Contains(line, "level=ERROR"):
		return slog.LevelError
	case strings.HasPrefix(line, "[WARN]"), strings.Contains(line, "level=WARN"):
		return slog.LevelWarn
	case strings.HasPrefix(line, "[DEBUG]"), strings.HasPrefix(line, "[TRACE]"), strings.Contains(line, "level=DEBUG"):
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// record logs one line of the plugin's, collecting a panic's stack into
// one record; s.mu is held.
func (s *StderrSink) record(level slog.Level, msg string, attrs []slog.Attr) {
	if len(msg) > maxLogLine {
		msg = msg[:maxLogLine] + "…(truncated)"
	}
	if strings.HasPrefix(msg, "panic: ") || strings.HasPrefix(msg, "fatal error: ") {
		s.flushPanic()
		s.panicMsg = msg
		s.armPanic()
		return
	}
	if s.panicMsg != "" && len(attrs) == 0 {
		if s.panicSize < maxPanicStack {
			s.panicStack = append(s.panicStack, msg)
			s.panicSize += len(msg) + 1
		}
		s.armPanic()
		return
	}
	s.flushPanic()
	s.log.LogAttrs(context.Background(), level, msg, append(attrs, slog.String("stream", "stderr"))...)
}

// armPanic (re)starts the quiet timer of the panic being collected.
func (s *StderrSink) armPanic() {
	if s.closed {
		return
	}
	if s.panicTimer == nil {
		s.panicTimer = time.AfterFunc(panicQuiet, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.flushPanic()
		})
		return
	}
	s.panicTimer.Reset(panicQuiet)
}

// flushPanic logs the panic being collected, if any; s.mu is held.
func (s *StderrSink) flushPanic() {
	if s.panicMsg == "" {
		return
	}
	stack := strings.Trim(strings.Join(s.panicStack, "\n"), "\n")
	s.log.LogAttrs(context.Background(), slog.LevelError, s.panicMsg, slog.String("stack", stack), slog.String("stream", "stderr"))
	s.panicMsg, s.panicStack, s.panicSize = "", nil, 0
}

// Close logs what is still being collected (the process is gone). The sink
// keeps its tail.
func (s *StderrSink) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.panicTimer != nil {
		s.panicTimer.Stop()
	}
	s.flushPanic()
}

// Logger is go-plugin's ClientConfig.Logger. go-plugin logs its own
// progress through it (kept at Debug) and the lines of the plugin's stderr
// pipe through a Named child (at the level go-plugin parsed).
func (s *StderrSink) Logger() hclog.Logger { return &hclogBridge{s: s} }

// hclogBridge is the part of hclog.Logger go-plugin uses, onto the sink:
// go-hclog has no slog handler of its own.
type hclogBridge struct {
	s      *StderrSink
	plugin bool // the plugin's stderr (a Named child), not go-plugin's own lines
	args   []any
}

func (b *hclogBridge) Log(level hclog.Level, msg string, args ...any) {
	s := b.s
	lvl := slog.LevelDebug
	if b.plugin {
		switch level {
		case hclog.Trace, hclog.Debug:
		case hclog.Warn:
			lvl = slog.LevelWarn
		case hclog.Error:
			lvl = slog.LevelError
		default:
			lvl = slog.LevelInfo
		}
	}
	if !s.log.Enabled(context.Background(), lvl) && !(b.plugin && (strings.HasPrefix(msg, "panic: ") || strings.HasPrefix(msg, "fatal error: "))) {
		return
	}
	attrs := make([]slog.Attr, 0, (len(b.args)+len(args))/2)
	all := append(append([]any(nil), b.args...), args...)
	for i := 0; i+1 < len(all); i += 2 {
		k, _ := all[i].(string)
		if k == "timestamp" {
			continue // the plugin's own time: the record has the host's
		}
		attrs = append(attrs, slog.Any(k, all[i+1]))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.plugin && len(args) == 0 {
		// A plain line: go-plugin wrote it to Pipe just before. A chunk of
		// a line longer than go-plugin's buffer is logged once, truncated.
		switch {
		case s.pipeLine > len(msg):
			return // the rest of a long line
		case s.pipeLine == len(msg) && len(msg) > 0:
			msg = truncateLong(msg)
		}
	}
	s.record(lvl, msg, attrs)
}

func truncateLong(msg string) string {
	if len(msg) > maxLogLine {
		return msg[:maxLogLine] + "…(truncated)"
	}
	return msg
}

func (b *hclogBridge) Trace(msg string, args ...any) { b.Log(hclog.Trace, msg, args...) }
func (b *hclogBridge) Debug(msg string, args ...any) { b.Log(hclog.Debug, msg, args...) }
func (b *hclogBridge) Info(msg string, args ...any)  { b.Log(hclog.Info, msg, args...) }
func (b *hclogBridge) Warn(msg string, args ...any)  { b.Log(hclog.Warn, msg, args...) }
func (b *hclogBridge) Error(msg string, args ...any) { b.Log(hclog.Error, msg, args...) }
func (b *hclogBridge) IsTrace() bool                 { return false }
func (b *hclogBridge) IsDebug() bool                 { return b.s.log.Enabled(context.Background(), slog.LevelDebug) }
func (b *hclogBridge) IsInfo() bool                  { return true }
func (b *hclogBridge) IsWarn() bool                  { return true }
func (b *hclogBridge) IsError() bool                 { return true }
func (b *hclogBridge) ImpliedArgs() []any            { return b.args }
func (b *hclogBridge) With(args ...any) hclog.Logger {
	return &hclogBridge{s: b.s, plugin: b.plugin, args: append(append([]any(nil), b.args...), args...)}
}
func (b *hclogBridge) Name() string { return "" }

// Named is how go-plugin logs the plugin's stderr lines.
func (b *hclogBridge) Named(string) hclog.Logger {
	return &hclogBridge{s: b.s, plugin: true, args: b.args}
}
func (b *hclogBridge) ResetNamed(name string) hclog.Logger { return b.Named(name) }
func (b *hclogBridge) SetLevel(hclog.Level)                {}

// GetLevel is Debug when the logger takes Debug records (go-plugin then
// parses the plugin's debug lines), else Info.
func (b *hclogBridge) GetLevel() hclog.Level {
	if b.IsDebug() {
		return hclog.Debug
	}
	return hclog.Info
}
func (b *hclogBridge) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return log.New(b.StandardWriter(nil), "", 0)
}
func (b *hclogBridge) StandardWriter(*hclog.StandardLoggerOptions) io.Writer { return io.Discard }

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

// Follow reads a plugin's stderr pipe until EOF the way go-plugin does for
// the plugins it starts (go-plugin's Client.logStderr): each line is kept
// for the tail, hclog JSON lines are logged with their level and fields,
// "[LEVEL]" prefixes set the level, a Go panic and the lines after it are
// errors, and everything else is logged at debug. It is for a plugin
// attached rather than started (a reload re-executed plugind, or a
// plugind adopted the plugins of a crashed one): go-plugin does not read
// the stderr of those.
func (s *StderrSink) Follow(r io.Reader) {
	l := s.Logger().Named("stderr")
	pipe := s.Pipe()
	br := bufio.NewReaderSize(r, 64<<10) // go-plugin's PluginLogBufferSize
	continuation, inPanic := false, false
	for {
		line, isPrefix, err := br.ReadLine()
		if err != nil {
			return
		}
		_, _ = pipe.Write(line)
		if isPrefix || continuation {
			l.Debug(string(line))
			if !isPrefix {
				_, _ = pipe.Write([]byte{'\n'})
			}
			continuation = isPrefix
			continue
		}
		_, _ = pipe.Write([]byte{'\n'})
		if lvl, msg, args, ok := hclogLine(line); ok {
			l.Log(lvl, msg, args...)
			continue
		}
		switch text := string(line); {
		case strings.HasPrefix(text, "[TRACE]"):
			l.Trace(text)
		case strings.HasPrefix(text, "[DEBUG]"):
			l.Debug(text)
		case strings.HasPrefix(text, "[INFO]"):
			l.Info(text)
		case strings.HasPrefix(text, "[WARN]"):
			l.Warn(text)
		case strings.HasPrefix(text, "[ERROR]"):
			l.Error(text)
		case strings.HasPrefix(text, "panic: ") || strings.HasPrefix(text, "fatal error: "):
			inPanic = true
			l.Error(text)
		case inPanic:
			l.Error(text)
		default:
			l.Debug(text)
		}
	}
}

// hclogLine parses an hclog JSON line ({"@level":..., "@message":...,
// fields...}) as go-plugin's parseJSON does; ok is false for anything
// else.
func hclogLine(line []byte) (level hclog.Level, msg string, args []any, ok bool) {
	if len(line) == 0 || line[0] != '{' {
		return 0, "", nil, false
	}
	var raw map[string]any
	if json.Unmarshal(line, &raw) != nil {
		return 0, "", nil, false
	}
	lv, _ := raw["@level"].(string)
	level = hclog.LevelFromString(lv)
	if level == hclog.NoLevel {
		return 0, "", nil, false
	}
	msg, _ = raw["@message"].(string)
	delete(raw, "@level")
	delete(raw, "@message")
	delete(raw, "@timestamp")
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, k, raw[k])
	}
	return level, msg, args, true
}
