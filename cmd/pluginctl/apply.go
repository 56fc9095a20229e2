package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/plugincontrol/plugincontrol/client"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/spec"
)

// A spec file is the desired state of plugins: YAML documents separated by
// "---" lines, each one PluginSpec (or a list of them) in the protojson
// form of -o json and -o yaml (proto field names; durations as "10s",
// config in base64). JSON is YAML, so "get -o json" output is a spec file
// too. Unknown fields are errors, naming the document.

// docSeparator splits YAML documents.
var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// jsonPosition is the position protojson puts in its errors.
var jsonPosition = regexp.MustCompile(`\(line \d+:\d+\): `)

// yamlDocs splits a YAML file into the JSON of its documents, a document
// that is a list giving one per item; empty documents (or comments only)
// are skipped. source names the file in errors.
func yamlDocs(b []byte, source string) ([]json.RawMessage, error) {
	var out []json.RawMessage
	for i, doc := range docSeparator.Split(string(b), -1) {
		j, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, i+1, err)
		}
		j = bytes.TrimSpace(j)
		if bytes.Equal(j, []byte("null")) || len(j) == 0 {
			continue
		}
		if j[0] == '[' {
			var raws []json.RawMessage
			if err := json.Unmarshal(j, &raws); err != nil {
				return nil, fmt.Errorf("%s: document %d: %w", source, i+1, err)
			}
			out = append(out, raws...)
			continue
		}
		out = append(out, j)
	}
	return out, nil
}

// parseSpecs reads the specs of a spec file; source names it in errors.
func parseSpecs(b []byte, source string) ([]*plugincontrolv1.PluginSpec, error) {
	docs, err := yamlDocs(b, source)
	if err != nil {
		return nil, err
	}
	var specs []*plugincontrolv1.PluginSpec
	seen := map[string]int{}
	for i, raw := range docs {
		where := fmt.Sprintf("%s: spec %d", source, i+1)
		spec := &plugincontrolv1.PluginSpec{}
		if err := protojson.Unmarshal(raw, spec); err != nil {
			// protojson's positions are in the JSON made of the YAML, not
			// in the file: leave them out.
			msg := jsonPosition.ReplaceAllString(strings.TrimPrefix(err.Error(), "proto: "), "")
			return nil, fmt.Errorf("%s: not a plugin spec: %s", where, msg)
		}
		if spec.GetName() == "" {
			return nil, fmt.Errorf("%s: the spec has no name", where)
		}
		if prev, ok := seen[spec.GetName()]; ok {
			return nil, fmt.Errorf("%s: plugin %q is already specified by spec %d", where, spec.GetName(), prev)
		}
		seen[spec.GetName()] = i + 1
		specs = append(specs, spec)
	}
	if len(specs) == 0 {
		return nil, fmt.Errorf("%s: no plugin specs", source)
	}
	return specs, nil
}

// changeKind is what apply does to one plugin.
type changeKind int

const (
	changeNone   changeKind = iota // in the file and the same on the daemon
	changeLoad                     // in the file only
	changeReload                   // in both, different
	changeUnload                   // on the daemon only, with --prune
	changeExtra                    // on the daemon only, kept (no --prune)
)

// change is one line of the plan.
type change struct {
	kind    changeKind
	name    string
	desired *plugincontrolv1.PluginSpec // nil for unload and extra
	fields  []string                    // reload: "field: old → new"
}

// plan compares the desired specs with the daemon's plugins. Loads and
// reloads come in the file's order, then unloads (or the kept extras) by
// name.
func plan(desired []*plugincontrolv1.PluginSpec, current []*plugincontrolv1.PluginStatus, prune bool) []change {
	have := map[string]*plugincontrolv1.PluginSpec{}
	for _, st := range current {
		have[st.GetName()] = st.GetSpec()
	}
	var out []change
	want := map[string]bool{}
	for _, d := range desired {
		want[d.GetName()] = true
		cur, ok := have[d.GetName()]
		switch {
		case !ok:
			out = append(out, change{kind: changeLoad, name: d.GetName(), desired: d})
		case spec.Equal(cur, d):
			// The same plugin, however each was spelled (the daemon
			// reports specs in canonical form, see package spec).
			out = append(out, change{kind: changeNone, name: d.GetName(), desired: d})
		default:
			out = append(out, change{kind: changeReload, name: d.GetName(), desired: d, fields: spec.Diff(cur, d)})
		}
	}
	var extra []string
	for name := range have {
		if !want[name] {
			extra = append(extra, name)
		}
	}
	slices.Sort(extra)
	for _, name := range extra {
		k := changeExtra
		if prune {
			k = changeUnload
		}
		out = append(out, change{kind: k, name: name})
	}
	return out
}

