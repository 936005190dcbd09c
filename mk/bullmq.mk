# The BullMQ backend's tests (tests/it/bullmq.rs) run a real Node BullMQ 5
# worker: install it from the committed lockfile (it records every
# platform's optional msgpackr-extract prebuilds, so `npm ci` takes it).
.PHONY: test-bullmq-deps

test-bullmq-deps:
	cd tests/bullmq && npm ci --no-audit --no-fund
	test -d tests/bullmq/node_modules/bullmq

test-rust: test-bullmq-deps
