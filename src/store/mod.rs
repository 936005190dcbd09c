//! Durable storage of tasks and their logs.
//!
//! Owns persistence only: it applies ordered writes, commits them in groups
//! (one transaction and one fsync for many callers) and then tells a
//! [`CommitListener`] which events became durable. It makes no scheduling
//! decision. The embedded default is [`sqlite::SqliteStore`];
//! [`postgres::PgStore`] implements the same trait for several replicas over
//! one PostgreSQL database.

pub(crate) mod batch;
#[cfg(test)]
pub(crate) mod contract;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::domain::{
    EventKind, LogEntry, Micros, Payload, Source, Task, TaskEvent, TaskFilter, TaskId, TaskState,
    TaskType,
};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no.
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// PostgreSQL said no.
    #[error("postgres: {0}")]
    Pg(#[from] tokio_postgres::Error),
    /// The database cannot be reached now; writes are kept and retried.
    #[error("the store cannot commit now: {0}")]
    Unavailable(String),
    /// The disk of the store is full: what the store has is kept and
    /// retried until space returns; new writes are refused meanwhile.
    #[error("the server's disk is full: writes are refused until space returns ({0})")]
    Full(String),
    /// Another replica took over: this one's term is over and it may not
    /// write.
    #[error("this replica no longer leads (its term {term} is over): another replica took over")]
    Fenced {
        /// The term that was lost.
        term: i64,
    },
    /// A stored row could not be read back.
    #[error("corrupt row for task {id}: {reason}")]
    Corrupt {
        /// The task.
        id: String,
        /// Why.
        reason: String,
    },
    /// The writer stopped (shutdown or a fatal error).
    #[error("the store is closed")]
    Closed,
    /// Opening the store failed.
    #[error("cannot open the store at {path}: {reason}")]
    Open {
        /// Path.
        path: String,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    /// Whether it says the database cannot be reached now (a connection
    /// lost, a server restarting), rather than that a request was wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Closed => true,
            StoreError::Pg(e) => match e.code() {
                None => true,
                Some(c) => {
                    let c = c.code();
                    c.starts_with("08") || c.starts_with("57P") || c == "53300"
                }
            },
            _ => false,
        }
    }
}

/// The longest a write submitted with [`Store::submit_lazy`] waits for a
/// commit to ride on.
pub const LAZY_COMMIT_WITHIN: Duration = Duration::from_millis(10);

/// One write, applied in submission order.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Insert a new task. If its idempotency key exists already, nothing is
    /// written and the outcome is [`WriteOutcome::Existing`].
    Insert {
        /// The task.
        task: Task,
        /// Its payload.
        payload: Payload,
        /// Log lines to append if inserted.
        log: Vec<LogEntry>,
        /// Event to publish once durable.
        event: Option<EventKind>,
    },
    /// Replace the mutable part of an existing task.
    Update {
        /// The task after the change.
        task: Task,
        /// Log lines to append.
        log: Vec<LogEntry>,
        /// Event to publish once durable.
        event: Option<EventKind>,
    },
    /// Append log lines.
    Log(Vec<LogEntry>),
    /// Remove ended tasks and their log lines (retention). The core's
    /// sweeper lists them with [`Store::due_for_removal`] or
    /// [`Store::oldest_ended`], a workflow's steps with it.
    Remove(Vec<TaskId>),
    /// Free an idempotency key whose window has passed
    /// (`TaskOptions.idempotency_ttl`, a THROTTLE period): the row of task
    /// `id` keeps its history but no longer holds `key`, so an insert
    /// after it in the same group may take the key. Nothing happens when
    /// the row no longer holds that key.
    ReleaseKey {
        /// The task that held the key.
        id: TaskId,
        /// The key.
        key: Box<str>,
    },
    /// Set aside a stored row that cannot be read back (see
    /// [`Store::stream_active`]): it leaves every active scan, its reason is
    /// kept, and reading it answers [`StoreError::Corrupt`].
    Quarantine {
        /// The row's key as stored (normally a task id's 16 bytes).
        key: Vec<u8>,
        /// Why it cannot be read.
        reason: String,
    },
}

/// What one write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written.
    Done,
    /// The idempotency key belongs to this existing task.
    Existing(TaskId),
}

/// Receives the events of every committed group, in commit order.
pub trait CommitListener: Send + Sync {
    /// Called on the writer after each commit with the events that became
    /// durable. Must not block.
    fn committed(&self, events: Vec<Arc<TaskEvent>>);
}

/// Where to send the outcome of a submitted group.
pub type Completion = oneshot::Sender<Result<Vec<WriteOutcome>, Arc<StoreError>>>;

