//! The tables and indexes, created if missing at every open.

pub(super) const SCHEMA: &str = r#"
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
    payload TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency ON tasks(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_seq ON tasks(seq);
CREATE INDEX IF NOT EXISTS tasks_active ON tasks(state) WHERE state IN (1, 2, 6);
CREATE INDEX IF NOT EXISTS tasks_user ON tasks(user_id) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_session ON tasks(session_id) WHERE session_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_logs (
    line INTEGER PRIMARY KEY,
    task_id BLOB NOT NULL,
    time INTEGER NOT NULL,
    source INTEGER NOT NULL,
    level TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS task_logs_task ON task_logs(task_id, line);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    id BLOB PRIMARY KEY,
    at INTEGER NOT NULL,
    state INTEGER NOT NULL,
    reason TEXT NOT NULL
);
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '1');
"#;
