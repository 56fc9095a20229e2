package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/plugincontrol/plugincontrol/client"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// fleetCmd is "pluginctl fleet ...": the fleet of plugind nodes sharing
// desired plugins in etcd (a plugind started with --fleet-etcd answers).
func (c *cli) fleetCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "fleet",
		GroupID: "state",
		Short:   "the fleet's nodes, desired plugins and rollouts (plugind --fleet-etcd)",
		Long: `Read and change the desired plugins of a fleet of plugind nodes, kept in etcd.
Any fleet-enabled plugind answers (--addr names one); every node converges to
the fleet plugins whose selector matches its labels, through its own
try-activate pipeline, and keeps running what it has while etcd is out of
reach.`,
		Args: exactArgs(0, "a subcommand"),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(c.fleetNodesCmd(), c.fleetStatusCmd(), c.fleetApplyCmd(), c.fleetDeleteCmd(), c.fleetDetachCmd("detach"), c.fleetDetachCmd("attach"), c.fleetAdoptCmd(), c.fleetWatchCmd(), c.rolloutCmd())
	return cmd
}

func labelsString(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	var kv []string
	for k, v := range m {
		kv = append(kv, k+"="+v)
	}
	slices.Sort(kv)
	return strings.Join(kv, ",")
}

func short(digest string) string {
	if len(digest) > 12 {
		return digest[:12]
	}
	if digest == "" {
		return "-"
	}
	return digest
}

func (c *cli) fleetNodesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "nodes",
		Short: "list the live nodes",
		Long:  "List the fleet's live nodes (those whose etcd lease holds): NAME LABELS VERSION REGISTERED.",
		Args:  exactArgs(0, "no arguments"),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, _ []string) error {
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				nodes, err := cl.ListNodes(ctx)
				if err != nil {
					return err
				}
				resp := &plugincontrolv1.ListNodesResponse{Nodes: nodes}
				return c.show(resp, func() error {
					var t table
					t.header("NAME", "LABELS", "VERSION", "REGISTERED")
					for _, n := range resp.GetNodes() {
						t.add(txt(n.GetName()), txt(labelsString(n.GetLabels())), txt(cell(n.GetVersion())),
							txt(n.GetRegisteredAt().AsTime().In(c.location).Format(time.DateTime)))
					}
					return t.write(c.stdout, c.pal)
				})
			})
		}),
	}
}

func (c *cli) fleetStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status [PLUGIN]",
		Short: "show the desired plugins and what each node reports",
		Long: `Show the fleet's desired plugins (PLUGIN DIGEST SELECTOR) and each node's report
of them (PLUGIN NODE GEN STATE CONVERGED LAST ERROR): CONVERGED is "yes" when
the node runs the plugin's spec (the same digest).`,
		Args: maxArgs(1, "[PLUGIN]"),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, args []string) error {
			plugin := ""
			if len(args) == 1 {
				plugin = args[0]
			}
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				resp, err := cl.FleetStatus(ctx, plugin)
				if err != nil {
					return err
				}
				return c.show(resp, func() error { return renderFleetStatus(c.stdout, c.pal, resp) })
			})
		}),
	}
}

