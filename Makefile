# flashclaim — the two commands a user needs are `make serve` and `make test`.
# Everything else here is a tier of `make test` or a tool for developers.

WASM_CRATES := flashclaim-activity flashclaim-claim flashclaim-claim-p3 flashclaim-sessions-p3 flashclaim-ticket flashclaim-admin flashclaim-drain flashclaim-auth flashclaim-web host-fixture host-fixture-p3 bench-fixture-p2 bench-fixture-p3
WASM_FLAGS := $(foreach c,$(WASM_CRATES),-p $(c))
SERVICES := scripts/services.sh
# Every native cargo call names the same packages, so dependency features unify the same
# way each time and nothing is compiled twice.
NATIVE := -p flashclaim-core -p spin-test-host -p flashclaim-tests

.PHONY: test-alerts test-metrics test-browser test-spin test-shards test-redeploy test-sentinel test-cluster bench-edge test deps wasm test-unit test-lua test-e2e test-schema test-host services-start services-stop serve bench fmt lint

## Serve flashclaim locally with a demo activity (Spin if installed, else the test host).
serve:
	@scripts/serve.sh

## Run every test: unit, Lua-against-Redis, and end to end through the test host.
test: deps wasm
	@$(SERVICES) start
	@status=0; \
	  $(MAKE) --no-print-directory test-unit test-alerts test-lua test-host test-e2e test-metrics test-redeploy test-sentinel test-cluster test-schema test-browser test-spin test-shards || status=$$?; \
	  $(SERVICES) stop; \
	  exit $$status

deps:
	@scripts/deps.sh --browser

wasm:
	cargo build --target wasm32-wasip2 --release $(WASM_FLAGS)

## Tier 1: pure unit tests, the hostile-input properties and corpus, and the API
## document's contract, deploy/ against spin.toml (no services needed).
test-unit:
	cargo test $(NATIVE) --lib
	cargo test $(NATIVE) --test contract --test hostile --test deploy

## The alert rules (deploy/prometheus/alerts.yml): promtool checks them and runs their unit
## tests (alerts.test.yml; promtool comes with Debian's `prometheus`, see scripts/deps.sh).
test-alerts:
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts.test.yml

## A real Prometheus scraping GET /metrics of the app on the test host (needs services and
## wasm): a claim storm counted as Postgres and the test saw it, then the drain alert firing
## while Postgres is stopped and resolving after. It stops the shared Postgres, so it runs
## on its own, as the outage test does.
test-metrics:
	cargo test $(NATIVE) --test metrics -- --nocapture

## Tier 2: the Lua scripts against the real Redis (needs services).
test-lua:
	cargo test $(NATIVE) --test lua --test buckets

## Tier 3: end to end over HTTP through the test host (needs services and wasm): e2e and
## abuse run with spin.wasip3.toml (WASIp3 claim and log-in, the cron drain) and spin.toml
## (the WASIp2 builds, HTTP only); then the Postgres outage test, which stops the shared
## Postgres and so runs on its own.
test-e2e:
	cargo test $(NATIVE) --test e2e --test claim_cache
	FLASHCLAIM_MANIFEST=spin.toml cargo test $(NATIVE) --test e2e --test abuse --test claim_cache
	cargo test $(NATIVE) --test api --test abuse --test web_api --test rotation --test drain_token
	cargo test $(NATIVE) --test faults -- --nocapture
	cargo test $(NATIVE) --test outage -- --nocapture

## Tier 3, a redeploy mid-sale (needs services and wasm): the previous release
## (tests/previous-release, built in a worktree by scripts/previous-release.sh) and this
## build side by side on the same stores during a claim storm; the old one gets SIGTERM
## mid-storm. Nothing acknowledged is lost or doubled, the stock adds up.
test-redeploy:
	cargo build -q $(NATIVE) --bins
	FLASHCLAIM_PREVIOUS_MANIFEST=$$(scripts/previous-release.sh) cargo test $(NATIVE) --test redeploy -- --nocapture

## Tier 5, Redis high availability with real processes (needs services for Postgres, and
## wasm): a Sentinel group (1 primary + 2 replicas, AOF always, 3 sentinels) per test; the
## primary SIGKILLed mid-storm twice, frozen with SIGSTOP, sentinels down, a misconfigured
## group; the WASIp3 build (spin.wasip3.toml) and the WASIp2 one (spin.toml).
test-sentinel:
	cargo test $(NATIVE) --test sentinel -- --nocapture --test-threads 2
	FLASHCLAIM_MANIFEST=spin.toml cargo test $(NATIVE) --test sentinel -- --nocapture --test-threads 2

## Tier 5, Redis Cluster with real processes (needs services for Postgres, and wasm): a
## cluster of 3 primaries + 3 replicas (`redis-cli --cluster create`) per test as the one
## shard (redis-cluster://…); the e2e basics over activities on several primaries, a hot
## activity's slot moved mid-storm to a primary added to the running cluster, its primary
## SIGKILLed mid-storm; the WASIp3 build (spin.wasip3.toml) and the WASIp2 one (spin.toml).
test-cluster:
	cargo test $(NATIVE) --test cluster -- --nocapture --test-threads 1
	FLASHCLAIM_MANIFEST=spin.toml cargo test $(NATIVE) --test cluster -- --nocapture --test-threads 1

