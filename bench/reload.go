package main

import (
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	pb "github.com/plugincontrol/plugincontrol/gen/plugincontrol/v1"
)

func runReload(e *env) ([]row, error)    { return reloadVsRaw(e, false) }
func runReloadPin(e *env) ([]row, error) { return reloadVsRaw(e, true) }

// reloadVsRaw times Reload of echo end to end through the gRPC API (launch,
// handshake, Describe, Ready, swap, drain and stop of the old generation)
// against a raw go-plugin launch + handshake + Dispense + first call of the
// same binary from this process (killed afterwards, untimed). The two
// alternate, so drift hits both alike.
func reloadVsRaw(e *env, pin bool) ([]row, error) {
	iters, warm := 60, 3
	if e.short {
		iters, warm = 5, 1
	}
	d, err := startDaemon(e)
	if err != nil {
		return nil, err
	}
	defer d.close()
	spec := &pb.PluginSpec{Name: "echo", Binary: "echo"}
	var sum []byte
	if pin {
		spec.Sha256 = hex.EncodeToString(e.echoSum)
		sum = e.echoSum
	}
	ctx, cancel := ctxT(10 * time.Minute)
	defer cancel()
	if _, err := d.ctl.Load(ctx, &pb.LoadRequest{Spec: spec}); err != nil {
		return nil, err
	}
	req := &pb.ReloadRequest{Name: "echo"}
	if pin {
		req.Spec = spec // an upgrade to the same pinned spec: verified at every start
	}
	var dd, rd, outside dist
	stages := map[pb.CandidateStage]dist{}
	reloadOnce := func(i int) error {
		t0 := time.Now()
		res, err := d.ctl.Reload(ctx, req)
		el := time.Since(t0)
		if err != nil {
			return fmt.Errorf("Reload: %w", err)
		}
		if i >= warm {
			dd = append(dd, el)
			outside = append(outside, el-res.GetReport().GetTotal().AsDuration())
			for _, s := range res.GetReport().GetStages() {
				stages[s.GetStage()] = append(stages[s.GetStage()], s.GetDuration().AsDuration())
			}
		}
		return nil
	}
	rawOnce := func(i int) error {
		r, el, err := rawLaunch(e, sum)
		if err != nil {
			return err
		}
		r.kill()
		if i >= warm {
			rd = append(rd, el)
		}
		return nil
	}
	for i := range warm + iters {
		first, second := reloadOnce, rawOnce
		if i%2 == 1 {
			first, second = rawOnce, reloadOnce
		}
		if err := first(i); err != nil {
			return nil, err
		}
		if err := second(i); err != nil {
			return nil, err
		}
	}
	name, refName := "reload (same spec)", "raw go-plugin"
	if pin {
		name, refName = "reload (sha256 pin)", "raw go-plugin + SecureConfig"
	}
	r := ratio(float64(dd.p50()), float64(rd.p50()))
	var st []string
	for _, s := range []pb.CandidateStage{
		pb.CandidateStage_CANDIDATE_STAGE_RESOLVE, pb.CandidateStage_CANDIDATE_STAGE_CHECKSUM, pb.CandidateStage_CANDIDATE_STAGE_START,
		pb.CandidateStage_CANDIDATE_STAGE_HANDSHAKE, pb.CandidateStage_CANDIDATE_STAGE_DESCRIBE, pb.CandidateStage_CANDIDATE_STAGE_READY,
		pb.CandidateStage_CANDIDATE_STAGE_SWAP, pb.CandidateStage_CANDIDATE_STAGE_DRAIN,
	} {
		if v, ok := stages[s]; ok {
			st = append(st, strings.ToLower(strings.TrimPrefix(s.String(), "CANDIDATE_STAGE_"))+" "+fmtDur(v.p50()))
		}
	}
	st = append(st, "outside the stages (API, persistence, logging) "+fmtDur(outside.p50()))
	return []row{
		{
			scenario: name, measure: fmt.Sprintf("end-to-end latency p50 / p99, n=%d", len(dd)),
			plugind: fmtDur(dd.p50()) + " / " + fmtDur(dd.p99()), ref: refName + " " + fmtDur(rd.p50()) + " / " + fmtDur(rd.p99()),
			ratio: r, target: "p50 ≤ 1.25", ok: okIf(r <= 1.25),
		},
		{
			scenario: name, measure: "stage p50s in the daemon's report",
			plugind: strings.Join(st, ", "), ref: "—",
		},
	}, nil
}
