package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/plugincontrol/plugincontrol/client"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/version"
)

// drainTimeout is --drain-timeout as sent: nil when not given.
func drainTimeout(cmd *cobra.Command, d time.Duration) (*durationpb.Duration, error) {
	if !cmd.Flags().Changed("drain-timeout") {
		return nil, nil
	}
	if d < 0 {
		return nil, usagef("--drain-timeout must not be negative")
	}
	return durationpb.New(d), nil
}

func (c *cli) loadCmd() *cobra.Command {
	var sf specFlags
	var wf waitFlags
	cmd := &cobra.Command{
		Use:     "load NAME",
		GroupID: "plugins",
		Short:   "launch a new plugin instance",
		Long: `Launch a new plugin instance NAME through the candidate pipeline and print its
status and the duration of each stage. The binary defaults to NAME.`,
		Example: `  pluginctl load echo2 --binary echo --wait-healthy
  pluginctl load kv --handshake BASIC_PLUGIN=hello`,
		Args: exactArgs(1, "NAME"),
		RunE: c.body(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			if err := sf.validate(); err != nil {
				return err
			}
			if err := wf.validate(false); err != nil {
				return err
			}
			spec, err := sf.loadSpec(args[0], c.readFile)
			if err != nil {
				return err
			}
			return c.call(ctx, func(rctx context.Context, cl *client.Client) error {
				resp, err := cl.LoadWithReport(rctx, spec)
				if err != nil {
					return err
				}
				if err := c.show(resp, func() error { return renderLoad(c.stdout, c.pal, resp) }); err != nil || !wf.enabled {
					return err
				}
				return c.waitHealthy(ctx, cl, &wf, spec.GetName(), resp.GetPlugin().GetGeneration())
			})
		}),
	}
	sf.register(cmd.Flags())
	wf.register(cmd.Flags())
	return cmd
}

func (c *cli) reloadCmd() *cobra.Command {
	var sf specFlags
	var wf waitFlags
	var (
		validateOnly bool
		expected     uint64
		drain, bake  time.Duration
		waitBake     bool
	)
	cmd := &cobra.Command{
		Use:     "reload NAME",
		GroupID: "plugins",
		Short:   "start a new generation and swap to it if it passes validation",
		Long: `Start a new generation of NAME and swap to it only when it passes validation;
otherwise the active generation keeps serving. Without spec flags the current
spec is relaunched as is; with spec flags the current spec (read with
ListPlugins) is sent with those fields replaced: --arg and --env replace all
arguments and the whole environment, --sha256 "" removes the pin.`,
		Example: `  pluginctl reload echo --env VERSION=2 --wait-healthy --settle 5s
  pluginctl reload echo --bake 1m --wait`,
		Args:              exactArgs(1, "NAME"),
		ValidArgsFunction: c.completeNames(1),
		RunE: c.body(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			set := cmd.Flags().Changed
			if bake < 0 {
				return usagef("--bake must not be negative")
			}
			if waitBake && (!set("bake") || bake == 0) {
				return usagef("--wait waits for the end of a bake: give --bake D too")
			}
			if waitBake && validateOnly {
				return usagef("--wait and --validate-only exclude each other: a dry run swaps nothing")
			}
			if err := sf.validate(); err != nil {
				return err
			}
			if err := wf.validate(validateOnly); err != nil {
				return err
			}
			dt, err := drainTimeout(cmd, drain)
			if err != nil {
				return err
			}
			name := args[0]
			opts := []client.ReloadOption{}
			if validateOnly {
				opts = append(opts, client.WithValidateOnly())
			}
			if set("expected-generation") {
				opts = append(opts, client.WithExpectedGeneration(expected))
			}
			if dt != nil {
				opts = append(opts, client.WithDrainTimeout(drain))
			}
			if set("bake") {
				opts = append(opts, client.WithBake(bake))
			}
			return c.call(ctx, func(rctx context.Context, cl *client.Client) error {
				if sf.anySet() {
					current, err := currentSpec(rctx, cl, name)
					if err != nil {
						return err
					}
					spec, err := sf.reloadSpec(name, current, c.readFile)
					if err != nil {
						return err
					}
					opts = append(opts, client.WithSpec(spec))
				}
				resp, err := cl.Reload(rctx, name, opts...)
				if err != nil {
					return err
				}
				if err := c.show(resp, func() error { return renderReload(c.stdout, c.pal, resp, validateOnly) }); err != nil {
					return err
				}
				gen := resp.GetPlugin().GetGeneration()
				if wf.enabled {
					if err := c.waitHealthy(ctx, cl, &wf, name, gen); err != nil {
						return err
					}
				}
				if waitBake {
					return c.waitForBake(ctx, cl, name, gen)
				}
				return nil
			})
		}),
	}
	sf.register(cmd.Flags())
	f := cmd.Flags()
	f.BoolVar(&validateOnly, "validate-only", false, "run the pipeline and discard the candidate (dry run)")
	f.Uint64Var(&expected, "expected-generation", 0, "fail (exit 6) unless generation N is the active one")
	durationFlag(f, &bake, "bake", 0, "keep the previous generation's process warm for D after the swap; if the new generation becomes UNHEALTHY or crashes meanwhile, plugind reverts to it (default: the daemon's --bake; 0: none)")
	f.BoolVar(&waitBake, "wait", false, "with --bake: block until the bake ends; exit 0 when the new generation was kept, 8 when it was reverted or the bake cancelled")
	durationFlag(f, &drain, "drain-timeout", 0, "wait at most D for calls in flight on the old generation (default: the daemon's, 30s)")
	wf.register(f)
	return cmd
}

