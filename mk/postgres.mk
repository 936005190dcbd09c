# The integration suite again, every server on PostgreSQL (DATABASE_URL,
# default the local `test` database), each in a schema of its own. Schemas
# left by earlier runs are dropped first, one transaction each (one for
# hundreds of schemas runs out of lock slots).

PG_URL ?= $(or $(DATABASE_URL),postgres://postgres@127.0.0.1:5432/test)

.PHONY: test-postgres pg-clean-schemas

pg-clean-schemas:
	@PGOPTIONS="-c client_min_messages=warning" psql "$(PG_URL)" -qAtc "DO \$$\$$ DECLARE s text; BEGIN FOR s IN SELECT nspname FROM pg_namespace WHERE nspname ~ '^(it|t|cl)_[0-9a-f]+$$' LOOP EXECUTE format('DROP SCHEMA %I CASCADE', s); COMMIT; END LOOP; END \$$\$$;"

# In five processes: a test's server leaves some of its PostgreSQL
# connections open until its test process exits, and one process for the
# whole suite came within reach of the server's max_connections (100; the
# last tests' servers then could not start). Sampled with
# pg_stat_activity, the first process of a three-way split still peaked
# at 89-93 once the schedules' own connection came. The first process runs
# what no part names (the core_ modules and any new module).
PG_PART_2 := admin:: bulk:: bullmq:: hostile::
PG_PART_3 := retention:: schedule_refusals:: store_backup:: store_full_disk:: temporal:: tracing_otlp:: webhook:: workflow::
PG_PART_4 := cluster:: schedules:: tls::
# Who may do what (issue 23): keys, their limits, JWTs and namespaces.
PG_PART_5 := keys:: key_limits:: jwt:: namespaces:: flow_namespaces::

test-postgres: pg-clean-schemas
	SWITCHYARD_TEST_STORE=postgres $(CARGO) test --test it -- --test-threads=2 $(addprefix --skip ,$(PG_PART_2) $(PG_PART_3) $(PG_PART_4) $(PG_PART_5)) 2>&1 | tail -n 400
	SWITCHYARD_TEST_STORE=postgres $(CARGO) test --test it -- --test-threads=2 $(PG_PART_2) 2>&1 | tail -n 400
	SWITCHYARD_TEST_STORE=postgres $(CARGO) test --test it -- --test-threads=2 $(PG_PART_3) 2>&1 | tail -n 400
	SWITCHYARD_TEST_STORE=postgres $(CARGO) test --test it -- --test-threads=2 $(PG_PART_4) 2>&1 | tail -n 400
	SWITCHYARD_TEST_STORE=postgres $(CARGO) test --test it -- --test-threads=2 $(PG_PART_5) 2>&1 | tail -n 400

TEST_TARGETS += test-postgres
