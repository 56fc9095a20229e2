package manager

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/plugincontrol/plugincontrol/internal/proc"
	"github.com/plugincontrol/plugincontrol/manager/hub"
	"github.com/plugincontrol/plugincontrol/manager/record"
)

// TestTransitionTable walks every (state, event) pair: the allowed ones
// lead where the table below says, publish one event and set since when
// the state changes; the refused ones change nothing, publish nothing and
// return a *TransitionError. The expectations are written out here, apart
// from the table in lifecycle.go, so a change to the state machine must
// change both.
func TestTransitionTable(t *testing.T) {
	S, G, D, U, X, N := StateStarting, StateServing, StateDegraded, StateUnhealthy, StateStopped, StateUnknown
	const no = State(-1) // refused
	events := []lifecycleEvent{evLaunch, evActivated, evFault, evFaultLimit, evRecovered, evExited, evGaveUp, evStopped, evRemoved, evUpdated}
	want := map[State][]State{
		//            launch activated fault faultLimit recovered exited gaveUp stopped removed updated
		N: {S, no, no, no, no, no, no, no, no, no},
		S: {no, G, no, no, no, S, U, X, X, S},
		G: {no, G, D, U, no, S, U, X, X, G},
		D: {no, G, D, U, G, S, U, X, X, D},
		U: {no, G, U, U, no, S, U, X, X, U},
		X: {no, G, no, no, no, no, no, X, X, X},
	}
	m := &Manager{log: slog.New(slog.NewTextHandler(io.Discard, nil)), events: hub.New(hub.Config{})}
	for from, row := range want {
		for i, ev := range events {
			name := fmt.Sprintf("%s+%s", from, ev)
			e := &entry{name: "p", state: from, since: time.Unix(1, 0), reason: "before"}
			rev, refused := m.events.Revision(), m.RefusedTransitions()
			m.transitionLocked(e, ev, "why")
			switch to := row[i]; {
			case to == no:
				if m.RefusedTransitions() != refused+1 {
					t.Errorf("%s: refused, but not counted", name)
				}
				if e.state != from || e.since != time.Unix(1, 0) || e.reason != "before" || m.events.Revision() != rev {
					t.Errorf("%s: a refused event changed the entry or published", name)
				}
			default:
				if m.RefusedTransitions() != refused {
					t.Errorf("%s: counted as refused, want %s", name, to)
					continue
				}
				if e.state != to {
					t.Errorf("%s: state %s, want %s", name, e.state, to)
				}
				if m.events.Revision() != rev+1 || e.revision != rev+1 {
					t.Errorf("%s: published %d events", name, m.events.Revision()-rev)
				}
				changed := to != from || ev == evActivated
				if changed == (e.since == time.Unix(1, 0)) {
					t.Errorf("%s: since moved %v, state changed %v", name, e.since != time.Unix(1, 0), changed)
				}
				switch {
				case ev == evUpdated && e.reason != "before":
					t.Errorf("%s: an update changed the reason to %q", name, e.reason)
				case ev != evUpdated && to == StateServing && e.reason != "":
					t.Errorf("%s: SERVING with reason %q", name, e.reason)
				case ev != evUpdated && to != StateServing && e.reason != "why":
					t.Errorf("%s: reason %q, want the event's", name, e.reason)
				}
				if failure := ev == evFaultLimit || ev == evExited || ev == evGaveUp; failure != (e.lastError == "why") {
					t.Errorf("%s: last error %q (a failure event: %v)", name, e.lastError, failure)
				}
			}
		}
	}
	// The table has no state or event the test does not know.
	for s, row := range transitions {
		if _, ok := want[s]; !ok {
			t.Errorf("state %s in the table, not in the test", s)
		}
		for ev := range row {
			found := false
			for _, e := range events {
				found = found || e == ev
			}
			if !found {
				t.Errorf("event %s in the table, not in the test", ev)
			}
		}
	}
}

// The spec rule that keeps a plugin from setting the containment mark
// names the variable the launcher sets: record cannot import internal/proc
// (a Store must not pull in process control), so the two are pinned here.
func TestMarkEnvAgrees(t *testing.T) {
	if record.MarkEnv != proc.MarkEnv {
		t.Fatalf("record.MarkEnv %q, proc.MarkEnv %q", record.MarkEnv, proc.MarkEnv)
	}
	s := Spec{Name: "p", Binary: "p", Env: map[string]string{proc.MarkEnv: "x"}}
	var inv *InvalidError
	if err := s.Validate(); !errors.As(err, &inv) || inv.Field != "env" {
		t.Fatalf("a spec setting %s: %v", proc.MarkEnv, err)
	}
}
