package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	plugincontrolv1 "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

// TestApplyIsIdempotent applies a file of specs spelled in every way a user
// may write them (defaults spelled out or left out, NONE or no unhealthy
// action, zero durations), then checks what a GitOps loop needs: diff finds
// nothing, a second apply reloads nothing (same generations), and what get
// prints applies as a no-op too.
func TestApplyIsIdempotent(t *testing.T) {
	d := startDaemon(t)
	ctx := context.Background()
	ctl := func(args ...string) result {
		t.Helper()
		return runCLI(ctx, "", append([]string{"--addr", d.addr, "--timeout", "30s"}, args...)...)
	}
	r := rand.New(rand.NewPCG(7, 11))
	dur := func(max time.Duration) *durationpb.Duration {
		switch r.IntN(3) {
		case 0:
			return nil
		case 1:
			return durationpb.New(0)
		}
		return durationpb.New(time.Duration(r.Int64N(int64(max))) + time.Second)
	}
	var docs []string
	for i := range 6 {
		s := &plugincontrolv1.PluginSpec{Name: fmt.Sprintf("e%d", i), Binary: "echo", StartTimeout: dur(time.Minute), ReadyTimeout: dur(time.Minute)}
		if r.IntN(2) == 0 {
			s.Env = map[string]string{"VERSION": fmt.Sprint(r.IntN(9))}
		}
		if r.IntN(2) == 0 {
			s.Config = []byte("c=1")
		}
		if i%2 == 0 {
			s.HealthPolicy = &plugincontrolv1.HealthPolicy{
				PanicThreshold: uint32(1 + r.IntN(5)), PanicWindow: dur(time.Hour), RestartPeriod: dur(time.Hour),
				UnhealthyAction: plugincontrolv1.UnhealthyAction(r.IntN(3)), // UNSPECIFIED, NONE or RESTART
			}
		}
		b, err := protojson.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(b))
	}
	file := filepath.Join(t.TempDir(), "plugins.yaml")
	if err := os.WriteFile(file, []byte(strings.Join(docs, "\n---\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	if res := ctl("apply", "-f", file); res.code != 0 {
		t.Fatalf("apply: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	gens := func() string {
		res := ctl("list")
		if res.code != 0 {
			t.Fatalf("list: %s", res.stderr)
		}
		return res.stdout
	}
	before := gens()
	if res := ctl("diff", "-f", file, "--exit-code"); res.code != 0 {
		t.Fatalf("diff after apply: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	for range 2 {
		res := ctl("apply", "-f", file)
		if res.code != 0 || strings.Contains(res.stdout, "reload") {
			t.Fatalf("apply again: exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
	}
	// What get prints is what apply reads: applying it changes nothing.
	got := ctl("get")
	if got.code != 0 {
		t.Fatalf("get: %s", got.stderr)
	}
	file2 := filepath.Join(t.TempDir(), "got.yaml")
	if err := os.WriteFile(file2, []byte(got.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	if res := ctl("diff", "-f", file2, "--exit-code"); res.code != 0 {
		t.Fatalf("diff of get's output: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if after := gens(); after != before {
		t.Fatalf("plugins changed under idempotent applies:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
