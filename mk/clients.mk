# The TypeScript and NestJS client (clients/typescript): its generated stubs,
# the check that they match the protos, and its tests against the real server.
#
#   make clients             regenerate clients/typescript/src/gen from proto/,
#                            then build and pack the installable tarball
#                            clients/typescript/switchyard-client-<version>.tgz
#   make check-generated-ts  regenerate, then fail if src/gen differs from git
#   make test-ts             npm ci, build, run the Node tests (they start
#                            target/debug/switchyard on ephemeral ports; the
#                            BullMQ ones also use Redis at $REDIS_URL)
#   make test-nestjs-app     the newcomer's path (tests/nestjs-app/run.mjs):
#                            pack, a fresh NestJS 11 app from the registry,
#                            the original guides' samples compiled (commonjs
#                            and nodenext) and run under Jest and node --test
#                            against the server, BullMQ, Temporal and an
#                            n8n-like webhook server
#
# Everything comes from the npm registry through the committed lockfile; buf
# and ts-proto run locally from node_modules, offline.

TS_DIR := clients/typescript
TS_GEN := $(TS_DIR)/src/gen
NPM ?= npm

.PHONY: clients clients-gen check-generated-ts test-ts test-nestjs-app

clients-gen:
	@test -x $(TS_DIR)/node_modules/.bin/buf || (cd $(TS_DIR) && $(NPM) ci --no-audit --no-fund)
	cd $(TS_DIR) && ./node_modules/.bin/buf generate

# The tarball a team installs (`npm install ./switchyard-client-<version>.tgz`):
# npm pack runs prepack, which builds dist/esm and dist/cjs.
clients: clients-gen
	cd $(TS_DIR) && $(NPM) pack

# Regenerates in place: a stale or hand-edited src/gen shows up as a diff (or
# as files git does not know), and the fix is `make clients` and a commit.
check-generated-ts: clients-gen
	@git diff --exit-code --stat -- $(TS_GEN) || \
		{ echo "$(TS_GEN) is stale: run 'make clients' and commit the result" >&2; exit 1; }
	@untracked="$$(git ls-files --others --exclude-standard -- $(TS_GEN))"; \
	if [ -n "$$untracked" ]; then \
		echo "untracked generated files (run 'make clients' and commit them):" >&2; \
		echo "$$untracked" >&2; exit 1; \
	fi

# The lockfile lists every platform's optional packages, so `npm ci` works
# anywhere. The BullMQ tests need Redis ($REDIS_URL, default
# redis://127.0.0.1:6379): they skip without it, except under CI=true, where
# they fail. $SWITCHYARD_BIN runs another server binary.
test-ts:
	$(CARGO) build --bin switchyard
	cd $(TS_DIR) && $(NPM) ci --no-audit --no-fund && $(NPM) test

# Needs Redis and the Temporal rig (test-temporal-deps); a few minutes, most
# of it `npm install` of the fresh app.
test-nestjs-app: test-temporal-deps
	$(CARGO) build --bin switchyard
	@test -x $(TS_DIR)/node_modules/.bin/tsc || (cd $(TS_DIR) && $(NPM) ci --no-audit --no-fund)
	node tests/nestjs-app/run.mjs

CHECK_TARGETS += check-generated-ts
TEST_TARGETS += test-ts test-nestjs-app
