//! The tables and indexes, created if missing at every open, and the
//! upgrades of files written by earlier versions.

/// The columns of `task_logs`, in the schema and in the upgrade that moves
/// an earlier version's log to it.
macro_rules! task_logs_columns {
    () => {
        "(
    task_id BLOB NOT NULL,
    line INTEGER NOT NULL,
    time INTEGER NOT NULL,
    source INTEGER NOT NULL,
    level TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (task_id, line)
) WITHOUT ROWID"
    };
}

/// Whether the state in `$state` (a column, or a trigger's `NEW.state`)
/// is final: completed, failed, cancelled or compensated (codes 3, 4, 5,
/// 7). Written as equalities, never as `IN (3, 4, 5, 7)`: SQLite evaluates
/// an `IN` list of more than two constants by building a temporary B-tree
/// of it, at every execution of the statement, and this condition is
/// evaluated at every write of a task (the partial index `tasks_ended`,
/// the ended-count triggers, the removal): a temporary B-tree (its own
/// pager and page cache, opened and closed) for each, a tenth of the
/// writer's time once removals run. A query that should use `tasks_ended`
/// repeats this exact text (SQLite matches a partial index's condition
/// term by term).
macro_rules! ended {
    ($state:literal) => {
        concat!("(", $state, " = 3 OR ", $state, " = 4 OR ", $state, " = 5 OR ", $state, " = 7)")
    };
}
pub(super) use ended;

