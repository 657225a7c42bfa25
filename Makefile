# orch: every target is one line; the work is in cargo and in scripts/.
CARGO ?= cargo
MANIFEST ?= manifests/cluster.yaml

.PHONY: run build release test test-pg e2e bench bench-all fmt lint deps clean

run: release                ## build, then run the cluster from manifests/cluster.yaml
	./target/release/orch apply $(MANIFEST)

build:                      ## debug build of the orch binary
	$(CARGO) build -p orch

release:                    ## optimised build of the orch binary (glibc linked statically), at target/release/orch
	./scripts/release.sh

test: deps build            ## every test: unit, integration, end-to-end, browser; then test-pg
	$(CARGO) test --workspace
	$(MAKE) --no-print-directory test-pg

# The storage suites again on a private PostgreSQL (scripts/pg.sh), stopped even when they fail.
PG_SUITES = -p kit -p auth -p data -p compute
test-pg: deps build         ## the storage-facing suites (kit, auth, data, compute, e2e postgres) on PostgreSQL
	./scripts/pg.sh start
	status=0; \
	ORCH_TEST_DATABASE_URL=$$(./scripts/pg.sh url) $(CARGO) test $(PG_SUITES) || status=$$?; \
	[ $$status -ne 0 ] || ORCH_TEST_DATABASE_URL=$$(./scripts/pg.sh url) $(CARGO) test -p e2e --test postgres || status=$$?; \
	./scripts/pg.sh stop; exit $$status

e2e: deps build             ## only the end-to-end suite
	$(CARGO) test -p e2e

bench:                      ## release build, then the figures that matter in one run: one table (also target/bench/summary.json)
	./scripts/bench.sh

bench-all:                  ## every crate's own benchmark, then the same as bench
	./scripts/bench.sh --all

deps:                       ## what the tests need beyond Rust (installed when missing)
	./scripts/deps.sh

fmt:
	$(CARGO) fmt --all

lint:                       ## clippy, then no import circle among any crate's modules (scripts/module-cycles.py)
	$(CARGO) clippy --workspace --all-targets -- -D warnings && python3 scripts/module-cycles.py

clean:
	$(CARGO) clean
