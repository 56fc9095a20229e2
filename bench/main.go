// Command bench measures plugind against its floor (raw go-plugin, no
// daemon) and its peers (grpc-go's health.Server), side by side in one run on
// the same machine, and prints a table of medians, p99s and ratios to the
// reference, which it also writes to bench/RESULTS.md.
//
//	go run ./bench                 # full run (a few minutes)
//	go run ./bench -short          # CI: a few iterations, 300 watchers, 10 plugins, 20 reloads
//	go run ./bench -only reload,invoke -cpuprofile cpu.out
//
// The daemon runs in this process (manager.New + server.New on a unix
// socket), so it can be profiled and its memory measured; clients use real
// gRPC connections over the socket. The 10,000 WatchHealth watchers run in a
// child process (this binary with -watch-client) so that only the daemon's
// memory is counted. The program exits non-zero on errors (including failed
// calls during reloads and plugin processes left behind), never on missed
// targets: those are marked MISS in the table.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/testbin"
)

var (
	flagShort    = flag.Bool("short", false, "CI mode: a few iterations, 300 watchers, 10 plugins instead of 100, 20 reloads instead of 200")
	flagOut      = flag.String("out", "", "where to write the results (default bench/RESULTS.md in the repository, nowhere with -short; \"-\" to skip)")
	flagOnly     = flag.String("only", "", "comma-separated scenarios to run (default all): "+strings.Join(scenarioNames(), ", "))
	flagCPU      = flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
	flagMem      = flag.String("memprofile", "", "write a heap profile (taken at the end of the run, or with the watchers connected in the watch scenario) to this file")
	flagMutex    = flag.String("mutexprofile", "", "write a mutex contention profile to this file")
	flagWatchers = flag.Int("watchers", 0, "WatchHealth watchers (default 10000, 300 with -short)")
	flagPlugins  = flag.Int("plugins", 0, "plugins loaded in parallel in the load scenario (default 100, 10 with -short)")
	flagReloads  = flag.Int("reloads", 0, "reloads in the reload-under-invoke scenario (default 200, 20 with -short)")
	flagLogLevel = flag.String("log-level", "info", "daemon log level (plugind's default is info; output is discarded, formatting is not)")
	flagVerbose  = flag.Bool("v", false, "print progress")
	flagNote     = flag.String("note", "", "a line of text for the RESULTS header (for example, which patch the tree carries)")

	// The watcher child process (see watch.go).
	flagWatchClient = flag.String("watch-client", "", "internal: run as the watcher process for this kind of server (plugind or grpc)")
	flagWatchAddr   = flag.String("watch-addr", "", "internal: server address for -watch-client")
	flagWatchN      = flag.Int("watch-n", 0, "internal: watchers for -watch-client")
	flagWatchConns  = flag.Int("watch-conns", 0, "internal: connections for -watch-client")
)

// env is what every scenario gets.
type env struct {
	short     bool
	tmp       string // removed at exit
	pluginDir string // the example plugins
	echo      string // path of the echo binary
	echoSum   []byte // its sha256
	rawSock   string // socket directories of raw go-plugin launches
	log       *slog.Logger

	watchers, plugins, reloads int
	loadStart                  string
}

// row is one line of the results table.
type row struct {
	scenario string
	measure  string
	plugind  string
	ref      string
	ratio    float64
	target   string
	// ok reports whether the target is met; nil: informational row.
	ok   *bool
	note string
}

func okIf(b bool) *bool { return &b }

type scenario struct {
	name  string
	title string
	run   func(*env) ([]row, error)
}

func scenarios() []scenario {
	return []scenario{
		{"reload", "Reload of echo (same spec) vs raw go-plugin launch+handshake+Dispense+first call", runReload},
		{"reload-pin", "Reload with a sha256 pin vs raw go-plugin with SecureConfig", runReloadPin},
		{"invoke", "Invoke through plugind vs a direct go-plugin call", runInvoke},
		{"churn", "Invoke during continuous reloads vs without reloads", runChurn},
		{"health", "Health (unary, all plugins) vs grpc-go health.Server Check", runHealth},
		{"watch", "WatchHealth fan-out vs grpc-go health.Server Watch", runWatch},
		{"stalled", "Stalled WatchHealth watchers: daemon memory and the slow-watcher policy (eviction past the watch lag limit)", runStalled},
		{"recover", "Panic tracker Recover helper vs a bare deferred recover", runRecover},
		{"load", "Load of N plugins in parallel vs N raw go-plugin launches", runLoad},
		{"liveness", "Liveness probing of N plugins at 1s: CPU with probing vs without", runLiveness},
		{"passthrough", "A unary 1 KiB call through a plugin's endpoint vs direct to the plugin's socket vs nginx grpc_pass", runPassthrough},
		{"direct", "A unary 1 KiB call on a direct connection (client.DialDirect) vs a plain connection to the plugin's socket; reloads under calls", runDirect},
		{"fleet", "A staged rollout by the fleet controller across simulated agents on an embedded etcd", runFleet},
		{"reexec", "Reload of plugind itself in place (SIGHUP, re-exec) with N plugins under calls", runReexec},
		{"adopt", "Crash adoption: a --live-restore plugind started after a SIGKILL takes over N plugins", runAdopt},
	}
}