// renderPlan writes the plan, one line per plugin (and one per changed
// field), and returns how many plugins would change.
func renderPlan(w io.Writer, p palette, changes []change) (int, error) {
	var b strings.Builder
	n := 0
	for _, ch := range changes {
		switch ch.kind {
		case changeNone:
			fmt.Fprintf(&b, "  %s unchanged\n", ch.name)
		case changeLoad:
			n++
			fmt.Fprintf(&b, "%s\n", p.paint(ansiGreen, "+ load "+ch.name))
		case changeReload:
			n++
			fmt.Fprintf(&b, "%s\n", p.paint(ansiYellow, "~ reload "+ch.name))
			for _, f := range ch.fields {
				fmt.Fprintf(&b, "    %s\n", f)
			}
		case changeUnload:
			n++
			fmt.Fprintf(&b, "%s\n", p.paint(ansiRed, "- unload "+ch.name))
		case changeExtra:
			fmt.Fprintf(&b, "  %s is not in the file: kept (--prune unloads it)\n", ch.name)
		}
	}
	_, err := io.WriteString(w, b.String())
	return n, err
}

// specFileFlags are apply's and diff's -f and --prune.
type specFileFlags struct {
	files []string
	prune bool
}

func (f *specFileFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringArrayVarP(&f.files, "filename", "f", nil, `spec file (repeatable; "-" for standard input)`)
	cmd.Flags().BoolVar(&f.prune, "prune", false, "unload the plugins that are loaded but in no file")
	_ = cmd.MarkFlagFilename("filename", "yaml", "yml", "json")
}

// read parses every -f file.
func (f *specFileFlags) read(c *cli) ([]*plugincontrolv1.PluginSpec, error) {
	if len(f.files) == 0 {
		return nil, usagef("give the spec file with -f FILE")
	}
	var all []*plugincontrolv1.PluginSpec
	names := map[string]string{}
	for _, name := range f.files {
		b, err := c.readFile(name)
		if err != nil {
			return nil, fmt.Errorf("-f: %w", err)
		}
		source := name
		if name == "-" {
			source = "standard input"
		}
		specs, err := parseSpecs(b, source)
		if err != nil {
			return nil, usagef("%v", err)
		}
		for _, s := range specs {
			if prev, ok := names[s.GetName()]; ok {
				return nil, usagef("plugin %q is in %s and in %s", s.GetName(), prev, source)
			}
			names[s.GetName()] = source
		}
		all = append(all, specs...)
	}
	return all, nil
}

// currentPlan reads the daemon's plugins (with their specs) and plans.
func currentPlan(ctx context.Context, cl *client.Client, desired []*plugincontrolv1.PluginSpec, prune bool) ([]change, error) {
	current, err := cl.List(ctx)
	if err != nil {
		return nil, err
	}
	return plan(desired, current, prune), nil
}

func (c *cli) diffCmd() *cobra.Command {
	var ff specFileFlags
	var exitCode bool
	cmd := &cobra.Command{
		Use:     "diff -f FILE",
		GroupID: "state",
		Short:   "show what apply would change",
		Long: `Compare the plugin specs of FILE with the daemon's plugins and print what
"apply -f FILE" would do: "+ load NAME", "~ reload NAME" with each changed
field (old → new), "- unload NAME" (with --prune), and the plugins that stay
as they are. Changes nothing.`,
		Args: exactArgs(0, "no arguments (the file goes with -f)"),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, _ []string) error {
			desired, err := ff.read(c)
			if err != nil {
				return err
			}
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				changes, err := currentPlan(ctx, cl, desired, ff.prune)
				if err != nil {
					return err
				}
				n, err := renderPlan(c.stdout, c.pal, changes)
				if err == nil && n > 0 && exitCode {
					return &differsError{n: n}
				}
				return err
			})
		}),
	}
	ff.register(cmd)
	cmd.Flags().BoolVar(&exitCode, "exit-code", false, "exit 10 when there are differences")
	return cmd
}

func (c *cli) applyCmd() *cobra.Command {
	var (
		ff     specFileFlags
		dryRun bool
		bake   time.Duration
		wf     waitFlags
	)
	cmd := &cobra.Command{
		Use:     "apply -f FILE",
		GroupID: "state",
		Short:   "make the daemon's plugins match a file of specs",
		Long: `Make the daemon's plugins match the specs of FILE (kubectl's convention): load
the plugins that are not loaded, reload those whose spec differs (to the
file's spec, through the candidate pipeline) and, with --prune, unload those
in no file. The plan is printed first (as diff prints it); --dry-run stops
there.

Steps run one at a time, loads and reloads in the file's order, then
unloads. The first step that fails (a candidate refused, a bake reverted
with --bake, a generation not healthy with --wait-healthy) stops apply: the
plugins it had not reached are left as they were, and it says which.

A spec file holds YAML documents separated by "---", each one PluginSpec
with its proto field names, as "pluginctl get NAME -o yaml" prints it.`,
		Example: `  pluginctl get echo -o yaml > plugins.yaml   # edit, then:
  pluginctl diff -f plugins.yaml
  pluginctl apply -f plugins.yaml --bake 30s`,
		Args: exactArgs(0, "no arguments (the file goes with -f)"),
		RunE: c.body(func(ctx context.Context, cmd *cobra.Command, _ []string) error {
			desired, err := ff.read(c)
			if err != nil {
				return err
			}
			if bake < 0 {
				return usagef("--bake must not be negative")
			}
			if err := wf.validate(false); err != nil {
				return err
			}
			cl, err := c.connect(ctx)
			if err != nil {
				return err
			}
			defer cl.Close()
			rctx, cancel := c.withTimeout(ctx)
			changes, err := currentPlan(rctx, cl, desired, ff.prune)
			cancel()
			if err != nil {
				return err
			}
			n, err := renderPlan(c.stdout, c.pal, changes)
			if err != nil || dryRun {
				return err
			}
			if n == 0 {
				_, err := fmt.Fprintln(c.stdout, "nothing to do: the daemon matches the file")
				return err
			}
			return c.applyPlan(ctx, cl, changes, cmd.Flags().Changed("bake"), bake, &wf)
		}),
	}
	ff.register(cmd)
	f := cmd.Flags()
	f.BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing")
	durationFlag(f, &bake, "bake", 0, "reload with this bake and wait for its end before the next step (a revert stops apply, exit 8)")
	wf.register(f)
	return cmd
}

