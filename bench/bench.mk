# Benchmarks of plugind against its floor (raw go-plugin) and its peers
# (grpc-go's health service). Include from the Makefile:
#
#	include bench/bench.mk
#
# `make bench` is the full run (a few minutes; writes bench/RESULTS.md),
# `make bench-short` the CI run (a few iterations, 300 watchers, 10 plugins,
# 20 reloads; under 90 s), `make bench-micro` the hot-path microbenchmarks.

GO          ?= go
BENCH_FLAGS ?=

.PHONY: bench bench-short bench-micro

## bench: full benchmark run; prints the table and writes bench/RESULTS.md
bench:
	$(GO) run ./bench $(BENCH_FLAGS)

## bench-short: the CI benchmark run (keeps the program from rotting; results are not written)
bench-short:
	$(GO) run ./bench -short -out - $(BENCH_FLAGS)

## bench-micro: microbenchmarks of the manager's hot paths
bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem ./manager
