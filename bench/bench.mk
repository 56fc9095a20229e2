# Benchmarks of plugind against its floor (raw go-plugin) and its peers
# (grpc-go's health service). Include from the Makefile:
#
#	include bench/bench.mk
#
# `make bench` is the full run (a few minutes; writes bench/RESULTS.md),
# `make bench-short` the CI run (a few iterations, 300 watchers, 10 plugins,
# 20 reloads; under 90 s), `make bench-compare` the CI regression gate
# (this tree's plugind against the previous commit's, interleaved; under a
# minute), `make bench-micro` the hot-path microbenchmarks.

GO          ?= go
BENCH_FLAGS ?=

.PHONY: bench bench-short bench-micro bench-compare

# BENCH_BASE: the commit bench-compare measures this tree against.
BENCH_BASE ?= HEAD~1

## bench: full benchmark run; prints the table and writes bench/RESULTS.md
bench:
	$(GO) run ./bench $(BENCH_FLAGS)

## bench-short: the CI benchmark run (keeps the program from rotting; results are not written)
bench-short:
	$(GO) run ./bench -short -out - $(BENCH_FLAGS)

## bench-compare: the regression gate: plugind of BENCH_BASE (default HEAD~1) and of this tree, the hot scenarios interleaved; fails past the tolerance (bench/RESULTS.md, "Regression gate")
bench-compare:
	$(GO) run ./bench/compare -base $(BENCH_BASE) $(BENCH_COMPARE_FLAGS)

## bench-micro: microbenchmarks of the manager's hot paths
bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem ./manager
