//! The SQLite store's unit tests.

use super::*;
use crate::store::contract::{self, store_contract, Harness, Opened};

use crate::domain::EventKind;
use contract::task;

async fn insert(s: &SqliteStore, t: &Task) -> WriteOutcome {
    contract::insert(s, t).await
}

/// SQLite stores in one file of a temporary directory.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }
}

#[async_trait]
impl Harness for Files {
    async fn open(&self, lazy_within: Duration) -> Opened {
        let s = SqliteStore::open(SqliteOptions {
            path: Some(self.0.path().join("t.db")),
            lazy_within,
            ..Default::default()
        })
        .unwrap();
        let (a, b) = (s.stats.clone(), s.stats.clone());
        Opened {
            store: s,
            commits: Box::new(move || a.commits.load(Ordering::Relaxed)),
            coalesced: Box::new(move || Some(b.coalesced.load(Ordering::Relaxed))),
        }
    }

    async fn close(&self, o: Opened) {
        // The last reference: dropping it closes the writer after its
        // queued writes.
        drop(o);
    }
}

store_contract!(Files::new());

/// Under writes that never pause (the writer is never idle between
/// commits), the WAL still starts over: it stays near its restart
/// threshold while several times as much is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_writes_that_never_pause() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let wal = dir.path().join("t.db-wal");
    let s = SqliteStore::open(SqliteOptions {
        path: Some(path.clone()),
        synchronous: Synchronous::Normal,
        max_batch: 64,
        ..Default::default()
    })
    .unwrap();
    let big = Arc::<str>::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(2000)));
    // About 40,000 pages (160 MB): twenty times the restart threshold.
    let n = 40_000;
    for _ in 0..n {
        s.submit(
            vec![WriteOp::Insert {
                task: task(None),
                payload: Payload::Json(big.clone()),
                log: vec![],
                event: None,
            }],
            None,
        );
    }
    let mut largest = 0;
    loop {
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        if s.stats.ops.load(Ordering::Relaxed) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.flush().await.unwrap();
    s.close();
    drop(s);
    let db = std::fs::metadata(&path).unwrap().len();
    assert!(db > 128 << 20, "only {db} bytes were written");
    // The high-water mark is the threshold plus what the writer added
    // before the checkpointer's next look and the RESTART's turn.
    assert!(
        largest < db / 2,
        "WAL reached {largest} bytes for {db} bytes written"
    );
}

#[tokio::test]
async fn the_checkpointer_thread_keeps_the_wal_short_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let wal = dir.path().join("t.db-wal");
    let s = SqliteStore::open(SqliteOptions {
        path: Some(path.clone()),
        synchronous: Synchronous::Normal,
        ..Default::default()
    })
    .unwrap();
    // About 2,000 pages of WAL: twice SQLite's own checkpoint interval,
    // which the writer no longer runs.
    let big = Arc::<str>::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(2000)));
    let mut ids = Vec::new();
    for _ in 0..4 {
        for _ in 0..1000 {
            let t = task(None);
            ids.push(t.id);
            s.submit(
                vec![WriteOp::Insert {
                    task: t,
                    payload: Payload::Json(big.clone()),
                    log: vec![],
                    event: None,
                }],
                None,
            );
        }
        let (tx, rx) = oneshot::channel();
        s.submit(vec![WriteOp::Log(vec![])], Some(tx));
        rx.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.stats.checkpoints.load(Ordering::Relaxed) > 0);
    // Each checkpoint let the writer start the log over: the WAL never
    // held everything written (~8,000 pages, 32 MB).
    let wal_len = std::fs::metadata(&wal).unwrap().len();
    assert!(wal_len < 24 << 20, "WAL is {wal_len} bytes");
    s.close();
    drop(s);
    let s = SqliteStore::open(SqliteOptions {
        path: Some(path),
        ..Default::default()
    })
    .unwrap();
    for id in [ids[0], ids[1999], ids[3999]] {
        assert!(s.get(id).await.unwrap().is_some());
        assert_eq!(s.payload(id).await.unwrap().as_deref(), Some(&*big));
    }
}

#[tokio::test]
async fn memory_mode_works() {
    let s = SqliteStore::open(SqliteOptions::default()).unwrap();
    let a = task(None);
    assert_eq!(insert(&s, &a).await, WriteOutcome::Done);
    assert_eq!(s.load_active().await.unwrap().len(), 1);
    assert_eq!(s.counts().await.unwrap()[0].3, 1);
}

