# sluice — the README's two commands are `make run` and `make test`.

GO      ?= go
PKGS    := ./...
BIN     := bin/sluice
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: run test build build-nonvml bench bench-overload bench-abuse fuzz lint clean vendor-ui screenshots

## run: the gateway with its defaults: embedded etcd seeded from testdata/rules, the built-in ComfyUI simulator, admin token $SLUICE_ADMIN_TOKEN or else "s3cret" (the dashboard login; loopback only)
run:
	@$(GO) build -o $(BIN) ./cmd/sluice
	SLUICE_ADMIN_TOKEN="$${SLUICE_ADMIN_TOKEN:-s3cret}" exec $(BIN) serve --rules testdata/rules $(ARGS)

## test: formatting, vet and every test with the race detector
test: lint test-alerts
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

## test-alerts: the Prometheus alerting rules (adapters/prometheus/alerts.yml) checked and unit-tested with promtool
test-alerts:
	@command -v promtool >/dev/null || { echo "make test-alerts needs promtool: apt-get install prometheus (Debian, Ubuntu), or a release from https://prometheus.io/download/"; exit 1; }
	cd adapters/prometheus && promtool check rules alerts.yml && promtool test rules alerts_test.yml

LDFLAGS := -s -w -X main.version=$(VERSION)

## build: the release binary in bin/, with cgo so that it reads NVIDIA GPUs through NVML (go-nvml loads libnvidia-ml.so.1 at run time: it starts on hosts without a driver too); needs a C compiler
build:
	@cc=$$($(GO) env CC); command -v $${cc%% *} >/dev/null || { echo "make build needs a C compiler ($$cc) for NVML: install gcc, or run make build-nonvml"; exit 1; }
	CGO_ENABLED=1 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/sluice

## build-nonvml: a static binary in bin/ without NVML (CGO_ENABLED=0, no C compiler needed); GPU memory then comes from ComfyUI's /system_stats only
build-nonvml:
	CGO_ENABLED=0 $(GO) build -trimpath -tags nonvml -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/sluice

## bench: the engine, route and rule-update benchmarks quoted in the README
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./engine
	$(GO) test -run '^$$' -bench Route -benchmem -count 6 ./adapters/httpapi
	$(GO) test -run '^$$' -bench PutToEnforced -benchtime 400x -count 3 ./adapters/etcd

## bench-overload: an abusive client at 20x the capacity of a farm of fake GPU backends (about 7 s, loopback only)
bench-overload:
	$(GO) test -run '^$$' -bench Overload -benchtime 1x ./cmd/sluice

## bench-abuse: an abuser at 20x a farm's capacity, from 1 IP and from 20, beside three well-behaved clients, through the HTTP server, engine and farm; and, with API keys, tiers and daily quotas in an embedded etcd, an anonymous abuser from 20 IPs beside three registered clients (about 2 min; SLUICE_ABUSE_SECONDS=5 for a quick look)
bench-abuse:
	$(GO) test -run '^$$' -bench Abuse -benchtime 1x -timeout 15m ./cmd/sluice

## fuzz: a short run of every fuzz target
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 30s ./rules
	$(GO) test -run '^$$' -fuzz '^FuzzParseTiers$$' -fuzztime 30s ./rules
	$(GO) test -run '^$$' -fuzz FuzzCheck -fuzztime 30s ./adapters/httpapi/imageinput
	$(GO) test -run '^$$' -fuzz FuzzParseSidecar -fuzztime 30s ./adapters/comfyui
	$(GO) test -run '^$$' -fuzz FuzzAppendJSON -fuzztime 30s ./adapters/httpapi/problem
	$(GO) test -run '^$$' -fuzz FuzzDecodeObject -fuzztime 30s ./adapters/httpapi/problem

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

UPLOT_VERSION := 1.6.32
UPLOT_DIR     := adapters/console/web/assets/vendor/uplot

## vendor-ui: refresh the console's vendored uPlot (MIT) at UPLOT_VERSION from the npm registry (needs npm; make run does not)
vendor-ui:
	@command -v npm >/dev/null || { echo "make vendor-ui needs npm (Node.js) to fetch uplot@$(UPLOT_VERSION)"; exit 1; }
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	(cd "$$tmp" && npm pack --silent uplot@$(UPLOT_VERSION) >/dev/null && tar xzf uplot-$(UPLOT_VERSION).tgz) && \
	mkdir -p $(UPLOT_DIR) && \
	cp "$$tmp/package/dist/uPlot.esm.js" "$$tmp/package/dist/uPlot.min.css" "$$tmp/package/LICENSE" $(UPLOT_DIR)/ && \
	echo "uplot $(UPLOT_VERSION) (npm pack uplot@$(UPLOT_VERSION); make vendor-ui)" > $(UPLOT_DIR)/VERSION && \
	echo "vendored uplot $(UPLOT_VERSION) into $(UPLOT_DIR)"

## screenshots: run the console's browser tests and write docs/screenshots/<page>.png (needs chromium)
screenshots:
	SLUICE_SCREENSHOTS=1 $(GO) test -count=1 -run 'TestConsoleBrowser' -timeout 10m ./cmd/sluice

clean:
	rm -rf bin .sluice
