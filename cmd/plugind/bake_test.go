package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
	"github.com/plugincontrol/plugincontrol/internal/testbin"
	"google.golang.org/protobuf/types/known/durationpb"
)

// pluginctl reload --bake D --wait: exit 0 once the bake kept the new
// generation, exit 8 with the reason when plugind reverted it.
func TestPluginctlReloadBakeWait(t *testing.T) {
	d := startDaemon(t)
	out, code := run(t, "pluginctl", "--addr", d.Addr(), "reload", "echo", "--bake", "300ms", "--wait")
	if code != 0 {
		t.Fatalf("clean bake: exit %d\n%s", code, out)
	}
	mustContain(t, "clean bake", out, "bake passed", "generation 2 kept")
	out, code = run(t, "pluginctl", "--addr", d.Addr(), "reload", "echo", "--config", "crash_after=150ms", "--bake", "1m", "--wait")
	if code != 8 {
		t.Fatalf("crashing generation: exit %d, want 8\n%s", code, out)
	}
	mustContain(t, "crashing generation", out, "generation 3 was reverted", "crashed", "as generation 4")
	out, _ = run(t, "pluginctl", "--addr", d.Addr(), "-o", "json", "audit", "echo", "--limit", "1")
	var audit struct {
		Records []struct{ Action, Old_generation, New_generation string } `json:"records"`
	}
	if err := json.Unmarshal([]byte(out), &audit); err != nil || len(audit.Records) != 1 ||
		audit.Records[0] != (struct{ Action, Old_generation, New_generation string }{"revert", "3", "4"}) {
		t.Fatalf("audit after the revert: %v\n%s", err, out)
	}
	out, code = run(t, "pluginctl", "--addr", d.Addr(), "reload", "echo", "--wait")
	if code != 2 || !strings.Contains(out, "--bake") {
		t.Fatalf("--wait without --bake: exit %d\n%s", code, out)
	}
}

// A daemon SIGKILLed during a bake leaves no process behind (the new
// generation's and the warm previous one's), and the restarted daemon
// restores the new spec, consistently.
func TestSigkillDuringBake(t *testing.T) {
	d := startDaemon(t)
	ctl, _ := d.dial(t)
	ctx := context.Background()
	before := statuses(t, ctl)["echo"]
	rr, err := ctl.Reload(ctx, &pb.ReloadRequest{Name: "echo", Bake: durationpb.New(time.Hour),
		Spec: &pb.PluginSpec{Name: "echo", Binary: "echo", Args: []string{"--new"}}})
	if err != nil {
		t.Fatal(err)
	}
	pids := []int{int(before.GetPid()), int(rr.GetPlugin().GetPid())}
	for _, p := range pids {
		if !testbin.Alive(p) {
			t.Fatalf("pid %d not running during the bake (pids %v)", p, pids)
		}
	}
	h, _ := ctl.Health(ctx, &pb.HealthRequest{Names: []string{"echo"}})
	if b := h.GetPlugins()[0].GetBake(); b.GetResult() != pb.BakeResult_BAKE_RESULT_BAKING || b.GetGeneration() != 2 {
		t.Fatalf("bake: %v", b)
	}
	_ = d.Cmd.Process.Kill()
	<-d.Exited()
	for _, p := range pids {
		if !testbin.WaitGone(p, 5*time.Second) {
			t.Fatalf("plugin %d outlived the SIGKILLed daemon", p)
		}
	}
	d2 := startDaemonIn(t, d.StateDir)
	ctl2, _ := d2.dial(t)
	st := waitPlugins(t, ctl2, 10*time.Second, func(s map[string]*pb.PluginStatus) bool {
		return s["echo"].GetState() == pb.PluginState_PLUGIN_STATE_SERVING
	})["echo"]
	if st.GetGeneration() != 3 || fmt.Sprint(st.GetSpec().GetArgs()) != "[--new]" {
		t.Fatalf("restored: generation %d, spec %v; want generation 3 of the new spec", st.GetGeneration(), st.GetSpec())
	}
	if left := testbin.ProcessesIn(bins + "/plugins"); len(left) != 1 {
		t.Fatalf("plugin processes after the restore: %v, want one", left)
	}
}
