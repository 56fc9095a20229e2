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
	"strings"
	"syscall"
	"time"

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

	// global flags
	addr      string
	tokenFile string
	output    string
	timeout   time.Duration
}

// command is a pluginctl subcommand.
type command struct {
	name  string
	usage string // synopsis and flags, shown by "help NAME" and "NAME -h"
	run   func(c *cli, ctx context.Context, args []string) error
}

// commands lists the subcommands in the order the usage shows them.
var commands = []*command{
	{name: "load", usage: loadUsage, run: (*cli).load},
	{name: "reload", usage: reloadUsage, run: (*cli).reload},
	{name: "unload", usage: unloadUsage, run: (*cli).unload},
	{name: "list", usage: listUsage, run: (*cli).list},
	{name: "invoke", usage: invokeUsage, run: (*cli).invoke},
	{name: "health", usage: healthUsage, run: (*cli).health},
	{name: "watch", usage: watchUsage, run: (*cli).watch},
}

func lookupCommand(name string) *command {
	for _, cmd := range commands {
		if cmd.name == name {
			return cmd
		}
	}
	return nil
}

func (c *cli) run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("pluginctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.addr, "addr", client.DefaultAddr(), "daemon address")
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding the bearer token")
	fs.StringVar(&c.output, "o", "table", "output format: table or json")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "deadline of each command")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(c.stdout, usage())
			return exitOK
		}
		return c.usageError(nil, err)
	}
	if c.output != "table" && c.output != "json" {
		return c.usageError(nil, usagef("-o %q: want table or json", c.output))
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
	if cmd == nil {
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
			for _, g := range []string{"addr", "token-file", "o", "timeout"} {
				if strings.HasSuffix(err.Error(), "flag provided but not defined: -"+g) {
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

func (c *cli) json() bool { return c.output == "json" }

// readFile reads a file named on the command line; "-" is standard input.
func (c *cli) readFile(name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(c.stdin)
	}
	return os.ReadFile(name)
}
