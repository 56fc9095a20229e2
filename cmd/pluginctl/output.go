package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

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

// printYAML writes m as the YAML of its protojson (proto field names, the
// same values as -o json: 64-bit integers as strings, enums by name, bytes
// in base64). With separator, a "---" line comes first (watch: one
// document per event).
func printYAML(w io.Writer, m proto.Message, separator bool) error {
	j, err := jsonLineOptions.Marshal(m)
	if err != nil {
		return err
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		return err
	}
	if separator {
		y = append([]byte("---\n"), y...)
	}
	_, err = w.Write(y)
	return err
}

// ANSI SGR codes of the state colours.
const (
	ansiReset  = "\x1b[0m"
	ansiRed    = "\x1b[31m"
	ansiGreen  = "\x1b[32m"
	ansiYellow = "\x1b[33m"
	ansiCyan   = "\x1b[36m"
	ansiDim    = "\x1b[2m"
	ansiBold   = "\x1b[1m"
)

// palette colours table cells; the zero palette prints plain text.
type palette struct{ on bool }

// paint wraps s in the SGR code when colours are on.
func (p palette) paint(code, s string) string {
	if !p.on || code == "" || s == "" {
		return s
	}
	return code + s + ansiReset
}

// stateColor is the colour of a plugin state: SERVING green, DEGRADED
// yellow, UNHEALTHY red, STARTING cyan, STOPPED dim.
func stateColor(s plugincontrolv1.PluginState) string {
	switch s {
	case plugincontrolv1.PluginState_PLUGIN_STATE_SERVING:
		return ansiGreen
	case plugincontrolv1.PluginState_PLUGIN_STATE_DEGRADED:
		return ansiYellow
	case plugincontrolv1.PluginState_PLUGIN_STATE_UNHEALTHY:
		return ansiRed
	case plugincontrolv1.PluginState_PLUGIN_STATE_STARTING:
		return ansiCyan
	case plugincontrolv1.PluginState_PLUGIN_STATE_STOPPED:
		return ansiDim
	}
	return ""
}

// outcomeColor is the colour of an audit outcome.
func outcomeColor(outcome string) string {
	switch outcome {
	case "ok":
		return ansiGreen
	case "failed":
		return ansiRed
	}
	return ""
}

// tcell is one table cell: plain text and an optional colour.
type tcell struct {
	text  string
	color string
}

func txt(s string) tcell { return tcell{text: s} }

func stateCell(s plugincontrolv1.PluginState) tcell {
	return tcell{text: stateName(s), color: stateColor(s)}
}

// table aligns cells in columns two spaces apart, as text/tabwriter would,
// but measures the plain text: colour codes are added after padding, so
// columns stay aligned with colours on. The last column is not padded.
type table struct {
	rows [][]tcell
}

func (t *table) add(cells ...tcell) { t.rows = append(t.rows, cells) }

// header adds a row of plain column titles.
func (t *table) header(titles ...string) {
	row := make([]tcell, len(titles))
	for i, s := range titles {
		row[i] = txt(s)
	}
	t.add(row...)
}

