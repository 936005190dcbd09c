-- One batch of the writer in one statement: the fence, then the task rows
-- inserted and updated, their log lines and the rows set aside, in that
-- order, as one implicit transaction. Called alone (no BEGIN or COMMIT
-- around it), a batch costs the database one statement and one WAL flush,
-- as a queue's own "add job" function does. It returns the ids that were
-- inserted (not those already there: ON CONFLICT DO NOTHING) and those
-- updated; NULL for none.
CREATE FUNCTION switchyard_write(
    p_partition integer, p_term bigint, p_holder text,
    i_id uuid[], i_created bigint[], i_name text[], i_type smallint[], i_state smallint[],
    i_seq bigint[], i_source smallint[], i_user text[], i_session text[], i_key text[],
    i_parent uuid[], i_spec text[], i_rt text[], i_payload text[], i_payload_of uuid[],
    u_id uuid[], u_state smallint[], u_seq bigint[], u_source smallint[], u_rt text[],
    l_task uuid[], l_time bigint[], l_source smallint[], l_level text[], l_attempt integer[],
    l_message text[],
    q_id uuid[], q_at bigint, q_reason text[], q_state smallint,
    OUT inserted uuid[], OUT updated uuid[])
LANGUAGE plpgsql AS $$
BEGIN
    -- p_holder NULL: a single process without leases (tests of the store).
    IF p_holder IS NOT NULL THEN
        PERFORM 1 FROM leases WHERE partition = p_partition AND term = p_term AND holder = p_holder
            FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'fenced: term % of partition % is no longer held by %',
                p_term, p_partition, p_holder USING ERRCODE = 'SYF01';
        END IF;
    END IF;
    IF cardinality(i_id) > 0 THEN
        WITH i AS (
            INSERT INTO tasks (id, created_at, name, task_type, state, seq, source, user_id,
                               session_id, idempotency_key, parent_id, spec, rt, payload, term)
            SELECT u.id, u.created_at, u.name, u.task_type, u.state, u.seq, u.source, u.user_id,
                   u.session_id, u.idempotency_key, u.parent_id, u.spec, u.rt,
                   COALESCE(u.payload, (SELECT t.payload FROM tasks t WHERE t.id = u.payload_of), '{}'),
                   p_term
            FROM unnest(i_id, i_created, i_name, i_type, i_state, i_seq, i_source, i_user,
                        i_session, i_key, i_parent, i_spec, i_rt, i_payload, i_payload_of)
                 AS u(id, created_at, name, task_type, state, seq, source, user_id, session_id,
                      idempotency_key, parent_id, spec, rt, payload, payload_of)
            ON CONFLICT DO NOTHING
            RETURNING id)
        SELECT array_agg(i.id) INTO inserted FROM i;
    END IF;
    IF cardinality(u_id) > 0 THEN
        WITH w AS (
            UPDATE tasks t SET state = u.state, seq = u.seq, source = u.source, rt = u.rt,
                               term = p_term
            FROM unnest(u_id, u_state, u_seq, u_source, u_rt) AS u(id, state, seq, source, rt)
            WHERE t.id = u.id
            RETURNING t.id)
        SELECT array_agg(w.id) INTO updated FROM w;
    END IF;
    IF cardinality(l_task) > 0 THEN
        INSERT INTO task_logs (task_id, time, source, level, attempt, message, term)
        SELECT u.task_id, u.time, u.source, u.level, u.attempt, u.message, p_term
        FROM unnest(l_task, l_time, l_source, l_level, l_attempt, l_message)
             WITH ORDINALITY AS u(task_id, time, source, level, attempt, message, ord)
        WHERE EXISTS (SELECT 1 FROM tasks t WHERE t.id = u.task_id)
        ORDER BY u.ord;
    END IF;
    IF cardinality(q_id) > 0 THEN
        WITH q AS (
            INSERT INTO quarantine (id, at, state, reason)
            SELECT t.id, q_at, t.state, u.reason
            FROM tasks t JOIN unnest(q_id, q_reason) AS u(id, reason) ON t.id = u.id
            ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at, reason = EXCLUDED.reason
            RETURNING id)
        UPDATE tasks SET state = q_state WHERE id IN (SELECT q.id FROM q);
    END IF;
END
$$;