/// Every filter of a list page is served by an index, walked newest first
/// and stopped at the limit: no scan of the table, no sort of every
/// matching row (the sort of a merged multi-value page holds at most one
/// limit per value). So is every query of retention and start-up.
#[test]
fn every_list_filter_and_sweep_query_uses_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let s = SqliteStore::open(SqliteOptions {
        path: Some(path.clone()),
        ..Default::default()
    })
    .unwrap();
    drop(s);
    let conn = Connection::open(&path).unwrap();
    let plan = |sql: &str, params: Vec<rusqlite::types::Value>| -> Vec<String> {
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        st.query_map(rusqlite::params_from_iter(params), |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    let mut checked = 0;
    for (case, filter) in contract::filter_cases() {
        for before in [None, Some(TaskId::now_v7())] {
            let (sql, vals) = list_sql(&ListQuery {
                filter: filter.clone(),
                limit: 50,
                before,
            });
            let steps = plan(&sql, vals);
            let text = steps.join(" | ");
            let merged = steps
                .iter()
                .any(|s| s.contains("UNION ALL") || s.contains("COMPOUND"));
            for step in &steps {
                let scan = step.starts_with("SCAN tasks") && !step.contains("USING");
                let sort = step.contains("TEMP B-TREE") && !merged;
                assert!(!scan && !sort, "{case}: {text}");
            }
            assert!(text.contains("USING"), "{case}: {text}");
            checked += 1;
        }
    }
    assert_eq!(checked, 40);
    use rusqlite::types::Value;
    for (what, sql, params) in [
        (
            "due",
            due_sql(),
            vec![Value::Integer(5), Value::Integer(10)],
        ),
        (
            "caps",
            oldest_sql(TaskState::Completed),
            vec![Value::Text("a".into()), Value::Integer(10)],
        ),
        (
            "steps",
            "SELECT id FROM tasks WHERE parent_id = x'00'".into(),
            vec![],
        ),
        (
            "active",
            format!("SELECT {TASK_COLUMNS} FROM tasks WHERE state IN (1, 2, 6)"),
            vec![],
        ),
        (
            "changes",
            "SELECT id FROM tasks WHERE seq > 1 AND seq <= 9 ORDER BY seq LIMIT 10".into(),
            vec![],
        ),
    ] {
        let steps = plan(&sql, params);
        let text = steps.join(" | ");
        assert!(
            steps.iter().all(|s| !s.contains("TEMP B-TREE")
                && (!s.starts_with("SCAN tasks") || s.contains("USING"))),
            "{what}: {text}"
        );
        assert!(text.contains("USING"), "{what}: {text}");
    }
    let caps = plan(
        &oldest_sql(TaskState::Failed),
        vec![Value::Text("a".into()), Value::Integer(10)],
    )
    .join(" | ");
    assert!(caps.contains("tasks_ended"), "{caps}");
}

/// The opcodes of `sql` as SQLite compiles it, with the programs of the
/// triggers it fires.
fn opcodes(conn: &Connection, sql: &str) -> Vec<String> {
    let mut st = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
    let nulls = vec![rusqlite::types::Value::Null; st.parameter_count()];
    st.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(1))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// No statement the writer runs for every task (with the triggers and the
/// partial indexes it updates) builds a temporary B-tree: an `IN` list of
/// constants did, at every run (see `ended!`).
#[test]
fn no_write_of_a_task_builds_a_temporary_b_tree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(
        SqliteStore::open(SqliteOptions {
            path: Some(path.clone()),
            ..Default::default()
        })
        .unwrap(),
    );
    let conn = Connection::open(&path).unwrap();
    for sql in writer::PER_TASK_WRITES {
        let ops = opcodes(&conn, sql);
        assert!(ops.len() > 5, "{sql}: {ops:?}");
        assert!(!ops.iter().any(|o| o == "OpenEphemeral"), "{sql}: {ops:?}");
    }
    // The check itself: the same removal with the `IN` list builds one.
    let in_list = "DELETE FROM tasks WHERE id = ?1 AND state IN (3, 4, 5, 7)";
    assert!(opcodes(&conn, in_list).iter().any(|o| o == "OpenEphemeral"));
}

/// The schema of version 1 (before retention), as an earlier release wrote it.
const SCHEMA_V1: &str = r#"
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

