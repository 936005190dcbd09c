# The integration suite again, every server on PostgreSQL (DATABASE_URL,
# default the local `test` database), each in a schema of its own. Schemas
# left by earlier runs are dropped first.

PG_URL ?= $(or $(DATABASE_URL),postgres://postgres@127.0.0.1:5432/test)

.PHONY: test-postgres pg-clean-schemas

pg-clean-schemas:
	@PGOPTIONS="-c client_min_messages=warning" psql "$(PG_URL)" -qAtc "DO \$$\$$ DECLARE s text; BEGIN FOR s IN SELECT nspname FROM pg_namespace WHERE nspname ~ '^(it|t|cl)_[0-9a-f]+$$' LOOP EXECUTE format('DROP SCHEMA %I CASCADE', s); END LOOP; END \$$\$$;"

test-postgres: pg-clean-schemas
	SWITCHYARD_TEST_STORE=postgres $(CARGO) test --test it -- --test-threads=2 2>&1 | tail -n 400

TEST_TARGETS += test-postgres