func renderFleetStatus(w io.Writer, p palette, resp *plugincontrolv1.FleetStatusResponse) error {
	if f := resp.GetFenced(); f != "" {
		if _, err := fmt.Fprintf(w, "FENCED: this node acts on nothing the fleet's keys say, keeping its plugins as they run: %s\n\n", f); err != nil {
			return err
		}
	}
	var t table
	t.header("PLUGIN", "DIGEST", "SELECTOR", "BINARY")
	digests := map[string]string{}
	for _, pl := range resp.GetPlugins() {
		digests[pl.GetSpec().GetName()] = pl.GetSpecDigest()
		t.add(txt(pl.GetSpec().GetName()), txt(short(pl.GetSpecDigest())), txt(labelsString(pl.GetSelector())), txt(pl.GetSpec().GetBinary()))
	}
	if err := t.write(w, p); err != nil {
		return err
	}
	if _, err := fmt.Fprintln(w); err != nil {
		return err
	}
	var s table
	s.header("PLUGIN", "NODE", "GEN", "STATE", "CONVERGED", "LAST ERROR")
	for _, st := range resp.GetStatuses() {
		conv := "no"
		if st.GetSpecDigest() == digests[st.GetPlugin()] {
			conv = "yes"
		}
		s.add(txt(st.GetPlugin()), txt(st.GetNode()), txt(strconv.FormatUint(st.GetGeneration(), 10)), stateCell(st.GetState()), txt(conv), txt(cell(st.GetLastError())))
	}
	if err := s.write(w, p); err != nil {
		return err
	}
	leader := resp.GetLeader()
	if leader == "" {
		leader = "none (no controller leads: rollouts wait)"
	}
	_, err := fmt.Fprintf(w, "\nrollouts led by: %s\n", leader)
	return err
}

// readFleetPlugins reads FleetPlugin documents ({spec: ..., selector:
// ...}), as "fleet status -o yaml" prints them in its plugins list.
func (c *cli) readFleetPlugins(files []string) ([]*plugincontrolv1.FleetPlugin, error) {
	if len(files) == 0 {
		return nil, usagef("give the file with -f FILE")
	}
	var out []*plugincontrolv1.FleetPlugin
	for _, name := range files {
		b, err := c.readFile(name)
		if err != nil {
			return nil, fmt.Errorf("-f: %w", err)
		}
		docs, err := yamlDocs(b, name)
		if err != nil {
			return nil, usagef("%v", err)
		}
		for i, raw := range docs {
			p := &plugincontrolv1.FleetPlugin{}
			if err := protojson.Unmarshal(raw, p); err != nil {
				return nil, usagef("%s: document %d: not a fleet plugin ({spec: ..., selector: ...}): %s", name, i+1,
					jsonPosition.ReplaceAllString(strings.TrimPrefix(err.Error(), "proto: "), ""))
			}
			if p.GetSpec().GetName() == "" {
				return nil, usagef("%s: document %d: spec.name is required", name, i+1)
			}
			out = append(out, p)
		}
	}
	return out, nil
}

func (c *cli) fleetApplyCmd() *cobra.Command {
	var (
		files         []string
		allowUnpinned bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "set fleet plugins from a file",
		Long: `Set the desired state of fleet plugins from FILE: YAML documents separated by
"---", each {spec: PluginSpec, selector: {label: value}}. Every node whose
labels match a selector converges to its spec. A spec must be pinned
(sha256) unless --allow-unpinned: it runs on every selected node.
To move nodes in stages with health gates, use "fleet rollout start".`,
		Example: `  cat > fleet.yaml <<EOF
  spec: {name: greet, binary: echo, sha256: 9f86d0...}
  selector: {role: web}
  EOF
  pluginctl fleet apply -f fleet.yaml`,
		Args: exactArgs(0, "no arguments (the file goes with -f)"),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, _ []string) error {
			plugins, err := c.readFleetPlugins(files)
			if err != nil {
				return err
			}
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				for _, p := range plugins {
					stored, err := cl.ApplyFleetPlugin(ctx, p, allowUnpinned)
					if err != nil {
						return err
					}
					resp := &plugincontrolv1.ApplyFleetPluginResponse{Plugin: stored}
					if err := c.show(resp, func() error {
						_, err := fmt.Fprintf(c.stdout, "applied %s: digest %s, revision %d\n", p.GetSpec().GetName(), short(resp.GetPlugin().GetSpecDigest()), resp.GetPlugin().GetRevision())
						return err
					}); err != nil {
						return err
					}
				}
				return nil
			})
		}),
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, `file of fleet plugins (repeatable; "-" for standard input)`)
	cmd.Flags().BoolVar(&allowUnpinned, "allow-unpinned", false, "accept specs without sha256")
	return cmd
}

