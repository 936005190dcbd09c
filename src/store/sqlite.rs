//! The embedded store: one SQLite file in WAL mode, written by one thread
//! that commits every write queued while the previous commit ran in one
//! transaction (group commit), so durability costs one fsync per group, not
//! per call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{
    CommitListener, Completion, Counts, ListQuery, Payload, Store, StoreError, WriteOp,
    WriteOutcome, LAZY_COMMIT_WITHIN,
};
use crate::domain::{
    now_micros, LogEntry, LogSource, Task, TaskEvent, TaskFilter, TaskId, TaskRuntime, TaskSpec,
    TaskState, TaskType,
};

/// How durable a commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: survives power loss.
    #[default]
    Full,
    /// fsync at checkpoints: survives a crash of the process (kill -9), not of
    /// the machine.
    Normal,
}

/// Options of the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file; `None` keeps everything in memory (tests).
    pub path: Option<PathBuf>,
    /// Commit durability.
    pub synchronous: Synchronous,
    /// Most operations in one transaction.
    pub max_batch: usize,
    /// Reader connections.
    pub readers: usize,
    /// The longest a lazy write waits for a commit to ride on (default
    /// [`LAZY_COMMIT_WITHIN`]).
    pub lazy_within: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            path: None,
            synchronous: Synchronous::Full,
            max_batch: 4096,
            readers: 4,
            lazy_within: LAZY_COMMIT_WITHIN,
        }
    }
}

/// Statistics of the commit path (for metrics).
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Commits done.
    pub commits: std::sync::atomic::AtomicU64,
    /// Operations committed.
    pub ops: std::sync::atomic::AtomicU64,
    /// Total commit time in microseconds.
    pub commit_micros: std::sync::atomic::AtomicU64,
    /// Row writes skipped because a later write of the same task in the same
    /// batch superseded them (write coalescing).
    pub coalesced: std::sync::atomic::AtomicU64,
    /// Checkpoints run by the checkpointer thread.
    pub checkpoints: std::sync::atomic::AtomicU64,
    /// WAL restarts run by the writer (see `WAL_RESTART_FRAMES`).
    pub restarts: std::sync::atomic::AtomicU64,
    /// Rows set aside at start-up because they could not be read back.
    pub quarantined: std::sync::atomic::AtomicU64,
    /// Told of each commit's latency and size, once set (metrics).
    pub sink: OnceLock<Arc<dyn crate::telemetry::MetricsSink>>,
}

struct Group {
    ops: Vec<WriteOp>,
    done: Option<Completion>,
    /// Submitted with [`Store::submit_lazy`]: does not start a commit.
    lazy: bool,
}

type Listener = OnceLock<Arc<dyn CommitListener>>;

/// The SQLite store.
pub struct SqliteStore {
    tx: Mutex<Option<mpsc::Sender<Group>>>,
    readers: Vec<Arc<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    listener: Arc<Listener>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Mutex<Option<Checkpointer>>,
    /// Commit statistics.
    pub stats: Arc<CommitStats>,
}

const SCHEMA: &str = r#"
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

/// The writer's page cache. Its writes are appends (UUIDv7 keys, rising
/// `seq` and rowids) and updates of recent rows, so the pages it touches are
/// few: 16 MiB wrote as fast as 64 MiB in the bench, and with a million
/// pending tasks the other 48 MiB were RSS for nothing.
const WRITER_CACHE_KIB: i64 = 16 * 1024;
/// Each reader's page cache; see [`release_cache`] for the start-up scans.
const READER_CACHE_KIB: i64 = 16 * 1024;

fn configure(conn: &Connection, sync: Synchronous, memory: bool) -> rusqlite::Result<()> {
    if !memory {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    Ok(())
}

impl SqliteStore {
    /// Hands a group to the writer; a closed store answers its completion
    /// with [`StoreError::Closed`].
    fn send(&self, g: Group) {
        let guard = self.tx.lock();
        let sent = match guard.as_ref() {
            Some(tx) => tx.send(g).map_err(|e| e.0.done),
            None => Err(g.done),
        };
        if let Err(Some(done)) = sent {
            let _ = done.send(Err(Arc::new(StoreError::Closed)));
        }
    }

    /// Opens (creating if needed) the store and starts its writer thread.
    pub fn open(opts: SqliteOptions) -> Result<Arc<Self>, StoreError> {
        let open_err = |p: &str, e: &dyn std::fmt::Display| StoreError::Open {
            path: p.to_string(),
            reason: e.to_string(),
        };
        let (writer_conn, readers) = match &opts.path {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| open_err(&path.display().to_string(), &e))?;
                    }
                }
                let w = Connection::open(path)?;
                configure(&w, opts.synchronous, false)?;
                // The checkpointer thread copies the WAL back; the writer only
                // does it itself past this (a last resort, never reached
                // while the checkpointer runs).
                w.pragma_update(None, "wal_autocheckpoint", 4 * WAL_RESTART_FRAMES)?;
                w.execute_batch(SCHEMA)?;
                let w = Arc::new(Mutex::new(w));
                let mut readers = Vec::new();
                for _ in 0..opts.readers.max(1) {
                    readers.push(Arc::new(Mutex::new(open_reader(path)?)));
                }
                (w, readers)
            }
            None => {
                let w = Connection::open_in_memory()?;
                configure(&w, opts.synchronous, true)?;
                w.execute_batch(SCHEMA)?;
                let w = Arc::new(Mutex::new(w));
                (w.clone(), vec![w])
            }
        };
        let (tx, rx) = mpsc::channel::<Group>();
        let listener: Arc<Listener> = Arc::new(OnceLock::new());
        let stats = Arc::new(CommitStats::default());
        let restart_wanted = Arc::new(AtomicBool::new(false));
        let writer = {
            let listener = listener.clone();
            let stats = stats.clone();
            let restart = restart_wanted.clone();
            let limits = Limits {
                max_batch: opts.max_batch.max(1),
                lazy_within: opts.lazy_within,
            };
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || writer_loop(writer_conn, rx, listener, stats, restart, limits))
                .map_err(|e| open_err("writer thread", &e))?
        };
        let checkpointer = match &opts.path {
            Some(path) => Some(Checkpointer::start(
                path,
                opts.synchronous,
                stats.clone(),
                restart_wanted,
            )?),
            None => None,
        };
        Ok(Arc::new(SqliteStore {
            tx: Mutex::new(Some(tx)),
            readers,
            next_reader: AtomicUsize::new(0),
            listener,
            writer: Mutex::new(Some(writer)),
            checkpointer: Mutex::new(checkpointer),
            stats,
        }))
    }

    /// Stops the writer after it has committed everything queued.
    pub fn close(&self) {
        self.tx.lock().take();
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
        if let Some(c) = self.checkpointer.lock().take() {
            c.stop();
        }
    }

    fn reader(&self) -> &Arc<Mutex<Connection>> {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        &self.readers[i]
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.reader().clone();
        tokio::task::spawn_blocking(move || f(&conn.lock()))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.pragma_update(None, "busy_timeout", 5000)?;
    c.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
    Ok(c)
}

