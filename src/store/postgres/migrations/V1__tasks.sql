-- Tasks, their logs and the rows set aside, as in the SQLite store, plus
-- what several replicas need: every row carries the partition it belongs to
-- and the leader's term that wrote it, and the leases table says who leads
-- each partition (one partition, 0, until partitioned ownership is built;
-- see ARCHITECTURE.md).

CREATE TABLE tasks (
    id uuid PRIMARY KEY,
    created_at bigint NOT NULL,
    name text NOT NULL,
    task_type smallint NOT NULL,
    state smallint NOT NULL,
    seq bigint NOT NULL,
    source smallint NOT NULL,
    user_id text,
    session_id text,
    idempotency_key text,
    parent_id uuid,
    spec text NOT NULL,
    rt text NOT NULL,
    payload text NOT NULL,
    partition integer NOT NULL DEFAULT 0,
    term bigint NOT NULL
);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_seq ON tasks (seq);
CREATE INDEX tasks_active ON tasks (state) WHERE state IN (1, 2, 6);
CREATE INDEX tasks_user ON tasks (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX tasks_session ON tasks (session_id) WHERE session_id IS NOT NULL;

CREATE TABLE task_logs (
    line bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id uuid NOT NULL,
    time bigint NOT NULL,
    source smallint NOT NULL,
    level text NOT NULL,
    attempt integer NOT NULL,
    message text NOT NULL,
    term bigint NOT NULL
);
CREATE INDEX task_logs_task ON task_logs (task_id, line);

CREATE TABLE quarantine (
    id uuid PRIMARY KEY,
    at bigint NOT NULL,
    state smallint NOT NULL,
    reason text NOT NULL
);

-- One row per partition: who leads it, under which term, until when (the
-- database's clock, so the replicas' clocks do not matter).
CREATE TABLE leases (
    partition integer PRIMARY KEY,
    term bigint NOT NULL,
    holder text NOT NULL,
    address text NOT NULL,
    acquired_at timestamptz NOT NULL,
    renewed_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Every replica, leader or standby, says it is alive here.
CREATE TABLE replicas (
    id text PRIMARY KEY,
    address text NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at timestamptz NOT NULL
);

-- The fence: the first statement of every write transaction of a leader.
-- It locks the lease row (FOR SHARE), so a standby's takeover waits for the
-- transaction to end, and fails the transaction once the term has moved on.
CREATE FUNCTION switchyard_fence(p integer, t bigint, h text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM leases WHERE partition = p AND term = t AND holder = h FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fenced: term % of partition % is no longer held by %', t, p, h
            USING ERRCODE = 'SYF01';
    END IF;
END
$$;