func (c *cli) fleetDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "delete PLUGIN",
		Short: "remove a fleet plugin (every node unloads it)",
		Args:  exactArgs(1, "PLUGIN"),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, args []string) error {
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				if err := cl.DeleteFleetPlugin(ctx, args[0]); err != nil {
					return err
				}
				return c.show(&plugincontrolv1.DeleteFleetPluginResponse{}, func() error {
					_, err := fmt.Fprintf(c.stdout, "deleted %s: the nodes running it unload it\n", args[0])
					return err
				})
			})
		}),
	}
}

func (c *cli) fleetDetachCmd(op string) *cobra.Command {
	short := "make the --addr node stop following the fleet for PLUGIN (it keeps it as its own)"
	if op == "attach" {
		short = "make the --addr node follow the fleet for PLUGIN again"
	}
	return &cobra.Command{
		Use:   op + " PLUGIN",
		Short: short,
		Long: short + `. Detached, local load, reload
and unload of it work again, and rollouts do not move it; the node remembers
it (in etcd) across restarts.`,
		Args: exactArgs(1, "PLUGIN"),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, args []string) error {
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				var err error
				if op == "detach" {
					err = cl.DetachFleetPlugin(ctx, args[0])
				} else {
					err = cl.AttachFleetPlugin(ctx, args[0])
				}
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(c.stdout, "%sed %s on %s\n", op, args[0], c.addr)
				return err
			})
		}),
	}
}

func (c *cli) fleetAdoptCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "adopt",
		Short: "make the --addr node accept the etcd it reaches now as its fleet's",
		Long: `Make the --addr node accept the etcd it reaches now as its fleet's. A node
remembers the etcd cluster it follows and the highest revision it saw (in its
state directory); when the cluster changes (an etcd rebuilt, another cluster)
or the revision goes back (a restore from an older snapshot) it keeps every
plugin as it runs and refuses to act (FENCED in fleet status) until this
command. It then converges to what that etcd holds: check the fleet's desired
plugins there first (pluginctl fleet status).`,
		Args: exactArgs(0, "no arguments"),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, _ []string) error {
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				if err := cl.AdoptFleetEtcd(ctx); err != nil {
					return err
				}
				_, err := fmt.Fprintf(c.stdout, "%s follows the etcd it reaches now\n", c.addr)
				return err
			})
		}),
	}
}

func (c *cli) fleetWatchCmd() *cobra.Command {
	var since uint64
	cmd := &cobra.Command{
		Use:   "watch [PLUGIN]",
		Short: "stream the fleet's changes",
		Long: `Stream the fleet's changes (of PLUGIN and the nodes, or of everything): a
snapshot and SYNCED, then each change, one line each: REVISION TYPE KIND NAME
DETAIL (-o json: one WatchFleetResponse per line). When the stream breaks
(etcd or the daemon unreachable) it is reopened after the last revision
seen, with backoff. --timeout does not apply; ends with exit 0 on SIGINT.`,
		Args: maxArgs(1, "[PLUGIN]"),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, args []string) error {
			plugin := ""
			if len(args) == 1 {
				plugin = args[0]
			}
			cl, err := c.connect(ctx)
			if err != nil {
				return err
			}
			defer cl.Close()
			var last uint64
			return cl.WatchFleet(ctx, since, plugin, func(ev *plugincontrolv1.FleetEvent) error {
				last = max(last, ev.GetRevision())
				var err error
				if c.structured() {
					err = printJSON(c.stdout, jsonLineOptions, &plugincontrolv1.WatchFleetResponse{Event: ev})
				} else {
					_, err = fmt.Fprintln(c.stdout, formatFleetEvent(ev))
				}
				if err != nil {
					return fmt.Errorf("writing output: %w", err)
				}
				return nil
			}, func(err error, retryIn time.Duration) {
				fmt.Fprintf(c.stderr, "pluginctl: fleet watch: %s; reconnecting in %s from revision %d\n", reconnectReason(err), retryText(retryIn), last)
			})
		}),
	}
	cmd.Flags().Uint64Var(&since, "since", 0, "resume after this etcd revision (default 0: start with a snapshot)")
	return cmd
}

