# chatgg's front door: CI runs `make test` through .ci/run, the same as you.
# Go flags come from the environment as usual (GOFLAGS, GOMAXPROCS, ...);
# TESTFLAGS adds go test flags, e.g. make test TESTFLAGS='-run Redis -v'.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
# Prerequisites run in the order written, even under make -j: test must
# install services before linting and lint before testing.
.NOTPARALLEL:
.DEFAULT_GOAL := all

GO           ?= go
PKGS         ?= ./...
TESTFLAGS    ?=
TEST_TIMEOUT ?= 12m
FUZZTIME     ?= 30s
BENCHCOUNT   ?= 6
STATICCHECK  := .cache/bin/staticcheck

.PHONY: all run build services tools-go lint test go-test fuzz-short fuzz bench conform load clean distclean

all: lint test

run:
	$(GO) run ./cmd/chatgg $(ARGS)

build:
	$(GO) build -o bin/chatgg ./cmd/chatgg

# Installs redis-server, haproxy, staticcheck, tools/node and Debian's
# chromium (for web/'s browser test); skips what is there. The tests start
# their own servers on free ports (internal/testsvc).
services:
	@scripts/services.sh install
	@scripts/services.sh install-browser

tools-go:
	@scripts/services.sh install-go

# gofmt over every Go file outside node_modules, .cache and testdata.
lint: tools-go
	@echo "lint: gofmt"
	@out=$$(find . \( -name node_modules -o -name .cache -o -name testdata -o -name '.?*' \) -prune -o -name '*.go' -print | xargs -r gofmt -l); \
	if [[ -n "$$out" ]]; then echo "gofmt: these files need gofmt -w:"; echo "$$out"; exit 1; fi
	@echo "lint: go vet"
	@$(GO) vet $(PKGS)
	@echo "lint: staticcheck"
	@$(STATICCHECK) $(PKGS)

test: services lint go-test fuzz-short k6-check deploy-check

# Static checks of the deployment files (docs/deploy.md): docker-compose
# config, haproxy -c, ruby -c, bash -n and shellcheck; no Docker daemon or
# VM. deploy/deploy_test.go, part of go-test, checks the settings they hold.
.PHONY: deploy-check
deploy-check:
	@deploy/check.sh

go-test:
	@echo "test: go test -race -shuffle=on $(PKGS)"
	@$(GO) test -race -shuffle=on -timeout $(TEST_TIMEOUT) $(TESTFLAGS) $(PKGS)

fuzz-short:
	@GOTESTFLAGS='$(TESTFLAGS)' scripts/fuzz.sh 3s

fuzz:
	@GOTESTFLAGS='$(TESTFLAGS)' scripts/fuzz.sh $(FUZZTIME)

# Results are for benchstat; the header lines (commit, gomaxprocs) are
# configuration keys benchstat understands.
bench:
	@mkdir -p bench/results
	@{ echo "commit: $$(git rev-parse --short HEAD 2>/dev/null || echo none)"; \
	   echo "gomaxprocs: $${GOMAXPROCS:-$$(nproc)}"; \
	   $(GO) test -run '^$$' -bench . -benchmem -count=$(BENCHCOUNT) $(TESTFLAGS) $(PKGS); \
	} | tee bench/results/latest.txt

conform:
	$(GO) test -race -run 'Conformance' -v $(TESTFLAGS) ./loop/...

# The load tool against a running server (make run in another terminal):
# ARGS is the mode and flags, e.g. make load ARGS='fanout --proto raw
# --subscribers 1000 --delivery-rate 40000'. With k6 installed, K6=fanout
# or K6=rest runs bench/k6/$(K6).js instead (K6ARGS passes -e settings).
load:
	@if [[ -n "$(K6)" ]]; then k6 run $(K6ARGS) bench/k6/$(K6).js; else $(GO) run ./bench $(or $(ARGS),fanout); fi

# chatgg against the Node ws broadcast server, pinned with taskset, in one
# run of under 5 minutes; see bench/README.md. Results in artifacts/.
.PHONY: bench-compare k6-check
bench-compare:
	@bench/compare.sh

# Publish-to-stored through chatgg (Redis, pouchdb-server, serve + 2
# workers) against _bulk_docs straight to the same store, in one run of
# under 3 minutes; see bench/README.md. Results in artifacts/.
.PHONY: store-compare
store-compare:
	@bench/store-compare.sh

# k6 cannot be installed here, so its scripts are checked as ES modules by
# node (copied to .mjs: node --check reads .js as CommonJS), and for imports
# from anything but k6's own modules. The Node ws server is checked too.
k6-check:
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	for f in bench/k6/*.js; do \
		m="$$tmp/$$(basename "$$f" .js).mjs"; cp "$$f" "$$m"; \
		node --check "$$m" || { echo "k6-check: $$f is not a valid ES module"; exit 1; }; \
		bad=$$(grep -nE "^[[:space:]]*import[[:space:]].*from[[:space:]]+['\"]" "$$f" | grep -vE "from[[:space:]]+['\"]k6(/[a-z/]+)?['\"]" || true); \
		if [[ -n "$$bad" ]]; then echo "k6-check: $$f imports outside k6:"; echo "$$bad"; exit 1; fi; \
	done; \
	node --check bench/ws-server/server.js; \
	echo "k6-check: $$(ls bench/k6/*.js | wc -l) k6 scripts ok"

clean:
	rm -rf bin artifacts

# Also removes installed tools; make services brings them back.
distclean: clean
	rm -rf .cache tools/node/node_modules