// waitForBake is reload --bake D --wait: it blocks until the bake of
// generation ends and says how; a bake that did not keep the generation is
// a *bakeError (exit 8). The context is the command's (--timeout bounds
// the Reload call only).
func (c *cli) waitForBake(ctx context.Context, cl *client.Client, name string, generation uint64) error {
	if !c.structured() {
		fmt.Fprintf(c.stderr, "waiting for the bake of %s generation %d to end...\n", name, generation)
	}
	b, err := cl.WaitBake(ctx, name, generation)
	if err != nil {
		return err
	}
	switch b.GetResult() {
	case plugincontrolv1.BakeResult_BAKE_RESULT_KEPT:
		if !c.structured() {
			fmt.Fprintf(c.stdout, "bake passed: %s generation %d kept, generation %d stopped\n", name, generation, b.GetPreviousGeneration())
		}
		return nil
	case plugincontrolv1.BakeResult_BAKE_RESULT_REVERTED:
		return &bakeError{msg: fmt.Sprintf("%s generation %d was reverted: %s; the previous process serves again as generation %d",
			name, generation, b.GetReason(), b.GetRevertedTo())}
	default:
		return &bakeError{msg: fmt.Sprintf("the bake of %s generation %d was cancelled: %s", name, generation, b.GetReason())}
	}
}

// errWaitTimeout is the cause of the wait's context when --wait-timeout
// ran out.
var errWaitTimeout = errors.New("--wait-timeout ran out")

// waitHealthy is --wait-healthy: client.WaitServing of exactly generation,
// with --settle, within --wait-timeout. The context is the command's,
// without --timeout (which bounds the Load or Reload call).
func (c *cli) waitHealthy(ctx context.Context, cl *client.Client, wf *waitFlags, name string, generation uint64) error {
	// A timer rather than a deadline: the deadline would travel to the
	// daemon, whose end of the stream could then fail first with an error
	// that does not say "timed out".
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := time.AfterFunc(wf.timeout, func() { cancel(errWaitTimeout) })
	defer timer.Stop()
	start := time.Now()
	_, err := cl.WaitServing(ctx, name, generation, client.WithSettle(wf.settle),
		client.WithReconnectHook(func(err error, retryIn time.Duration) {
			fmt.Fprintf(c.stderr, "pluginctl: waiting for %s to be healthy: %s; reconnecting in %s\n", name, reconnectReason(err), retryText(retryIn))
		}))
	if err != nil {
		return err
	}
	if c.structured() {
		return nil
	}
	state := "is SERVING"
	if wf.settle > 0 {
		state = fmt.Sprintf("is SERVING and stayed so for %s", wf.settle)
	}
	_, err = fmt.Fprintf(c.stdout, "%s generation %d %s (waited %s)\n", name, generation, state, time.Since(start).Round(time.Millisecond))
	return err
}

// currentSpec fetches the spec the active generation of name runs.
func currentSpec(ctx context.Context, cl *client.Client, name string) (*plugincontrolv1.PluginSpec, error) {
	st, err := cl.Get(ctx, name)
	if errors.Is(err, client.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "plugin %q is not loaded", name)
	}
	if err != nil {
		return nil, err
	}
	if st.GetSpec() == nil {
		return nil, fmt.Errorf("the daemon did not return the current spec of %q", name)
	}
	return st.GetSpec(), nil
}

func (c *cli) unloadCmd() *cobra.Command {
	var drain time.Duration
	cmd := &cobra.Command{
		Use:               "unload NAME",
		GroupID:           "plugins",
		Short:             "drain and stop a plugin and forget it",
		Long:              "Drain and stop plugin NAME and remove it from the daemon's desired state.",
		Args:              exactArgs(1, "NAME"),
		ValidArgsFunction: c.completeNames(1),
		RunE: c.body(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			if _, err := drainTimeout(cmd, drain); err != nil {
				return err
			}
			var opts []client.UnloadOption
			if cmd.Flags().Changed("drain-timeout") {
				opts = append(opts, client.WithDrainTimeout(drain))
			}
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				st, err := cl.Unload(ctx, args[0], opts...)
				if err != nil {
					return err
				}
				resp := &plugincontrolv1.UnloadResponse{Plugin: st}
				return c.show(resp, func() error {
					return renderStatuses(c.stdout, c.pal, []*plugincontrolv1.PluginStatus{st})
				})
			})
		}),
	}
	durationFlag(cmd.Flags(), &drain, "drain-timeout", 0, "wait at most D for calls in flight (default: the daemon's, 30s)")
	return cmd
}

