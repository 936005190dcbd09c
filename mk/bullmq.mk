# The BullMQ backend's tests (tests/it/bullmq.rs) run a real Node BullMQ 5
# worker: install it from the committed lockfile.
# `npm ci` refuses a lockfile that lacks another platform's optional
# prebuilds (msgpackr-extract), which this registry does not serve; then
# `npm install --no-save` installs the same pinned versions from the lockfile.
.PHONY: test-bullmq-deps

test-bullmq-deps:
	cd tests/bullmq && (npm ci --no-audit --no-fund || npm install --no-save --no-audit --no-fund)
	test -d tests/bullmq/node_modules/bullmq

test-rust: test-bullmq-deps