/// A file of version 1 opens: its ended tasks are counted once into the
/// ended counts, given their removal time under the policy (kept for ever
/// under none), and the new indexes serve it.
#[tokio::test]
async fn a_file_of_version_1_is_upgraded_at_open() {
    use crate::domain::retention::RetentionPolicy;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let ended_at = now_micros() - 3_600_000_000;
    let (done, active) = (task(None), task(None));
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        for (t, state) in [(&done, TaskState::Completed), (&active, TaskState::Pending)] {
            let mut rt = t.rt.clone();
            rt.state = state;
            rt.finished_at = state.is_final().then_some(ended_at);
            c.execute(
                "INSERT INTO tasks (id, created_at, name, task_type, state, seq, source, spec, rt, payload)
                 VALUES (?1, ?2, 't', 1, ?3, 1, 1, ?4, ?5, '{}')",
                params![
                    t.id.as_bytes(),
                    t.created_at,
                    state.code(),
                    serde_json::to_string(&*t.spec).unwrap(),
                    serde_json::to_string(&rt).unwrap()
                ],
            )
            .unwrap();
        }
        // Log lines numbered by rowid, as version 1 did.
        for (line, t, msg) in [(7, &done, "one"), (9, &active, "two"), (12, &done, "three")] {
            c.execute(
                "INSERT INTO task_logs (line, task_id, time, source, level, attempt, message)
                 VALUES (?1, ?2, 1, 1, 'info', 0, ?3)",
                params![line, t.id.as_bytes(), msg],
            )
            .unwrap();
        }
    }
    let s = SqliteStore::open(SqliteOptions {
        path: Some(path.clone()),
        retention: Arc::new(RetentionPolicy::standard()),
        ..Default::default()
    })
    .unwrap();
    // The lines moved to the table keyed by the task, numbers and all; a
    // new one is numbered after every old one.
    let lines = |id| {
        let s = &s;
        async move {
            s.logs(id, 0, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|l| (l.line, l.message))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        lines(done.id).await,
        [(7, "one".to_string()), (12, "three".to_string())]
    );
    let (tx, rx) = oneshot::channel();
    s.submit(
        vec![WriteOp::Log(vec![LogEntry::system(active.id, 1, "four")])],
        Some(tx),
    );
    rx.await.unwrap().unwrap();
    assert_eq!(
        lines(active.id).await,
        [(9, "two".to_string()), (13, "four".to_string())]
    );
    let finals = s.final_counts().await.unwrap();
    assert_eq!(
        finals,
        vec![(TaskType::Simple, "t".to_string(), TaskState::Completed, 1)]
    );
    assert_eq!(s.load_active().await.unwrap().len(), 1);
    // Completed an hour ago, kept 7 days: due in 7 days less an hour.
    let week = 7 * 86_400 * 1_000_000i64;
    assert!(s
        .due_for_removal(ended_at + week - 1, 10)
        .await
        .unwrap()
        .is_empty());
    let due = s.due_for_removal(ended_at + week, 10).await.unwrap();
    assert_eq!(due.iter().map(|e| e.id).collect::<Vec<_>>(), vec![done.id]);
    drop(s);
    let c = Connection::open(&path).unwrap();
    let version: String = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, "2");
    let gone: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('tasks_active', 'adopt')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(gone, 0);
    let adopt: i64 = c
        .query_row(
            "SELECT count(*) FROM meta WHERE key = 'adopt_ended'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(adopt, 0, "adopted once");
    let by_task: String = c
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'task_logs'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(by_task.contains("WITHOUT ROWID"), "{by_task}");
}