func (c *cli) listCmd() *cobra.Command {
	var full bool
	cmd := &cobra.Command{
		Use:     "list",
		GroupID: "plugins",
		Short:   "list plugins and their status",
		Long: `List every plugin: NAME GEN STATE PID VERSION BINARY RESTARTS LAST ERROR.
The daemon's pages are followed to the last. With -o json or yaml, each
plugin's status without its spec; --full includes the specs.`,
		Args: exactArgs(0, "no arguments"),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, _ []string) error {
			opts := []client.ListOption{client.WithBasicView()}
			if full {
				opts = nil
			}
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				list, err := cl.List(ctx, opts...)
				if err != nil {
					return err
				}
				resp := &plugincontrolv1.ListPluginsResponse{Plugins: list}
				return c.show(resp, func() error { return renderStatuses(c.stdout, c.pal, list) })
			})
		}),
	}
	cmd.Flags().BoolVar(&full, "full", false, "include each plugin's spec (ListPlugins view FULL; with -o json or yaml)")
	return cmd
}

func (c *cli) invokeCmd() *cobra.Command {
	var payloadFile string
	cmd := &cobra.Command{
		Use:     "invoke NAME METHOD [PAYLOAD | -]",
		GroupID: "plugins",
		Short:   "call a plugin method",
		Long: `Call METHOD of the active generation of plugin NAME with PAYLOAD (empty when
omitted; "-" reads standard input). The response payload is written to
standard output; on a terminal a newline follows when it has none (-o raw:
exactly the payload's bytes, always). With -o json or yaml, the response
(payload in base64, and the generation that served the call).`,
		Example:           `  pluginctl invoke echo echo hello`,
		Args:              rangeArgs(2, 3, "NAME METHOD [PAYLOAD]"),
		ValidArgsFunction: c.completeNames(1),
		RunE: c.body(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			var payload []byte
			var err error
			fileSet := cmd.Flags().Changed("payload-file")
			switch {
			case fileSet && len(args) == 3:
				return usagef("invoke: give the payload as an argument or with --payload-file, not both")
			case fileSet:
				if payloadFile == "" {
					return usagef("--payload-file must not be empty")
				}
				if payload, err = c.readFile(payloadFile); err != nil {
					return fmt.Errorf("--payload-file: %w", err)
				}
			case len(args) == 3 && args[2] == "-":
				if payload, err = c.readFile("-"); err != nil {
					return fmt.Errorf("reading the payload from standard input: %w", err)
				}
			case len(args) == 3:
				payload = []byte(args[2])
			}
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				out, gen, err := cl.Invoke(ctx, args[0], args[1], payload)
				if err != nil {
					return err
				}
				resp := &plugincontrolv1.InvokeResponse{Payload: out, Generation: gen}
				return c.show(resp, func() error {
					if c.output == "table" && c.terminal() && (len(out) == 0 || out[len(out)-1] != '\n') {
						out = append(out, '\n')
					}
					_, err := c.stdout.Write(out)
					return err
				})
			})
		}),
	}
	cmd.Flags().StringVar(&payloadFile, "payload-file", "", `read the payload from this file ("-" for standard input)`)
	return cmd
}

func (c *cli) healthCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "health [NAME...]",
		GroupID: "observe",
		Short:   "show the current health of plugins",
		Long: `Show the current health of the named plugins (all when none is named):
NAME STATE GEN PANICS(window) CRASHES RESTARTS REASON, then the revision it is
consistent with (a starting point for watch --since).`,
		ValidArgsFunction: c.completeNames(-1),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, names []string) error {
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				hs, rev, err := cl.Health(ctx, client.WithNames(names...))
				if err != nil {
					return err
				}
				resp := &plugincontrolv1.HealthResponse{Plugins: hs, Revision: rev}
				return c.show(resp, func() error { return renderHealth(c.stdout, c.pal, resp) })
			})
		}),
	}
}

// maxAuditLimit is the most records ListAudit returns at once.
const maxAuditLimit = 10000

