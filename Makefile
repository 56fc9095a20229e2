# plugincontrol: build, run, test and contract checks.
# Tools (buf, protoc-gen-go, protoc-gen-go-grpc, grpcurl, grpc-health-probe)
# are pinned in tools/go.mod and run with `go tool -modfile=tools/go.mod`.

GO       ?= go
TOOL     := $(GO) tool -modfile=tools/go.mod
BIN      := bin
STATE    ?= .plugind
BASELINE := proto/baseline.binpb

.PHONY: all build run test check lint format breaking gen gen-check baseline grpcurl tools ci clean

all: build

## build: plugind, pluginctl and the example plugins into bin/ (with go-plugin's own KV example as bin/plugins/kv)
build:
	$(GO) build -o $(BIN)/ ./cmd/plugind ./cmd/pluginctl
	$(GO) build -o $(BIN)/plugins/ ./examples/plugins/...
	$(GO) build -o $(BIN)/plugins/kv github.com/hashicorp/go-plugin/examples/grpc/plugin-go-grpc

## run: build, then start plugind on unix://.plugind/plugind.sock with echo loaded
run: build
	$(BIN)/plugind --plugin-dir $(BIN)/plugins --state-dir $(STATE) --load echo

## test: every test, with the race detector (builds real plugins and tools it needs)
test:
	$(GO) test -race -count=1 ./...

## check: buf lint, buf format, buf breaking against the baseline, gen/ freshness, go vet
check: lint format breaking gen-check
	$(GO) vet ./...

lint:
	$(TOOL) buf lint

format:
	$(TOOL) buf format --diff --exit-code

breaking:
	$(TOOL) buf breaking --against $(BASELINE)

## gen: regenerate gen/ from proto/
gen:
	$(TOOL) buf generate

## gen-check: fail when gen/ differs from what buf generate makes
gen-check:
	@tmp=$$(mktemp -d) && cp -r gen $$tmp/old && $(TOOL) buf generate && \
	if ! diff -r $$tmp/old gen >/dev/null; then \
		echo "gen/ is stale: run 'make gen' and commit the result"; diff -r $$tmp/old gen | head -20; rm -rf $$tmp; exit 1; \
	fi; rm -rf $$tmp; echo "gen/ is fresh"

## baseline: move the breaking-change baseline to the current protos (see README)
baseline:
	$(TOOL) buf build -o $(BASELINE)

## grpcurl: build the pinned grpcurl into bin/ for the README walkthrough
grpcurl:
	$(GO) build -modfile=tools/go.mod -o $(BIN)/ github.com/fullstorydev/grpcurl/cmd/grpcurl

## tools: build every pinned tool once (warms the cache)
tools:
	$(TOOL) buf --version
	$(TOOL) protoc-gen-go --version
	$(TOOL) protoc-gen-go-grpc --version
	$(TOOL) grpcurl --version
	$(TOOL) grpc-health-probe --version

## ci: what .ci/run does
ci: tools check ts-install node-install ts-gen-check docs-check test ts-test bench-short

# SDK, docs and contract targets (make/sdk.mk), benchmarks (bench/bench.mk).
-include make/*.mk
-include bench/bench.mk

clean:
	rm -rf $(BIN) $(STATE)