/// The current schema. Every statement is idempotent; [`upgrade`] runs
/// first on a file of an earlier version.
pub(super) const SCHEMA: &str = concat!(
    r#"
CREATE TABLE IF NOT EXISTS tasks (
    id BLOB PRIMARY KEY,
    created_at INTEGER NOT NULL,
    name TEXT NOT NULL,
    task_type INTEGER NOT NULL,
    state INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    source INTEGER NOT NULL,
    user_id TEXT,
    session_id TEXT,
    idempotency_key TEXT,
    parent_id BLOB,
    spec TEXT NOT NULL,
    rt TEXT NOT NULL,
    payload TEXT NOT NULL,
    purge_at INTEGER,
    schedule_id TEXT,
    error_kind TEXT,
    namespace TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency ON tasks(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_seq ON tasks(seq);
-- One index per filter of ListTasks, each ending in id, so a page of any
-- one filter is a walk of its index newest first that stops at the limit.
-- tasks_state also serves the start-up scan of the active states.
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state, id);
CREATE INDEX IF NOT EXISTS tasks_type ON tasks(task_type, id);
CREATE INDEX IF NOT EXISTS tasks_name ON tasks(name, id);
CREATE INDEX IF NOT EXISTS tasks_source ON tasks(source, id);
CREATE INDEX IF NOT EXISTS tasks_user_id ON tasks(user_id, id) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_session_id ON tasks(session_id, id) WHERE session_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_schedule_id ON tasks(schedule_id, id) WHERE schedule_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_error_kind ON tasks(error_kind, id) WHERE error_kind IS NOT NULL;
-- A namespace other than `default` (whose tasks keep none): its lists walk
-- this index; `default`'s walk the filter's own with `namespace IS NULL`.
CREATE INDEX IF NOT EXISTS tasks_namespace ON tasks(namespace, id) WHERE namespace IS NOT NULL;
-- Retention: a workflow's steps go with it; ended tasks by removal time,
-- and by name in the order they ended (count caps).
CREATE INDEX IF NOT EXISTS tasks_parent ON tasks(parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_purge ON tasks(purge_at) WHERE purge_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_ended ON tasks(state, name, seq) WHERE "#,
    ended!("state"),
    r#";
-- A task's log lines, in one B-tree keyed by the task: a line is one
-- insert, and a task's removal one range of it. The numbers come from the
-- writer (`writer::LogLines`), which reserves them in `meta`; a table
-- keyed by its rowid, with an index on the task, cost a second B-tree per
-- line and per removal. Files of earlier versions are moved to it
-- (`upgrade`).
CREATE TABLE IF NOT EXISTS task_logs "#,
    task_logs_columns!(),
    r#";
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    id BLOB PRIMARY KEY,
    at INTEGER NOT NULL,
    state INTEGER NOT NULL,
    reason TEXT NOT NULL
);
-- Ended tasks counted by type, name and state, kept by triggers (and by
-- the writer for a row inserted ended), so start-up
-- reads a few rows instead of counting every task that ever ended.
CREATE TABLE IF NOT EXISTS ended_counts (
    task_type INTEGER NOT NULL,
    name TEXT NOT NULL,
    state INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (task_type, name, state)
) WITHOUT ROWID;
-- A row inserted already ended is counted by the writer itself
-- (`writer::count_ended_insert`): any trigger on INSERT would make every
-- insert keep a statement journal, which cost the writer a tenth of its time
-- per new task. Files of earlier versions drop theirs here.
DROP TRIGGER IF EXISTS tasks_ended_insert;
-- The bodies resolve conflicts with FAIL, not SQLite's default ABORT: a
-- statement that may ABORT halfway must be undone alone, so SQLite keeps a
-- statement journal (a copy of every page it changes) for each DELETE that
-- fires a trigger and each UPDATE of `state` (the writer's full row write
-- is `UPDATE OR FAIL`, which the bodies follow). The writer never needs
-- one: a statement that fails rolls its whole transaction back. Files
-- whose triggers lack it have them replaced (see `upgrade`).
-- The enter trigger counts, and makes the row when there was none
-- (`changes()` is then 0: it counts the trigger's last statement): an
-- upsert's DO UPDATE always ABORTs on a conflict (so it would bring the
-- journal back), under the writer's `UPDATE OR FAIL` an `INSERT OR
-- IGNORE` would FAIL, and an insert whose SELECT reads `ended_counts`
-- itself would copy its rows to a temporary B-tree first.
CREATE TRIGGER IF NOT EXISTS tasks_ended_enter AFTER UPDATE OF state ON tasks
WHEN "#,
    ended!("NEW.state"),
    r#" AND NEW.state IS NOT OLD.state BEGIN
    UPDATE OR FAIL ended_counts SET n = n + 1
    WHERE task_type = NEW.task_type AND name = NEW.name AND state = NEW.state;
    INSERT OR FAIL INTO ended_counts
        SELECT NEW.task_type, NEW.name, NEW.state, 1 WHERE changes() = 0;
END;
CREATE TRIGGER IF NOT EXISTS tasks_ended_leave AFTER UPDATE OF state ON tasks
WHEN "#,
    ended!("OLD.state"),
    r#" AND NEW.state IS NOT OLD.state BEGIN
    UPDATE OR FAIL ended_counts SET n = n - 1
    WHERE task_type = OLD.task_type AND name = OLD.name AND state = OLD.state;
END;
CREATE TRIGGER IF NOT EXISTS tasks_ended_delete AFTER DELETE ON tasks
WHEN "#,
    ended!("OLD.state"),
    r#" BEGIN
    UPDATE OR FAIL ended_counts SET n = n - 1
    WHERE task_type = OLD.task_type AND name = OLD.name AND state = OLD.state;
END;
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '2');
"#
);

/// Brings a file of schema version 1 to version 2, in one transaction:
/// the `purge_at` column, the ended counts (counted once, here), and the
/// indexes version 2 replaces. Ended rows of version 1 get no removal time
/// of their own; [`super::SqliteStore::adopt_ended`] gives them one.
pub(super) fn upgrade(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let has_tasks: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'tasks'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_tasks {
        return Ok(());
    }
    // Log lines of earlier versions: a rowid table with an index on the
    // task; moved, numbers and all, to the table keyed by the task, and
    // the next number reserved (see `writer::LogLines`).
    let logs_by_rowid: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'task_logs'
           AND sql NOT LIKE '%WITHOUT ROWID%'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if logs_by_rowid {
        conn.execute_batch(concat!(
            "BEGIN IMMEDIATE;
             CREATE TABLE task_logs_by_task ",
            task_logs_columns!(),
            ";
             INSERT INTO task_logs_by_task
                 SELECT task_id, line, time, source, level, attempt, message FROM task_logs;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT OR REPLACE INTO meta(key, value)
                 SELECT 'log_lines_reserved', coalesce(max(line), 0) + 1 FROM task_logs;
             DROP TABLE task_logs;
             ALTER TABLE task_logs_by_task RENAME TO task_logs;
             COMMIT;"
        ))?;
    }
    // The ended-count triggers of earlier versions ABORT on a conflict
    // (which costs a statement journal, see SCHEMA), and they and the
    // partial index of ended tasks test the state with an `IN` list (a
    // temporary B-tree at every run, see `ended!`): SCHEMA makes all four
    // again, the index with the condition the queries meant for it repeat.
    // Once, at the first open; the index takes as long as its first build.
    let old_ended: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master
           WHERE name IN ('tasks_ended', 'tasks_ended_enter', 'tasks_ended_leave',
                          'tasks_ended_delete')
             AND (sql LIKE '%IN (3, 4, 5, 7)%' OR (type = 'trigger' AND sql NOT LIKE '%OR FAIL%'))",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if old_ended {
        tracing::info!(
            "rebuilding the index of ended tasks once, for this version (about 1 s per million)"
        );
        conn.execute_batch(
            "DROP TRIGGER IF EXISTS tasks_ended_enter;
             DROP TRIGGER IF EXISTS tasks_ended_leave;
             DROP TRIGGER IF EXISTS tasks_ended_delete;
             DROP INDEX IF EXISTS tasks_ended;",
        )?;
    }
    // Schedules: the fires' schedule id in a column of its own (rows of
    // earlier versions were fired by no schedule).
    let has_schedule: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('tasks') WHERE name = 'schedule_id'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_schedule {
        conn.execute_batch("ALTER TABLE tasks ADD COLUMN schedule_id TEXT;")?;
    }
    // Retry: the kind of the last error in a column of its own, taken from
    // the runtime's JSON of rows of earlier versions (a row whose JSON does
    // not read keeps none; it is quarantined at start-up anyway).
    let has_error_kind: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('tasks') WHERE name = 'error_kind'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_error_kind {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             ALTER TABLE tasks ADD COLUMN error_kind TEXT;
             UPDATE tasks SET error_kind = NULLIF(json_extract(rt, '$.last_error.kind'), '')
                 WHERE rt LIKE '%\"last_error\":{%' AND json_valid(rt);
             COMMIT;",
        )?;
    }
    // Namespaces: rows of earlier versions are all of `default` (none).
    let has_namespace: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('tasks') WHERE name = 'namespace'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_namespace {
        conn.execute_batch("ALTER TABLE tasks ADD COLUMN namespace TEXT;")?;
    }
    let has_purge: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('tasks') WHERE name = 'purge_at'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if has_purge {
        return Ok(());
    }
    conn.execute_batch(concat!(
        "BEGIN IMMEDIATE;
         ALTER TABLE tasks ADD COLUMN purge_at INTEGER;
         DROP INDEX IF EXISTS tasks_active;
         DROP INDEX IF EXISTS tasks_user;
         DROP INDEX IF EXISTS tasks_session;
         CREATE TABLE IF NOT EXISTS ended_counts (
             task_type INTEGER NOT NULL,
             name TEXT NOT NULL,
             state INTEGER NOT NULL,
             n INTEGER NOT NULL,
             PRIMARY KEY (task_type, name, state)
         ) WITHOUT ROWID;
         INSERT INTO ended_counts
             SELECT task_type, name, state, count(*) FROM tasks
             WHERE ",
        ended!("state"),
        " GROUP BY task_type, name, state;
         INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '2');
         INSERT OR REPLACE INTO meta(key, value) VALUES ('adopt_ended', '1');
         COMMIT;"
    ))
}
