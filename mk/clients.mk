# The TypeScript and NestJS client (clients/typescript): its generated stubs,
# the check that they match the protos, and its tests against the real server.
#
#   make clients             regenerate clients/typescript/src/gen from proto/
#   make check-generated-ts  regenerate, then fail if src/gen differs from git
#   make test-ts             npm ci, build, run the Node tests (they start
#                            target/debug/switchyard on ephemeral ports)
#
# Everything comes from the npm registry through the committed lockfile; buf
# and ts-proto run locally from node_modules, offline.

TS_DIR := clients/typescript
TS_GEN := $(TS_DIR)/src/gen
NPM ?= npm

.PHONY: clients check-generated-ts test-ts

clients:
	@test -x $(TS_DIR)/node_modules/.bin/buf || (cd $(TS_DIR) && $(NPM) ci)
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

test-ts:
	$(CARGO) build --bin switchyard
	cd $(TS_DIR) && $(NPM) ci && $(NPM) test

CHECK_TARGETS += check-generated-ts
TEST_TARGETS += test-ts