func scenarioNames() []string {
	var out []string
	for _, s := range scenarios() {
		out = append(out, s.name)
	}
	return out
}

func main() {
	testing.Init() // testing.Benchmark (recover scenario) reads the test flags
	flag.Parse()
	if *flagWatchClient != "" {
		if *flagWatchClient == "stall" {
			os.Exit(stallClient(*flagWatchAddr, *flagWatchN, *flagWatchConns))
		}
		os.Exit(watchClient(*flagWatchClient, *flagWatchAddr, *flagWatchN, *flagWatchConns))
	}
	os.Exit(run())
}

func progress(format string, args ...any) {
	if *flagVerbose {
		fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	}
}

func run() (code int) {
	start := time.Now()
	raiseFileLimit()
	var only map[string]bool
	if *flagOnly != "" {
		only = map[string]bool{}
		for _, n := range strings.Split(*flagOnly, ",") {
			n = strings.TrimSpace(n)
			if !slices.Contains(scenarioNames(), n) {
				fmt.Fprintf(os.Stderr, "bench: unknown scenario %q (have %s)\n", n, strings.Join(scenarioNames(), ", "))
				return 2
			}
			only[n] = true
		}
	}
	e := &env{short: *flagShort, watchers: 10000, plugins: 100, reloads: 200, loadStart: loadAvg()}
	if e.short {
		e.watchers, e.plugins, e.reloads = 300, 10, 20
	}
	if *flagWatchers > 0 {
		e.watchers = *flagWatchers
	}
	if *flagPlugins > 0 {
		e.plugins = *flagPlugins
	}
	if *flagReloads > 0 {
		e.reloads = *flagReloads
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*flagLogLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "bench: -log-level: %v\n", err)
		return 2
	}
	e.log = slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: lv}))

	// Short paths: unix socket paths are limited to 107 bytes.
	tmp, err := os.MkdirTemp("", "pcb-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	e.tmp = tmp
	defer os.RemoveAll(tmp)
	e.pluginDir = filepath.Join(tmp, "plugins")
	e.rawSock = filepath.Join(tmp, "raw")
	for _, d := range []string{e.pluginDir, e.rawSock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
	}
	progress("building the example plugins")
	if err := testbin.Plugins(e.pluginDir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	e.echo = filepath.Join(e.pluginDir, "echo")
	b, err := os.ReadFile(e.echo)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	sum := sha256.Sum256(b)
	e.echoSum = sum[:]
	defer func() {
		if left := testbin.ProcessesIn(e.pluginDir); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "bench: FAIL: plugin processes left running: %v\n", left)
			for _, pid := range left {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			code = 1
		}
	}()

	if *flagCPU != "" {
		f, err := os.Create(*flagCPU)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	if *flagMutex != "" {
		runtime.SetMutexProfileFraction(5)
		defer writeProfile("mutex", *flagMutex)
	}

	var rows []row
	var errs []string
	for _, s := range scenarios() {
		if only != nil && !only[s.name] {
			continue
		}
		progress("scenario %s: %s", s.name, s.title)
		t0 := time.Now()
		rs, err := s.run(e)
		rows = append(rows, rs...)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", s.name, err))
			fmt.Fprintf(os.Stderr, "bench: scenario %s: ERROR: %v\n", s.name, err)
		}
		progress("scenario %s took %v", s.name, time.Since(t0).Round(time.Millisecond))
		if left := testbin.ProcessesIn(e.pluginDir); len(left) > 0 {
			errs = append(errs, fmt.Sprintf("%s: plugin processes left running: %v", s.name, left))
		}
	}
	if *flagMem != "" && (only == nil || !only["watch"]) {
		writeProfile("heap", *flagMem)
	}

	took := time.Since(start)
	table := renderTable(rows)
	fmt.Print(table)
	fmt.Printf("\n%d rows, %d missed targets, %d errors; took %v\n", len(rows), countMiss(rows), len(errs), took.Round(time.Second))
	for _, e := range errs {
		fmt.Println("ERROR:", e)
	}
	out := *flagOut
	switch {
	case out == "" && e.short:
		out = "-" // a short run never replaces the full results
	case out == "":
		out = filepath.Join(testbin.Root(), "bench", "RESULTS.md")
	}
	if out != "-" {
		md := renderMarkdown(e, table, errs, took)
		// What follows keepMarker in the file (written by hand or by
		// bench/compare) stays.
		if old, err := os.ReadFile(out); err == nil {
			if i := bytes.Index(old, []byte(keepMarker)); i >= 0 {
				md += "\n" + string(old[i:])
			}
		}
		if err := os.WriteFile(out, []byte(md), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		fmt.Println("wrote", out)
	}
	if len(errs) > 0 {
		return 1
	}
	return 0
}

// keepMarker starts the part of RESULTS.md that a run keeps as it is.
const keepMarker = "<!-- kept by go run ./bench: the sections below are not written by it -->"

func writeProfile(name, path string) {
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return
	}
	defer f.Close()
	if name == "heap" {
		runtime.GC()
	}
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
}

