# plugincontrol: build, run, test and contract checks.
# Tools (buf, protoc-gen-go, protoc-gen-go-grpc, grpcurl, grpc-health-probe)
# are pinned in tools/go.mod and run with `go tool -modfile=tools/go.mod`,
# outside the workspace (go.work: -modfile is for one module, and the
# tools' dependencies must not move the daemon's).

GO       ?= go
TOOL     := GOWORK=off $(GO) tool -modfile=tools/go.mod
BIN      := bin
STATE    ?= .plugind
BASELINE := proto/baseline.binpb
# buf breaking also checks against this commit (the previous one on main:
# CI checks each commit against its parent; the baseline holds since the
# freeze).
BREAKING_REF ?= HEAD~1
# The nested modules: the published SDK (client, plugin) and generated code.
MODULES  := gen client plugin

.PHONY: all build plugins run test test-deps check promtool debian-etcd tidy tidy-check release-snapshot lint format breaking gen gen-check baseline grpcurl tools ci clean

all: build plugins

## build: plugind, pluginctl and the echo example plugin into bin/ (what make run runs)
build:
	$(GO) build -o $(BIN)/ ./cmd/plugind ./cmd/pluginctl
	$(GO) build -o $(BIN)/plugins/ ./examples/plugins/echo

## plugins: every example plugin (examples/plugins), go-plugin's own KV example (bin/plugins/kv) and the misbehaving test plugins (test/plugins) the README's walkthrough uses, into bin/plugins
plugins:
	$(GO) build -o $(BIN)/plugins/ ./examples/plugins/... ./test/plugins/...
	$(GO) build -o $(BIN)/plugins/kv github.com/hashicorp/go-plugin/examples/grpc/plugin-go-grpc

## run: build, then start plugind on unix://.plugind/plugind.sock with echo loaded
run: build
	$(BIN)/plugind --plugin-dir $(BIN)/plugins --state-dir $(STATE) --load echo

## test: every test of the four modules, with the race detector (builds real plugins and tools it needs)
test: test-deps
	$(GO) test -race -count=1 ./...
	cd client && $(GO) test -race -count=1 ./...
	cd plugin && $(GO) test -race -count=1 ./...

## check: buf lint, buf format, buf breaking against the baseline, gen/ freshness, go vet
check: lint format breaking gen-check tidy-check gofmt-check
	$(GO) vet ./...
	for m in $(MODULES); do (cd $$m && $(GO) vet ./...) || exit 1; done

## tidy-check: every module's go.mod and go.sum are tidy (make/tidy.sh says how the siblings are mapped)
tidy-check:
	make/tidy.sh check

## tidy: go mod tidy in each module (not plain go mod tidy: see make/tidy.sh)
tidy:
	make/tidy.sh fix

## gofmt-check: every Go file is gofmt'ed
gofmt-check:
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go' | grep -v '^gen/' | while read -r f; do [ -f "$$f" ] && echo "$$f"; done)); if [ -n "$$out" ]; then echo "not gofmt'ed:"; echo "$$out"; exit 1; fi

lint:
	$(TOOL) buf lint

format:
	$(TOOL) buf format --diff --exit-code

breaking:
	$(TOOL) buf breaking --against $(BASELINE)
	$(TOOL) buf breaking --against '.git#ref=$(BREAKING_REF)' 

## gen: regenerate gen/ from proto/
gen:
	rm -rf gen/plugincontrol
	$(TOOL) buf generate

## gen-check: fail when gen/ differs from what buf generate makes (gen/ is also a Go module: its go.mod, go.sum and LICENSE are not generated)
gen-check:
	@tmp=$$(mktemp -d) && $(TOOL) buf generate --output $$tmp && \
	if ! diff -r gen/plugincontrol $$tmp/gen/plugincontrol >/dev/null; then \
		echo "gen/ is stale: run 'make gen' and commit the result"; diff -r gen/plugincontrol $$tmp/gen/plugincontrol | head -20; rm -rf $$tmp; exit 1; \
	fi; rm -rf $$tmp; echo "gen/ is fresh"

## baseline: move the breaking-change baseline to the current protos (see README)
baseline:
	$(TOOL) buf build -o $(BASELINE)

## grpcurl: build the pinned grpcurl into bin/ for the README walkthrough
grpcurl:
	GOWORK=off $(GO) build -modfile=tools/go.mod -o $(BIN)/ github.com/fullstorydev/grpcurl/cmd/grpcurl

## test-deps: what the tests need besides Go: systemd-analyze (Debian's systemd, installed when missing), promtool and Debian's etcd
test-deps: promtool debian-etcd
	@missing=""; \
	  command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	  command -v zsh >/dev/null || missing="$$missing zsh"; \
	  command -v fish >/dev/null || missing="$$missing fish"; \
	  [ -f /usr/share/bash-completion/bash_completion ] || missing="$$missing bash-completion"; \
	  if [ -n "$$missing" ]; then echo "installing$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

## promtool: bin/tools/promtool, extracted from Debian's prometheus package (the metrics test lints with it; not installed)
promtool: $(BIN)/tools/promtool
$(BIN)/tools/promtool:
	@tmp=$$(mktemp -d) && cd $$tmp && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; }; } && \
	  dpkg -x prometheus_*.deb x && mkdir -p $(CURDIR)/$(BIN)/tools && cp x/usr/bin/promtool $(CURDIR)/$@ && rm -rf $$tmp && $(CURDIR)/$@ --version | head -1

## debian-etcd: bin/tools/etcd and etcdctl, extracted from Debian's etcd-server and etcd-client packages (test/fleet runs an etcd we did not build; not installed: no service starts)
debian-etcd: $(BIN)/tools/etcd
$(BIN)/tools/etcd:
	@tmp=$$(mktemp -d) && cd $$tmp && { apt-get download etcd-server etcd-client >/dev/null 2>&1 || { apt-get update -qq && apt-get download etcd-server etcd-client >/dev/null 2>&1; }; } && \
	  for d in etcd-*.deb; do dpkg -x $$d x; done && mkdir -p $(CURDIR)/$(BIN)/tools && cp x/usr/bin/etcdctl x/usr/bin/etcd $(CURDIR)/$(BIN)/tools/ && rm -rf $$tmp && $(CURDIR)/$@ --version | head -1

## release-snapshot: the release build of this tree, offline, into dist/ (archives, .deb, .rpm, checksums.txt; make/release.sh)
release-snapshot:
	make/release.sh snapshot

## tools: build every pinned tool once (warms the cache)
tools:
	$(TOOL) buf --version
	$(TOOL) protoc-gen-go --version
	$(TOOL) protoc-gen-go-grpc --version
	$(TOOL) grpcurl --version
	$(TOOL) grpc-health-probe --version

## ci: what .ci/run does
ci: tools check ts-install node-install ts-gen-check docs-check test ts-test bench-short bench-compare

# SDK, docs and contract targets (make/sdk.mk), benchmarks (bench/bench.mk).
-include make/*.mk
-include bench/bench.mk

clean:
	rm -rf $(BIN) $(STATE) dist