/// Frees a reader's cached pages after a scan of the whole table at
/// start-up: they are cold, and with a million tasks they would keep a
/// reader's whole cache (16 MiB) resident for nothing.
fn release_cache(conn: &Connection) {
    if let Err(e) = conn.execute_batch("PRAGMA shrink_memory") {
        tracing::debug!(error = %e, "shrink_memory after a scan");
    }
}

/// WAL frames (pages) past which the log is started over: the checkpointer
/// asks the writer, which runs a RESTART checkpoint between two commits.
/// Under a steady stream of commits the PASSIVE checkpoints never catch up
/// with the newest frame, so SQLite never starts the log over by itself:
/// the WAL grew by ~55 MB/s at half of bench c's maximum rate, every commit
/// appended to new file pages (page-cache allocation, and ext4 metadata in
/// each fsync), and a RESTART from the checkpointer's own connection,
/// taken at 256 MiB, could starve behind a writer that never pauses. The
/// PASSIVE checkpoints have copied nearly all of an 8 MiB log when the
/// writer restarts it, so the writer's pause is short: the last few frames
/// and the database file's fsync.
const WAL_RESTART_FRAMES: i64 = 2_048;
/// How often the checkpointer looks, when something was committed.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(20);

/// Copies the WAL back into the database on its own thread and connection,
/// with PASSIVE checkpoints that never block the writer. SQLite's automatic
/// checkpoint would run on the writer thread after a commit every 1,000
/// pages, and every commit queued behind it (with its callers) would wait
/// for the copy and, with `synchronous = full`, the database file's fsync.
struct Checkpointer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    fn start(
        path: &Path,
        sync: Synchronous,
        stats: Arc<CommitStats>,
        restart_wanted: Arc<AtomicBool>,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        configure(&conn, sync, false)?;
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("store-checkpoint".into())
                .spawn(move || checkpointer_loop(conn, stats, restart_wanted, stop))
                .map_err(|e| StoreError::Open {
                    path: path.display().to_string(),
                    reason: format!("checkpoint thread: {e}"),
                })?
        };
        Ok(Checkpointer { stop, handle })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.handle.thread().unpark();
        let _ = self.handle.join();
    }
}

fn checkpointer_loop(
    conn: Connection,
    stats: Arc<CommitStats>,
    restart_wanted: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let checkpoint = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })
    };
    let mut seen = 0;
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(CHECKPOINT_EVERY);
        let commits = stats.commits.load(Ordering::Relaxed);
        if commits == seen {
            continue;
        }
        seen = commits;
        match checkpoint("PASSIVE") {
            Ok((frames, copied)) if frames >= WAL_RESTART_FRAMES && copied < frames => {
                restart_wanted.store(true, Ordering::Release);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(cause = %e, "WAL checkpoint failed"),
        }
        stats.checkpoints.fetch_add(1, Ordering::Relaxed);
    }
}

/// How the writer batches.
struct Limits {
    /// Most operations in one transaction.
    max_batch: usize,
    /// The longest lazy writes wait for a commit to ride on.
    lazy_within: Duration,
}