func raiseFileLimit() {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}

func countMiss(rows []row) int {
	n := 0
	for _, r := range rows {
		if r.ok != nil && !*r.ok {
			n++
		}
	}
	return n
}

// renderTable is the markdown table printed to stdout and written to
// RESULTS.md.
func renderTable(rows []row) string {
	var b bytes.Buffer
	b.WriteString("| scenario | measure | plugind | reference | ratio | target | result |\n")
	b.WriteString("|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		res := "info"
		if r.ok != nil {
			res = "ok"
			if !*r.ok {
				res = "**MISS**"
			}
		}
		rt := "—"
		if r.ratio != 0 {
			rt = fmt.Sprintf("%.2f", r.ratio)
		}
		tg := r.target
		if tg == "" {
			tg = "—"
		}
		note := ""
		if r.note != "" {
			note = " (" + r.note + ")"
		}
		fmt.Fprintf(&b, "| %s | %s%s | %s | %s | %s | %s | %s |\n", r.scenario, r.measure, note, r.plugind, r.ref, rt, tg, res)
	}
	return b.String()
}

func renderMarkdown(e *env, table string, errs []string, took time.Duration) string {
	var b bytes.Buffer
	b.WriteString("# plugind benchmark results\n\n")
	b.WriteString("Written by `go run ./bench` (see `bench/main.go`); ratios are plugind / reference measured in the\n")
	b.WriteString("same run on the same machine (for throughput rows, plugind / reference, higher is better).\n")
	b.WriteString("Method and findings: `bench/NOTES.md`.\n\n")
	fmt.Fprintf(&b, "- date: %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "- command: `%s`\n", strings.TrimSpace("go run ./bench "+strings.Join(os.Args[1:], " ")))
	if *flagNote != "" {
		fmt.Fprintf(&b, "- note: %s\n", *flagNote)
	}
	fmt.Fprintf(&b, "- machine: nproc %d (GOMAXPROCS %d), %s, %s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), cpuModel(), memTotal())
	fmt.Fprintf(&b, "- Go: %s %s/%s; kernel %s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, kernel())
	fmt.Fprintf(&b, "- echo plugin binary: %s, sha256 %s…\n", fileSize(e.echo), hex.EncodeToString(e.echoSum)[:12])
	fmt.Fprintf(&b, "- sizes: %d watchers, %d plugins loaded in parallel, %d reloads under load; short mode %v\n", e.watchers, e.plugins, e.reloads, e.short)
	fmt.Fprintf(&b, "- run took %v; load average %s at the start, %s at the end (other work on the machine skews single runs: compare ratios, not times)\n\n",
		took.Round(time.Second), e.loadStart, loadAvg())
	b.WriteString(table)
	if len(errs) > 0 {
		b.WriteString("\nErrors:\n\n")
		for _, e := range errs {
			fmt.Fprintf(&b, "- %s\n", e)
		}
	}
	return b.String()
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func memTotal() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "MemTotal:") {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(l, "MemTotal:")), "%f", &kb)
			return fmtBytes(kb*1024) + " RAM"
		}
	}
	return "unknown RAM"
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

func fileSize(p string) string {
	fi, err := os.Stat(p)
	if err != nil {
		return "?"
	}
	return fmtBytes(float64(fi.Size()))
}

// ctxT is a context bounded by d, for single calls.
func ctxT(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
