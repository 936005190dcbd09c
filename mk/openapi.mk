# The admin HTTP API against its own OpenAPI document (GET /openapi.json):
# tests/openapi/fuzz.py starts target/debug/switchyard on free ports, puts
# tasks in it, and runs schemathesis (PyPI, pinned here) on every route but
# the event stream: every answer documented and conforming, no 5xx, bad
# input refused with a 4xx. Bounded by a fixed seed and
# SCHEMATHESIS_MAX_EXAMPLES cases per operation (about a minute).
#
#   make test-openapi      build the server, install schemathesis into .venv, fuzz
#
# Adds to the repo's shared .venv: creates it only if missing, never recreates.

OPENAPI_VENV ?= .venv
SCHEMATHESIS_PKG := schemathesis==4.32.5

.PHONY: venv-schemathesis test-openapi

venv-schemathesis:
	@test -x $(OPENAPI_VENV)/bin/python || python3 -m venv $(OPENAPI_VENV)
	@$(OPENAPI_VENV)/bin/schemathesis --version 2>/dev/null | grep -q '4.32.5' || \
		$(OPENAPI_VENV)/bin/pip install --quiet --disable-pip-version-check '$(SCHEMATHESIS_PKG)'

# SWITCHYARD_BIN picks another server binary.
test-openapi: venv-schemathesis
	$(CARGO) build --bin switchyard
	SWITCHYARD_BIN=$${SWITCHYARD_BIN:-$${CARGO_TARGET_DIR:-$(CURDIR)/target}/debug/switchyard} \
		PY_VENV=$(OPENAPI_VENV) $(OPENAPI_VENV)/bin/python tests/openapi/fuzz.py 2>&1 | tail -n 300

TEST_TARGETS += test-openapi
