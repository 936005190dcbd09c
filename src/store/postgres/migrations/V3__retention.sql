-- Retention and indexes that stay fast (issue "The store over months").
--
-- purge_at: when an ended task may be removed (micros since the epoch),
-- stamped by the writer from the retention policy; NULL while active, for a
-- workflow's steps (they go with their parent) and for tasks kept for ever.
-- Rows that ended before this version are given one by the store at open.
ALTER TABLE tasks ADD COLUMN purge_at bigint;

-- One index per ListTasks filter, each ending in id: a page of one value is
-- a backward walk of its index that stops at the limit.
DROP INDEX IF EXISTS tasks_active;
DROP INDEX IF EXISTS tasks_user;
DROP INDEX IF EXISTS tasks_session;
CREATE INDEX tasks_state ON tasks (state, id);
CREATE INDEX tasks_type ON tasks (task_type, id);
CREATE INDEX tasks_name ON tasks (name, id);
CREATE INDEX tasks_source ON tasks (source, id);
CREATE INDEX tasks_user_id ON tasks (user_id, id) WHERE user_id IS NOT NULL;
CREATE INDEX tasks_session_id ON tasks (session_id, id) WHERE session_id IS NOT NULL;

-- Retention: a workflow's steps go with it; ended tasks by removal time,
-- and by name in the order they ended (count caps).
CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX tasks_purge ON tasks (purge_at) WHERE purge_at IS NOT NULL;
CREATE INDEX tasks_ended ON tasks (state, name, seq) WHERE state IN (3, 4, 5, 7);

-- Rows of earlier versions that ended: given a removal time at open.
CREATE TABLE retention_adopt (pending boolean PRIMARY KEY);
INSERT INTO retention_adopt VALUES (true);

-- Ended tasks counted by type, name and state, kept by statement-level
-- triggers over the rows each statement changed, so start-up (and a
-- takeover) reads a few rows instead of counting every task that ever
-- ended. A row's move out of an ended state (or its removal) takes it out
-- of its old count; its move into one adds it to the new count.
CREATE TABLE ended_counts (
    task_type smallint NOT NULL,
    name text NOT NULL,
    state smallint NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (task_type, name, state)
);
INSERT INTO ended_counts
    SELECT task_type, name, state, count(*) FROM tasks
    WHERE state IN (3, 4, 5, 7) GROUP BY task_type, name, state;

CREATE FUNCTION switchyard_ended_counts() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO ended_counts
            SELECT task_type, name, state, -count(*) FROM old_rows
            WHERE state IN (3, 4, 5, 7) GROUP BY task_type, name, state
        ON CONFLICT (task_type, name, state) DO UPDATE SET n = ended_counts.n + EXCLUDED.n;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO ended_counts
            SELECT task_type, name, state, count(*) FROM new_rows
            WHERE state IN (3, 4, 5, 7) GROUP BY task_type, name, state
        ON CONFLICT (task_type, name, state) DO UPDATE SET n = ended_counts.n + EXCLUDED.n;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_ended_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION switchyard_ended_counts();
CREATE TRIGGER tasks_ended_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION switchyard_ended_counts();
CREATE TRIGGER tasks_ended_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION switchyard_ended_counts();
