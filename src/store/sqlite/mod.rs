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
    page_sql, CommitListener, Completion, Counts, Ended, ListQuery, Store, StoreError, WriteOp,
    WriteOutcome, LAZY_COMMIT_WITHIN,
};
use crate::domain::retention::RetentionPolicy;
use crate::domain::{
    now_micros, LogEntry, LogSource, Micros, Payload, Task, TaskEvent, TaskFilter, TaskId,
    TaskRuntime, TaskSpec, TaskState, TaskType,
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
    /// When ended tasks may be removed: each ended row is stamped with it.
    pub retention: Arc<RetentionPolicy>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            path: None,
            synchronous: Synchronous::Full,
            max_batch: 4096,
            readers: 4,
            lazy_within: LAZY_COMMIT_WITHIN,
            retention: Arc::new(RetentionPolicy::default()),
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
    /// WAL restarts the writer left for later because a reader of an older
    /// snapshot (a backup) still needed the log.
    pub restarts_deferred: std::sync::atomic::AtomicU64,
    /// Rows set aside at start-up because they could not be read back.
    pub quarantined: std::sync::atomic::AtomicU64,
    /// Commits the disk refused (full, failing writes) and that were tried
    /// again.
    pub retries: std::sync::atomic::AtomicU64,
    /// Told of each commit's latency and size, once set (metrics).
    pub sink: OnceLock<Arc<dyn crate::telemetry::MetricsSink>>,
}

struct Group {
    ops: Vec<WriteOp>,
    /// The JSON columns of its row writes, one per op, encoded by the
    /// submitting thread: the writer thread, which every write waits for,
    /// only binds them.
    enc: Vec<Encoded>,
    done: Option<Completion>,
    /// Submitted with [`Store::submit_lazy`]: does not start a commit.
    lazy: bool,
}

/// An op's JSON columns, encoded before the writer takes it.
enum Encoded {
    /// Nothing to encode, or it could not be (the writer then encodes it
    /// and reports why).
    None,
    /// An insert's `spec` and `rt`.
    Insert(String, String),
    /// An update's `rt`.
    Update(String),
}

impl Encoded {
    fn all(ops: &[WriteOp]) -> Vec<Encoded> {
        ops.iter()
            .map(|op| match op {
                WriteOp::Insert { task, .. } => match (
                    serde_json::to_string(&*task.spec),
                    serde_json::to_string(&task.rt),
                ) {
                    (Ok(spec), Ok(rt)) => Encoded::Insert(spec, rt),
                    _ => Encoded::None,
                },
                WriteOp::Update { task, .. } => match serde_json::to_string(&task.rt) {
                    Ok(rt) => Encoded::Update(rt),
                    Err(_) => Encoded::None,
                },
                _ => Encoded::None,
            })
            .collect()
    }
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
    /// Set by the checkpointer when the WAL should start over (tests set
    /// it too).
    #[cfg_attr(not(test), allow(dead_code))]
    restart_wanted: Arc<AtomicBool>,
    /// Whether the writer can commit (the disk may be full).
    health: Arc<Health>,
    /// Commit statistics.
    pub stats: Arc<CommitStats>,
}

mod backup;
mod checkpoint;
mod disk;
mod rows;
mod schema;
pub mod side;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_disk;
mod writer;

pub use backup::{backup, BackupError, BackupReport};
use checkpoint::*;
use disk::*;
use rows::*;
use schema::*;
use writer::*;

