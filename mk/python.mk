# The Python client and worker (clients/python): its generated stubs, the
# check that they match the protos, its tests against the real server, and
# its benchmark.
#
#   make python-stubs            regenerate clients/python/src/switchyard_client/_gen
#   make check-generated-python  regenerate, then fail if _gen differs from git
#   make test-python             cargo build --bin switchyard, install the package
#                                (editable, with its test extras) into .venv,
#                                mypy, then pytest (the tests start
#                                target/debug/switchyard on ephemeral ports)
#   make bench-python            cargo build --release --bin switchyard, then
#                                clients/python/bench/bench.py (not in make test)
#
# Everything comes from PyPI, pinned in clients/python/pyproject.toml; the
# stubs are made by grpcio-tools' bundled protoc (python -m grpc_tools.protoc).
# Adds to the repo's shared .venv: creates it only if missing, never recreates.

PY_DIR := clients/python
PY_GEN := $(PY_DIR)/src/switchyard_client/_gen
PY_VENV ?= .venv
PY := $(PY_VENV)/bin/python
PY_BENCH_ARGS ?=

.PHONY: python-deps python-stubs check-generated-python test-python bench-python

python-deps:
	@test -x $(PY) || python3 -m venv $(PY_VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '$(PY_DIR)[test]'

python-stubs: python-deps
	$(PY) $(PY_DIR)/scripts/generate.py

# Regenerates in place: a stale or hand-edited _gen shows up as a diff (or as
# files git does not know), and the fix is `make python-stubs` and a commit.
check-generated-python: python-stubs
	@git diff --exit-code --stat -- $(PY_GEN) || \
		{ echo "$(PY_GEN) is stale: run 'make python-stubs' and commit the result" >&2; exit 1; }
	@untracked="$$(git ls-files --others --exclude-standard -- $(PY_GEN))"; \
	if [ -n "$$untracked" ]; then \
		echo "untracked generated files (run 'make python-stubs' and commit them):" >&2; \
		echo "$$untracked" >&2; exit 1; \
	fi

# SWITCHYARD_BIN picks another server binary. Output is captured so a
# failure's output lands in the tail CI keeps.
test-python: python-deps
	$(CARGO) build --bin switchyard
	cd $(PY_DIR) && ../../$(PY_VENV)/bin/mypy
	cd $(PY_DIR) && SWITCHYARD_BIN=$${SWITCHYARD_BIN:-$(CURDIR)/target/debug/switchyard} \
		../../$(PY) -m pytest -q -p no:cacheprovider 2>&1 | tail -n 300

# One Python worker process against the release server; ratios against the
# raw-stub peers run in the same command (clients/python/bench/README.md).
bench-python: python-deps
	$(CARGO) build --release --bin switchyard
	SWITCHYARD_BIN=$${SWITCHYARD_BIN:-$(CURDIR)/target/release/switchyard} \
		$(PY) $(PY_DIR)/bench/bench.py $(PY_BENCH_ARGS)

CHECK_TARGETS += check-generated-python
TEST_TARGETS += test-python
