package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/plugincontrol/plugincontrol/client"
	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// wantArgs checks the number of positional arguments.
func wantArgs(cmd string, pos []string, min, max int, what string) error {
	if len(pos) < min || (max >= 0 && len(pos) > max) {
		return usagef("%s: want %s, got %d argument(s)", cmd, what, len(pos))
	}
	return nil
}

// drainFlag registers --drain-timeout.
func drainFlag(fs *flag.FlagSet) *time.Duration {
	return fs.Duration("drain-timeout", 0, "wait at most this long for in-flight calls")
}

// drainTimeout is --drain-timeout as sent: nil when not given.
func drainTimeout(fs *flag.FlagSet, d time.Duration) (*durationpb.Duration, error) {
	if !isSet(fs, "drain-timeout") {
		return nil, nil
	}
	if d < 0 {
		return nil, usagef("--drain-timeout must not be negative")
	}
	return durationpb.New(d), nil
}

func (c *cli) load(ctx context.Context, args []string) error {
	fs := newFlagSet("load")
	var sf specFlags
	sf.register(fs)
	var wf waitFlags
	wf.register(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("load", pos, 1, 1, "NAME"); err != nil {
		return err
	}
	if err := sf.validate(); err != nil {
		return err
	}
	if err := wf.validate(false); err != nil {
		return err
	}
	spec, err := sf.loadSpec(pos[0], c.readFile)
	if err != nil {
		return err
	}
	return c.call(ctx, func(rctx context.Context, cl *client.Client) error {
		resp, err := cl.Control().Load(rctx, &plugincontrolv1.LoadRequest{Spec: spec})
		if err != nil {
			return err
		}
		err = c.show(resp, func() error { return renderLoad(c.stdout, c.pal, resp) })
		if err != nil || !wf.enabled {
			return err
		}
		return c.waitHealthy(ctx, cl.Control(), &wf, spec.GetName(), resp.GetPlugin().GetGeneration())
	})
}

func (c *cli) reload(ctx context.Context, args []string) error {
	fs := newFlagSet("reload")
	var sf specFlags
	sf.register(fs)
	validateOnly := fs.Bool("validate-only", false, "dry run")
	expected := fs.Uint64("expected-generation", 0, "required active generation")
	drain := drainFlag(fs)
	bake := fs.Duration("bake", 0, "keep the previous generation warm for D and revert to it if the new one fails")
	waitBake := fs.Bool("wait", false, "with --bake: wait until the bake ends")
	var wf waitFlags
	wf.register(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("reload", pos, 1, 1, "NAME"); err != nil {
		return err
	}
	if *bake < 0 {
		return usagef("--bake must not be negative")
	}
	if *waitBake && (!isSet(fs, "bake") || *bake == 0) {
		return usagef("--wait waits for the end of a bake: give --bake D too")
	}
	if *waitBake && *validateOnly {
		return usagef("--wait and --validate-only exclude each other: a dry run swaps nothing")
	}
	if err := sf.validate(); err != nil {
		return err
	}
	if err := wf.validate(*validateOnly); err != nil {
		return err
	}
	dt, err := drainTimeout(fs, *drain)
	if err != nil {
		return err
	}
	name := pos[0]
	req := &plugincontrolv1.ReloadRequest{
		Name:               name,
		ExpectedGeneration: *expected,
		ValidateOnly:       *validateOnly,
		DrainTimeout:       dt,
	}
	if isSet(fs, "bake") {
		req.Bake = durationpb.New(*bake)
	}

	return c.call(ctx, func(rctx context.Context, cl *client.Client) error {
		if sf.anySet() {
			current, err := currentSpec(rctx, cl, name)
			if err != nil {
				return err
			}
			if req.Spec, err = sf.reloadSpec(name, current, c.readFile); err != nil {
				return err
			}
		}
		resp, err := cl.Control().Reload(rctx, req)
		if err != nil {
			return err
		}
		err = c.show(resp, func() error { return renderReload(c.stdout, c.pal, resp, *validateOnly) })
		if err != nil {
			return err
		}
		if wf.enabled {
			if err := c.waitHealthy(ctx, cl.Control(), &wf, name, resp.GetPlugin().GetGeneration()); err != nil {
				return err
			}
		}
		if *waitBake {
			return c.waitForBake(ctx, cl, name, resp.GetPlugin().GetGeneration())
		}
		return nil
	})
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

// waitHealthy is --wait-healthy: it waits for generation of name to be
// healthy (see healthWaiter) within --wait-timeout. The context is the
// command's, without --timeout (which bounds the Load or Reload call).
func (c *cli) waitHealthy(ctx context.Context, control plugincontrolv1.PluginControlServiceClient, wf *waitFlags, name string, generation uint64) error {
	// A timer rather than a deadline: the deadline would travel to the
	// daemon, whose end of the stream could then fail first with an error
	// that does not say "timed out".
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := time.AfterFunc(wf.timeout, func() { cancel(errWaitTimeout) })
	defer timer.Stop()
	start := time.Now()
	h := &healthWaiter{
		control:    control,
		name:       name,
		generation: generation,
		settle:     wf.settle,
		log:        c.stderr,
	}
	if err := h.wait(ctx); err != nil {
		return err
	}
	if c.structured() {
		return nil
	}
	state := "is SERVING"
	if wf.settle > 0 {
		state = fmt.Sprintf("is SERVING and stayed so for %s", wf.settle)
	}
	_, err := fmt.Fprintf(c.stdout, "%s generation %d %s (waited %s)\n", name, generation, state, time.Since(start).Round(time.Millisecond))
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

func (c *cli) unload(ctx context.Context, args []string) error {
	fs := newFlagSet("unload")
	drain := drainFlag(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("unload", pos, 1, 1, "NAME"); err != nil {
		return err
	}
	dt, err := drainTimeout(fs, *drain)
	if err != nil {
		return err
	}
	return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
		resp, err := cl.Control().Unload(ctx, &plugincontrolv1.UnloadRequest{Name: pos[0], DrainTimeout: dt})
		if err != nil {
			return err
		}
		return c.show(resp, func() error {
			return renderStatuses(c.stdout, c.pal, []*plugincontrolv1.PluginStatus{resp.GetPlugin()})
		})
	})
}

func (c *cli) list(ctx context.Context, args []string) error {
	fs := newFlagSet("list")
	full := fs.Bool("full", false, "include each plugin's spec (view FULL; with -o json or yaml)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("list", pos, 0, 0, "no arguments"); err != nil {
		return err
	}
	opts := []client.ListOption{client.WithBasicView()}
	if *full {
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
}

func (c *cli) invoke(ctx context.Context, args []string) error {
	fs := newFlagSet("invoke")
	payloadFile := fs.String("payload-file", "", "read the payload from this file")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("invoke", pos, 2, 3, "NAME METHOD [PAYLOAD]"); err != nil {
		return err
	}
	var payload []byte
	switch {
	case isSet(fs, "payload-file") && len(pos) == 3:
		return usagef("invoke: give the payload as an argument or with --payload-file, not both")
	case isSet(fs, "payload-file"):
		if *payloadFile == "" {
			return usagef("--payload-file must not be empty")
		}
		if payload, err = c.readFile(*payloadFile); err != nil {
			return fmt.Errorf("--payload-file: %w", err)
		}
	case len(pos) == 3 && pos[2] == "-":
		if payload, err = c.readFile("-"); err != nil {
			return fmt.Errorf("reading the payload from standard input: %w", err)
		}
	case len(pos) == 3:
		payload = []byte(pos[2])
	}
	return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
		resp, err := cl.Gateway().Invoke(ctx, &plugincontrolv1.InvokeRequest{Plugin: pos[0], Method: pos[1], Payload: payload})
		if err != nil {
			return err
		}
		return c.show(resp, func() error {
			_, err := c.stdout.Write(resp.GetPayload())
			return err
		})
	})
}

func (c *cli) health(ctx context.Context, args []string) error {
	fs := newFlagSet("health")
	names, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
		resp, err := cl.Control().Health(ctx, &plugincontrolv1.HealthRequest{Names: names})
		if err != nil {
			return err
		}
		return c.show(resp, func() error { return renderHealth(c.stdout, c.pal, resp) })
	})
}

