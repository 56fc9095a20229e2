package contract_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

// step is one grpcurl invocation of a transcript.
type step struct {
	title string
	data  string   // -d, if any
	extra []string // flags before the address
	args  []string // after the address: list, describe X, or a method
}

const (
	ctl = "plugincontrol.v1.PluginControlService/"
	gw  = "plugincontrol.v1.PluginGatewayService/"
)

// transcript is the operator's walkthrough of the README, in order: every
// step's output depends only on the steps before it.
var transcript = []step{
	{title: "the services", args: []string{"list"}},
	{title: "the control API", args: []string{"describe", "plugincontrol.v1.PluginControlService"}},
	{title: "the gateway", args: []string{"describe", "plugincontrol.v1.PluginGatewayService"}},
	{title: "a spec", args: []string{"describe", "plugincontrol.v1.PluginSpec"}},
	{title: "load a second instance of echo", data: `{"spec":{"name":"echo2","binary":"echo"}}`, args: []string{ctl + "Load"}},
	{title: "load it again: AlreadyExists", data: `{"spec":{"name":"echo2","binary":"echo"}}`, args: []string{ctl + "Load"}},
	{title: "a bad name: InvalidArgument with a BadRequest", data: `{"spec":{"name":"Echo 2","binary":"echo"}}`, args: []string{ctl + "Load"}},
	{title: "load go-plugin's KV example, a foreign plugin, by its handshake: its own API is at its endpoint", data: `{"spec":{"name":"kv","binary":"kv","handshake":{"protocol_version":1,"magic_cookie_key":"BASIC_PLUGIN","magic_cookie_value":"hello"}}}`, args: []string{ctl + "Load"}},
	{title: "Invoke is the native contract's: a foreign plugin is FailedPrecondition", data: `{"plugin":"kv","method":"get"}`, args: []string{gw + "Invoke"}},
	{title: "unload it", data: `{"name":"kv"}`, args: []string{ctl + "Unload"}},
	{title: "what runs", args: []string{ctl + "ListPlugins"}},
	{title: "call echo", data: `{"plugin":"echo","method":"echo","payload":"aGVsbG8="}`, args: []string{gw + "Invoke"}},
	{title: "reload to a binary that is never ready: FailedPrecondition, generation 1 stays", data: `{"name":"echo","spec":{"name":"echo","binary":"notready"}}`, args: []string{ctl + "Reload"}},
	{title: "reload with a stale expected_generation: Aborted", data: `{"name":"echo","expected_generation":7}`, args: []string{ctl + "Reload"}},
	{title: "reload for real", data: `{"name":"echo"}`, args: []string{ctl + "Reload"}},
	{title: "health", data: `{"names":["echo","echo2"]}`, args: []string{ctl + "Health"}},
	{title: "a short health stream: snapshot, SYNCED, then grpcurl's deadline", data: `{"names":["echo"]}`, extra: []string{"-max-time", "1"}, args: []string{ctl + "WatchHealth"}},
	{title: "unload", data: `{"name":"echo2"}`, args: []string{ctl + "Unload"}},
	{title: "unload an unknown plugin: NotFound", data: `{"name":"echo2"}`, args: []string{ctl + "Unload"}},
}

// masks replace what differs between runs with stable placeholders. Order
// matters: paths first, then hashes, then times and numbers.
var masks = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`[0-9a-fA-F]{64}`), "<SHA256>"},
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`), "<TIME>"},
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d{4}`), "<TIME>"},
	{regexp.MustCompile(`"-?\d+(\.\d+)?s"`), `"<DURATION>"`},
	{regexp.MustCompile(`("(pid|candidatePid|revision)": )"\d+"`), `$1"<N>"`},
	{regexp.MustCompile(`\b(pid|PID)([ =:]+)\d+`), "$1$2<N>"},
	{regexp.MustCompile(`\brevision \d+`), "revision <N>"},
	{regexp.MustCompile(`/tmp/[^\s"'\\]+`), "<TMP>"},
	// How grpcurl's own deadline surfaces depends on who notices first.
	{regexp.MustCompile(`(Code: DeadlineExceeded\n\s+Message: ).*`), "$1<DEADLINE>"},
}

func mask(s string, d *testbin.Daemon) string {
	s = strings.ReplaceAll(s, d.Socket, "<SOCK>")
	s = strings.ReplaceAll(s, bins, "<BINS>")
	for _, m := range masks {
		s = m.re.ReplaceAllString(s, m.with)
	}
	return s
}

// runTranscript runs the steps against a fresh daemon with the given
// descriptor source flags and returns the masked transcript.
func runTranscript(t *testing.T, source []string, shown string) string {
	d := startDaemon(t)
	var b strings.Builder
	for _, s := range transcript {
		args := append([]string{"-plaintext"}, source...)
		args = append(args, s.extra...)
		if s.data != "" {
			args = append(args, "-d", s.data)
		}
		args = append(args, "-unix", d.Socket)
		args = append(args, s.args...)
		out, code := grpcurl(t, args...)
		cmd := []string{"grpcurl", "-plaintext", shown}
		cmd = append(cmd, s.extra...)
		if s.data != "" {
			cmd = append(cmd, "-d", "'"+s.data+"'")
		}
		cmd = append(cmd, "-unix", "<SOCK>")
		cmd = append(cmd, s.args...)
		fmt.Fprintf(&b, "### %s\n$ %s\n%s", s.title, strings.Join(strings.Fields(strings.Join(cmd, " ")), " "), mask(out, d))
		if !strings.HasSuffix(out, "\n") {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "[exit %d]\n\n", code)
	}
	return b.String()
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run: go test ./test/contract -update)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the transcript (if the change is intended: go test ./test/contract -update, and review the diff):\n%s", path, diff(string(want), got))
	}
}

// diff is a small line diff: the first differing lines with context.
func diff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < max(len(w), len(g)) && shown < 20; i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  want: %s\n  got:  %s\n", i+1, wl, gl)
			shown++
		}
	}
	return b.String()
}

// TestTranscriptReflection: grpcurl without proto files, through server
// reflection.
func TestTranscriptReflection(t *testing.T) {
	checkGolden(t, "transcript_reflection.golden", runTranscript(t, nil, ""))
}

// TestTranscriptProtoset: grpcurl with a buf-built image of today's protos
// (what a script pinned to a release would use).
func TestTranscriptProtoset(t *testing.T) {
	checkGolden(t, "transcript_protoset.golden", runTranscript(t, []string{"-protoset", image}, "-protoset <IMAGE>"))
}
