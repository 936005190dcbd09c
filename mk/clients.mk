# The TypeScript and NestJS client (clients/typescript): its generated stubs,
# the check that they match the protos, and its tests against the real server.
#
#   make clients             regenerate clients/typescript/src/gen from proto/
#   make check-generated-ts  regenerate, then fail if src/gen differs from git
#   make test-ts             npm ci, build, run the Node tests (they start
#                            target/debug/switchyard on ephemeral ports; the
#                            BullMQ ones also use Redis at $REDIS_URL)
#
# Everything comes from the npm registry through the committed lockfile; buf
# and ts-proto run locally from node_modules, offline.

TS_DIR := clients/typescript
TS_GEN := $(TS_DIR)/src/gen
NPM ?= npm

.PHONY: clients check-generated-ts test-ts

clients:
	@test -x $(TS_DIR)/node_modules/.bin/buf || (cd $(TS_DIR) && ($(NPM) ci --no-audit --no-fund || $(NPM) install --no-save --no-audit --no-fund))
	cd $(TS_DIR) && ./node_modules/.bin/buf generate

# Regenerates in place: a stale or hand-edited src/gen shows up as a diff (or
# as files git does not know), and the fix is `make clients` and a commit.
check-generated-ts: clients
	@git diff --exit-code --stat -- $(TS_GEN) || \
		{ echo "$(TS_GEN) is stale: run 'make clients' and commit the result" >&2; exit 1; }
	@untracked="$$(git ls-files --others --exclude-standard -- $(TS_GEN))"; \
	if [ -n "$$untracked" ]; then \
		echo "untracked generated files (run 'make clients' and commit them):" >&2; \
		echo "$$untracked" >&2; exit 1; \
	fi

# `npm ci` refuses a lockfile that lacks another platform's optional
# prebuilds (msgpackr-extract, under the bullmq devDependency), which this
# registry does not serve; `npm install --no-save` then installs the same
# pinned versions from the lockfile. The BullMQ tests need Redis
# ($REDIS_URL, default redis://127.0.0.1:6379): they skip without it,
# except under CI=true, where they fail.
test-ts:
	$(CARGO) build --bin switchyard
	cd $(TS_DIR) && ($(NPM) ci --no-audit --no-fund || $(NPM) install --no-save --no-audit --no-fund) && $(NPM) test

CHECK_TARGETS += check-generated-ts
TEST_TARGETS += test-ts