func (c *cli) watch(ctx context.Context, args []string) error {
	fs := newFlagSet("watch")
	since := fs.Uint64("since", 0, "resume after this revision")
	plain := fs.Bool("plain", false, "a line per event even on a terminal")
	names, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	cl, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	w := &watcher{
		control: cl.Control(),
		names:   names,
		since:   *since,
		output:  c.output,
		pal:     c.pal,
		out:     c.stdout,
		log:     c.stderr,
	}
	if c.output == "table" && !*plain && c.terminal() {
		what := "all plugins"
		if len(names) > 0 {
			what = strings.Join(names, ", ")
		}
		w.live = newLiveView(fmt.Sprintf("pluginctl watch: %s at %s (Ctrl-C to quit)", what, c.addr))
		w.width = func() int { return terminalWidth(c.stdout) }
	}
	return w.run(ctx)
}

// maxAuditLimit is the most records ListAudit returns at once.
const maxAuditLimit = 10000

func (c *cli) audit(ctx context.Context, args []string) error {
	fs := newFlagSet("audit")
	limit := fs.Uint("limit", 0, "at most this many records (default: the daemon's, 100)")
	before := fs.Uint64("before", 0, "records older than this sequence number")
	verify := fs.Bool("verify", false, "read the whole log and check its hash chain")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("audit", pos, 0, 1, "[NAME]"); err != nil {
		return err
	}
	if *verify {
		if len(pos) > 0 || isSet(fs, "limit") || isSet(fs, "before") {
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
	if *limit > maxAuditLimit {
		return usagef("--limit %d: at most %d", *limit, maxAuditLimit)
	}
	req := &plugincontrolv1.ListAuditRequest{Limit: uint32(*limit), BeforeSequence: *before}
	if len(pos) == 1 {
		req.Name = pos[0]
	}
	return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
		resp, err := cl.Control().ListAudit(ctx, req)
		if err != nil {
			return err
		}
		return c.show(resp, func() error { return c.renderAuditPage(req, resp.GetRecords()) })
	})
}

// renderAuditPage is the table of audit: the records, then after a full
// page the flag that fetches the older ones.
func (c *cli) renderAuditPage(req *plugincontrolv1.ListAuditRequest, recs []*plugincontrolv1.AuditRecord) error {
	if err := renderAudit(c.stdout, c.pal, c.location, recs); err != nil {
		return err
	}
	// A full page: older records may follow.
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

// completeNamesCommand is the hidden command completion scripts call for
// plugin names.
const completeNamesCommand = "__complete-names"

// completeNames prints the loaded plugins' names, one per line.
func (c *cli) completeNames(ctx context.Context, args []string) error {
	fs := newFlagSet(completeNamesCommand)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	return c.call(ctx, func(ctx context.Context, cl *client.Client) error {
		list, err := cl.List(ctx, client.WithBasicView())
		if err != nil {
			return err
		}
		// Plain names whatever -o says: the shell reads them.
		var b strings.Builder
		for _, p := range list {
			b.WriteString(p.GetName())
			b.WriteByte('\n')
		}
		_, err = io.WriteString(c.stdout, b.String())
		return err
	})
}
