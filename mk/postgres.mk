# The integration suite again, every server on PostgreSQL (DATABASE_URL,
# default the local `test` database), each in a schema of its own. Schemas
# left by earlier runs are dropped first, one transaction each (one for
# hundreds of schemas runs out of lock slots).

PG_URL ?= $(or $(DATABASE_URL),postgres://postgres@127.0.0.1:5432/test)

.PHONY: test-postgres pg-clean-schemas

pg-clean-schemas:
	@PGOPTIONS="-c client_min_messages=warning" psql "$(PG_URL)" -qAtc "DO \$$\$$ DECLARE s text; BEGIN FOR s IN SELECT nspname FROM pg_namespace WHERE nspname ~ '^(it|t|cl)_[0-9a-f]+$$' LOOP EXECUTE format('DROP SCHEMA %I CASCADE', s); COMMIT; END LOOP; END \$$\$$;"

# In two processes: a test's server leaves some of its PostgreSQL
# connections open until its test process exits, and one process for the
# whole suite came within reach of the server's max_connections (100; the
# last tests' servers then could not start). The second half is the
# modules from `retention` on.
PG_SECOND_HALF := retention:: schedule_refusals:: store_backup:: store_full_disk:: temporal:: tracing_otlp:: webhook:: workflow::

test-postgres: pg-clean-schemas
	SWITCHYARD_TEST_STORE=postgres $(CARGO) test --test it -- --test-threads=2 $(addprefix --skip ,$(PG_SECOND_HALF)) 2>&1 | tail -n 400
	SWITCHYARD_TEST_STORE=postgres $(CARGO) test --test it -- --test-threads=2 $(PG_SECOND_HALF) 2>&1 | tail -n 400

TEST_TARGETS += test-postgres
