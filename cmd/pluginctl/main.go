// Command pluginctl drives plugind, the plugincontrol daemon, over its gRPC
// control API: load, reload, unload and list plugins, apply a file of specs,
// call plugins, and read or watch their health. Run "pluginctl help" for
// usage and exit codes.
//
// pluginctl is presentation only: every call, stream, resume and wait goes
// through the Go client (package client).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
	"google.golang.org/protobuf/proto"

	"github.com/plugincontrol/plugincontrol/client"
	"github.com/plugincontrol/plugincontrol/internal/version"
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
	workDir    string         // where .plugind/plugind.sock is looked for; "" is the current directory

	// global flags
	addr      string
	tokenFile string
	output    string
	color     string
	timeout   time.Duration

	pal   palette  // colours of table output, from --color
	tried []string // how the address was found (for connection errors)
	ran   bool     // a command's own code ran (its errors are not usage errors)
}

// outputs are the values of -o; raw is invoke's exact bytes.
var outputs = []string{"table", "json", "yaml", "raw"}

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
	root := c.newRoot()
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var ue *usageError
	if !c.ran || errors.As(err, &ue) {
		return c.usageError(cmd, err)
	}
	return printError(c.stderr, c.addr, c.tried, err)
}

// newRoot builds the command tree.
func (c *cli) newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "pluginctl",
		Short: "drive plugind, the plugincontrol daemon",
		Long: `pluginctl drives plugind, the plugincontrol daemon, over its gRPC control API.

The daemon's address is --addr, else $PLUGIND_ADDR, else .plugind/plugind.sock
in the current directory when it exists (where "make run" starts plugind),
else unix://$XDG_STATE_HOME/plugind/plugind.sock (or
~/.local/state/plugind/plugind.sock). Addresses: unix:///abs/path,
unix:relative/path or tcp://host:port.

Flags go anywhere on the line; "--" ends them. Durations take a unit (30s,
1m30s, 500ms) or are a number of seconds.`,
		Version:       version.String(),
		SilenceErrors: true,
		SilenceUsage:  true,
		// No command: a usage error (cobra would print the help and exit 0).
		RunE: func(*cobra.Command, []string) error { return usagef("no command given") },
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return c.setup(cmd)
		},
	}
	root.SetVersionTemplate("pluginctl {{.Version}}\n")
	// Before the completion command is made: it keeps the writer it finds.
	root.SetIn(c.stdin)
	root.SetOut(c.stdout)
	root.SetErr(c.stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&c.addr, "addr", "", "daemon address (default: see above)")
	pf.StringVar(&c.tokenFile, "token-file", "", "send the bearer token read from this file")
	oneOfFlag(root, pf, &c.output, "output", "o", "table", "output format: table, json (protojson with proto field names) or yaml (the same document); raw: invoke's payload exactly", outputs...)
	oneOfFlag(root, pf, &c.color, "color", "", "auto", "colour plugin states in tables: auto (when standard output is a terminal and NO_COLOR is unset), always or never", "auto", "always", "never")
	durationFlag(pf, &c.timeout, "timeout", 30*time.Second, "deadline of each command's calls, 0 for none")
	_ = root.RegisterFlagCompletionFunc("addr", cobra.NoFileCompletions)

	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		msg := err.Error()
		if name, ok := strings.CutPrefix(msg, "unknown flag: --"); ok {
			if s := closestFlag(cmd.Flags(), name); s != "" {
				msg += fmt.Sprintf(" (did you mean --%s?)", s)
			}
		}
		return usagef("%s: %s", cmd.Name(), msg)
	})
	root.AddGroup(&cobra.Group{ID: "plugins", Title: "Plugins:"}, &cobra.Group{ID: "state", Title: "Desired state:"}, &cobra.Group{ID: "observe", Title: "Health and audit:"})
	root.AddCommand(
		c.loadCmd(), c.reloadCmd(), c.unloadCmd(), c.listCmd(), c.invokeCmd(),
		c.getCmd(), c.applyCmd(), c.diffCmd(), c.fleetCmd(),
		c.healthCmd(), c.watchCmd(), c.auditCmd(),
		c.versionCmd(),
	)
	root.SetHelpCommand(c.helpCmd(root))
	// Made now rather than at Execute, so that "help" shows --version and
	// completion's unknown shells are usage errors.
	root.InitDefaultHelpFlag()
	root.InitDefaultVersionFlag()
	root.InitDefaultCompletionCmd()
	if comp, _, err := root.Find([]string{"completion"}); err == nil && comp != root {
		comp.Args = cobra.ArbitraryArgs
		comp.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return usagef("completion: unknown shell %q: want bash, zsh, fish or powershell", args[0])
		}
	}
	root.SetUsageTemplate(root.UsageTemplate() + exitCodesText)
	return root
}