// applyPlan runs the steps of changes, stopping at the first failure.
func (c *cli) applyPlan(ctx context.Context, cl *client.Client, changes []change, bakeSet bool, bake time.Duration, wf *waitFlags) error {
	var done []string
	for i, ch := range changes {
		err := c.applyStep(ctx, cl, ch, bakeSet, bake, wf)
		if err == nil {
			if ch.kind != changeNone && ch.kind != changeExtra {
				done = append(done, ch.name)
			}
			continue
		}
		var left []string
		for _, rest := range changes[i+1:] {
			if rest.kind != changeNone && rest.kind != changeExtra {
				left = append(left, rest.name)
			}
		}
		fmt.Fprintf(c.stderr, "pluginctl: apply stopped at %s; done: %s; not attempted, left as they were: %s\n",
			ch.name, listOrNone(done), listOrNone(left))
		return err
	}
	_, err := fmt.Fprintf(c.stdout, "applied: %s\n", listOrNone(done))
	return err
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// applyStep carries out one change.
func (c *cli) applyStep(ctx context.Context, cl *client.Client, ch change, bakeSet bool, bake time.Duration, wf *waitFlags) error {
	rctx, cancel := c.withTimeout(ctx)
	defer cancel()
	var gen uint64
	switch ch.kind {
	case changeLoad:
		resp, err := cl.LoadWithReport(rctx, ch.desired)
		if err != nil {
			return err
		}
		gen = resp.GetPlugin().GetGeneration()
		fmt.Fprintf(c.stdout, "loaded %s: generation %d\n", ch.name, gen)
	case changeReload:
		opts := []client.ReloadOption{client.WithSpec(ch.desired)}
		if bakeSet {
			opts = append(opts, client.WithBake(bake))
		}
		resp, err := cl.Reload(rctx, ch.name, opts...)
		if err != nil {
			return err
		}
		gen = resp.GetPlugin().GetGeneration()
		fmt.Fprintf(c.stdout, "reloaded %s: generation %d\n", ch.name, gen)
	case changeUnload:
		if _, err := cl.Unload(rctx, ch.name); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "unloaded %s\n", ch.name)
		return nil
	default:
		return nil
	}
	if wf.enabled {
		if err := c.waitHealthy(ctx, cl, wf, ch.name, gen); err != nil {
			return err
		}
	}
	if ch.kind == changeReload && bakeSet && bake > 0 {
		return c.waitForBake(ctx, cl, ch.name, gen)
	}
	return nil
}

func (c *cli) getCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "get [NAME...]",
		GroupID: "state",
		Short:   "print plugin specs in the form apply reads",
		Long: `Print the specs of the named plugins (all when none is named) as a spec file:
YAML documents separated by "---" (the default, and -o yaml), or with -o json
one JSON object (a list for several plugins). "apply -f" accepts the output
unchanged.`,
		ValidArgsFunction: c.completeNames(-1),
		RunE: c.body(func(ctx context.Context, _ *cobra.Command, names []string) error {
			return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
				var opts []client.ListOption
				if len(names) > 0 {
					opts = append(opts, client.WithNames(names...))
				}
				list, err := cl.List(ctx, opts...)
				if err != nil {
					return err
				}
				if c.output == "json" {
					return printSpecsJSON(c.stdout, list)
				}
				for i, st := range list {
					if err := printYAML(c.stdout, st.GetSpec(), i > 0); err != nil {
						return err
					}
				}
				return nil
			})
		}),
	}
	return cmd
}

// printSpecsJSON prints one spec as an object, several as a list.
func printSpecsJSON(w io.Writer, list []*plugincontrolv1.PluginStatus) error {
	if len(list) == 1 {
		return printJSON(w, jsonOptions, list[0].GetSpec())
	}
	var b bytes.Buffer
	b.WriteString("[\n")
	for i, st := range list {
		j, err := jsonOptions.Marshal(st.GetSpec())
		if err != nil {
			return err
		}
		b.Write(j)
		if i < len(list)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString("]\n")
	_, err := w.Write(b.Bytes())
	return err
}
