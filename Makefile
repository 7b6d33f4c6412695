# The two set-up commands are `make demo` and `make test`. Both use DATABASE_URL
# when it is set; otherwise internal/pgtest/pgrun starts a throwaway Postgres from
# this machine's binaries (unix socket in a temp dir, removed afterwards).

GO      ?= go
PGRUN   := $(GO) run ./internal/pgtest/pgrun
# Fuzz budgets are execution counts, not durations: with a duration, Go 1.26's
# fuzz coordinator can report a spurious "context deadline exceeded" failure
# when the deadline fires while a worker is mid-call (go.dev/issue/75804, fixed
# in Go 1.27). A count has no deadline to race. The counts take about 4-6 s each
# on a 2-core machine; FUZZTIME=30s (or any -fuzztime value) overrides all five.
FUZZ_SEGMENTS ?= 200000x
FUZZ_DECODE   ?= 4000x
FUZZ_STORE    ?= 30000x
ifdef FUZZTIME
FUZZ_SEGMENTS := $(FUZZTIME)
FUZZ_DECODE   := $(FUZZTIME)
FUZZ_STORE    := $(FUZZTIME)
endif

.PHONY: test demo examples bench lint fuzz soak test-faults postgres

## postgres: install the Postgres server binaries with apt-get, only if none are found.
postgres:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; else \
		echo "No Postgres binaries found; installing them with apt-get."; \
		SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; \
	fi

## test: every package with -race against one throwaway server, the examples' own modules, and short fuzz runs.
test: postgres
	$(PGRUN) -- bash -c '$(GO) test -race -count=1 ./... && cd examples/bench && $(GO) test -count=1 ./...'
	$(MAKE) --no-print-directory fuzz

## fuzz: run each fuzz target for a fixed number of executions (a few seconds each).
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzRoundTrip$$' -fuzztime=$(FUZZ_SEGMENTS) ./segments/
	$(GO) test -run='^$$' -fuzz='^FuzzBound$$' -fuzztime=$(FUZZ_SEGMENTS) ./segments/
	$(GO) test -run='^$$' -fuzz='^FuzzDecodeArgs$$' -fuzztime=$(FUZZ_DECODE) ./workpool/
	$(GO) test -run='^$$' -fuzz='^FuzzDecodeCompletion$$' -fuzztime=$(FUZZ_DECODE) ./workpool/
	$(GO) test -run='^$$' -fuzz='^FuzzJSONHasNUL$$' -fuzztime=$(FUZZ_STORE) ./internal/store/

## demo: the quickstart example, end to end.
demo: postgres
	$(GO) run ./examples/quickstart

## examples: run every example end to end on one throwaway server; each exits non-zero unless its checks pass.
examples: postgres
	$(PGRUN) -- bash -c '$(GO) run ./examples/quickstart && $(GO) run ./examples/bunapp && $(GO) run ./examples/multiprocess'

## bench: Go benchmarks and the side-by-side comparison with River (fsync on).
bench: postgres
	$(PGRUN) -fsync -- bash -c '$(GO) test -run="^$$" -bench=. -benchtime=3x ./loop/ ./workpool/ && cd examples/bench && $(GO) run . -mode drain && $(GO) run . -mode steady && $(GO) run . -mode latency && $(GO) run . -mode slots && $(GO) run . -mode backlog && $(GO) run . -mode idle'

## lint: gofmt, go vet and staticcheck (fetched from the module proxy).
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd examples/bench && $(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
	$(GO) vet -tags faults ./internal/faults/
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -tags faults ./internal/faults/
	$(GO) vet -tags soak ./internal/soak/
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -tags soak ./internal/soak/
	cd examples/bench && $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

## test-faults: the fault suite of issue 7 (worker SIGKILLs, a Postgres restart, killed connections) on its own throwaway server.
test-faults: postgres
	$(GO) test -tags faults -count=1 -timeout 20m -v ./internal/faults/

## soak: mixed load for SOAK_DURATION (default 10m) on two pools; heap, goroutines and table sizes must stay flat, and everything drains.
soak: postgres
	$(PGRUN) -- $(GO) test -tags soak -count=1 -timeout 30m -v -run TestSoak ./internal/soak/