/// Log line numbers come from the writer's counter, reserved in blocks in
/// the file: they keep rising within a task across a reopen, and a
/// reservation made by a transaction that rolled back (a refused group)
/// is made again, so no number committed before the reopen is handed out
/// after it.
#[tokio::test]
async fn log_lines_keep_rising_across_a_refused_group_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        SqliteStore::open(SqliteOptions {
            path: Some(dir.path().join("t.db")),
            ..Default::default()
        })
        .unwrap()
    };
    let write = |s: &SqliteStore, ops: Vec<WriteOp>| {
        let (tx, rx) = oneshot::channel();
        s.submit(ops, Some(tx));
        async move { rx.await.unwrap() }
    };
    let line = |a: &Task, m: &str| WriteOp::Log(vec![LogEntry::system(a.id, 1, m)]);
    let a = task(None);
    let s = open();
    assert_eq!(insert(&s, &a).await, WriteOutcome::Done);
    drop(s);
    // A line the file refuses (a trigger of the test's own).
    Connection::open(dir.path().join("t.db"))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON task_logs WHEN NEW.message = 'refused'
             BEGIN SELECT RAISE(FAIL, 'refused by the test'); END;",
        )
        .unwrap();
    // Reopened, the counter starts at the reservation, so the next line
    // reserves a new block. Here that line's group is refused, and the
    // reservation rolls back with it.
    let s = open();
    assert!(write(&s, vec![line(&a, "refused")]).await.is_err());
    write(&s, vec![line(&a, "kept")]).await.unwrap();
    drop(s);
    // Every committed number is below the reservation in the file.
    let (reserved, last): (String, i64) = Connection::open(dir.path().join("t.db"))
        .unwrap()
        .query_row(
            "SELECT (SELECT value FROM meta WHERE key = 'log_lines_reserved'),
                    (SELECT max(line) FROM task_logs)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(reserved.parse::<i64>().unwrap() > last, "{reserved} {last}");
    let s = open();
    let after = (1..=5).map(|i| line(&a, &format!("after {i}"))).collect();
    write(&s, after).await.unwrap();
    let got = s.logs(a.id, 0, 100).await.unwrap();
    assert_eq!(
        got.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(),
        [
            "scheduled",
            "kept",
            "after 1",
            "after 2",
            "after 3",
            "after 4",
            "after 5"
        ]
    );
    assert!(
        got.windows(2).all(|w| w[0].line < w[1].line),
        "{:?}",
        got.iter().map(|l| l.line).collect::<Vec<_>>()
    );
}

/// An update that keeps every indexed column but `seq` takes the light
/// statement; one that changes the state writes every column whatever its
/// event, so the state's index and the ended counts follow.
#[tokio::test]
async fn an_update_writes_the_columns_whichever_statement_takes_it() {
    let s = SqliteStore::open(SqliteOptions::default()).unwrap();
    let mut t = task(None);
    assert_eq!(insert(&s, &t).await, WriteOutcome::Done);
    let write = |t: &Task, event: EventKind| {
        let (s, t) = (s.clone(), t.clone());
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            s.submit(
                vec![WriteOp::Update {
                    task: t,
                    log: Vec::new(),
                    event: Some(event),
                }],
                Some(tx),
            );
            rx.await.unwrap().unwrap();
        }
    };
    let in_state = |state: TaskState| {
        let s = s.clone();
        async move {
            s.list(ListQuery {
                filter: TaskFilter {
                    states: vec![state],
                    ..Default::default()
                },
                limit: 10,
                before: None,
            })
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.rt.seq, t.rt.external_id.map(String::from)))
            .collect::<Vec<_>>()
        }
    };
    // The state kept: seq and the runtime change.
    t.rt.seq = 7;
    t.rt.external_id = Some("job-1".into());
    write(&t, EventKind::Updated).await;
    assert_eq!(
        in_state(TaskState::Pending).await,
        [(7, Some("job-1".to_string()))]
    );
    // The state changed under an event that usually keeps it: the light
    // statement finds no row as it was, and the full one writes it.
    t.rt.seq = 8;
    t.rt.state = TaskState::Completed;
    t.rt.finished_at = Some(now_micros());
    write(&t, EventKind::Progress).await;
    assert!(in_state(TaskState::Pending).await.is_empty());
    assert_eq!(
        in_state(TaskState::Completed).await,
        [(8, Some("job-1".to_string()))]
    );
    let counts = s.counts().await.unwrap();
    assert!(
        counts
            .iter()
            .any(|c| c.2 == TaskState::Completed && c.3 == 1),
        "{counts:?}"
    );
}

