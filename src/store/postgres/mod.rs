//! The PostgreSQL store: the same [`Store`] as SQLite, for several replicas
//! over one database.
//!
//! - **Writes** go to one writer task that owns one connection. It takes
//!   every group queued while the previous commit ran and commits them as
//!   one statement: the fence and one multi-row part (`unnest` of arrays)
//!   per kind, inserts, updates, log lines, in one implicit transaction,
//!   one round trip (see [`writer`]).
//! - **The fence**: once this replica leads ([`PgStore::set_fence`]), every
//!   write transaction first locks the partition's lease row and fails if
//!   its term has moved on, so a leader that was paused past its lease
//!   writes nothing after a standby took over; rows carry the term that
//!   wrote them. A fenced store refuses every later write.
//! - **Outages**: a batch that fails because the connection is gone is kept
//!   and retried, in order, on a new connection until it commits; meanwhile
//!   [`Store::writable`] says UNAVAILABLE, so new tasks are refused instead
//!   of piling up. Nothing accepted is dropped, and no write overtakes one
//!   queued before it.
//! - **Reads** use a small pool (deadpool-postgres).
//! - **Schema**: versioned migrations (refinery) applied at open, under a
//!   Postgres advisory lock so replicas starting together do not race, in
//!   the configured schema (`search_path`), so several deployments or tests
//!   share one database.

pub mod flow;
pub mod keys;
mod lease;
mod reads;
pub mod schedules;
mod side;
#[cfg(test)]
mod tests;
pub mod versions;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::NoTls;

pub use lease::{Leadership, Lease, LeaseRow, ReplicaRow};

use super::{
    CommitListener, Completion, Counts, ListQuery, Store, StoreError, WriteOp, LAZY_COMMIT_WITHIN,
};
use crate::domain::{LogEntry, Task, TaskFilter, TaskId};

mod embedded {
    refinery::embed_migrations!("src/store/postgres/migrations");
}

/// How long opening waits for a database that cannot be reached yet.
const OPEN_WITHIN: Duration = Duration::from_secs(30);

/// Options of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/db` (libpq's URL or key=value form).
    pub url: String,
    /// The schema holding the tables (created if missing).
    pub schema: String,
    /// Most operations in one transaction.
    pub max_batch: usize,
    /// Reader connections.
    pub readers: usize,
    /// The longest a lazy write waits for a commit to ride on.
    pub lazy_within: Duration,
    /// This replica's name in `application_name` and the replicas table.
    pub replica: String,
    /// When ended tasks may be removed: each ended row is stamped with it.
    pub retention: Arc<crate::domain::retention::RetentionPolicy>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            url: String::new(),
            schema: "switchyard".into(),
            max_batch: 4096,
            readers: 4,
            lazy_within: LAZY_COMMIT_WITHIN,
            replica: "switchyard".into(),
            retention: Default::default(),
        }
    }
}

/// Statistics of the commit path (for metrics).
#[derive(Debug, Default)]
pub struct PgStats {
    /// Commits done.
    pub commits: AtomicU64,
    /// Operations committed.
    pub ops: AtomicU64,
    /// Total commit time in microseconds.
    pub commit_micros: AtomicU64,
    /// Row writes skipped because a later write of the same task in the
    /// same batch superseded them (write coalescing).
    pub coalesced: AtomicU64,
    /// Batches retried after the connection was lost.
    pub retries: AtomicU64,
    /// Told of each commit's latency and size, once set (metrics).
    pub sink: OnceLock<Arc<dyn crate::telemetry::MetricsSink>>,
}

/// Who writes: the partition, its term and this replica's id, checked by
/// every write transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The partition (0 until partitioned ownership).
    pub partition: i32,
    /// The term this replica holds.
    pub term: i64,
    /// This replica's id.
    pub holder: String,
}

impl Fence {
    /// Fails `tx` unless this replica still holds the term (a deposed
    /// leader's transaction writes nothing).
    pub(crate) async fn check(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute(
            "SELECT switchyard_fence($1::int4, $2::int8, $3::text)",
            &[&self.partition, &self.term, &self.holder],
        )
        .await
        .map(drop)
    }
}