## Tier 3 again on real Spin, when a `spin` binary is found (SPIN=/path/to/spin to choose
## one): the end-to-end and API suites with `spin up -c <HTTP components>` as on a Spin
## without the cron plugin, then the drain on the cron trigger and the browser scenarios
## (tests/browser, the whole manifest) when the plugin is installed.
SPIN ?= $(shell command -v spin 2>/dev/null)
SPIN_RUN := FLASHCLAIM_SPIN=$(SPIN) FLASHCLAIM_E2E_RUNTIME=spin
test-spin:
	@if [ -z "$(SPIN)" ]; then \
	  echo "test-spin: no spin binary found; the end-to-end suites ran on the test host only"; \
	  exit 0; fi; \
	echo "test-spin: $$($(SPIN) --version)"; \
	$(SPIN_RUN) cargo test $(NATIVE) --test e2e --test claim_cache --test api --test abuse --test web_api --test rotation --test drain_token || exit $$?; \
	$(SPIN_RUN) FLASHCLAIM_PREVIOUS_MANIFEST=$$(scripts/previous-release.sh) cargo test $(NATIVE) --test redeploy -- --nocapture || exit $$?; \
	$(SPIN_RUN) cargo test $(NATIVE) --test sentinel -- --nocapture --test-threads 2 || exit $$?; \
	$(SPIN_RUN) cargo test $(NATIVE) --test cluster -- --nocapture --test-threads 1 || exit $$?; \
	$(SPIN_RUN) FLASHCLAIM_MANIFEST=spin.toml cargo test $(NATIVE) --test e2e --test abuse || exit $$?; \
	if $(SPIN) plugins list --installed 2>/dev/null | grep -q '^trigger-cron'; then \
	  FLASHCLAIM_SPIN=$(SPIN) cargo test $(NATIVE) --test spin_cron || exit $$?; \
	  $(SPIN_RUN) .data/browser/venv/bin/pytest -q tests/browser; \
	else echo "test-spin: no trigger-cron plugin; the drain on Spin's cron trigger and the browser tests on Spin were not tried"; fi

## Tier 3 over three Redis shards (needs wasm), on the test host and on real Spin when
## found: its own stores, three Redis primaries with AOF `appendfsync always` and a
## Postgres under $(SHARDS_DATA), since the tests crash, restart and wipe shards: spread,
## every operation across shards, contention on each shard at once, a shard killed
## mid-storm, a shard back empty, a changed endpoint list.
SHARDS_DATA ?= $(CURDIR)/.data/test-shards
test-shards:
	@FLASHCLAIM_DATA=$(SHARDS_DATA) FLASHCLAIM_REDIS_SHARDS=3 $(SERVICES) start --durable
	@status=0; \
	  FLASHCLAIM_DATA=$(SHARDS_DATA) cargo test $(NATIVE) --test shards -- --nocapture || status=$$?; \
	  if [ $$status -eq 0 ] && [ -n "$(SPIN)" ]; then \
	    FLASHCLAIM_DATA=$(SHARDS_DATA) $(SPIN_RUN) cargo test $(NATIVE) --test shards -- --nocapture || status=$$?; fi; \
	  FLASHCLAIM_DATA=$(SHARDS_DATA) $(SERVICES) stop; \
	  exit $$status

## An edge cache measured (BENCHMARKS.md, "An edge cache in front"): nginx proxy_cache in
## front of the app, 2,000 clients refreshing a detail during a claim storm, with and
## without the cache (installs nginx-light when missing; services and wasm).
bench-edge: deps wasm
	@scripts/deps.sh --edge
	@$(SERVICES) start
	@status=0; cargo test $(NATIVE) --test edge_cache -- --nocapture || status=$$?; \
	  if [ $$status -eq 0 ] && [ -n "$(SPIN)" ]; then \
	    $(SPIN_RUN) cargo test $(NATIVE) --test edge_cache -- --nocapture || status=$$?; fi; \
	  $(SERVICES) stop; exit $$status

## Tier 4: the H5 app and the operator console in a real browser (needs services and wasm):
## the web component's unit tests, then tests/browser (pytest; Playwright for Python driving
## Debian's Chromium, axe-core inside every screen) against the app on the test host with
## Redis and Postgres. Screenshots of every screen land in target/browser/.
test-browser:
	cargo test -p flashclaim-web
	cargo build -q $(NATIVE) --bins
	.data/browser/venv/bin/pytest -q tests/browser

## Schemathesis (PyPI) against docs/openapi.json and the running app: no 5xx, every
## response as documented (needs services and wasm).
test-schema:
	scripts/schemathesis.sh

## The test host itself, on the real fixture components, WASIp2 and WASIp3 (needs services
## and wasm).
test-host:
	cargo test $(NATIVE) --test host --test p3

## The benchmark: claims/s and latency through the full stack, drain rows/s, each beside
## the physical limit measured in the same run (see BENCHMARKS.md).
bench: deps wasm
	@$(SERVICES) start
	@status=0; cargo bench $(NATIVE) --bench claims || status=$$?; \
	  $(SERVICES) stop; exit $$status

services-start:
	@$(SERVICES) start

services-stop:
	@$(SERVICES) stop

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
