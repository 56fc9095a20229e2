// Package docs runs the documentation: every shell block of README.md and
// docs/*.md marked <!-- runnable --> runs, in order, against a plugind
// started the way "make run" starts it (the run recipe of the Makefile, in a
// directory whose bin/ holds freshly built binaries), so a wrong example
// fails the tests. Every shell, Go and YAML block must say how it is
// checked: "runnable", "checked: WHERE" (another test runs it) or
// "not run: WHY".
package docs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/readme"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

var bins string

func TestMain(m *testing.M) {
	testbin.Main(m, &bins, func(dir string) error {
		return testbin.DaemonBinaries(dir, "github.com/fullstorydev/grpcurl/cmd/grpcurl")
	})
}

// docBlock is a block of a documentation file.
type docBlock struct {
	file string // relative to the repository
	readme.Block
}

func (b docBlock) where() string { return fmt.Sprintf("%s:%d", b.file, b.Line) }

// blocks returns the blocks of README.md and docs/*.md.
func blocks(t *testing.T) []docBlock {
	t.Helper()
	root := testbin.Root()
	files := []string{"README.md"}
	more, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range more {
		rel, _ := filepath.Rel(root, m)
		files = append(files, rel)
	}
	var out []docBlock
	for _, f := range files {
		d, err := readme.Read(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range d.All() {
			out = append(out, docBlock{file: f, Block: b})
		}
	}
	return out
}

// TestEveryBlockSaysHowItIsChecked: no example escapes the tests unnoticed.
func TestEveryBlockSaysHowItIsChecked(t *testing.T) {
	n := 0
	for _, b := range blocks(t) {
		switch b.Lang {
		case "sh", "bash", "go", "yaml":
		default:
			continue
		}
		n++
		m := b.Marker
		if m != "runnable" && !strings.HasPrefix(m, "checked: ") && !strings.HasPrefix(m, "not run: ") {
			t.Errorf("%s: a %s block without <!-- runnable -->, <!-- checked: WHERE --> or <!-- not run: WHY --> before it (marker %q)", b.where(), b.Lang, m)
		}
		if m == "runnable" && b.Lang != "sh" {
			t.Errorf("%s: only sh blocks are run here; say where the %s block is checked", b.where(), b.Lang)
		}
	}
	if n == 0 {
		t.Fatal("no blocks found")
	}
}

// makeRun is the command of the Makefile's run target, with its variables
// expanded.
func makeRun(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testbin.Root(), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^([A-Z_]+)\s*[:?]?=\s*(.*)$`).FindAllStringSubmatch(string(b), -1) {
		vars[m[1]] = strings.TrimSpace(m[2])
	}
	m := regexp.MustCompile(`(?m)^run:.*\n\t(.*)$`).FindStringSubmatch(string(b))
	if m == nil {
		t.Fatal("the Makefile has no run target with a recipe")
	}
	return regexp.MustCompile(`\$\(([A-Z_]+)\)`).ReplaceAllStringFunc(m[1], func(v string) string {
		name := v[2 : len(v)-1]
		val, ok := vars[name]
		if !ok {
			t.Fatalf("the run recipe uses $(%s), which the Makefile does not set", name)
		}
		return val
	})
}

// workDir is a directory laid out like a checkout after "make build": bin/
// holds plugind, pluginctl, grpcurl and bin/plugins the example plugins.
// Its path is short: socket paths are limited to 107 bytes.
func workDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pcdoc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Symlink(bins, filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startAsMakeRun starts plugind in dir with the run recipe (plus extra
// flags) and waits for its control socket at .plugind/plugind.sock.
func startAsMakeRun(t *testing.T, dir string, extra ...string) {
	t.Helper()
	line := makeRun(t) + " " + strings.Join(extra, " ")
	cmd := exec.Command("sh", "-c", "exec "+line)
	cmd.Dir = dir
	stderr := &testbin.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("plugind did not stop on SIGTERM within 30s")
		}
	})
	sock := filepath.Join(dir, ".plugind", "plugind.sock")
	deadline := time.Now().Add(30 * time.Second)
	for {
		// Ready when echo (the recipe's --load) serves: the health service
		// answers without credentials in both setups here.
		if out, err := exec.Command(filepath.Join(bins, "grpcurl"), "-plaintext", "-unix", "-d", `{"service":"plugin/echo"}`,
			sock, "grpc.health.v1.Health/Check").CombinedOutput(); err == nil && bytes.Contains(out, []byte(`"SERVING"`)) {
			return
		}
		select {
		case <-exited:
			t.Fatalf("%q exited at start:\n%s", line, tail(stderr.String()))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q did not serve within 30s:\n%s", line, tail(stderr.String()))
		}
		time.Sleep(50 * time.Millisecond) // polls: the daemon of the README's command is starting (it compiles first)
	}
}

// tail is the last 20 lines of s.
func tail(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

// TestRunnableBlocks runs every runnable block, in document order, with
// bash -euo pipefail in a directory where "make run" is going.
func TestRunnableBlocks(t *testing.T) {
	dir := workDir(t)
	startAsMakeRun(t, dir)
	ran := 0
	for _, b := range blocks(t) {
		if b.Marker != "runnable" {
			continue
		}
		ran++
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", b.Text)
		cmd.Dir = dir
		// As in a terminal of a fresh checkout: no daemon address set.
		cmd.Env = append(os.Environ(), "PLUGIND_ADDR=")
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%s: %v\n--- block\n%s--- output\n%s", b.where(), err, b.Text, out)
			continue
		}
		t.Logf("%s: ok\n%s", b.where(), out)
	}
	if ran == 0 {
		t.Fatal("no runnable blocks")
	}
}

// TestExampleAuthFile: with the README's example auth file, grpcurl (with
// reflection, no token) can run a health check, and the control API wants
// a token.
func TestExampleAuthFile(t *testing.T) {
	var yaml *readme.Block
	for _, b := range blocks(t) {
		if b.Lang == "yaml" && b.Marker == "checked: test/docs TestExampleAuthFile" {
			yaml = &b.Block
		}
	}
	if yaml == nil {
		t.Fatal(`no yaml block marked "checked: test/docs TestExampleAuthFile" in the docs`)
	}
	dir := workDir(t)
	auth := filepath.Join(dir, "auth.yaml")
	if err := os.WriteFile(auth, []byte(yaml.Text), 0o600); err != nil {
		t.Fatal(err)
	}
	startAsMakeRun(t, dir, "--auth-file", auth)
	sock := filepath.Join(dir, ".plugind", "plugind.sock")
	out, err := exec.Command(filepath.Join(bins, "grpcurl"), "-plaintext", "-unix", "-d", `{"service":"plugin/echo"}`, sock, "grpc.health.v1.Health/Check").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte(`"SERVING"`)) {
		t.Errorf("grpcurl health check without a token: %v\n%s", err, out)
	}
	cmd := exec.Command(filepath.Join(bins, "pluginctl"), "list")
	cmd.Dir = dir
	out, err = cmd.CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("Unauthenticated")) && !bytes.Contains(out, []byte("token")) {
		t.Errorf("pluginctl list without a token: %v\n%s", err, out)
	}
}