/// The writer's page cache. Its writes are appends (UUIDv7 keys, rising
/// `seq` and rowids) and updates of recent rows, so the pages it touches are
/// few: 16 MiB wrote as fast as 64 MiB in the bench, and with a million
/// pending tasks the other 48 MiB were RSS for nothing.
const WRITER_CACHE_KIB: i64 = 16 * 1024;
/// Each reader's page cache; see [`release_cache`] for the start-up scans.
const READER_CACHE_KIB: i64 = 16 * 1024;
/// How long a connection waits for a lock another holds. The writer's
/// WAL restart does not wait at all (`restart_wal`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
    conn.busy_timeout(BUSY_TIMEOUT)?;
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
                // With `synchronous = full`, the writer's WAL writes of a
                // commit reach the file as one (see `switchyard_wal_vfs`).
                let w = if opts.synchronous == Synchronous::Full && switchyard_wal_vfs::register() {
                    Connection::open_with_flags_and_vfs(
                        path,
                        OpenFlags::default(),
                        switchyard_wal_vfs::NAME,
                    )?
                } else {
                    Connection::open(path)?
                };
                // Space freed by retention goes back to the file system
                // (see `writer::give_back`). Takes effect on a new file only;
                // an older file reuses its free pages instead.
                w.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
                configure(&w, opts.synchronous, false)?;
                // The checkpointer thread copies the WAL back; the writer only
                // does it itself past this (a last resort, never reached
                // while the checkpointer runs).
                w.pragma_update(None, "wal_autocheckpoint", 4 * WAL_RESTART_FRAMES)?;
                upgrade(&w)?;
                w.execute_batch(SCHEMA)?;
                adopt_ended(&w, &opts.retention)?;
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
        let health = Arc::new(Health::default());
        let writer = {
            let health = health.clone();
            let listener = listener.clone();
            let stats = stats.clone();
            let restart = restart_wanted.clone();
            let limits = Limits {
                max_batch: opts.max_batch.max(1),
                lazy_within: opts.lazy_within,
                retention: opts.retention.clone(),
                lines: LogLines::open(&writer_conn.lock())?,
            };
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || {
                    writer_loop(writer_conn, rx, listener, stats, restart, health, limits)
                })
                .map_err(|e| open_err("writer thread", &e))?
        };
        let checkpointer = match &opts.path {
            Some(path) => Some(Checkpointer::start(
                path,
                opts.synchronous,
                stats.clone(),
                restart_wanted.clone(),
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
            restart_wanted,
            health,
            stats,
        }))
    }

    /// The server is stopping: from now on, a commit the disk refuses (a
    /// full disk) is given up after `CLOSE_PATIENCE` (30 s) instead of
    /// waited out, so a drain does not wait for space for ever. What is
    /// given up was not acknowledged; a restart rebuilds from the store.
    pub fn stopping(&self) {
        self.health.closing();
    }

    /// Stops the writer after it has committed everything queued (if the
    /// disk refuses, it gives up after `CLOSE_PATIENCE`).
    pub fn close(&self) {
        self.health.closing();
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
    c.busy_timeout(BUSY_TIMEOUT)?;
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

#[async_trait]
impl Store for SqliteStore {
    fn submit(&self, ops: Vec<WriteOp>, done: Option<Completion>) {
        self.send(Group {
            enc: Encoded::all(&ops),
            ops,
            done,
            lazy: false,
        });
    }

    fn submit_lazy(&self, ops: Vec<WriteOp>) {
        self.send(Group {
            enc: Encoded::all(&ops),
            ops,
            done: None,
            lazy: true,
        });
    }

    fn writable(&self) -> Result<(), StoreError> {
        self.health.writable()
    }

    fn set_listener(&self, listener: Arc<dyn CommitListener>) {
        let _ = self.listener.set(listener);
    }

    /// Resolves once everything submitted before is durable; while the
    /// disk refuses commits (full), fails at once with why instead of
    /// waiting for space, so no caller (a read that flushes first, a
    /// cancel) hangs on a full disk. The writes stay queued and commit once
    /// there is room.
    async fn flush(&self) -> Result<(), Arc<StoreError>> {
        let (tx, rx) = oneshot::channel();
        self.submit(Vec::new(), Some(tx));
        let mut state = self.health.subscribe();
        let blocked = async move {
            let b = state.wait_for(Option::is_some).await.map(|b| b.clone());
            match b {
                Ok(b) => b,
                // The store is gone: `rx` says so.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            done = rx => done
                .map_err(|_| Arc::new(StoreError::Closed))?
                .map(|_| ()),
            b = blocked => Err(Arc::new(b.map_or(StoreError::Closed, |b| b.error()))),
        }
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
            let (sql, vals) = list_sql(&q);
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
            counts_of(
                conn,
                "SELECT task_type, name, state, n FROM ended_counts WHERE n > 0",
            )
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

    async fn due_for_removal(&self, now: Micros, limit: usize) -> Result<Vec<Ended>, StoreError> {
        self.blocking(move |conn| {
            ended_with_steps(conn, &due_sql(), params![now, limit.max(1) as i64])
        })
        .await
    }

    async fn oldest_ended(
        &self,
        state: TaskState,
        name: &str,
        limit: usize,
    ) -> Result<Vec<Ended>, StoreError> {
        let name = name.to_string();
        self.blocking(move |conn| {
            ended_with_steps(conn, &oldest_sql(state), params![name, limit.max(1) as i64])
        })
        .await
    }
}
