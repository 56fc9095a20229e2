// Command pluginctl drives plugind, the plugincontrol daemon, over its gRPC
// control API: load, reload, unload and list plugins, call them, and read or
// watch their health. Run "pluginctl help" for usage and exit codes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"
	"google.golang.org/protobuf/proto"

	"github.com/plugincontrol/plugincontrol/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one pluginctl command line and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := &cli{stdin: os.Stdin, stdout: stdout, stderr: stderr}
	return c.run(ctx, args)
}

// cli is one invocation of pluginctl.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	// Environment; nil means the process's (tests replace them).
	getenv     func(string) string
	isTerminal func(io.Writer) bool
	location   *time.Location // of the times audit prints

	// global flags
	addr      string
	tokenFile string
	output    string
	color     string
	timeout   time.Duration

	pal palette // colours of table output, from --color
}

// command is a pluginctl subcommand.
type command struct {
	name    string
	summary string // one line, for completion scripts
	usage   string // synopsis and flags, shown by "help NAME" and "NAME -h"
	run     func(c *cli, ctx context.Context, args []string) error
	hidden  bool // not in the usage or completion (internal helpers)

	// For shell completion: the command's flags (besides -h) and what its
	// positional arguments are.
	flags []flagSpec
	args  argKind
}

// commands lists the subcommands in the order the usage shows them.
var commands = []*command{
	{name: "load", summary: "launch a new plugin instance", usage: loadUsage, run: (*cli).load, flags: slices.Concat(specFlagSpecs, waitFlagSpecs), args: argsNone},
	{name: "reload", summary: "start a new generation and swap to it if it passes validation", usage: reloadUsage, run: (*cli).reload, flags: slices.Concat(specFlagSpecs, reloadFlagSpecs, waitFlagSpecs), args: argsFirstName},
	{name: "unload", summary: "drain and stop a plugin and forget it", usage: unloadUsage, run: (*cli).unload, flags: []flagSpec{drainFlagSpec}, args: argsFirstName},
	{name: "list", summary: "list plugins and their status", usage: listUsage, run: (*cli).list, args: argsNone, flags: listFlagSpecs},
	{name: "invoke", summary: "call a plugin method", usage: invokeUsage, run: (*cli).invoke, flags: invokeFlagSpecs, args: argsFirstName},
	{name: "health", summary: "show the current health of plugins", usage: healthUsage, run: (*cli).health, args: argsNames},
	{name: "watch", summary: "stream health events (a live view on a terminal)", usage: watchUsage, run: (*cli).watch, flags: watchFlagSpecs, args: argsNames},
	{name: "audit", summary: "show the audit record of mutations", usage: auditUsage, run: (*cli).audit, flags: auditFlagSpecs, args: argsFirstName},
	{name: "completion", summary: "print a shell completion script", usage: completionUsage, args: argsShell}, // run: set by init (it reads commands)
	{name: completeNamesCommand, usage: completeNamesUsage, run: (*cli).completeNames, hidden: true},
}

func init() { lookupCommand("completion").run = (*cli).completion }

func lookupCommand(name string) *command {
	for _, cmd := range commands {
		if cmd.name == name {
			return cmd
		}
	}
	return nil
}

func (c *cli) run(ctx context.Context, args []string) int {
	if c.getenv == nil {
		c.getenv = os.Getenv
	}
	if c.isTerminal == nil {
		c.isTerminal = isTerminal
	}
	if c.location == nil {
		c.location = time.Local
	}
	fs := flag.NewFlagSet("pluginctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.addr, "addr", client.DefaultAddr(), "daemon address")
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding the bearer token")
	fs.StringVar(&c.output, "o", "table", "output format: table, json or yaml")
	fs.StringVar(&c.color, "color", "auto", "colours: auto, always or never")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "deadline of each command")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(c.stdout, usage())
			return exitOK
		}
		return c.usageError(nil, err)
	}
	switch c.output {
	case "table", "json", "yaml":
	default:
		return c.usageError(nil, usagef("-o %q: want table, json or yaml", c.output))
	}
	switch c.color {
	case "auto":
		c.pal.on = c.terminal() && c.getenv("NO_COLOR") == ""
	case "always":
		c.pal.on = true
	case "never":
	default:
		return c.usageError(nil, usagef("--color %q: want auto, always or never", c.color))
	}
	if c.timeout < 0 {
		return c.usageError(nil, usagef("--timeout must not be negative"))
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return c.usageError(nil, usagef("no command given"))
	}
	name, rest := rest[0], rest[1:]
	if name == "help" {
		return c.help(rest)
	}
	cmd := lookupCommand(name)
	if cmd == nil {
		return c.usageError(nil, usagef("unknown command %q", name))
	}
	err := cmd.run(c, ctx, rest)
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(c.stdout, cmd.usage)
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return c.usageError(cmd, err)
	}
	return printError(c.stderr, c.addr, err)
}