fn writer_loop(
    conn: Arc<Mutex<Connection>>,
    rx: mpsc::Receiver<Group>,
    listener: Arc<Listener>,
    stats: Arc<CommitStats>,
    restart_wanted: Arc<AtomicBool>,
    limits: Limits,
) {
    let Limits {
        max_batch,
        lazy_within,
    } = limits;
    while let Ok(first) = rx.recv() {
        if restart_wanted.swap(false, Ordering::AcqRel) {
            // No write transaction is open: nothing blocks the RESTART but
            // a reader of an older snapshot (queries are short).
            if let Err(e) = conn
                .lock()
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
            {
                tracing::warn!(cause = %e, "WAL restart checkpoint failed");
            }
            stats.restarts.fetch_add(1, Ordering::Relaxed);
        }
        let mut groups = vec![first];
        let mut n = groups[0].ops.len();
        // Only lazy writes so far: wait (a little) for one that needs a
        // commit, and ride on it.
        let mut lazy_only = groups[0].lazy;
        let lazy_until = Instant::now() + lazy_within;
        while n < max_batch {
            let next = match rx.try_recv() {
                Ok(g) => Ok(g),
                Err(mpsc::TryRecvError::Empty) if lazy_only => rx
                    .recv_timeout(lazy_until.saturating_duration_since(Instant::now()))
                    .map_err(|_| ()),
                Err(_) => Err(()),
            };
            match next {
                Ok(g) => {
                    n += g.ops.len();
                    lazy_only &= g.lazy;
                    groups.push(g);
                }
                Err(()) => break,
            }
        }
        let started = Instant::now();
        let mut conn = conn.lock();
        let mut results: Vec<Result<Vec<WriteOutcome>, Arc<StoreError>>> =
            Vec::with_capacity(groups.len());
        let mut events: Vec<Arc<TaskEvent>> = Vec::new();
        // Fast path: every group in one transaction. A group that fails
        // (rare: a constraint or I/O error) rolls the batch back, and then
        // each group is committed on its own so only the failing one is lost.
        let commit = (|| -> Result<(), StoreError> {
            let tx = conn.transaction()?;
            let mut outs = Vec::with_capacity(groups.len());
            let mut failed = false;
            let mut latest = Latest::of(&groups);
            for g in &groups {
                match apply_group(&tx, &g.ops, &mut events, latest.as_mut()) {
                    Ok(out) => outs.push(Ok(out)),
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                tx.commit()?;
                if let Some(l) = &latest {
                    stats.coalesced.fetch_add(l.skipped, Ordering::Relaxed);
                }
                results = outs;
                return Ok(());
            }
            tx.rollback()?;
            events.clear();
            for g in &groups {
                let tx = conn.transaction()?;
                let mut group_events = Vec::new();
                match apply_group(&tx, &g.ops, &mut group_events, None) {
                    Ok(out) => {
                        tx.commit()?;
                        results.push(Ok(out));
                        events.extend(group_events);
                    }
                    Err(e) => {
                        tx.rollback()?;
                        tracing::error!(cause = %e, "store write group rolled back");
                        results.push(Err(Arc::new(e)));
                    }
                }
            }
            Ok(())
        })();
        drop(conn);
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats.ops.fetch_add(n as u64, Ordering::Relaxed);
        stats
            .commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Some(s) = stats.sink.get() {
            s.store_commit(started.elapsed(), n);
        }
        match commit {
            Ok(()) => {
                // Publish, then answer: once a caller hears its write is
                // durable, a watcher that starts then sees its event.
                if !events.is_empty() {
                    if let Some(l) = listener.get() {
                        l.committed(events);
                    }
                }
                for (g, r) in groups.into_iter().zip(results) {
                    if let Some(done) = g.done {
                        let _ = done.send(r);
                    }
                }
            }
            Err(e) => {
                tracing::error!(cause = %e, "store commit failed; the writes of this group are lost");
                let e = Arc::new(e);
                for g in groups {
                    if let Some(done) = g.done {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// Write coalescing within one batch (one transaction): a task changed
/// several times in a batch has its row written once, with its latest
/// runtime state. Every log line and every event is still written and
/// published in order; only the superseded row images are skipped. The
/// batch commits or rolls back as a whole, so no reader or crash can see the
/// difference.
struct Latest {
    /// For each task written more than once in the batch: the position (in
    /// batch order) of its last write.
    last: HashMap<TaskId, usize>,
    /// Position of the op being applied.
    pos: usize,
    /// Row writes skipped so far.
    skipped: u64,
}

impl Latest {
    /// `None` when no task is written twice (nothing to coalesce).
    fn of(groups: &[Group]) -> Option<Latest> {
        let mut seen: HashMap<TaskId, (usize, u32)> = HashMap::new();
        let mut pos = 0;
        for g in groups {
            for op in &g.ops {
                if let Some(id) = op_task(op) {
                    let e = seen.entry(id).or_insert((pos, 0));
                    *e = (pos, e.1 + 1);
                }
                pos += 1;
            }
        }
        let last: HashMap<TaskId, usize> = seen
            .into_iter()
            .filter(|(_, (_, n))| *n > 1)
            .map(|(id, (p, _))| (id, p))
            .collect();
        (!last.is_empty()).then_some(Latest {
            last,
            pos: 0,
            skipped: 0,
        })
    }

    /// Whether the op at the current position is superseded by a later write
    /// of the same task in this batch.
    fn superseded(&self, id: TaskId) -> bool {
        self.last.get(&id).is_some_and(|&p| p > self.pos)
    }
}

fn op_task(op: &WriteOp) -> Option<TaskId> {
    match op {
        WriteOp::Insert { task, .. } | WriteOp::Update { task, .. } => Some(task.id),
        WriteOp::Log(_) | WriteOp::Quarantine { .. } => None,
    }
}

/// The `state` column of a quarantined row: no task state has this code, so
/// no active scan, filter or count selects it (the state it had is kept in
/// the `quarantine` table).
const QUARANTINED: i64 = 100;

fn apply_group(
    conn: &Connection,
    ops: &[WriteOp],
    events: &mut Vec<Arc<TaskEvent>>,
    mut latest: Option<&mut Latest>,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut out = Vec::with_capacity(ops.len());
    let now = now_micros();
    for op in ops {
        let superseded = match (&mut latest, op_task(op)) {
            (Some(l), Some(id)) => {
                let s = l.superseded(id) && matches!(op, WriteOp::Update { .. });
                l.pos += 1;
                l.skipped += u64::from(s);
                s
            }
            (Some(l), None) => {
                l.pos += 1;
                false
            }
            _ => false,
        };
        match op {
            WriteOp::Update { task, log, event } if superseded => {
                // A later write of this batch carries the row.
                log_and_publish(conn, task, log, *event, now, events)?;
                out.push(WriteOutcome::Done);
            }
            WriteOp::Insert {
                task,
                payload,
                log,
                event,
            } => {
                let spec = serde_json::to_string(&*task.spec).map_err(|e| corrupt(task.id, e))?;
                let rt = serde_json::to_string(&task.rt).map_err(|e| corrupt(task.id, e))?;
                let (sql, payload) = match payload {
                    Payload::Json(p) => (
                        "INSERT INTO tasks (id, created_at, name, task_type, state, seq, source, user_id, session_id, idempotency_key, parent_id, spec, rt, payload)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                         ON CONFLICT DO NOTHING",
                        rusqlite::types::Value::Text(p.to_string()),
                    ),
                    Payload::CopyOf(src) => (
                        "INSERT INTO tasks (id, created_at, name, task_type, state, seq, source, user_id, session_id, idempotency_key, parent_id, spec, rt, payload)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,
                                 COALESCE((SELECT payload FROM tasks WHERE id = ?14), '{}'))
                         ON CONFLICT DO NOTHING",
                        rusqlite::types::Value::Blob(src.as_bytes().to_vec()),
                    ),
                };
                let mut st = conn.prepare_cached(sql)?;
                let n = st.execute(params![
                    task.id.as_bytes(),
                    task.created_at,
                    task.spec.name,
                    task.spec.task_type.code(),
                    task.rt.state.code(),
                    task.rt.seq as i64,
                    task.rt.source.code(),
                    task.spec.user_id,
                    task.spec.session_id,
                    task.spec.idempotency_key,
                    task.spec.parent_id.map(|p| p.as_bytes().to_vec()),
                    spec,
                    rt,
                    payload,
                ])?;
                if n == 0 {
                    let existing: Option<Vec<u8>> = match &task.spec.idempotency_key {
                        Some(k) => conn
                            .prepare_cached("SELECT id FROM tasks WHERE idempotency_key = ?1")?
                            .query_row([k], |r| r.get(0))
                            .optional()?,
                        None => None,
                    };
                    let id = existing
                        .and_then(|b| TaskId::from_slice(&b).ok())
                        .unwrap_or(task.id);
                    out.push(WriteOutcome::Existing(id));
                    continue;
                }
                log_and_publish(conn, task, log, *event, now, events)?;
                out.push(WriteOutcome::Done);
            }
            WriteOp::Update { task, log, event } => {
                let rt = serde_json::to_string(&task.rt).map_err(|e| corrupt(task.id, e))?;
                let n = conn
                    .prepare_cached(
                        "UPDATE tasks SET state = ?2, seq = ?3, source = ?4, rt = ?5 WHERE id = ?1",
                    )?
                    .execute(params![
                        task.id.as_bytes(),
                        task.rt.state.code(),
                        task.rt.seq as i64,
                        task.rt.source.code(),
                        rt
                    ])?;
                if n == 0 {
                    // No such row: the task's insert failed (the core
                    // withdraws such a task). Nothing of it is logged or
                    // published: no watcher hears of a task the store lacks.
                    out.push(WriteOutcome::Done);
                    continue;
                }
                log_and_publish(conn, task, log, *event, now, events)?;
                out.push(WriteOutcome::Done);
            }
            WriteOp::Log(lines) => {
                insert_logs(conn, lines)?;
                out.push(WriteOutcome::Done);
            }
            WriteOp::Quarantine { key, reason } => {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO quarantine (id, at, state, reason)
                     SELECT id, ?2, state, ?3 FROM tasks WHERE id = ?1",
                )?
                .execute(params![key, now, reason])?;
                conn.prepare_cached("UPDATE tasks SET state = ?2 WHERE id = ?1")?
                    .execute(params![key, QUARANTINED])?;
                out.push(WriteOutcome::Done);
            }
        }
    }
    Ok(out)
}

/// A task write's log lines, and its event queued for publication once the
/// commit is durable.
fn log_and_publish(
    conn: &Connection,
    task: &Task,
    log: &[LogEntry],
    event: Option<crate::domain::EventKind>,
    now: crate::domain::Micros,
    events: &mut Vec<Arc<TaskEvent>>,
) -> Result<(), StoreError> {
    insert_logs(conn, log)?;
    if let Some(kind) = event {
        events.push(Arc::new(TaskEvent {
            seq: task.rt.seq,
            kind,
            time: now,
            task: task.clone(),
        }));
    }
    Ok(())
}

fn corrupt(id: TaskId, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        reason: e.to_string(),
    }
}

fn insert_logs(conn: &Connection, lines: &[LogEntry]) -> Result<(), StoreError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut st = conn.prepare_cached(
        "INSERT INTO task_logs (task_id, time, source, level, attempt, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for l in lines {
        st.execute(params![
            l.task_id.as_bytes(),
            l.time,
            l.source.code(),
            l.level,
            l.attempt,
            l.message
        ])?;
    }
    Ok(())
}

const TASK_COLUMNS: &str = "id, created_at, spec, rt";

fn row_to_task(r: &Row<'_>) -> Result<Task, StoreError> {
    let idb: Vec<u8> = r.get(0)?;
    let spec: String = r.get(2)?;
    let rt: String = r.get(3)?;
    decode_task(&idb, r.get(1)?, &spec, &rt)
}

fn decode_task(idb: &[u8], created_at: i64, spec: &str, rt: &str) -> Result<Task, StoreError> {
    let id = TaskId::from_slice(idb).map_err(|e| StoreError::Corrupt {
        id: format!("{idb:?}"),
        reason: e.to_string(),
    })?;
    let spec: TaskSpec = serde_json::from_str(spec).map_err(|e| corrupt(id, e))?;
    let rt: TaskRuntime = serde_json::from_str(rt).map_err(|e| corrupt(id, e))?;
    Ok(Task {
        id,
        created_at,
        spec: Arc::new(spec),
        rt,
    })
}

/// Tasks counted by type, name and state, of the rows `filter` (a `WHERE`
/// clause, or empty for all) selects.
fn count_tasks(conn: &Connection, filter: &str) -> Result<Counts, StoreError> {
    let mut st = conn.prepare(&format!(
        "SELECT task_type, name, state, count(*) FROM tasks {filter} \
         GROUP BY task_type, name, state"
    ))?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let (Some(t), Some(s)) = (
            TaskType::from_code(r.get(0)?),
            TaskState::from_code(r.get(2)?),
        ) else {
            continue;
        };
        out.push((t, r.get(1)?, s, r.get::<_, i64>(3)? as u64));
    }
    Ok(out)
}

/// Runs a query selecting `TASK_COLUMNS` and reads every row as a task.
fn query_tasks(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Task>, StoreError> {
    let mut st = conn.prepare(sql)?;
    let mut rows = st.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        match row_to_task(r) {
            Ok(t) => out.push(t),
            // One unreadable row must not hide every other: it is left out
            // of lists (start-up quarantines it; `get` reports it).
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(cause = %e, "a stored row cannot be read; left out")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Builds the WHERE clause of a filter; returns the clause and its values.
fn filter_sql(f: &TaskFilter) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut clauses: Vec<String> = Vec::new();
    let mut vals: Vec<Value> = Vec::new();
    let mut push_in = |col: &str, items: Vec<Value>, clauses: &mut Vec<String>| {
        if items.is_empty() {
            return;
        }
        let start = vals.len();
        let ph: Vec<String> = (0..items.len())
            .map(|i| format!("?{}", start + i + 1))
            .collect();
        vals.extend(items);
        clauses.push(format!("{col} IN ({})", ph.join(", ")));
    };
    if let Some(u) = &f.user_id {
        push_in("user_id", vec![Value::Text(u.clone())], &mut clauses);
    }
    if let Some(s) = &f.session_id {
        push_in("session_id", vec![Value::Text(s.clone())], &mut clauses);
    }
    push_in(
        "id",
        f.task_ids
            .iter()
            .map(|i| Value::Blob(i.as_bytes().to_vec()))
            .collect(),
        &mut clauses,
    );
    push_in(
        "name",
        f.names.iter().map(|n| Value::Text(n.clone())).collect(),
        &mut clauses,
    );
    push_in(
        "task_type",
        f.task_types
            .iter()
            .map(|t| Value::Integer(t.code()))
            .collect(),
        &mut clauses,
    );
    push_in(
        "state",
        f.states.iter().map(|s| Value::Integer(s.code())).collect(),
        &mut clauses,
    );
    push_in(
        "source",
        f.sources.iter().map(|s| Value::Integer(s.code())).collect(),
        &mut clauses,
    );
    (clauses.join(" AND "), vals)
}

#[async_trait]
impl Store for SqliteStore {
    fn submit(&self, ops: Vec<WriteOp>, done: Option<Completion>) {
        self.send(Group {
            ops,
            done,
            lazy: false,
        });
    }

    fn submit_lazy(&self, ops: Vec<WriteOp>) {
        self.send(Group {
            ops,
            done: None,
            lazy: true,
        });
    }

    fn set_listener(&self, listener: Arc<dyn CommitListener>) {
        let _ = self.listener.set(listener);
    }

    async fn flush(&self) -> Result<(), Arc<StoreError>> {
        let (tx, rx) = oneshot::channel();
        self.submit(Vec::new(), Some(tx));
        rx.await
            .map_err(|_| Arc::new(StoreError::Closed))?
            .map(|_| ())
    }

    async fn get(&self, id: TaskId) -> Result<Option<(Task, Arc<str>)>, StoreError> {
        let conn = self.reader().lock();
        let mut st = conn
            .prepare_cached("SELECT id, created_at, spec, rt, payload FROM tasks WHERE id = ?1")?;
        let mut rows = st.query([id.as_bytes()])?;
        match rows.next()? {
            Some(r) => {
                let t = row_to_task(r)?;
                let p: String = r.get(4)?;
                Ok(Some((t, Arc::from(p))))
            }
            None => Ok(None),
        }
    }

    async fn payload(&self, id: TaskId) -> Result<Option<Arc<str>>, StoreError> {
        let conn = self.reader().lock();
        let p: Option<String> = conn
            .prepare_cached("SELECT payload FROM tasks WHERE id = ?1")?
            .query_row([id.as_bytes()], |r| r.get(0))
            .optional()?;
        Ok(p.map(Arc::from))
    }

    async fn list(&self, q: ListQuery) -> Result<Vec<Task>, StoreError> {
        self.blocking(move |conn| {
            let (mut clause, mut vals) = filter_sql(&q.filter);
            if let Some(b) = q.before {
                if !clause.is_empty() {
                    clause.push_str(" AND ");
                }
                vals.push(rusqlite::types::Value::Blob(b.as_bytes().to_vec()));
                clause.push_str(&format!("id < ?{}", vals.len()));
            }
            let sql = format!(
                "SELECT {TASK_COLUMNS} FROM tasks {} {} ORDER BY id DESC LIMIT {}",
                if clause.is_empty() { "" } else { "WHERE" },
                clause,
                q.limit.max(1)
            );
            query_tasks(conn, &sql, rusqlite::params_from_iter(vals))
        })
        .await
    }

    async fn logs(
        &self,
        id: TaskId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        self.blocking(move |conn| {
            let mut st = conn.prepare_cached(
                "SELECT line, time, source, level, attempt, message FROM task_logs
                 WHERE task_id = ?1 AND line > ?2 ORDER BY line LIMIT ?3",
            )?;
            let rows = st.query_map(
                params![
                    id.as_bytes(),
                    after.min(i64::MAX as u64) as i64,
                    limit as i64
                ],
                |r| {
                    Ok(LogEntry {
                        task_id: id,
                        line: r.get::<_, i64>(0)? as u64,
                        time: r.get(1)?,
                        source: LogSource::from_code(r.get(2)?),
                        level: r.get(3)?,
                        attempt: r.get(4)?,
                        message: r.get(5)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn load_active(&self) -> Result<Vec<Task>, StoreError> {
        self.blocking(|conn| {
            query_tasks(
                conn,
                &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE state IN (1, 2, 6)"),
                [],
            )
        })
        .await
    }

    async fn stream_active(
        &self,
        chunk: usize,
        tx: tokio::sync::mpsc::Sender<Vec<Task>>,
    ) -> Result<(), StoreError> {
        let chunk = chunk.max(1);
        let bad = self
            .blocking(move |conn| {
                // This thread steps SQLite; a second one decodes the JSON columns
                // (the larger cost) and hands the tasks on.
                type Raw = (Vec<u8>, i64, String, String);
                let (raw_tx, raw_rx) = mpsc::sync_channel::<Vec<Raw>>(2);
                std::thread::scope(|scope| {
                    let decoder = scope.spawn(move || -> Result<Vec<WriteOp>, StoreError> {
                        let mut bad = Vec::new();
                        for rows in raw_rx {
                            let mut tasks = Vec::with_capacity(rows.len());
                            for (id, created_at, spec, rt) in rows {
                                match decode_task(&id, created_at, &spec, &rt) {
                                    Ok(t) => tasks.push(t),
                                    Err(e) => {
                                        tracing::error!(
                                            cause = %e,
                                            "a stored task cannot be read back: quarantined \
                                             (it stays in the file; GetTaskStatus reports it)"
                                        );
                                        bad.push(WriteOp::Quarantine {
                                            key: id,
                                            reason: crate::domain::text::cut(&e.to_string(), 1024),
                                        });
                                    }
                                }
                            }
                            if tx.blocking_send(tasks).is_err() {
                                break;
                            }
                        }
                        Ok(bad)
                    });
                    let read = (|| -> Result<(), StoreError> {
                        let mut st = conn.prepare(&format!(
                            "SELECT {TASK_COLUMNS} FROM tasks WHERE state IN (1, 2, 6)"
                        ))?;
                        let mut rows = st.query([])?;
                        let mut buf = Vec::with_capacity(chunk);
                        while let Some(r) = rows.next()? {
                            buf.push((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?));
                            if buf.len() == chunk {
                                let full = std::mem::replace(&mut buf, Vec::with_capacity(chunk));
                                if raw_tx.send(full).is_err() {
                                    return Ok(());
                                }
                            }
                        }
                        if !buf.is_empty() {
                            let _ = raw_tx.send(buf);
                        }
                        Ok(())
                    })();
                    drop(raw_tx);
                    let decoded = decoder.join().unwrap_or(Err(StoreError::Closed));
                    release_cache(conn);
                    read.and(decoded)
                })
            })
            .await?;
        if !bad.is_empty() {
            self.stats
                .quarantined
                .fetch_add(bad.len() as u64, Ordering::Relaxed);
            if let Some(sink) = self.stats.sink.get() {
                sink.store_quarantined(bad.len() as u64);
            }
            let (done, wait) = oneshot::channel();
            self.submit(bad, Some(done));
            wait.await
                .map_err(|_| StoreError::Closed)?
                .map_err(|e| StoreError::Open {
                    path: "quarantine".into(),
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }

    async fn final_counts(&self) -> Result<Counts, StoreError> {
        self.blocking(|conn| {
            let out = count_tasks(conn, "WHERE state NOT IN (1, 2, 6)");
            release_cache(conn);
            out
        })
        .await
    }

    async fn changed_since(
        &self,
        after: u64,
        up_to: u64,
        filter: TaskFilter,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        self.blocking(move |conn| {
            let (clause, mut vals) = filter_sql(&filter);
            vals.push(rusqlite::types::Value::Integer(after.min(i64::MAX as u64) as i64));
            vals.push(rusqlite::types::Value::Integer(up_to as i64));
            let n = vals.len();
            let sql = format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE {} seq > ?{} AND seq <= ?{} ORDER BY seq LIMIT {}",
                if clause.is_empty() { String::new() } else { format!("{clause} AND") },
                n - 1,
                n,
                limit.max(1)
            );
            query_tasks(conn, &sql, rusqlite::params_from_iter(vals))
        })
        .await
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        self.blocking(|conn| count_tasks(conn, "")).await
    }

    async fn max_seq(&self) -> Result<u64, StoreError> {
        self.blocking(|conn| {
            let s: Option<i64> = conn.query_row("SELECT max(seq) FROM tasks", [], |r| r.get(0))?;
            Ok(s.unwrap_or(0) as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, Source, WaitingReason};

    fn task(key: Option<&str>) -> Task {
        Task {
            id: TaskId::now_v7(),
            created_at: now_micros(),
            spec: Arc::new(TaskSpec::test_simple("t", key)),
            rt: TaskRuntime::new_pending(0, Source::Embedded, WaitingReason::Queued),
        }
    }

    async fn insert(s: &SqliteStore, t: &Task) -> WriteOutcome {
        let (tx, rx) = oneshot::channel();
        s.submit(
            vec![WriteOp::Insert {
                task: t.clone(),
                payload: Payload::Json(Arc::from("{}")),
                log: vec![LogEntry::system(t.id, 0, "scheduled")],
                event: Some(EventKind::Scheduled),
            }],
            Some(tx),
        );
        rx.await.unwrap().unwrap().remove(0)
    }

    #[tokio::test]
    async fn insert_get_update_and_idempotency() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(SqliteOptions {
            path: Some(dir.path().join("t.db")),
            ..Default::default()
        })
        .unwrap();
        let a = task(Some("k"));
        assert_eq!(insert(&s, &a).await, WriteOutcome::Done);
        let b = task(Some("k"));
        assert_eq!(insert(&s, &b).await, WriteOutcome::Existing(a.id));
        let mut a2 = a.clone();
        a2.rt.state = TaskState::Completed;
        a2.rt.seq = 7;
        s.submit(
            vec![WriteOp::Update {
                task: a2.clone(),
                log: vec![],
                event: None,
            }],
            None,
        );
        s.flush().await.unwrap();
        let (got, payload) = s.get(a.id).await.unwrap().unwrap();
        assert_eq!(got.rt.state, TaskState::Completed);
        assert_eq!(&*payload, "{}");
        assert!(s.get(b.id).await.unwrap().is_none());
        assert_eq!(s.max_seq().await.unwrap(), 7);
        assert!(s.load_active().await.unwrap().is_empty());
        let logs = s.logs(a.id, 0, 10).await.unwrap();
        assert_eq!(logs.len(), 1);
        let listed = s
            .list(ListQuery {
                filter: TaskFilter {
                    user_id: Some("u1".into()),
                    ..Default::default()
                },
                limit: 10,
                before: None,
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        let changed = s
            .changed_since(0, 100, TaskFilter::default(), 10)
            .await
            .unwrap();
        assert_eq!(changed.len(), 1);
    }

    /// An update of a task the store has no row for (its insert failed)
    /// changes nothing, logs nothing and publishes nothing.
    #[tokio::test]
    async fn an_update_of_a_missing_task_publishes_nothing() {
        let s = SqliteStore::open(SqliteOptions::default()).unwrap();
        let seen = Arc::new(Seen(parking_lot::Mutex::new(Vec::new())));
        s.set_listener(seen.clone());
        let mut ghost = task(None);
        ghost.rt.state = TaskState::Running;
        ghost.rt.seq = 3;
        let (tx, rx) = oneshot::channel();
        s.submit(
            vec![WriteOp::Update {
                task: ghost.clone(),
                log: vec![LogEntry::system(ghost.id, 1, "attempt 1 started")],
                event: Some(EventKind::Started),
            }],
            Some(tx),
        );
        assert_eq!(rx.await.unwrap().unwrap(), vec![WriteOutcome::Done]);
        assert!(seen.0.lock().is_empty());
        assert!(s.get(ghost.id).await.unwrap().is_none());
        assert!(s.logs(ghost.id, 0, 10).await.unwrap().is_empty());
        // A real task's update in the same way is published.
        let real = task(None);
        insert(&s, &real).await;
        let mut r2 = real.clone();
        r2.rt.state = TaskState::Running;
        r2.rt.seq = 4;
        s.submit(
            vec![WriteOp::Update {
                task: r2,
                log: vec![],
                event: Some(EventKind::Started),
            }],
            None,
        );
        s.flush().await.unwrap();
        let kinds: Vec<_> = seen.0.lock().iter().map(|e| (e.0, e.2)).collect();
        assert_eq!(
            kinds,
            vec![
                (real.id, EventKind::Scheduled),
                (real.id, EventKind::Started)
            ]
        );
    }

    /// Collects published events.
    struct Seen(parking_lot::Mutex<Vec<(TaskId, u64, EventKind, TaskState)>>);
    impl CommitListener for Seen {
        fn committed(&self, events: Vec<Arc<TaskEvent>>) {
            let mut v = self.0.lock();
            for e in events {
                v.push((e.task.id, e.seq, e.kind, e.task.rt.state));
            }
        }
    }

    #[tokio::test]
    async fn writes_of_one_task_in_a_batch_are_coalesced_but_logs_and_events_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let s = SqliteStore::open(SqliteOptions {
            path: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        let seen = Arc::new(Seen(Default::default()));
        s.set_listener(seen.clone());
        let a = task(None);
        let other = task(None);
        assert_eq!(insert(&s, &a).await, WriteOutcome::Done);
        assert_eq!(insert(&s, &other).await, WriteOutcome::Done);
        let step = |t: &Task, state, seq: u64, msg: &str| {
            let mut t = t.clone();
            t.rt.state = state;
            t.rt.seq = seq;
            WriteOp::Update {
                log: vec![LogEntry::system(t.id, 1, msg)],
                task: t,
                event: Some(EventKind::Updated),
            }
        };
        // One group: a's two updates around an update of another task, and
        // a log line; then a second group in the same batch finishes a.
        let (tx, rx) = oneshot::channel();
        s.submit(
            vec![
                step(&a, TaskState::Running, 10, "started"),
                step(&other, TaskState::Running, 11, "other started"),
                WriteOp::Log(vec![LogEntry::system(a.id, 1, "a line")]),
                step(&a, TaskState::Running, 12, "progress"),
            ],
            None,
        );
        s.submit(
            vec![step(&a, TaskState::Completed, 13, "completed")],
            Some(tx),
        );
        rx.await.unwrap().unwrap();
        let (got, _) = s.get(a.id).await.unwrap().unwrap();
        assert_eq!((got.rt.state, got.rt.seq), (TaskState::Completed, 13));
        let (o, _) = s.get(other.id).await.unwrap().unwrap();
        assert_eq!((o.rt.state, o.rt.seq), (TaskState::Running, 11));
        let lines = crate::store::log_messages(&*s, a.id).await;
        assert_eq!(
            lines,
            ["scheduled", "started", "a line", "progress", "completed"]
        );
        // The listener hears of a commit just after its callers do.
        let updates = || -> Vec<(u64, TaskState)> {
            seen.0
                .lock()
                .iter()
                .filter(|e| e.0 == a.id && e.2 == EventKind::Updated)
                .map(|e| (e.1, e.3))
                .collect()
        };
        for _ in 0..100 {
            if updates().len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ev = updates();
        assert_eq!(
            ev,
            [
                (10, TaskState::Running),
                (12, TaskState::Running),
                (13, TaskState::Completed)
            ]
        );
        // The first group alone supersedes a's first update; if both groups
        // shared a batch (the writer was busy), the second too.
        let skipped = s.stats.coalesced.load(Ordering::Relaxed);
        assert!((1..=2).contains(&skipped), "{skipped}");
        // And what was committed survives a reopen.
        s.close();
        drop(s);
        let s = SqliteStore::open(SqliteOptions {
            path: Some(path),
            ..Default::default()
        })
        .unwrap();
        let (got, _) = s.get(a.id).await.unwrap().unwrap();
        assert_eq!((got.rt.state, got.rt.seq), (TaskState::Completed, 13));
    }

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

    fn update(t: &Task, state: TaskState, seq: u64) -> WriteOp {
        let mut t = t.clone();
        t.rt.state = state;
        t.rt.seq = seq;
        let log = vec![LogEntry::system(t.id, 1, format!("seq {seq}"))];
        WriteOp::Update {
            task: t,
            log,
            event: Some(EventKind::Updated),
        }
    }

    /// A lazy write does not start a commit: it rides on the next write
    /// that does, in submission order, in the same transaction.
    #[tokio::test]
    async fn a_lazy_write_rides_on_the_next_commit() {
        let s = SqliteStore::open(SqliteOptions {
            lazy_within: Duration::from_secs(30),
            ..Default::default()
        })
        .unwrap();
        let a = task(None);
        insert(&s, &a).await;
        let commits = s.stats.commits.load(Ordering::Relaxed);
        s.submit_lazy(vec![update(&a, TaskState::Running, 5)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(s.stats.commits.load(Ordering::Relaxed), commits);
        assert_eq!(
            s.get(a.id).await.unwrap().unwrap().0.rt.state,
            TaskState::Pending
        );
        // An eager write after it: one commit holds both, the later wins.
        let (tx, rx) = oneshot::channel();
        s.submit(vec![update(&a, TaskState::Completed, 6)], Some(tx));
        rx.await.unwrap().unwrap();
        assert_eq!(s.stats.commits.load(Ordering::Relaxed), commits + 1);
        let (got, _) = s.get(a.id).await.unwrap().unwrap();
        assert_eq!((got.rt.state, got.rt.seq), (TaskState::Completed, 6));
        let logs = crate::store::log_messages(&*s, a.id).await;
        assert_eq!(logs, ["scheduled", "seq 5", "seq 6"]);
    }

    /// With nothing to ride on, a lazy write is committed on its own once
    /// `lazy_within` has passed, and no sooner.
    #[tokio::test]
    async fn a_lazy_write_alone_commits_within_its_bound() {
        let within = Duration::from_millis(200);
        let s = SqliteStore::open(SqliteOptions {
            lazy_within: within,
            ..Default::default()
        })
        .unwrap();
        let a = task(None);
        insert(&s, &a).await;
        let t0 = Instant::now();
        s.submit_lazy(vec![update(&a, TaskState::Running, 5)]);
        loop {
            if s.get(a.id).await.unwrap().unwrap().0.rt.state == TaskState::Running {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "never committed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(t0.elapsed() >= within, "committed after {:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn memory_mode_works() {
        let s = SqliteStore::open(SqliteOptions::default()).unwrap();
        let a = task(None);
        assert_eq!(insert(&s, &a).await, WriteOutcome::Done);
        assert_eq!(s.load_active().await.unwrap().len(), 1);
        assert_eq!(s.counts().await.unwrap()[0].3, 1);
    }
}
