package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// jsonOptions is how -o json prints responses.
var jsonOptions = protojson.MarshalOptions{Multiline: true, EmitUnpopulated: false, UseProtoNames: true}

// jsonLineOptions prints one response per line (watch).
var jsonLineOptions = protojson.MarshalOptions{Multiline: false, EmitUnpopulated: false, UseProtoNames: true}

// printJSON writes m as protojson followed by a newline.
func printJSON(w io.Writer, opts protojson.MarshalOptions, m proto.Message) error {
	b, err := opts.Marshal(m)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// oneLine makes s fit in one table cell: no newlines or tabs.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.Join(strings.Fields(s), " ")
}

// cell is s for a table cell, "-" when empty.
func cell(s string) string {
	if s = oneLine(s); s == "" {
		return "-"
	}
	return s
}

func stateName(s plugincontrolv1.PluginState) string {
	return strings.TrimPrefix(s.String(), "PLUGIN_STATE_")
}

func stageName(s plugincontrolv1.CandidateStage) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "CANDIDATE_STAGE_"))
}

func eventTypeName(t plugincontrolv1.HealthEventType) string {
	return strings.TrimPrefix(t.String(), "HEALTH_EVENT_TYPE_")
}

func formatDuration(d time.Duration) string {
	return d.Round(time.Microsecond).String()
}

// renderStatuses prints plugin statuses as a table.
func renderStatuses(w io.Writer, plugins []*plugincontrolv1.PluginStatus) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tGEN\tSTATE\tPID\tVERSION\tBINARY\tRESTARTS\tLAST ERROR")
	for _, p := range plugins {
		pid := "-"
		if p.GetPid() != 0 {
			pid = strconv.FormatInt(p.GetPid(), 10)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\n",
			cell(p.GetName()), p.GetGeneration(), stateName(p.GetState()), pid,
			cell(p.GetVersion()), cell(p.GetBinary()), p.GetRestarts(), cell(p.GetLastError()))
	}
	return tw.Flush()
}

// renderHealth prints a HealthResponse as a table followed by its revision.
func renderHealth(w io.Writer, resp *plugincontrolv1.HealthResponse) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tSTATE\tGEN\tPANICS(window)\tCRASHES\tRESTARTS\tREASON")
	for _, h := range resp.GetPlugins() {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\n",
			cell(h.GetName()), stateName(h.GetState()), h.GetGeneration(), h.GetPanicsInWindow(),
			h.GetCrashes(), h.GetRestarts(), cell(h.GetReason()))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "revision: %d\n", resp.GetRevision())
	return err
}

// renderReport prints the stage timings of a candidate pipeline run.
func renderReport(w io.Writer, r *plugincontrolv1.CandidateReport) error {
	if r == nil {
		return nil
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "STAGE\tDURATION")
	for _, s := range r.GetStages() {
		fmt.Fprintf(tw, "%s\t%s\n", stageName(s.GetStage()), formatDuration(s.GetDuration().AsDuration()))
	}
	fmt.Fprintf(tw, "total\t%s\n", formatDuration(r.GetTotal().AsDuration()))
	if err := tw.Flush(); err != nil {
		return err
	}
	var facts []string
	if pid := r.GetCandidatePid(); pid != 0 {
		facts = append(facts, fmt.Sprintf("candidate pid %d", pid))
	}
	if v := r.GetVersion(); v != "" {
		facts = append(facts, "version "+v)
	}
	if n := r.GetDrainedCalls(); n != 0 {
		facts = append(facts, fmt.Sprintf("%d calls drained", n))
	}
	if r.GetDrainTimedOut() {
		facts = append(facts, "drain timed out")
	}
	if len(facts) > 0 {
		_, err := fmt.Fprintln(w, strings.Join(facts, ", "))
		return err
	}
	return nil
}

// renderLoad prints the outcome of load.
func renderLoad(w io.Writer, resp *plugincontrolv1.LoadResponse) error {
	if err := renderStatuses(w, []*plugincontrolv1.PluginStatus{resp.GetPlugin()}); err != nil {
		return err
	}
	fmt.Fprintln(w)
	return renderReport(w, resp.GetReport())
}

// renderReload prints the outcome of reload.
func renderReload(w io.Writer, resp *plugincontrolv1.ReloadResponse, validateOnly bool) error {
	if err := renderStatuses(w, []*plugincontrolv1.PluginStatus{resp.GetPlugin()}); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if err := renderReport(w, resp.GetReport()); err != nil {
		return err
	}
	var err error
	if validateOnly {
		_, err = fmt.Fprintf(w, "validate only: the candidate passed and was discarded; generation %d keeps serving\n",
			resp.GetPlugin().GetGeneration())
	} else {
		_, err = fmt.Fprintf(w, "generation %d -> %d\n", resp.GetPreviousGeneration(), resp.GetPlugin().GetGeneration())
	}
	return err
}

// watchHeader is the first line of watch in table mode.
const watchHeader = "REVISION  TYPE      NAME                  STATE      GEN   REASON"

// formatEvent is one table line of watch: revision, type, name, state,
// generation, reason.
func formatEvent(e *plugincontrolv1.HealthEvent) string {
	typ := eventTypeName(e.GetType())
	if e.GetReset_() {
		// A snapshot sent because the resume point was compacted away: the
		// watcher's view is replaced.
		typ = "RESET"
	}
	name, state, gen, reason := "-", "-", "-", "-"
	if h := e.GetHealth(); h != nil {
		name = cell(h.GetName())
		state = stateName(h.GetState())
		gen = strconv.FormatUint(h.GetGeneration(), 10)
		reason = cell(h.GetReason())
	}
	return fmt.Sprintf("%-8d  %-8s  %-20s  %-9s  %-4s  %s", e.GetRevision(), typ, name, state, gen, reason)
}