pub(crate) struct Group {
    ops: Vec<WriteOp>,
    done: Option<Completion>,
    lazy: bool,
}

/// What the writer and the store share.
pub(crate) struct Shared {
    listener: OnceLock<Arc<dyn CommitListener>>,
    stats: Arc<PgStats>,
    fence: OnceLock<Fence>,
    /// Set once a write found the term moved on; every later write fails.
    fenced: watch::Sender<Option<i64>>,
    /// False while the writer cannot commit (the database is unreachable).
    writable: AtomicBool,
    /// Why it cannot, while it cannot.
    unwritable_reason: Mutex<String>,
    /// Stamps each ended row with its removal time.
    retention: Arc<crate::domain::retention::RetentionPolicy>,
}

/// The PostgreSQL store.
pub struct PgStore {
    tx: Mutex<Option<mpsc::UnboundedSender<Group>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pool: deadpool_postgres::Pool,
    shared: Arc<Shared>,
    /// Commit statistics.
    pub stats: Arc<PgStats>,
    opts: PgOptions,
}

/// A connection configuration with the schema on the search path.
fn pg_config(opts: &PgOptions, role: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut cfg: tokio_postgres::Config = opts.url.parse().map_err(|e| StoreError::Open {
        path: redact(&opts.url),
        reason: format!("store.url: {e}"),
    })?;
    let mut options = format!("-c search_path={}", quote_ident(&opts.schema));
    if role == "writer" {
        // Every row the writer reads or changes is found by its primary key.
        // Its prepared statements soon run on a generic plan, made once; made
        // while the table was small (a new schema, before autovacuum's first
        // ANALYZE), that plan scans the whole table for every batch (hash
        // joins over a sequential scan), and keeps doing so as the table
        // grows: measured, four times the database's CPU per task end to end.
        // Without sequential scans the plans are index lookups whatever the
        // statistics say.
        options.push_str(" -c enable_seqscan=off");
    }
    cfg.options(options);
    cfg.application_name(format!("switchyard {} {role}", opts.replica));
    cfg.connect_timeout(Duration::from_secs(5));
    Ok(cfg)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(the configured store.url)".into(),
    }
}

/// A schema name as an SQL identifier.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Checks a schema name: letters, digits and `_`, 1 to 63 bytes.
pub fn check_schema(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("store.schema: must be 1 to 63 bytes".into());
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || s.as_bytes()[0].is_ascii_digit()
    {
        return Err(format!(
            "store.schema: {:?} must be letters, digits and '_', not starting with a digit",
            crate::domain::text::prefix(s, 64)
        ));
    }
    Ok(())
}