// formatFleetEvent is one line of fleet watch.
func formatFleetEvent(ev *plugincontrolv1.FleetEvent) string {
	typ := strings.TrimPrefix(ev.GetType().String(), "FLEET_EVENT_TYPE_")
	if ev.GetReset_() {
		typ += "(reset)"
	}
	kind, name, detail := "-", "-", ""
	switch r := ev.GetRecord().(type) {
	case *plugincontrolv1.FleetEvent_Node:
		kind, name, detail = "node", r.Node.GetName(), labelsString(r.Node.GetLabels())
	case *plugincontrolv1.FleetEvent_Plugin:
		kind, name, detail = "plugin", r.Plugin.GetSpec().GetName(), "digest "+short(r.Plugin.GetSpecDigest())
	case *plugincontrolv1.FleetEvent_Status:
		kind, name = "status", r.Status.GetPlugin()+"@"+r.Status.GetNode()
		detail = fmt.Sprintf("gen %d %s digest %s", r.Status.GetGeneration(), stateName(r.Status.GetState()), short(r.Status.GetSpecDigest()))
		if e := r.Status.GetLastError(); e != "" {
			detail += ": " + oneLine(e)
		}
	case *plugincontrolv1.FleetEvent_Rollout:
		kind, name = "rollout", r.Rollout.GetPlugin()
		detail = fmt.Sprintf("%s wave %d/%d", strings.TrimPrefix(r.Rollout.GetState().String(), "ROLLOUT_STATE_"), r.Rollout.GetWave()+1, r.Rollout.GetWaves())
	}
	return fmt.Sprintf("%-9d %-16s %-8s %-20s %s", ev.GetRevision(), typ, kind, name, detail)
}

func (c *cli) rolloutCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "staged rollouts of a fleet plugin to a new spec",
		Long: `A rollout moves the nodes of a fleet plugin to a new spec in stages: canary
nodes first, then waves, each node's reload baked (it reverts by itself on a
failure) and the wave held until every node stayed SERVING for the bake. A
node that fails its candidate, reverts in its bake or turns UNHEALTHY fails
the rollout past --max-failed: it halts and, unless --manual-rollback, the
nodes it moved go back to the previous spec. A node whose lease expires
(dead, or cut off from etcd) is LOST: not a failure, and not rolled back
blindly; its wave waits for it (back, it is judged and baked again), and a
wave that makes no progress for --progress-deadline halts the rollout the
same way. A halted rollout keeps its nodes until aborted: fleet apply,
fleet delete and a new rollout of the plugin wait for that. One plugind, elected in etcd, drives every rollout; another takes
over where it stopped when it dies.`,
		Args: exactArgs(0, "a subcommand"),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(c.rolloutStartCmd(), c.rolloutShowCmd("status"), c.rolloutOpCmd("pause"), c.rolloutOpCmd("resume"), c.rolloutOpCmd("abort"), c.rolloutShowCmd("watch"))
	return cmd
}