/// A file whose ended-count triggers ABORT on a conflict (earlier
/// versions: SQLite then keeps a statement journal for every removal and
/// state change) and test the state with an `IN` list, as its partial
/// index does, gets the FAIL ones and the index again at open, and the
/// counts still follow an update into a final state, a retry out of it,
/// and a removal.
#[tokio::test]
async fn the_ended_count_triggers_of_earlier_files_are_replaced_at_open() {
    let files = Files::new();
    let path = files.0.path().join("t.db");
    drop(files.open(Duration::ZERO).await);
    {
        let c = Connection::open(&path).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.execute_batch(
            "DROP TRIGGER tasks_ended_enter;
             DROP TRIGGER tasks_ended_leave;
             DROP TRIGGER tasks_ended_delete;
             CREATE TRIGGER tasks_ended_enter AFTER UPDATE OF state ON tasks
             WHEN NEW.state IN (3, 4, 5, 7) AND NEW.state IS NOT OLD.state BEGIN
                 INSERT INTO ended_counts VALUES (NEW.task_type, NEW.name, NEW.state, 1)
                 ON CONFLICT DO UPDATE SET n = n + 1;
             END;
             CREATE TRIGGER tasks_ended_leave AFTER UPDATE OF state ON tasks
             WHEN OLD.state IN (3, 4, 5, 7) AND NEW.state IS NOT OLD.state BEGIN
                 UPDATE ended_counts SET n = n - 1
                 WHERE task_type = OLD.task_type AND name = OLD.name AND state = OLD.state;
             END;
             CREATE TRIGGER tasks_ended_delete AFTER DELETE ON tasks
             WHEN OLD.state IN (3, 4, 5, 7) BEGIN
                 UPDATE ended_counts SET n = n - 1
                 WHERE task_type = OLD.task_type AND name = OLD.name AND state = OLD.state;
             END;
             DROP INDEX tasks_ended;
             CREATE INDEX tasks_ended ON tasks(state, name, seq) WHERE state IN (3, 4, 5, 7);",
        )
        .unwrap();
    }
    let triggers = |path: &std::path::Path| {
        let c = Connection::open(path).unwrap();
        let mut q = c
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name")
            .unwrap();
        q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    };
    let before = triggers(&path);
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(
        before.iter().all(|(_, sql)| !sql.contains("OR FAIL")),
        "{before:?}"
    );

    let s = SqliteStore::open(SqliteOptions {
        path: Some(path.clone()),
        ..Default::default()
    })
    .unwrap();
    let after = triggers(&path);
    assert_eq!(
        after.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [
            "tasks_ended_delete",
            "tasks_ended_enter",
            "tasks_ended_leave"
        ]
    );
    assert!(
        after.iter().all(|(_, sql)| sql.contains("OR FAIL")),
        "{after:?}"
    );
    // Nothing tests the state with an `IN` list any more, and the count
    // caps' query uses the partial index made again.
    {
        let c = Connection::open(&path).unwrap();
        let in_lists: Vec<String> = c
            .prepare("SELECT name FROM sqlite_master WHERE sql LIKE '%IN (3, 4, 5, 7)%'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(in_lists.is_empty(), "{in_lists:?}");
        let plan: Vec<String> = c
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                oldest_sql(TaskState::Completed)
            ))
            .unwrap()
            .query_map(params!["a", 1], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(plan.join(" ").contains("tasks_ended"), "{plan:?}");
    }

    let write = |op: WriteOp| {
        let s = s.clone();
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            s.submit(vec![op], Some(tx));
            rx.await.unwrap().unwrap();
        }
    };
    let completed = |s: Arc<SqliteStore>| async move {
        s.final_counts()
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.2 == TaskState::Completed)
            .map(|c| c.3)
            .sum::<u64>()
    };
    // The task moved to `state` (its row's full write).
    let moved = |t: &mut Task, state: TaskState, event: EventKind| {
        t.rt.seq += 1;
        t.rt.state = state;
        t.rt.finished_at = state.is_final().then(now_micros);
        WriteOp::Update {
            task: t.clone(),
            log: Vec::new(),
            event: Some(event),
        }
    };
    let mut t = task(None);
    assert_eq!(insert(&s, &t).await, WriteOutcome::Done);
    write(moved(&mut t, TaskState::Completed, EventKind::Completed)).await;
    assert_eq!(completed(s.clone()).await, 1);
    // Run again: it leaves the ended set.
    write(moved(&mut t, TaskState::Pending, EventKind::Updated)).await;
    assert_eq!(completed(s.clone()).await, 0);
    write(moved(&mut t, TaskState::Completed, EventKind::Completed)).await;
    assert_eq!(completed(s.clone()).await, 1);
    write(WriteOp::Remove(vec![t.id])).await;
    assert_eq!(completed(s.clone()).await, 0);
    assert!(s.get(t.id).await.unwrap().is_none());
}
