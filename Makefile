# Switchyard. `make run` starts the server on the embedded default;
# `make test` installs what the tests need and runs every test.
# Areas add their own targets in mk/*.mk and append to TEST_TARGETS.

CARGO ?= cargo
# A failing command in a pipeline fails the target.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
TEST_TARGETS :=
# CI builds once from scratch: incremental caches only cost disk there.
ifeq ($(CI),true)
export CARGO_INCREMENTAL := 0
endif
CHECK_TARGETS :=

.PHONY: all build run test test-rust check-generated lint fmt

all: build

build:
	$(CARGO) build --release --bins

run:
	$(CARGO) run --release --bin switchyard -- serve

include $(sort $(wildcard mk/*.mk))

# Every test: Rust unit and integration tests, then each area's own.
test: check-generated lint test-rust $(TEST_TARGETS)

# Output is captured: a failing test's output comes after the results, in
# the tail that CI keeps.
test-rust:
	$(CARGO) build --bins --examples
	@# A worker builds without the server's heavy dependencies.
	@! $(CARGO) tree -p switchyard-client -e normal | grep -E '^.*(rusqlite|temporalio|reqwest) v' \
		|| { echo 'switchyard-client depends on rusqlite, temporalio or reqwest' >&2; exit 1; }
	$(CARGO) test --workspace --all-targets -- --test-threads=2 2>&1 | tail -n 400
	@# --all-targets leaves out doctests: the client's examples are what users copy.
	$(CARGO) test -p switchyard-client --doc 2>&1 | tail -n 40

# Generated code must match the protos.
check-generated: $(CHECK_TARGETS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
