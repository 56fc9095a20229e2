package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// TestCompleteNames: plugin names are completed from the daemon (cobra's
// __complete, which every shell's script calls), flag values from their
// fixed sets.
func TestCompleteNames(t *testing.T) {
	f := &fakeDaemon{plugins: []*plugincontrolv1.PluginStatus{{Name: "echo"}, {Name: "echo-2"}, {Name: "other"}}}
	addr := f.start(t)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"reload", ""}, "echo\necho-2\nother\n:4\n"},
		{[]string{"reload", "ec"}, "echo\necho-2\n:4\n"},
		{[]string{"reload", "echo", ""}, ":4\n"},                // one NAME only
		{[]string{"health", "echo", ""}, "echo-2\nother\n:4\n"}, // the others
		{[]string{"invoke", "o"}, "other\n:4\n"},
		{[]string{"list", "-o", ""}, "table\njson\nyaml\nraw\n:4\n"},
		{[]string{"watch", "--color", "a"}, "auto\nalways\nnever\n:4\n"}, // the shell filters
	} {
		r := runCLI(context.Background(), "", append([]string{"__complete", "--addr", addr}, tt.args...)...)
		if r.code != 0 || !strings.HasPrefix(r.stdout, tt.want) {
			t.Errorf("__complete %q: exit %d, stdout %q, want %q", tt.args, r.code, r.stdout, tt.want)
		}
	}
	// No daemon: nothing offered, no error.
	r := runCLI(context.Background(), "", "__complete", "--addr", "unix:///nonexistent.sock", "reload", "")
	if r.code != 0 || !strings.HasPrefix(r.stdout, ":4\n") {
		t.Errorf("__complete without a daemon: %+v", r)
	}
}

// TestCompletionScripts: the scripts of bash, zsh, fish and powershell are
// generated; the shells installed here (make test-deps installs zsh, fish
// and bash-completion, which cobra's bash script needs) parse them, and bash and fish complete plugin names from a
// daemon through the real pluginctl binary.
func TestCompletionScripts(t *testing.T) {
	dir := t.TempDir()
	for _, sh := range []string{"bash", "zsh", "fish", "powershell"} {
		r := runCLI(context.Background(), "", "completion", sh)
		if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, "__complete") {
			t.Fatalf("completion %s: exit %d, stderr %q", sh, r.code, r.stderr)
		}
		if err := os.WriteFile(filepath.Join(dir, "pluginctl."+sh), []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for sh, args := range map[string][]string{"bash": {"-n"}, "zsh": {"-n"}, "fish": {"--no-execute"}} {
		path, err := exec.LookPath(sh)
		if err != nil {
			t.Fatalf("%s is needed to check its completion script (make test-deps installs it): %v", sh, err)
		}
		if out, err := exec.Command(path, append(args, filepath.Join(dir, "pluginctl."+sh))...).CombinedOutput(); err != nil {
			t.Errorf("%s %q: %v\n%s", sh, args, err, out)
		}
	}

	bin := filepath.Join(dir, "bin")
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "pluginctl"), ".").CombinedOutput(); err != nil {
		t.Fatalf("building pluginctl: %v\n%s", err, out)
	}
	f := &fakeDaemon{plugins: []*plugincontrolv1.PluginStatus{{Name: "echo"}, {Name: "echo-2"}, {Name: "other"}}}
	addr := f.start(t)
	env := append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))

	bashComplete := func(words ...string) string {
		t.Helper()
		line := strings.Join(words, " ")
		cmd := exec.Command("bash", "-c", `source /usr/share/bash-completion/bash_completion; source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
__start_pluginctl; printf '%s\n' "${COMPREPLY[@]}"`, "bash", filepath.Join(dir, "pluginctl.bash"))
		cmd.Args = append(cmd.Args, words...)
		cmd.Env = env
		var stderr strings.Builder
		cmd.Stderr = &stderr // compopt complains outside a real completion
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("bash completing %q: %v\n%s%s", line, err, out, stderr.String())
		}
		return strings.Join(strings.Fields(string(out)), " ")
	}
	for _, tt := range []struct {
		words []string
		want  string
	}{
		{[]string{"pluginctl", "--addr", addr, "reload", ""}, "echo echo-2 other"},
		{[]string{"pluginctl", "reload", "e", "--addr", addr}, ""}, // the cursor is at the end: completes --addr's value
		{[]string{"pluginctl", "--addr", addr, "unload", "ot"}, "other"},
		{[]string{"pluginctl", "rel"}, "reload"},
		{[]string{"pluginctl", "--addr", addr, "list", "-o", "y"}, "yaml"},
	} {
		if got := bashComplete(tt.words...); got != tt.want && !(tt.want == "" && !strings.Contains(got, "echo")) {
			t.Errorf("bash completing %q: %q, want %q", tt.words, got, tt.want)
		}
	}

	cmd := exec.Command("fish", "--no-config", "-c", `source $argv[1]; complete -C "pluginctl --addr $argv[2] health e"`, filepath.Join(dir, "pluginctl.fish"), addr)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fish: %v\n%s", err, out)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		got = append(got, strings.Fields(line)[0])
	}
	if strings.Join(got, " ") != "echo echo-2" {
		t.Errorf("fish completing health e: %q", out)
	}
}
