# comfygate: `make run` starts the gateway with its built-in RunComfy simulator;
# `make test` runs every test. Tools (buf and the protoc plugins) are pinned in
# tools/go.mod and run with `go tool`; what the tests need beyond Go (Redis,
# Chromium, Python's gRPC, the npm packages) is installed when missing by
# scripts/deps.sh and clients/test.sh.

GO       ?= go
BUF      := $(GO) tool -modfile=tools/go.mod buf
STATICCHECK := $(GO) tool -modfile=tools/go.mod staticcheck
GOFILES  := $(shell git ls-files '*.go' | grep -v '^gen/')
# The build's identity, stamped into the binary (comfygate version, the
# start-up log line, comfygate_build_info, the OpenAPI info).
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X github.com/comfygate/comfygate/internal/version.version=$(VERSION) -X github.com/comfygate/comfygate/internal/version.commit=$(COMMIT)
# ARGS are more flags for `make run`, e.g. make run ARGS='--http-addr 127.0.0.1:8081'.
ARGS     ?=

.PHONY: run deps test test-go test-clients test-short generate generate-clients check-generated lint fuzz bench bench-smoke chaos chaos-smoke build docker ci

## run: the gateway with --simulate on 127.0.0.1:9090 (gRPC) and :8080 (HTTP); more flags in ARGS; Ctrl-C drains it
run: build
	@bash scripts/run.sh ./bin/comfygate --simulate $(ARGS)

## deps: the Debian packages the tests need (Redis, Chromium, Python gRPC), when missing
deps:
	bash scripts/deps.sh

## test: every test: the Go tests with the race detector, then the TypeScript and Python clients
test: deps test-go test-clients

test-go:
	$(GO) test -race -count=1 ./...

## test-clients: the TypeScript and Python clients against a running gateway
test-clients:
	bash clients/test.sh

## test-short: the fast tests only (skips building and running the binary)
test-short:
	$(GO) test -short -count=1 ./...

## generate: regenerate gen/ from proto/
generate:
	$(BUF) generate

## generate-clients: regenerate the TypeScript and Python stubs in clients/
generate-clients:
	bash clients/generate.sh

## check-generated: fail when gen/ or the client stubs differ from what proto/ generates
check-generated: generate generate-clients
	@if [ -n "$$(git status --porcelain -- gen clients)" ]; then \
		git status --short -- gen clients; git diff -- gen clients | head -50; \
		echo "generated code is stale: run 'make generate generate-clients' and commit the result" >&2; exit 1; fi

## lint: buf lint and format, gofmt, go vet, staticcheck
lint:
	$(BUF) lint
	$(BUF) format -d --exit-code
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "gofmt needed:" $$out >&2; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

## fuzz: run each fuzz target briefly (FUZZTIME=30s by default)
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./runcomfy -run '^$$' -fuzz '^FuzzParseResult$$' -fuzztime $(FUZZTIME)
	$(GO) test ./runcomfy -run '^$$' -fuzz '^FuzzCollectURLs$$' -fuzztime $(FUZZTIME)
	$(GO) test ./webhook -run '^$$' -fuzz '^FuzzHandler$$' -fuzztime $(FUZZTIME)
	$(GO) test ./auth -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./webhook -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME)
	$(GO) test ./runcomfy -run '^$$' -fuzz '^FuzzValidID$$' -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz '^FuzzSubmitBody$$' -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz '^FuzzUnmarshalSubmit$$' -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz '^FuzzResumePosition$$' -fuzztime $(FUZZTIME)
	$(GO) test ./uploads -run '^$$' -fuzz '^FuzzRewrite$$' -fuzztime $(FUZZTIME)
	$(GO) test ./deployments -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)

## bench: the benchmark scenarios, each beside its reference; writes BENCHMARKS.md (about 10 minutes; the first run builds Centrifugo, minutes more)
bench: deps
	$(GO) run ./bench -out BENCHMARKS.md

## bench-smoke: every scenario at a tiny size, in seconds; checks the harness, measures nothing
bench-smoke: deps
	$(GO) run ./bench -smoke

## chaos: the soak under fire: three replicas under load while faults strike at random, one Redis then a Redis Cluster, DURATION in all (10m); fails on any broken promise; writes RELIABILITY.md. SEED=N repeats a run's fault schedule
DURATION ?= 10m
SEED     ?= 0
chaos: deps
	$(GO) run ./chaos -duration $(DURATION) -seed $(SEED) -out RELIABILITY.md

## chaos-smoke: shows a deliberately broken gateway is caught, then soaks one Redis for a minute (in CI)
chaos-smoke: deps
	$(GO) run ./chaos -smoke -seed $(SEED)

## build: static binaries in bin/ (./bin/comfygate), stamped with VERSION and COMMIT
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/ ./cmd/...

## docker: the container image (needs a Docker engine)
docker:
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t ghcr.io/comfygate/comfygate:$(VERSION) .

## ci: what .ci/run runs
ci: check-generated lint test bench-smoke chaos-smoke