// help prints the usage of pluginctl or of one command.
func (c *cli) help(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stdout, usage())
		return exitOK
	}
	cmd := lookupCommand(args[0])
	if cmd == nil || cmd.hidden {
		return c.usageError(nil, usagef("help: unknown command %q", args[0]))
	}
	fmt.Fprint(c.stdout, cmd.usage)
	return exitOK
}

// usageError reports a command-line problem and returns exitUsage.
func (c *cli) usageError(cmd *command, err error) int {
	fmt.Fprintf(c.stderr, "pluginctl: %v\n", err)
	if cmd != nil {
		fmt.Fprintln(c.stderr, strings.SplitN(cmd.usage, "\n", 2)[0])
		fmt.Fprintf(c.stderr, "Run 'pluginctl help %s' for its flags.\n", cmd.name)
	} else {
		fmt.Fprintln(c.stderr, "Run 'pluginctl help' for usage.")
	}
	return exitUsage
}

// newFlagSet returns the flag set of a command; errors are reported by run.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parseArgs parses flags that may come before, between or after the
// positional arguments (as in "load echo --binary echo"), and returns the
// positional arguments. "--" ends the flags; everything after it is
// positional. A bad flag is a usage error; -h/--help gives flag.ErrHelp.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			for _, g := range globalFlagSpecs {
				if strings.HasSuffix(err.Error(), "flag provided but not defined: -"+g.name) {
					return nil, usagef("%s: %v (global flags go before the command)", fs.Name(), err)
				}
			}
			return nil, usagef("%s: %v", fs.Name(), err)
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" && !isFlagValue(fs, args, consumed-1) {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// isFlagValue reports whether args[i] is the value of the flag before it
// (as in "--arg --"), rather than a flag terminator.
func isFlagValue(fs *flag.FlagSet, args []string, i int) bool {
	if i == 0 {
		return false
	}
	prev := args[i-1]
	if !strings.HasPrefix(prev, "-") || prev == "-" || prev == "--" || strings.Contains(prev, "=") {
		return false
	}
	f := fs.Lookup(strings.TrimLeft(prev, "-"))
	if f == nil {
		return false
	}
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return false
	}
	return true
}

// connect dials the daemon with the global flags.
func (c *cli) connect(ctx context.Context) (*client.Client, error) {
	var opts []client.Option
	if c.tokenFile != "" {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return nil, fmt.Errorf("--token-file %s is empty", c.tokenFile)
		}
		opts = append(opts, client.WithToken(tok))
	}
	cl, err := client.Dial(ctx, c.addr, opts...)
	if err != nil {
		return nil, usagef("%v", err)
	}
	return cl, nil
}

// withTimeout applies --timeout (0 means none).
func (c *cli) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout == 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout)
}

// call is the common part of the commands that make calls: it dials the
// daemon with the global flags (connect), and runs fn with the client and a
// context bounded by --timeout (withTimeout). The client is closed when fn
// returns. Errors, whether from dialing or from fn, come back unchanged for
// run to report (printError) and turn into the exit code. A command that
// goes on after its call without --timeout (--wait-healthy) names fn's
// context rctx and keeps its own ctx for that.
func (c *cli) call(ctx context.Context, fn func(ctx context.Context, cl *client.Client) error) error {
	cl, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return fn(ctx, cl)
}

// show prints a response in the format -o selects: json or yaml as print
// writes them, or for -o table whatever the command's table func writes.
func (c *cli) show(m proto.Message, table func() error) error {
	if c.structured() {
		return c.print(m)
	}
	return table()
}

// structured reports whether -o asks for json or yaml rather than a table.
func (c *cli) structured() bool { return c.output != "table" }

// print writes a response as -o json or -o yaml asks.
func (c *cli) print(m proto.Message) error {
	if c.output == "yaml" {
		return printYAML(c.stdout, m, false)
	}
	return printJSON(c.stdout, jsonOptions, m)
}

// terminal reports whether stdout is a terminal that understands escape
// sequences (not TERM=dumb).
func (c *cli) terminal() bool {
	return c.isTerminal(c.stdout) && c.getenv("TERM") != "dumb"
}

// terminalWidth is the width of the terminal w, 0 when unknown.
func terminalWidth(w io.Writer) int {
	f, ok := w.(*os.File)
	if !ok {
		return 0
	}
	width, _, err := term.GetSize(int(f.Fd()))
	if err != nil {
		return 0
	}
	return width
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// readFile reads a file named on the command line; "-" is standard input.
func (c *cli) readFile(name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(c.stdin)
	}
	return os.ReadFile(name)
}