/// Counts of tasks per type, name and state.
pub type Counts = Vec<(TaskType, String, TaskState, u64)>;

/// An ended task listed for removal, with what its counts need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The task.
    pub id: TaskId,
    /// Its type.
    pub task_type: TaskType,
    /// Its name.
    pub name: String,
    /// Its final state.
    pub state: TaskState,
    /// The engine that ran it.
    pub source: Source,
    /// Its BullMQ queue, when it ran on BullMQ (the job goes too).
    pub queue: Option<String>,
}

/// Which field a page of a filter walks its index of once per value
/// (see the stores' `list_sql`): a field of several values whose rows
/// would otherwise all be read and sorted to find the newest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Split {
    /// One walk: a single-valued field drives (or ids, looked up by key).
    One,
    /// One walk per name.
    Names(Vec<String>),
    /// One walk per code of a small-integer column.
    Codes(&'static str, Vec<i64>),
}

/// The most names a page walks one by one; past it, the rows of every
/// name are read and sorted (SQLite allows 500 terms in a compound query).
pub(crate) const MAX_SPLIT_NAMES: usize = 64;

impl Split {
    /// The field that drives a page of `f`: ids, then the owner, then
    /// names, sources, types and states, the likely most selective first.
    /// A single value needs one walk; several need one each.
    pub(crate) fn of(f: &TaskFilter) -> Split {
        if !f.task_ids.is_empty()
            || f.user_id.is_some()
            || f.session_id.is_some()
            || f.schedule_id.is_some()
            || f.error_kind.is_some()
        {
            return Split::One;
        }
        let codes = |col, v: Vec<i64>| match v.len() {
            0 | 1 => None,
            _ => Some(Split::Codes(col, v)),
        };
        match f.names.len() {
            0 => {}
            1 => return Split::One,
            n if n <= MAX_SPLIT_NAMES => return Split::Names(f.names.clone()),
            _ => return Split::One,
        }
        for (col, v) in [
            (
                "source",
                f.sources.iter().map(|s| s.code()).collect::<Vec<_>>(),
            ),
            ("task_type", f.task_types.iter().map(|t| t.code()).collect()),
            ("state", f.states.iter().map(|s| s.code()).collect()),
        ] {
            if v.len() == 1 {
                return Split::One;
            }
            if let Some(s) = codes(col, v) {
                return s;
            }
        }
        Split::One
    }
}

/// The SQL of a page of tasks, newest first, for both stores: the
/// `columns` of the rows whose filter and cursor `clauses` (already bound)
/// hold, at most `limit`. A split page ([`Split::of`]) is a `UNION ALL` of
/// one capped walk per value, each as `wrap` makes it a term of the union;
/// `bind` binds a name and returns its placeholder.
pub(crate) fn page_sql(
    filter: &TaskFilter,
    columns: &str,
    clauses: &[String],
    limit: usize,
    mut bind: impl FnMut(String) -> String,
    wrap: impl Fn(String) -> String,
) -> String {
    let page = |extra: Option<String>| {
        let w: Vec<&str> = clauses
            .iter()
            .map(String::as_str)
            .chain(extra.as_deref())
            .collect();
        format!(
            "SELECT {columns} FROM tasks {} ORDER BY id DESC LIMIT {limit}",
            if w.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", w.join(" AND "))
            }
        )
    };
    let walks: Vec<String> = match Split::of(filter) {
        Split::One => return page(None),
        Split::Names(names) => names
            .into_iter()
            .map(|n| format!("name = {}", bind(n)))
            .collect(),
        Split::Codes(col, codes) => codes.iter().map(|c| format!("{col} = {c}")).collect(),
    };
    let parts: Vec<String> = walks.into_iter().map(|w| wrap(page(Some(w)))).collect();
    format!(
        "{} ORDER BY id DESC LIMIT {limit}",
        parts.join(" UNION ALL ")
    )
}

/// A page of tasks.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Filter.
    pub filter: TaskFilter,
    /// Page size.
    pub limit: usize,
    /// Continue after (older than) this id.
    pub before: Option<TaskId>,
}