func (c *cli) rolloutStartCmd() *cobra.Command {
	var (
		files                     []string
		canary, waveSize, wavePct uint32
		maxFailed                 uint32
		maxUnavailable            uint32
		bake, deadline            time.Duration
		manual, allowUnpinned     bool
		wait                      bool
	)
	cmd := &cobra.Command{
		Use:   "start -f FILE",
		Short: "start a rollout to the spec in FILE",
		Long: `Start a rollout of a fleet plugin to the spec in FILE (one {spec: ...} document,
as fleet apply reads; its selector is ignored: the rollout keeps the
plugin's). With --wait, follow it to its end: exit 0 when it succeeded, 8
when it halted or was rolled back.`,
		Example: `  pluginctl fleet rollout start -f greet-v2.yaml --canary 1 --wave-size 2 --bake 30s --wait`,
		Args:    exactArgs(0, "no arguments (the file goes with -f)"),
		RunE: c.body(func(ctx context.Context, cmd *cobra.Command, _ []string) error {
			plugins, err := c.readFleetPlugins(files)
			if err != nil {
				return err
			}
			if len(plugins) != 1 {
				return usagef("rollout start: the file holds %d documents; want one", len(plugins))
			}
			if cmd.Flags().Changed("wave-size") && cmd.Flags().Changed("wave-percent") {
				return usagef("--wave-size and --wave-percent exclude each other")
			}
			if bake < 0 {
				return usagef("--bake must not be negative")
			}
			if deadline < 0 {
				return usagef("--progress-deadline must not be negative")
			}
			req := &plugincontrolv1.StartRolloutRequest{Spec: plugins[0].GetSpec(), AllowUnpinned: allowUnpinned,
				Strategy: &plugincontrolv1.RolloutStrategy{Canary: canary, WaveSize: waveSize, WavePercent: wavePct,
					Bake: durationpb.New(bake), MaxFailed: maxFailed, ManualRollback: manual, MaxUnavailable: maxUnavailable}}
			if deadline > 0 {
				req.Strategy.ProgressDeadline = durationpb.New(deadline)
			}
			cl, err := c.connect(ctx)
			if err != nil {
				return err
			}
			defer cl.Close()
			rctx, cancel := c.withTimeout(ctx)
			r, err := cl.StartRollout(rctx, req)
			cancel()
			if err != nil {
				return err
			}
			if err := c.show(&plugincontrolv1.StartRolloutResponse{Rollout: r}, func() error { return renderRollout(c.stdout, c.pal, r) }); err != nil || !wait {
				return err
			}
			return c.followRollout(ctx, cl, req.GetSpec().GetName())
		}),
	}
	f := cmd.Flags()
	f.StringArrayVarP(&files, "filename", "f", nil, `file with the new spec ("-" for standard input)`)
	f.Uint32Var(&canary, "canary", 0, "nodes that go first, alone")
	f.Uint32Var(&waveSize, "wave-size", 0, "nodes per following wave (default: all the rest at once)")
	f.Uint32Var(&wavePct, "wave-percent", 0, "nodes per wave as a percentage of the selected nodes")
	durationFlag(f, &bake, "bake", 0, "each node must stay SERVING on the new spec this long (its reload bakes, reverting on a failure)")
	f.Uint32Var(&maxFailed, "max-failed", 0, "failed nodes tolerated before the rollout halts")
	f.Uint32Var(&maxUnavailable, "max-unavailable", 0, "nodes of a wave moving at once (UPDATING or LOST); the others wait their turn (default: the whole wave)")
	durationFlag(f, &deadline, "progress-deadline", 0, "halt when no node of a wave settles this long (UPDATING or LOST ones waited for; default: the bake plus 10m)")
	f.BoolVar(&manual, "manual-rollback", false, "when it halts, leave the updated nodes on the new spec")
	f.BoolVar(&allowUnpinned, "allow-unpinned", false, "accept a spec without sha256")
	f.BoolVar(&wait, "wait", false, "follow the rollout to its end (exit 8 when it halts or rolls back)")
	return cmd
}

func (c *cli) rolloutShowCmd(name string) *cobra.Command {
	short, long := "show the last rollout of PLUGIN", "Show the last rollout of PLUGIN: its state, wave and each node's part."
	if name == "watch" {
		short = "follow a rollout until it ends"
		long = "Print the rollout of PLUGIN each time it changes, until it ends: exit 0 when it\nsucceeded, 8 when it halted or was rolled back."
	}
	return &cobra.Command{
		Use:   name + " PLUGIN",
		Short: short,
		Long:  long,
		Args:  exactArgs(1, "PLUGIN"),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, args []string) error {
			cl, err := c.connect(ctx)
			if err != nil {
				return err
			}
			defer cl.Close()
			if name == "watch" {
				return c.followRollout(ctx, cl, args[0])
			}
			rctx, cancel := c.withTimeout(ctx)
			defer cancel()
			r, err := cl.GetRollout(rctx, args[0])
			if err != nil {
				return err
			}
			return c.show(&plugincontrolv1.GetRolloutResponse{Rollout: r}, func() error { return renderRollout(c.stdout, c.pal, r) })
		}),
	}
}

