# comfygate: `make run` starts the gateway with its built-in RunComfy simulator;
# `make test` runs every test. Tools (buf and the protoc plugins) are pinned in
# tools/go.mod and run with `go tool`, so nothing needs installing beyond Go.

GO       ?= go
BUF      := $(GO) tool -modfile=tools/go.mod buf
GOFILES  := $(shell git ls-files '*.go' | grep -v '^gen/')

.PHONY: run test test-short generate check-generated lint fuzz build docker ci

## run: the gateway with --simulate on 127.0.0.1:9090 (gRPC) and :8080 (HTTP)
run:
	$(GO) run ./cmd/comfygate --simulate

## test: every test, with the race detector
test:
	$(GO) test -race -count=1 ./...

## test-short: the fast tests only (skips building and running the binary)
test-short:
	$(GO) test -short -count=1 ./...

## generate: regenerate gen/ from proto/
generate:
	$(BUF) generate

## check-generated: fail when gen/ differs from what proto/ generates
check-generated: generate
	@if [ -n "$$(git status --porcelain -- gen)" ]; then \
		git status --short -- gen; git diff -- gen | head -50; \
		echo "gen/ is stale: run 'make generate' and commit the result" >&2; exit 1; fi

## lint: buf lint and format, gofmt, go vet
lint:
	$(BUF) lint
	$(BUF) format -d --exit-code
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "gofmt needed:" $$out >&2; exit 1; fi
	$(GO) vet ./...

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

## build: static binaries in bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/ ./cmd/...

## docker: the container image (needs a Docker engine)
docker:
	docker build -t comfygate:dev .

## ci: what .ci/run runs
ci: check-generated lint test
