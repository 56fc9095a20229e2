# SDKs, API docs and contract goldens (issue 6). Included by the Makefile
# (-include make/*.mk); every target also works on its own:
#   make -f make/sdk.mk ts-test
#
# CI runs, in order: ts-install ts-gen-check docs-check ts-test
# (the Go side, client/ and test/contract, runs in `make test`).

GO      ?= go
TOOL    ?= GOWORK=off $(GO) tool -modfile=tools/go.mod
TS      := sdk/ts
NPM     ?= npm

.PHONY: node-install ts-install ts-gen ts-gen-check ts-build ts-test ts-pack docs docs-check contract-update contract-test

## node-install: install the Node.js example plugin's runtime deps (npm ci in examples/node-kv; the tests do it when missing)
node-install:
	cd examples/node-kv && $(NPM) ci --no-audit --no-fund

## ts-install: install the pinned TypeScript toolchain and runtime deps (npm ci, from package-lock.json)
ts-install:
	cd $(TS) && $(NPM) ci --no-audit --no-fund

## ts-gen: regenerate sdk/ts/src/gen from proto/ with the pinned protoc-gen-es (needs ts-install)
ts-gen:
	$(TOOL) buf generate --template $(TS)/buf.gen.yaml

## ts-gen-check: fail when sdk/ts/src/gen differs from what ts-gen makes
ts-gen-check:
	@tmp=$$(mktemp -d) && cp -r $(TS)/src/gen $$tmp/old && \
	$(TOOL) buf generate --template $(TS)/buf.gen.yaml --output $$tmp/new 2>/dev/null || \
	  { rm -rf $$tmp; echo "ts-gen-check: buf generate failed (run make ts-install first)"; exit 1; }; \
	if ! diff -r $$tmp/old $$tmp/new/$(TS)/src/gen >/dev/null; then \
		echo "$(TS)/src/gen is stale: run 'make ts-gen' and commit the result"; diff -r $$tmp/old $$tmp/new/$(TS)/src/gen | head -20; rm -rf $$tmp; exit 1; \
	fi; rm -rf $$tmp; echo "$(TS)/src/gen is fresh"

## ts-build: compile the TypeScript package (sdk/ts/build)
ts-build:
	cd $(TS) && $(NPM) run build

## ts-test: node --test against a real plugind the test builds and starts (unix socket and loopback TCP)
ts-test:
	cd $(TS) && $(NPM) test

## ts-pack: show what the npm package would contain, and its size
ts-pack: ts-build
	cd $(TS) && $(NPM) pack --dry-run

## docs: regenerate docs/api.md from the proto comments
docs:
	@tmp=$$(mktemp -d) && $(TOOL) buf build -o $$tmp/image.binpb && \
	$(GO) run ./internal/protodoc/cmd/protodoc -image $$tmp/image.binpb -out docs/api.md; \
	rc=$$?; rm -rf $$tmp; exit $$rc

## docs-check: fail when docs/api.md is stale
docs-check:
	@tmp=$$(mktemp -d) && $(TOOL) buf build -o $$tmp/image.binpb && \
	$(GO) run ./internal/protodoc/cmd/protodoc -image $$tmp/image.binpb -out $$tmp/api.md && \
	if ! diff -u docs/api.md $$tmp/api.md >/dev/null; then \
		echo "docs/api.md is stale: run 'make docs' and commit the result"; diff -u docs/api.md $$tmp/api.md | head -20; rm -rf $$tmp; exit 1; \
	fi; rm -rf $$tmp; echo "docs/api.md is fresh"

## contract-update: rewrite the golden grpcurl transcripts in test/contract/testdata (review the diff!)
contract-update:
	$(GO) test -count=1 ./test/contract -update

## contract-test: the golden transcripts and the baseline-compatibility tests
contract-test:
	$(GO) test -race -count=1 ./test/contract
