# The dashboard end to end (tests/dashboard): the real server and example
# worker, the page in headless Debian Chromium driven by playwright-core.
# The screenshot lands in target/artifacts/dashboard.png.
# With CI=true a missing Chromium fails the test instead of skipping it.
.PHONY: test-dashboard test-dashboard-deps

CHROMIUM ?= /usr/bin/chromium

test-dashboard-deps:
	@if [ ! -x "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else \
			echo "$(CHROMIUM) is missing: run apt-get install -y chromium as root"; \
		fi; \
	fi
	cd tests/dashboard && npm ci --no-audit --no-fund
	test -d tests/dashboard/node_modules/playwright-core

test-dashboard: test-dashboard-deps
	$(CARGO) build --bin switchyard --example worker
	cd tests/dashboard && CHROMIUM_PATH=$(CHROMIUM) node --test --test-concurrency=1 dashboard.test.mjs

TEST_TARGETS += test-dashboard