func (c *cli) auditCmd() *cobra.Command {
	var (
		limit  uint
		before uint64
		verify bool
	)
	cmd := &cobra.Command{
		Use:     "audit [NAME]",
		GroupID: "observe",
		Short:   "show the audit record of mutations",
		Long: `Show the daemon's audit record of mutations (load, reload, validate, unload,
and its own restarts, restores and health actions), newest first, of plugin
NAME or of all plugins: SEQ TIME CALLER ACTION PLUGIN GEN(old→new) OUTCOME
ERROR. Times are local. When a full page was shown, the last line says how to
get the next one.

Each record carries the hash of the one before it, so the log is
tamper-evident: --verify reads the whole log (every plugin's, page by page),
checks every record's hash and the chain from the start of the log (or the
checkpoint retention left), and prints the head hash; a break exits 9.`,
		Args:              maxArgs(1, "[NAME]"),
		ValidArgsFunction: c.completeNames(1),
		RunE: c.body(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			set := cmd.Flags().Changed
			if verify {
				if len(args) > 0 || set("limit") || set("before") {
					return usagef("--verify checks the whole log, every plugin's: give no NAME, --limit or --before")
				}
				return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
					recs, cp, err := cl.Audit(ctx, "")
					if err != nil {
						return err
					}
					head, err := client.VerifyAudit(recs, cp)
					if err != nil {
						return &auditBrokenError{msg: err.Error()}
					}
					from := "the start of the log"
					if cp != nil {
						from = fmt.Sprintf("the checkpoint after record %d (older records were removed by retention)", cp.GetSequence())
					}
					_, err = fmt.Fprintf(c.stdout, "audit chain verified: %d records from %s; head hash %s\n", len(recs), from, head)
					return err
				})
			}
			if limit > maxAuditLimit {
				return usagef("--limit %d: at most %d", limit, maxAuditLimit)
			}
			req := &plugincontrolv1.ListAuditRequest{Limit: uint32(limit), BeforeSequence: before}
			if len(args) == 1 {
				req.Name = args[0]
			}
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				resp, err := cl.Control().ListAudit(ctx, req)
				if err != nil {
					return err
				}
				return c.show(resp, func() error { return c.renderAuditPage(req, resp.GetRecords()) })
			})
		}),
	}
	f := cmd.Flags()
	f.UintVar(&limit, "limit", 0, "at most N records (default: the daemon's, 100; at most 10000)")
	f.Uint64Var(&before, "before", 0, "only records older than this sequence number (paging)")
	f.BoolVar(&verify, "verify", false, "read the whole log and check its hash chain")
	return cmd
}

// renderAuditPage is the table of audit: the records, then after a full
// page the flag that fetches the older ones.
func (c *cli) renderAuditPage(req *plugincontrolv1.ListAuditRequest, recs []*plugincontrolv1.AuditRecord) error {
	if err := renderAudit(c.stdout, c.pal, c.location, recs); err != nil {
		return err
	}
	pageSize := int(req.GetLimit())
	if pageSize == 0 {
		pageSize = 100
	}
	if len(recs) > 0 && len(recs) >= pageSize {
		_, err := fmt.Fprintf(c.stdout, "older records: --before %d\n", recs[len(recs)-1].GetSequence())
		return err
	}
	return nil
}

func (c *cli) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "show the versions of pluginctl and of the daemon",
		Long: `Print pluginctl's version, then the daemon's (from the plugincontrol-version
header of a Health call). --version prints pluginctl's only, without
connecting.`,
		Args: exactArgs(0, "no arguments"),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, _ []string) error {
			fmt.Fprintf(c.stdout, "pluginctl %s\n", version.String())
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				var md metadata.MD
				if _, err := cl.Control().Health(ctx, &plugincontrolv1.HealthRequest{}, grpc.Header(&md)); err != nil {
					return err
				}
				v := strings.Join(md.Get(version.Header), ",")
				if v == "" {
					v = "unknown (the daemon sends no " + version.Header + " header)"
				}
				_, err := fmt.Fprintf(c.stdout, "plugind %s at %s\n", v, c.addr)
				return err
			})
		}),
	}
}

// completeNames completes plugin names from the daemon for the first n
// positional arguments (all of them when n < 0). It dials with the global
// flags given so far and a short deadline; on any error it offers nothing.
func (c *cli) completeNames(n int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if n >= 0 && len(args) >= n {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		if c.getenv == nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		c.addr, c.tried = c.discover(cmd.Flags().Lookup("addr"))
		ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Second)
		defer cancel()
		var names []string
		err := c.call(ctx, func(ctx context.Context, cl *client.Client) error {
			list, err := cl.List(ctx, client.WithBasicView())
			for _, p := range list {
				if strings.HasPrefix(p.GetName(), toComplete) && !slices.Contains(args, p.GetName()) {
					names = append(names, p.GetName())
				}
			}
			return err
		})
		if err != nil {
			cobra.CompDebugln("pluginctl: completing plugin names: "+err.Error(), false)
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}
