# coord-extproc: `make help` lists the targets.
GO      ?= go
BIN     := bin/coord-extproc
PKGS    := ./...
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: help deps build test test-istio bench fuzz lint demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 10

deps: ## install valkey-server and valkey-sentinel if missing (Debian: bookworm-backports of the mirror apt already uses)
	@scripts/deps.sh

build: ## build bin/coord-extproc
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/coord-extproc

test: deps ## unit and end-to-end tests with the race detector (real valkey-server), deploy/ checks (Envoy Gateway's egctl, Helm), alert rules
	GO=$(GO) scripts/test.sh

test-istio: ## Istio's own config generator applies deploy/istio/envoyfilter.yaml (its own module; ~7 min to build cold, so not in make test)
	cd deploy/istio-configgen && $(GO) vet ./... && $(GO) test -count=1 -timeout 20m ./...

bench: deps build ## benchmarks: Go micro-benchmarks, then Envoy-shaped load, report in bench/results
	$(GO) build -o bin/ceiling ./bench/ceiling
	@mkdir -p bench/results
	@# not "| tee": a pipe would hide a failing benchmark
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./registry ./extproc ./route ./strategy ./detector > bench/results/micro.txt; \
	  status=$$?; cat bench/results/micro.txt; exit $$status
	$(GO) run ./bench/run --coord $(BIN) --ceiling bin/ceiling --micro bench/results/micro.txt --out bench/results

FUZZTIME ?= 30s
FUZZ := route:FuzzParse route:FuzzMatch registry:FuzzAddress registry:FuzzValidateID extproc:FuzzExchange extproc:FuzzAuthz extproc:FuzzCodecMatchesProto

fuzz: ## run each fuzz target for FUZZTIME (make test runs their seed corpora); findings land in testdata/fuzz
	@set -e; for t in $(FUZZ); do pkg=$${t%%:*}; fn=$${t#*:}; \
	  echo "== $$pkg $$fn ($(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) ./$$pkg; done

lint: ## gofmt check and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

demo: deps ## run the whole stack locally with sample traffic (make demo ARGS=--keep leaves it up)
	@mkdir -p bin
	$(GO) build -o bin/ ./cmd/coord-extproc ./integration/gateway ./integration/demopod ./integration/demo
	bin/demo --bin bin $(ARGS)

clean: ## remove build output
	rm -rf bin