// render returns the table's text.
func (t *table) render(p palette) string {
	var widths []int
	for _, row := range t.rows {
		for i, c := range row {
			if i == len(row)-1 {
				break // the last cell of a row sets no width
			}
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c.text))
		}
	}
	var b strings.Builder
	for _, row := range t.rows {
		for i, c := range row {
			b.WriteString(p.paint(c.color, c.text))
			if i < len(row)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c.text)+2))
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func (t *table) write(w io.Writer, p palette) error {
	_, err := io.WriteString(w, t.render(p))
	return err
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
func renderStatuses(w io.Writer, p palette, plugins []*plugincontrolv1.PluginStatus) error {
	var t table
	t.header("NAME", "GEN", "STATE", "PID", "VERSION", "BINARY", "RESTARTS", "ENDPOINT", "LAST ERROR")
	for _, s := range plugins {
		pid := "-"
		if s.GetPid() != 0 {
			pid = strconv.FormatInt(s.GetPid(), 10)
		}
		t.add(txt(cell(s.GetName())), txt(strconv.FormatUint(s.GetGeneration(), 10)), stateCell(s.GetState()), txt(pid),
			txt(cell(s.GetVersion())), txt(cell(s.GetBinary())), txt(strconv.FormatUint(uint64(s.GetRestarts()), 10)),
			txt(cell(s.GetEndpoint())), txt(cell(s.GetLastError())))
	}
	return t.write(w, p)
}

// healthTable is the table of health and of the live watch view.
func healthTable(plugins []*plugincontrolv1.PluginHealth) *table {
	t := &table{}
	t.header("NAME", "STATE", "GEN", "PANICS(window)", "CRASHES", "RESTARTS", "REASON")
	for _, h := range plugins {
		t.add(txt(cell(h.GetName())), stateCell(h.GetState()), txt(strconv.FormatUint(h.GetGeneration(), 10)),
			txt(strconv.FormatUint(uint64(h.GetPanicsInWindow()), 10)), txt(strconv.FormatUint(h.GetCrashes(), 10)),
			txt(strconv.FormatUint(uint64(h.GetRestarts()), 10)), txt(cell(h.GetReason())))
	}
	return t
}

// renderHealth prints a HealthResponse as a table followed by its revision.
func renderHealth(w io.Writer, p palette, resp *plugincontrolv1.HealthResponse) error {
	if err := healthTable(resp.GetPlugins()).write(w, p); err != nil {
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
	var t table
	t.header("STAGE", "DURATION")
	for _, s := range r.GetStages() {
		t.add(txt(stageName(s.GetStage())), txt(formatDuration(s.GetDuration().AsDuration())))
	}
	t.add(txt("total"), txt(formatDuration(r.GetTotal().AsDuration())))
	if err := t.write(w, palette{}); err != nil {
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
func renderLoad(w io.Writer, p palette, resp *plugincontrolv1.LoadResponse) error {
	if err := renderStatuses(w, p, []*plugincontrolv1.PluginStatus{resp.GetPlugin()}); err != nil {
		return err
	}
	fmt.Fprintln(w)
	return renderReport(w, resp.GetReport())
}

// renderReload prints the outcome of reload.
func renderReload(w io.Writer, p palette, resp *plugincontrolv1.ReloadResponse, validateOnly bool) error {
	if err := renderStatuses(w, p, []*plugincontrolv1.PluginStatus{resp.GetPlugin()}); err != nil {
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

// auditTimeLayout is how audit prints record times (in local time).
const auditTimeLayout = "2006-01-02 15:04:05"

// renderAudit prints audit records as a table, times in loc.
func renderAudit(w io.Writer, p palette, loc *time.Location, records []*plugincontrolv1.AuditRecord) error {
	var t table
	t.header("SEQ", "TIME", "CALLER", "ACTION", "PLUGIN", "GEN(old→new)", "OUTCOME", "ERROR")
	for _, r := range records {
		when := "-"
		if r.GetTime() != nil {
			when = r.GetTime().AsTime().In(loc).Format(auditTimeLayout)
		}
		t.add(txt(strconv.FormatUint(r.GetSequence(), 10)), txt(when), txt(cell(r.GetCaller())), txt(cell(r.GetAction())),
			txt(cell(r.GetPlugin())), txt(fmt.Sprintf("%d→%d", r.GetOldGeneration(), r.GetNewGeneration())),
			tcell{text: cell(r.GetOutcome()), color: outcomeColor(r.GetOutcome())}, txt(cell(r.GetError())))
	}
	return t.write(w, p)
}

// watchHeader is the first line of watch in table mode.
const watchHeader = "REVISION  TYPE      NAME                  STATE      GEN   REASON"

// formatEvent is one table line of watch: revision, type, name, state,
// generation, reason. The state is padded before it is coloured.
func formatEvent(e *plugincontrolv1.HealthEvent, p palette) string {
	typ := eventTypeName(e.GetType())
	if e.GetReset_() {
		// A snapshot sent because the resume point was compacted away: the
		// watcher's view is replaced.
		typ = "RESET"
	}
	name, state, gen, reason := "-", "-", "-", "-"
	color := ""
	if h := e.GetHealth(); h != nil {
		name = cell(h.GetName())
		state = stateName(h.GetState())
		color = stateColor(h.GetState())
		gen = strconv.FormatUint(h.GetGeneration(), 10)
		reason = cell(h.GetReason())
	}
	padded := p.paint(color, state) + strings.Repeat(" ", max(0, 9-utf8.RuneCountInString(state)))
	return fmt.Sprintf("%-8d  %-8s  %-20s  %s  %-4s  %s", e.GetRevision(), typ, name, padded, gen, reason)
}