// exitCodesText ends every help text.
const exitCodesText = `
Exit codes:
  0  success
  1  any other error returned by the daemon, or a local failure
  2  usage error: bad flags or arguments
  3  cannot connect to the daemon, or it is unavailable (Unavailable)
  4  no such plugin (NotFound)
  5  the candidate failed validation (FailedPrecondition); the active
     generation, if any, keeps serving; also any other FailedPrecondition
     (a fleet-managed plugin changed locally, a rollout in the wrong state)
  6  generation mismatch (Aborted): --expected-generation is not active
  7  not healthy: with --wait-healthy, the new generation did not become (or
     stay, with --settle) SERVING within --wait-timeout; the load or swap
     itself happened, and the reason is printed
  8  reverted: with reload --bake --wait (or apply --bake), the new
     generation failed during its bake and plugind went back to the previous
     one (or the bake was cancelled); with fleet rollout --wait or watch, the
     rollout halted or was rolled back; the reason is printed
  9  audit --verify: the audit log's hash chain does not verify (a record was
     changed, removed or inserted); the first break is printed
 10  diff --exit-code: the file and the daemon differ
`

// helpCmd is "help [COMMAND]": cobra's, except that an unknown command is
// a usage error rather than a message with exit 0.
func (c *cli) helpCmd(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "help [COMMAND]",
		Short: "show the help of pluginctl or of a command",
		Args:  maxArgs(1, "[COMMAND]"),
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var names []string
			for _, sub := range root.Commands() {
				if sub.IsAvailableCommand() {
					names = append(names, sub.Name())
				}
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			target := root
			if len(args) == 1 {
				found, rest, err := root.Find(args)
				if err != nil || found == root || len(rest) > 0 || !found.IsAvailableCommand() && found.Name() != "help" {
					return usagef("help: unknown command %q", args[0])
				}
				target = found
			}
			return target.Help()
		},
	}
}

// setup checks the global flags once the command line is parsed.
func (c *cli) setup(cmd *cobra.Command) error {
	switch c.color {
	case "auto":
		c.pal.on = c.terminal() && c.getenv("NO_COLOR") == ""
	case "always":
		c.pal.on = true
	}
	if c.timeout < 0 {
		return usagef("--timeout must not be negative")
	}
	if c.output == "raw" && cmd.Name() != "invoke" {
		return usagef("-o raw is for invoke only: want table, json or yaml")
	}
	c.addr, c.tried = c.discover(cmd.Flags().Lookup("addr"))
	return nil
}

// discover finds the daemon's address: --addr, then $PLUGIND_ADDR, then
// .plugind/plugind.sock in the current directory, then the XDG default.
// It also returns what it looked at, for connection errors.
func (c *cli) discover(flag *pflag.Flag) (string, []string) {
	var tried []string
	if flag != nil && flag.Changed {
		return c.addr, []string{"--addr " + c.addr}
	}
	tried = append(tried, "--addr: not given")
	if a := c.getenv("PLUGIND_ADDR"); a != "" {
		return a, append(tried, "$PLUGIND_ADDR="+a)
	}
	tried = append(tried, "$PLUGIND_ADDR: not set")
	local := filepath.Join(".plugind", "plugind.sock")
	abs, err := filepath.Abs(filepath.Join(c.workDir, local))
	if err == nil {
		if fi, err := os.Stat(abs); err == nil && fi.Mode().Type() == os.ModeSocket {
			return "unix://" + abs, append(tried, "./"+local+": found")
		}
	}
	tried = append(tried, "./"+local+": no socket there")
	def := "unix://" + filepath.Join(client.DefaultStateDir(), "plugind.sock")
	return def, append(tried, "the default "+def)
}

// usageError reports a command-line problem and returns exitUsage.
func (c *cli) usageError(cmd *cobra.Command, err error) int {
	fmt.Fprintf(c.stderr, "pluginctl: %s\n", strings.TrimRight(err.Error(), "\n"))
	if cmd != nil && cmd.HasParent() {
		fmt.Fprintf(c.stderr, "usage: %s\n", cmd.UseLine())
		fmt.Fprintf(c.stderr, "Run 'pluginctl help %s' for its flags.\n", cmd.Name())
	} else {
		fmt.Fprintln(c.stderr, "Run 'pluginctl help' for usage.")
	}
	return exitUsage
}

// body wraps a command's code: errors from it are the command's, not the
// command line's (which cobra reports before it runs).
func (c *cli) body(fn func(ctx context.Context, cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c.ran = true
		return fn(cmd.Context(), cmd, args)
	}
}

// exactArgs, rangeArgs and maxArgs check the positional arguments, saying
// what was wanted.
func exactArgs(n int, what string) cobra.PositionalArgs { return rangeArgs(n, n, what) }

func maxArgs(n int, what string) cobra.PositionalArgs { return rangeArgs(0, n, what) }

func rangeArgs(min, max int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < min || (max >= 0 && len(args) > max) {
			return usagef("%s: want %s, got %d argument(s)", cmd.Name(), what, len(args))
		}
		return nil
	}
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

// call dials the daemon (connect) and runs fn with the client and a
// context bounded by --timeout; the client is closed when fn returns. A
// command that goes on after its call without --timeout (--wait-healthy)
// names fn's context rctx and keeps its own ctx for that.
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

// structured reports whether -o asks for json or yaml.
func (c *cli) structured() bool { return c.output == "json" || c.output == "yaml" }

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