/// Durable storage for tasks.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Queues writes, applied in order after every earlier submission.
    /// `done`, if given, receives the outcomes once they are durable.
    fn submit(&self, ops: Vec<WriteOp>, done: Option<Completion>);
    /// Queues writes that need not be durable soon (facts that can be
    /// rebuilt after a crash, such as "the engine has the job"). They are
    /// applied in order with every other submission, but do not start a
    /// commit on their own: they ride on the next commit, or are committed
    /// after at most [`LAZY_COMMIT_WITHIN`]. Their events are published
    /// when they commit. The default commits them like [`Store::submit`].
    fn submit_lazy(&self, ops: Vec<WriteOp>) {
        self.submit(ops, None)
    }
    /// Whether writes commit now. A store that cannot reach its database
    /// ([`StoreError::Unavailable`]) or whose disk is full
    /// ([`StoreError::Full`]) keeps the writes it has and retries them; new
    /// work should be refused rather than pile up. The default is always
    /// writable.
    fn writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Installs the listener told of every commit's events.
    fn set_listener(&self, listener: Arc<dyn CommitListener>);
    /// Resolves once everything submitted before is durable.
    async fn flush(&self) -> Result<(), Arc<StoreError>>;
    /// One task, with its payload.
    async fn get(&self, id: TaskId) -> Result<Option<(Task, Arc<str>)>, StoreError>;
    /// A task's payload.
    async fn payload(&self, id: TaskId) -> Result<Option<Arc<str>>, StoreError>;
    /// Tasks matching a filter, newest first.
    async fn list(&self, q: ListQuery) -> Result<Vec<Task>, StoreError>;
    /// A task's log lines after `after`, oldest first.
    async fn logs(&self, id: TaskId, after: u64, limit: usize)
        -> Result<Vec<LogEntry>, StoreError>;
    /// Every task not in a final state (for start-up).
    async fn load_active(&self) -> Result<Vec<Task>, StoreError>;
    /// Every task not in a final state, sent to `tx` in chunks of about
    /// `chunk` tasks, so start-up can place one chunk while the next is
    /// read. A row that cannot be decoded does not stop it: the row is
    /// quarantined ([`WriteOp::Quarantine`]), logged and counted, and the
    /// scan goes on. The default sends [`Store::load_active`] as one chunk.
    async fn stream_active(
        &self,
        chunk: usize,
        tx: tokio::sync::mpsc::Sender<Vec<Task>>,
    ) -> Result<(), StoreError> {
        let _ = chunk;
        let all = self.load_active().await?;
        let _ = tx.send(all).await;
        Ok(())
    }
    /// Task counts per type, name and final state (start-up counts the
    /// active tasks as it loads them).
    async fn final_counts(&self) -> Result<Counts, StoreError> {
        Ok(self
            .counts()
            .await?
            .into_iter()
            .filter(|c| c.2.is_final())
            .collect())
    }
    /// Tasks whose last event has `after < seq <= up_to`, in sequence order.
    async fn changed_since(
        &self,
        after: u64,
        up_to: u64,
        filter: TaskFilter,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError>;
    /// Task counts per type, name and state.
    async fn counts(&self) -> Result<Counts, StoreError>;
    /// The largest sequence number stored.
    async fn max_seq(&self) -> Result<u64, StoreError>;
    /// Up to about `limit` ended tasks whose removal time (`purge_at`) is
    /// at or before `now`, oldest first, each followed by its workflow
    /// steps that have ended (they go with it).
    async fn due_for_removal(&self, now: Micros, limit: usize) -> Result<Vec<Ended>, StoreError>;
    /// The `limit` tasks of `name` that ended first in `state` (count caps),
    /// each followed by its workflow steps that have ended.
    async fn oldest_ended(
        &self,
        state: TaskState,
        name: &str,
        limit: usize,
    ) -> Result<Vec<Ended>, StoreError>;
}

/// A task's log lines after `after`, at most `limit`, oldest first: its
/// derived first line ([`Task::derived_first_line`]) when `after` is below
/// it, then the lines the store holds. Every reader of a log goes through
/// here ([`Store::logs`] alone misses the derived line).
pub async fn task_logs(
    store: &dyn Store,
    task: &Task,
    after: u64,
    limit: usize,
) -> Result<Vec<LogEntry>, StoreError> {
    match task.derived_first_line() {
        Some(first) if after < first.line && limit > 0 => {
            let mut lines = vec![first];
            if limit > 1 {
                lines.extend(
                    store
                        .logs(task.id, LogEntry::DERIVED_LINE, limit - 1)
                        .await?,
                );
            }
            Ok(lines)
        }
        _ => store.logs(task.id, after, limit).await,
    }
}

/// The messages of a task's first log lines (tests).
#[cfg(test)]
pub async fn log_messages(store: &dyn Store, id: TaskId) -> Vec<String> {
    let (task, _) = store.get(id).await.unwrap().expect("the task is stored");
    task_logs(store, &task, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .collect()
}