/// Connects one client and drives its connection on a task.
pub(crate) async fn connect(
    cfg: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(cause = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

impl PgStore {
    /// Connects, applies the migrations and starts the writer.
    pub async fn open(opts: PgOptions) -> Result<Arc<Self>, StoreError> {
        check_schema(&opts.schema).map_err(|reason| StoreError::Open {
            path: redact(&opts.url),
            reason,
        })?;
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: redact(&opts.url),
            reason: e.to_string(),
        };
        let cfg = pg_config(&opts, "writer")?;
        // A database that is restarting or overloaded is waited for (a
        // replica started with it should not give up); one that refuses us
        // (a wrong password, a bad migration) is not.
        let deadline = std::time::Instant::now() + OPEN_WITHIN;
        let client = loop {
            let tried = async {
                let mut c = connect(&cfg).await?;
                migrate(&mut c, &opts.schema).await?;
                adopt_ended(&mut c, &opts.retention).await?;
                Ok::<_, StoreError>(c)
            }
            .await;
            match tried {
                Ok(c) => break c,
                Err(e) if e.is_transient() && std::time::Instant::now() < deadline => {
                    tracing::warn!(cause = %e, "the store's database is not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(open_err(&e)),
            }
        };
        let read_cfg = pg_config(&opts, "reader")?;
        let mgr = deadpool_postgres::Manager::from_config(
            read_cfg,
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(mgr)
            .max_size(opts.readers.max(1))
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| open_err(&e))?;
        let stats = Arc::new(PgStats::default());
        let shared = Arc::new(Shared {
            listener: OnceLock::new(),
            stats: stats.clone(),
            fence: OnceLock::new(),
            fenced: watch::channel(None).0,
            writable: AtomicBool::new(true),
            unwritable_reason: Mutex::new(String::new()),
            retention: opts.retention.clone(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(writer::run(
            client,
            cfg,
            rx,
            shared.clone(),
            writer::Limits {
                max_batch: opts.max_batch.max(1),
                lazy_within: opts.lazy_within,
            },
        ));
        Ok(Arc::new(PgStore {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            pool,
            shared,
            stats,
            opts,
        }))
    }

    /// From now on every write transaction checks this fence first.
    /// Set once, when this replica becomes the leader, before the core
    /// writes anything.
    pub fn set_fence(&self, fence: Fence) {
        let _ = self.shared.fence.set(fence);
    }

    /// Resolves with the term that was lost once a write found this
    /// replica fenced (another replica leads).
    pub fn fenced(&self) -> impl std::future::Future<Output = i64> + Send + 'static {
        let mut rx = self.shared.fenced.subscribe();
        async move {
            loop {
                if let Some(t) = *rx.borrow_and_update() {
                    return t;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// The fence set by [`PgStore::set_fence`], if this replica leads.
    pub fn fence(&self) -> Option<Fence> {
        self.shared.fence.get().cloned()
    }

    /// The options it was opened with.
    pub fn options(&self) -> &PgOptions {
        &self.opts
    }

    /// A pooled reader connection.
    pub(crate) async fn reader(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("no database connection: {e}")))
    }

    /// Stops the writer after it has committed everything queued (or given
    /// up on it: a fenced or closed store).
    pub async fn close(&self) {
        self.tx.lock().take();
        let h = self.writer.lock().take();
        if let Some(h) = h {
            let _ = h.await;
        }
        self.pool.close();
    }

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
}

/// Applies the migrations under an advisory lock keyed by the schema.
async fn migrate(client: &mut tokio_postgres::Client, schema: &str) -> Result<(), StoreError> {
    let lock_key = format!("switchyard migrations {schema}");
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(schema)
        ))
        .await
        .or_else(|e| {
            // Two replicas creating it at once: one gets a unique violation.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    client
        .execute("SELECT pg_advisory_lock(hashtext($1))", &[&lock_key])
        .await?;
    let out = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(client)
        .await;
    client
        .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&lock_key])
        .await?;
    let report = out.map_err(|e| StoreError::Open {
        path: format!("schema {schema}"),
        reason: format!("migrations: {e}"),
    })?;
    for m in report.applied_migrations() {
        tracing::info!(schema, migration = %m, "applied a store migration");
    }
    Ok(())
}

/// Gives the ended rows of a database written before retention existed
/// their removal time, once (migration V3 leaves a row in
/// `retention_adopt`; the replica that deletes it does the work, in the
/// same transaction).
async fn adopt_ended(
    client: &mut tokio_postgres::Client,
    policy: &crate::domain::retention::RetentionPolicy,
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    if tx.execute("DELETE FROM retention_adopt", &[]).await? == 0 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut after = uuid::Uuid::nil();
    let mut n = 0usize;
    loop {
        let rows = tx
            .query(
                "SELECT id, created_at, spec, rt FROM tasks
                 WHERE state IN (3, 4, 5, 7) AND parent_id IS NULL AND id > $1
                 ORDER BY id LIMIT 10000",
                &[&after],
            )
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get(0)?;
        let (mut ids, mut at) = (Vec::new(), Vec::new());
        for r in &rows {
            let Ok(t) = reads::decode(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)
            else {
                continue;
            };
            if let Some(p) =
                t.rt.finished_at
                    .and_then(|f| policy.purge_at(&t.spec, t.rt.state, f))
            {
                ids.push(t.id);
                at.push(p);
            }
        }
        n += ids.len();
        tx.execute(
            "UPDATE tasks t SET purge_at = u.at
             FROM unnest($1::uuid[], $2::int8[]) AS u(id, at) WHERE t.id = u.id",
            &[&ids, &at],
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(
        tasks = n,
        took_ms = started.elapsed().as_millis() as u64,
        "ended tasks of an earlier version given their removal time"
    );
    Ok(())
}

#[async_trait]
impl Store for PgStore {
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
        let _ = self.shared.listener.set(listener);
    }

    fn writable(&self) -> Result<(), StoreError> {
        if let Some(t) = *self.shared.fenced.borrow() {
            return Err(StoreError::Fenced { term: t });
        }
        if self.shared.writable.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                self.shared.unwritable_reason.lock().clone(),
            ))
        }
    }

    async fn flush(&self) -> Result<(), Arc<StoreError>> {
        let (tx, rx) = oneshot::channel();
        self.submit(Vec::new(), Some(tx));
        rx.await
            .map_err(|_| Arc::new(StoreError::Closed))?
            .map(|_| ())
    }

    async fn get(&self, id: TaskId) -> Result<Option<(Task, Arc<str>)>, StoreError> {
        reads::get(self, id).await
    }

    async fn payload(&self, id: TaskId) -> Result<Option<Arc<str>>, StoreError> {
        reads::payload(self, id).await
    }

    async fn list(&self, q: ListQuery) -> Result<Vec<Task>, StoreError> {
        reads::list(self, q).await
    }

    async fn logs(
        &self,
        id: TaskId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        reads::logs(self, id, after, limit).await
    }

    async fn load_active(&self) -> Result<Vec<Task>, StoreError> {
        let (tx, mut rx) = mpsc::channel(4);
        let scan = self.stream_active(10_000, tx);
        let collect = async {
            let mut all = Vec::new();
            while let Some(mut c) = rx.recv().await {
                all.append(&mut c);
            }
            all
        };
        let (r, all) = tokio::join!(scan, collect);
        r.map(|_| all)
    }

    async fn stream_active(
        &self,
        chunk: usize,
        tx: mpsc::Sender<Vec<Task>>,
    ) -> Result<(), StoreError> {
        let bad = reads::stream_active(self, chunk, tx).await?;
        if !bad.is_empty() {
            if let Some(sink) = self.stats.sink.get() {
                sink.store_quarantined(bad.len() as u64);
            }
            let (done, wait) = oneshot::channel();
            self.submit(bad, Some(done));
            wait.await
                .map_err(|_| StoreError::Closed)?
                .map_err(|e| StoreError::Unavailable(format!("quarantine: {e}")))?;
        }
        Ok(())
    }

    async fn final_counts(&self) -> Result<Counts, StoreError> {
        reads::ended_counts(self).await
    }

    async fn changed_since(
        &self,
        after: u64,
        up_to: u64,
        filter: TaskFilter,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        reads::changed_since(self, after, up_to, filter, limit).await
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        reads::counts(self, "").await
    }

    async fn max_seq(&self) -> Result<u64, StoreError> {
        let c = self.reader().await?;
        let s: Option<i64> = c.query_one("SELECT max(seq) FROM tasks", &[]).await?.get(0);
        Ok(s.unwrap_or(0).max(0) as u64)
    }

    async fn due_for_removal(
        &self,
        now: crate::domain::Micros,
        limit: usize,
    ) -> Result<Vec<crate::store::Ended>, StoreError> {
        reads::ended_with_steps(self, &reads::due_sql(), &[&now, &(limit.max(1) as i64)]).await
    }

    async fn oldest_ended(
        &self,
        state: crate::domain::TaskState,
        name: &str,
        limit: usize,
    ) -> Result<Vec<crate::store::Ended>, StoreError> {
        reads::ended_with_steps(
            self,
            &reads::oldest_sql(state),
            &[&name, &(limit.max(1) as i64)],
        )
        .await
    }
}
