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

# Installs redis-server, haproxy, staticcheck and tools/node; skips what is
# there. The tests start their own servers on free ports (internal/testsvc).
services:
	@scripts/services.sh install

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

test: services lint go-test fuzz-short

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

load:
	$(GO) run ./bench $(ARGS)

clean:
	rm -rf bin artifacts

# Also removes installed tools; make services brings them back.
distclean: clean
	rm -rf .cache tools/node/node_modules