func (c *cli) rolloutOpCmd(op string) *cobra.Command {
	return &cobra.Command{
		Use:   op + " PLUGIN",
		Short: map[string]string{"pause": "stop a rollout from starting new waves", "resume": "continue a paused rollout", "abort": "end a rollout and roll its nodes back"}[op],
		Args:  exactArgs(1, "PLUGIN"),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, args []string) error {
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				action := map[string]client.RolloutAction{"pause": client.PauseRollout, "resume": client.ResumeRollout, "abort": client.AbortRollout}[op]
				r, err := cl.SetRollout(ctx, args[0], action)
				if err != nil {
					return err
				}
				return c.show(&plugincontrolv1.GetRolloutResponse{Rollout: r}, func() error { return renderRollout(c.stdout, c.pal, r) })
			})
		}),
	}
}

// rolloutEnded says how a followed rollout ended when it did not succeed
// (exit 8).
type rolloutEnded = bakeError

// followRollout prints the rollout of plugin each time it changes until it
// ends (a poll every 500ms; --timeout does not apply).
// followRollout prints the rollout of plugin each time it changes (followed
// through WatchFleet by the client) until it ends: nil when it succeeded, a
// *rolloutEnded (exit 8) when it halted or was rolled back.
func (c *cli) followRollout(ctx context.Context, cl *client.Client, plugin string) error {
	r, err := cl.FollowRollout(ctx, plugin, func(r *plugincontrolv1.Rollout) error {
		if c.structured() {
			return c.print(&plugincontrolv1.GetRolloutResponse{Rollout: r})
		}
		return renderRollout(c.stdout, c.pal, r)
	}, func(err error, retryIn time.Duration) {
		fmt.Fprintf(c.stderr, "pluginctl: rollout watch: %s; reconnecting in %s\n", reconnectReason(err), retryText(retryIn))
	})
	switch {
	case err != nil:
		return err
	case r == nil, r.GetState() == plugincontrolv1.RolloutState_ROLLOUT_STATE_SUCCEEDED:
		return nil
	}
	return &rolloutEnded{msg: fmt.Sprintf("the rollout of %s ended %s: %s", plugin, strings.TrimPrefix(r.GetState().String(), "ROLLOUT_STATE_"), r.GetReason())}
}

func renderRollout(w io.Writer, p palette, r *plugincontrolv1.Rollout) error {
	state := strings.TrimPrefix(r.GetState().String(), "ROLLOUT_STATE_")
	head := fmt.Sprintf("rollout of %s: %s, wave %d of %d, %s -> %s", r.GetPlugin(), state, r.GetWave()+1, r.GetWaves(), short(r.GetFromDigest()), short(r.GetToDigest()))
	if r.GetReason() != "" {
		head += ": " + r.GetReason()
	}
	if r.GetController() != "" {
		head += " (controller " + r.GetController() + ")"
	}
	if _, err := fmt.Fprintln(w, head); err != nil {
		return err
	}
	var t table
	t.header("NODE", "WAVE", "STATE", "REASON")
	for _, n := range r.GetNodes() {
		t.add(txt(n.GetNode()), txt(strconv.FormatUint(uint64(n.GetWave()), 10)), txt(strings.TrimPrefix(n.GetState().String(), "ROLLOUT_NODE_STATE_")), txt(cell(n.GetReason())))
	}
	return t.write(w, p)
}
