//! The scheduler core: the task state machine, per-name priority queues, the
//! immediate lane, worker slots and leases, timers (delays, backoff,
//! execution timeouts), cancellation and the event log.
//!
//! The core owns the in-memory state of every active task and is the only
//! writer of task state: every transition is queued to the store in the same
//! critical section that assigns its sequence number, so the store commits
//! transitions in sequence order and the event hub publishes them only once
//! durable. It knows nothing of gRPC; executors that run inside the process
//! (webhooks, workflows) consume tasks through the same worker interface as
//! remote workers.

pub mod events;
pub mod metrics;

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::domain::*;
use crate::store::{CommitListener, ListQuery, Payload, Store, StoreError, WriteOp, WriteOutcome};
use events::EventHub;
use metrics::{Counts, Summary, Throughput, Window};

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path, as in the proto (`options.attempts`).
    pub field: String,
    /// What is wrong.
    pub description: String,
}

/// Errors of the core; the API maps each to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A request field is invalid.
    #[error("invalid argument: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    InvalidArgument(Vec<FieldViolation>),
    /// No such task.
    #[error("task {0} not found")]
    NotFound(String),
    /// The task's state does not allow the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server is shutting down or the store is closed.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(Arc<StoreError>),
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        CoreError::Store(Arc::new(e))
    }
}

impl CoreError {
    /// An invalid-argument error for one field.
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        CoreError::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }
}

/// Tunables of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// How long a worker's leases last without a message from it.
    pub lease_ttl: Duration,
    /// How often workers should heartbeat.
    pub heartbeat_interval: Duration,
    /// How often a task may lose its worker before it fails.
    pub max_lease_losses: u32,
    /// Events kept for resuming watches.
    pub event_history: usize,
    /// Payload bytes kept in memory for pending tasks (the rest are read from
    /// the store at dispatch).
    pub payload_cache_bytes: usize,
    /// Execution timeout of tasks that set none.
    pub default_execution_timeout: Option<Duration>,
    /// Which tasks go to external engines.
    pub routes: Routes,
    /// Where the in-process executors report measurements the core does not
    /// see (webhook response codes); none when nothing exports metrics.
    pub metrics_sink: Option<Arc<dyn metrics::MetricsSink>>,
}

/// Which tasks an external engine runs instead of the embedded one. Routing
/// is decided from the task's spec and this configuration whenever a task is
/// queued (also after a restart).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// SIMPLE tasks whose queue (or, without one, name) is listed go to the
    /// BullMQ backend; `*` routes every SIMPLE task.
    pub bullmq_queues: Vec<String>,
    /// COMPLEX tasks whose workflow type is listed go to the Temporal
    /// backend; `*` routes every COMPLEX task.
    pub temporal_workflows: Vec<String>,
}

/// Whether a queue key belongs to an external engine's backend.
pub fn is_backend_key(key: &str) -> bool {
    key == BULLMQ_KEY || key == TEMPORAL_KEY
}

/// The internal queue key of the BullMQ backend.
pub const BULLMQ_KEY: &str = "#bullmq";
/// The internal queue key of the Temporal backend.
pub const TEMPORAL_KEY: &str = "#temporal";

impl Routes {
    fn listed(list: &[String], v: &str) -> bool {
        list.iter().any(|x| x == "*" || x == v)
    }

    /// The queue key and the engine of a task.
    pub fn route<'a>(&self, spec: &'a TaskSpec) -> (&'a str, Source) {
        match (&spec.task_type, &spec.target) {
            (TaskType::Simple, Target::Simple { queue }) => {
                let q = queue.as_deref().unwrap_or(&spec.name);
                if Self::listed(&self.bullmq_queues, q) {
                    (BULLMQ_KEY, Source::Bullmq)
                } else {
                    (&spec.name, Source::Embedded)
                }
            }
            (TaskType::Complex, Target::Complex { workflow_type, .. })
                if Self::listed(&self.temporal_workflows, workflow_type) =>
            {
                (TEMPORAL_KEY, Source::Temporal)
            }
            (TaskType::Integration, _) => ("#integration", Source::N8n),
            (TaskType::Complex, _) => ("#workflow", Source::Embedded),
            (TaskType::Simple, _) => (&spec.name, Source::Embedded),
        }
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            max_lease_losses: 5,
            event_history: 100_000,
            payload_cache_bytes: 256 << 20,
            default_execution_timeout: None,
            routes: Routes::default(),
            metrics_sink: None,
        }
    }
}

/// The queue key of tasks of a type that run on an in-process executor.
pub fn internal_key(t: TaskType) -> Option<&'static str> {
    match t {
        TaskType::Simple => None,
        TaskType::Complex => Some("#workflow"),
        TaskType::Integration => Some("#integration"),
    }
}

/// What a worker is pushed.
#[derive(Debug)]
pub enum Push {
    /// Run a task.
    Assign(Assignment),
    /// Stop a task.
    Cancel {
        /// The task.
        task_id: TaskId,
        /// The attempt.
        attempt: u32,
        /// Why.
        reason: String,
        /// `CancelTask.force`: the task is already CANCELLED; stop without
        /// cleaning up (Temporal: terminate).
        force: bool,
    },
    /// A message of the worker's was refused.
    Rejected {
        /// The task it named.
        task_id: String,
        /// A gRPC code name.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// The worker was dropped (lease expired or shutdown): close the stream.
    Close(String),
    /// A child task (workflow step) of a task this worker holds has finished.
    /// Only in-process executors receive it.
    ChildDone {
        /// The parent (workflow) task.
        parent: TaskId,
        /// The child task, now final.
        child: Task,
    },
    /// A signal was recorded for a task this worker holds (read it from the
    /// task's detail). Only in-process executors receive it.
    Signal {
        /// The task.
        task_id: TaskId,
        /// The signal name.
        name: String,
    },
}

/// A task handed to a worker.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The task as it is now (state RUNNING, this attempt).
    pub task: Task,
    /// Its payload, if cached; else read it from the store.
    pub payload: Option<Arc<str>>,
    /// When this attempt times out.
    pub deadline: Option<Micros>,
    /// The task was handed out before and what became of that try is not
    /// known (its engine was unreachable or busy, its worker was lost, or
    /// the server restarted). An engine that adds work by the task's id
    /// (BullMQ) may find that try's job there, already running or done,
    /// and must read its state rather than wait for its events.
    pub again: bool,
    /// The W3C traceparent of this attempt's `task.run` span, while tracing
    /// is on; see [`Assignment::traceparent`].
    pub run_traceparent: Option<String>,
}

impl Assignment {
    /// The trace context to hand to whatever runs this attempt: the
    /// `task.run` span's while tracing is on, else the one the task was
    /// scheduled with.
    pub fn traceparent(&self) -> Option<&str> {
        self.run_traceparent
            .as_deref()
            .or(self.task.spec.traceparent.as_deref())
    }
}

/// A worker as the core sees it.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// The id given at registration.
    pub id: String,
    /// The worker's own name.
    pub name: String,
    /// Task names (queue keys) it takes.
    pub keys: Vec<String>,
    /// Normal slots.
    pub slots: u32,
    /// Immediate slots.
    pub immediate_slots: u32,
    /// Tasks running on it.
    pub running: usize,
    /// Whether it runs inside the server.
    pub local: bool,
}

/// A registered worker's handle: its id and the channel of what it is pushed.
pub struct WorkerLink {
    /// The worker id.
    pub id: String,
    /// Pushes, in order.
    pub rx: mpsc::UnboundedReceiver<Push>,
}

/// A worker's report about a task.
#[derive(Debug, Clone)]
pub enum Report {
    /// Progress.
    Progress {
        /// 0..100.
        percent: f64,
        /// Message.
        message: String,
    },
    /// A log line.
    Log {
        /// Level.
        level: String,
        /// Text.
        message: String,
        /// Who wrote it. Set by [`Core::report`] from the reporter: a remote
        /// worker's lines are `Worker`, a backend's `Engine`, an embedded
        /// executor's `System`; callers pass `LogSource::Worker`.
        source: LogSource,
    },
    /// Success.
    Complete(serde_json::Value),
    /// Failure of this attempt.
    Fail {
        /// The error.
        error: TaskError,
        /// Overrides the backoff.
        retry_after: Option<Duration>,
    },
    /// The worker stopped the task after a cancel.
    CancelAck,
    /// Sets the engine's own id (BullMQ job id, n8n execution id, ...).
    ExternalId(String),
    /// The engine has the task, under `external_id`, and it waits there
    /// (PENDING for `waiting_reason`). Written lazily (it rides on the next
    /// commit): after a crash the backend is offered the task again, and
    /// finds the job it added.
    Forwarded {
        /// The engine's id of the task.
        external_id: String,
        /// Why it waits in the engine (queued, delayed).
        waiting_reason: WaitingReason,
    },
    /// An external engine holds the task: mirror its state (PENDING or
    /// RUNNING) while the backend keeps holding it.
    Mirror {
        /// PENDING (queued in the engine) or RUNNING.
        state: TaskState,
        /// Why it waits, when PENDING.
        waiting_reason: Option<WaitingReason>,
        /// Progress, if the engine reports it.
        progress: Option<f64>,
        /// The engine's attempt count, if it has one.
        attempt: Option<u32>,
        /// A log line (engine source), if any.
        message: Option<String>,
    },
    /// The backend could not reach its engine: the task goes back to
    /// PENDING (reason ENGINE_UNREACHABLE) without using an attempt, and is
    /// offered to the backend again after `retry_after` (the outbox).
    Unreachable {
        /// When to try again.
        retry_after: Duration,
        /// What failed.
        message: String,
    },
    /// The executor had no capacity for the task's destination and sent
    /// nothing (a webhook host with every per-host slot taken): the task goes
    /// back to PENDING (reason CAPACITY_FULL) without using an attempt, and
    /// is offered again after `retry_after`.
    Busy {
        /// When to try again.
        retry_after: Duration,
        /// Why.
        message: String,
    },
    /// A workflow starts compensating (state COMPENSATING; still held).
    Compensating,
    /// Ends the task in a final state chosen by an in-process executor
    /// (a workflow: COMPLETED, FAILED, CANCELLED or COMPENSATED).
    End {
        /// The final state.
        state: TaskState,
        /// The result, for COMPLETED.
        result: Option<serde_json::Value>,
        /// The error, for FAILED (and COMPENSATED after a failure).
        error: Option<TaskError>,
        /// A log line saying why.
        message: String,
    },
}

/// Metrics snapshot.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// Counts.
    pub counts: Counts,
    /// Per-queue figures: (key, ready, scheduled, running, workers, free slots).
    pub queues: Vec<QueueInfo>,
    /// Finished per second.
    pub throughput: f64,
    /// Schedule-to-start.
    pub schedule_to_start: Summary,
    /// Run time.
    pub run_time: Summary,
    /// Workers connected (remote).
    pub workers_connected: u32,
    /// Start time.
    pub started_at: Micros,
    /// Last event sequence.
    pub last_seq: u64,
}

/// One queue's figures.
#[derive(Debug, Clone, Default)]
pub struct QueueInfo {
    /// The queue key (task name).
    pub name: String,
    /// Runnable now.
    pub ready: u64,
    /// Delayed or backing off.
    pub scheduled: u64,
    /// Running.
    pub running: u64,
    /// Workers.
    pub workers: u32,
    /// Free slots.
    pub free_slots: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeadlineKind {
    /// The attempt's execution timeout.
    Execution,
    /// A requested cancel not acknowledged in time.
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    Normal,
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct QKey {
    lane: u8,
    prio: Reverse<i32>,
    created: Micros,
    id: TaskId,
}

struct Active {
    task: Task,
    key: Arc<str>,
    payload: Option<Arc<str>>,
    worker: Option<u64>,
    slot: SlotKind,
    /// Handed out before without a known outcome (offered again after its
    /// engine was unreachable or busy, or requeued after its worker was
    /// lost or the server restarted): see [`Assignment::again`].
    again: bool,
    deadline: Option<(Micros, DeadlineKind)>,
    /// Set while the task is in its queue's ready set.
    queued: Option<QKey>,
    /// Set while the task waits on a timer (delay or backoff).
    timer: Option<Micros>,
    /// When it became runnable (for schedule-to-start).
    ready_since: Micros,
}

#[derive(Default)]
struct Queue {
    ready: BTreeSet<QKey>,
    scheduled: u64,
    running: u64,
    workers: Vec<u64>,
}

struct WorkerSlot {
    id: Arc<str>,
    name: String,
    keys: Vec<Arc<str>>,
    slots: u32,
    imm_slots: u32,
    used: u32,
    used_imm: u32,
    tx: mpsc::UnboundedSender<Push>,
    running: HashSet<TaskId>,
    last_seen: Micros,
    draining: bool,
    local: bool,
}

impl WorkerSlot {
    fn free_normal(&self) -> u32 {
        self.slots.saturating_sub(self.used)
    }
    fn free_imm(&self) -> u32 {
        self.imm_slots.saturating_sub(self.used_imm)
    }
    fn can_take(&self, lane: u8) -> bool {
        !self.draining && (self.free_normal() > 0 || (lane == 0 && self.free_imm() > 0))
    }
}

struct State {
    /// Boxed: the table then holds 24 bytes per bucket, not an `Active`
    /// (~450 bytes) per bucket of its power-of-two capacity, which halved
    /// the RSS with 1,000,000 pending tasks.
    tasks: HashMap<TaskId, Box<Active>>,
    finishing: HashMap<TaskId, Task>,
    queues: HashMap<Arc<str>, Queue>,
    timers: BTreeSet<(Micros, TaskId)>,
    deadlines: BTreeSet<(Micros, TaskId)>,
    workers: HashMap<u64, WorkerSlot>,
    worker_ids: HashMap<Arc<str>, u64>,
    next_worker: u64,
    by_user: HashMap<String, HashSet<TaskId>>,
    by_session: HashMap<String, HashSet<TaskId>>,
    next_seq: u64,
    cached_bytes: usize,
    counts: Counts,
    s2s: Window,
    run_time: Window,
    throughput: Throughput,
    draining: bool,
    /// Writes queued by the current critical section, submitted at its end.
    pending_ops: Vec<WriteOp>,
    /// Whether writes queued now need not start a commit (see
    /// [`State::lazily`]).
    lazy: bool,
    /// Whether `pending_ops` holds a write that must start a commit.
    eager: bool,
    /// Tasks whose queue may now dispatch.
    dirty_keys: Vec<Arc<str>>,
    /// When the timer loop next wakes on its own.
    timer_wake: Micros,
    /// Routing to external engines.
    routes: Routes,
    /// The `task.run` span of each running attempt, while tracing is on
    /// (empty otherwise).
    runs: HashMap<TaskId, tracing::Span>,
}

/// A delay rounded down to whole milliseconds, for log lines.
fn whole_millis(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Active tasks per chunk read from the store at start-up. Up to five
/// chunks are in flight between the SQL thread, the decoder and this core
/// (raw rows, decoded tasks): at ~700 bytes of raw JSON per row, 2,048 keeps
/// that transient memory under 8 MiB (with 8,192 the RSS after a restart
/// with a million tasks was ~25 MiB higher; start-up took 2–3 s either way).
const RECOVERY_CHUNK: usize = 2048;
/// How long `CancelTask` waits for an in-process backend to settle a cancel
/// (a queued BullMQ job is taken out at once), counted from the request.
const CANCEL_SETTLE: Duration = Duration::from_secs(2);

/// The scheduler core. Cheap to clone.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    hub: Arc<EventHub>,
    cfg: CoreConfig,
    wake: Notify,
    started_at: Micros,
    closed: AtomicBool,
    /// Admission checks per queue key, set by executors (see
    /// [`Core::set_admission`]).
    admissions: parking_lot::RwLock<HashMap<String, Admission>>,
}

/// An executor's check of a task routed to its queue key, run by
/// [`Core::schedule`] before anything is written: a task its executor could
/// never run (an unknown workflow type, say) is refused with a clear error
/// instead of failing later.
pub type Admission = Arc<dyn Fn(&TaskSpec) -> Result<(), CoreError> + Send + Sync>;

struct Listener {
    hub: Arc<EventHub>,
    core: Weak<Inner>,
}

impl CommitListener for Listener {
    fn committed(&self, events: Vec<Arc<TaskEvent>>) {
        if let Some(core) = self.core.upgrade() {
            let mut st = core.state.lock();
            for e in &events {
                if e.task.rt.state.is_final() {
                    if let Some(t) = st.finishing.get(&e.task.id) {
                        if t.rt.seq <= e.seq {
                            st.finishing.remove(&e.task.id);
                        }
                    }
                }
            }
        }
        self.hub.publish(events);
    }
}

fn lane(t: &Task) -> u8 {
    if t.spec.immediate {
        0
    } else {
        1
    }
}

impl State {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Queues the write of a transition of an active task, with its event.
    fn emit(&mut self, id: TaskId, kind: EventKind, log: Vec<LogEntry>) {
        let seq = self.seq();
        let reason = self.tasks.get(&id).and_then(|a| self.derived_reason(a));
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        a.task.rt.seq = seq;
        if a.task.rt.state == TaskState::Pending {
            a.task.rt.waiting_reason = reason;
        } else {
            a.task.rt.waiting_reason = None;
        }
        let op = WriteOp::Update {
            task: a.task.clone(),
            log,
            event: Some(kind),
        };
        self.push_op(op);
    }

    fn log(&mut self, line: LogEntry) {
        self.push_op(WriteOp::Log(vec![line]));
    }

    fn push_op(&mut self, op: WriteOp) {
        self.eager |= !self.lazy;
        self.pending_ops.push(op);
    }

    /// Runs `f` with its writes marked lazy: facts that can be rebuilt after
    /// a crash (an engine has the task), committed with the next write that
    /// needs a commit (see [`Store::submit_lazy`]). The state in memory, and
    /// so `GetTaskStatus`, has them at once; their events wait for the commit.
    fn lazily<R>(&mut self, f: impl FnOnce(&mut State) -> R) -> R {
        let was = std::mem::replace(&mut self.lazy, true);
        let r = f(self);
        self.lazy = was;
        r
    }

    fn derived_reason(&self, a: &Active) -> Option<WaitingReason> {
        if a.task.rt.state != TaskState::Pending {
            return None;
        }
        match a.task.rt.waiting_reason {
            Some(WaitingReason::Delayed) | Some(WaitingReason::BackingOff) if a.timer.is_some() => {
                a.task.rt.waiting_reason
            }
            // Held by a backend: the engine's own reason.
            _ if a.worker.is_some() => a.task.rt.waiting_reason,
            Some(WaitingReason::EngineUnreachable) => a.task.rt.waiting_reason,
            _ => {
                let q = self.queues.get(&a.key);
                let workers = q.map(|q| q.workers.as_slice()).unwrap_or(&[]);
                if workers.is_empty() {
                    Some(WaitingReason::NoWorker)
                } else if workers
                    .iter()
                    .filter_map(|w| self.workers.get(w))
                    .any(|w| w.can_take(lane(&a.task)))
                {
                    Some(WaitingReason::Queued)
                } else {
                    Some(WaitingReason::CapacityFull)
                }
            }
        }
    }

    fn index_owner(&mut self, t: &Task) {
        if let Some(u) = &t.spec.user_id {
            self.by_user.entry(u.clone()).or_default().insert(t.id);
        }
        if let Some(s) = &t.spec.session_id {
            self.by_session.entry(s.clone()).or_default().insert(t.id);
        }
    }

    fn unindex_owner(&mut self, t: &Task) {
        if let Some(u) = &t.spec.user_id {
            if let Some(set) = self.by_user.get_mut(u) {
                set.remove(&t.id);
                if set.is_empty() {
                    self.by_user.remove(u);
                }
            }
        }
        if let Some(s) = &t.spec.session_id {
            if let Some(set) = self.by_session.get_mut(s) {
                set.remove(&t.id);
                if set.is_empty() {
                    self.by_session.remove(s);
                }
            }
        }
    }

    fn queue(&mut self, key: &Arc<str>) -> &mut Queue {
        self.queues.entry(key.clone()).or_default()
    }

    /// Adds a pending task to memory: on a timer or in its queue.
    fn add_pending(&mut self, task: Task, payload: Option<Arc<str>>, cache_limit: usize) {
        let (k, _) = self.routes.route(&task.spec);
        let key: Arc<str> = match self.queues.get_key_value(k) {
            Some((k, _)) => k.clone(),
            None => Arc::from(k),
        };
        let payload = payload.filter(|p| self.cached_bytes + p.len() <= cache_limit);
        if let Some(p) = &payload {
            self.cached_bytes += p.len();
        }
        self.index_owner(&task);
        let id = task.id;
        let run_at = task.rt.run_at;
        self.tasks.insert(
            id,
            Box::new(Active {
                task,
                key: key.clone(),
                payload,
                worker: None,
                slot: SlotKind::Normal,
                again: false,
                deadline: None,
                queued: None,
                timer: None,
                ready_since: run_at,
            }),
        );
        self.place(id, now_micros());
    }

    /// Puts a pending task where it belongs: a timer if not due, else its queue.
    fn place(&mut self, id: TaskId, now: Micros) {
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        let key = a.key.clone();
        // A delay is the engine's job once a backend holds the task; backoff
        // after an unreachable engine stays on the core's timer (the outbox).
        let engine_delays = is_backend_key(&key)
            && !a.task.rt.forwarded
            && a.task.rt.waiting_reason == Some(WaitingReason::Delayed);
        if a.task.rt.run_at > now && !engine_delays {
            a.timer = Some(a.task.rt.run_at);
            self.timers.insert((a.task.rt.run_at, id));
            self.queue(&key).scheduled += 1;
        } else {
            let qk = QKey {
                lane: lane(&a.task),
                prio: Reverse(a.task.spec.priority),
                created: a.task.created_at,
                id,
            };
            a.queued = Some(qk);
            a.ready_since = a.task.rt.run_at.max(a.task.created_at);
            if !engine_delays
                && matches!(
                    a.task.rt.waiting_reason,
                    Some(WaitingReason::Delayed) | Some(WaitingReason::BackingOff)
                )
            {
                a.task.rt.waiting_reason = Some(WaitingReason::Queued);
            }
            self.queue(&key).ready.insert(qk);
            self.dirty_keys.push(key);
        }
    }

    /// Takes a pending task out of its queue or timer.
    fn unplace(&mut self, id: TaskId) {
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        let key = a.key.clone();
        let queued = a.queued.take();
        let timer = a.timer.take();
        let q = self.queue(&key);
        if let Some(qk) = queued {
            q.ready.remove(&qk);
        }
        if let Some(t) = timer {
            q.scheduled = q.scheduled.saturating_sub(1);
            self.timers.remove(&(t, id));
        }
    }

    fn set_deadline(&mut self, id: TaskId, d: Option<(Micros, DeadlineKind)>) {
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        if let Some((t, _)) = a.deadline.take() {
            self.deadlines.remove(&(t, id));
        }
        if let Some((t, k)) = d {
            a.deadline = Some((t, k));
            self.deadlines.insert((t, id));
        }
    }

    /// Ends the `task.run` span of a task's attempt, if it has one.
    fn end_run(&mut self, id: TaskId, outcome: &str) {
        if self.runs.is_empty() {
            return;
        }
        if let Some(span) = self.runs.remove(&id) {
            span.record("task.outcome", outcome);
        }
    }

    /// Frees the worker slot a running task holds.
    fn release_slot(&mut self, id: TaskId) -> Option<u64> {
        self.end_run(id, "released");
        let a = self.tasks.get_mut(&id)?;
        let wid = a.worker.take()?;
        let slot = a.slot;
        let key = a.key.clone();
        let q = self.queue(&key);
        q.running = q.running.saturating_sub(1);
        if let Some(w) = self.workers.get_mut(&wid) {
            w.running.remove(&id);
            match slot {
                SlotKind::Normal => w.used = w.used.saturating_sub(1),
                SlotKind::Immediate => w.used_imm = w.used_imm.saturating_sub(1),
            }
            for k in w.keys.clone() {
                self.dirty_keys.push(k);
            }
        }
        Some(wid)
    }

    /// Moves a task to a final state and out of the active set.
    fn finish(&mut self, id: TaskId, state: TaskState, kind: EventKind, log: Vec<LogEntry>) {
        self.end_run(id, state.as_str());
        self.unplace(id);
        self.set_deadline(id, None);
        self.release_slot(id);
        let now = now_micros();
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        let from = a.task.rt.state;
        a.task.rt.state = state;
        a.task.rt.finished_at = Some(now);
        a.task.rt.cancel_requested = false;
        a.task.rt.worker_id = None;
        let (t, name) = (a.task.spec.task_type, a.task.spec.name.clone());
        if let Some(started) = a.task.rt.started_at {
            if from == TaskState::Running {
                self.run_time.record(now, now - started);
            }
        }
        self.counts.moved(t, &name, from, state);
        self.throughput.tick(now);
        self.emit(id, kind, log);
        if let Some(a) = self.tasks.remove(&id) {
            if let Some(p) = &a.payload {
                self.cached_bytes = self.cached_bytes.saturating_sub(p.len());
            }
            self.unindex_owner(&a.task);
            if let Some(parent) = a.task.spec.parent_id {
                let holder = self.tasks.get(&parent).and_then(|p| p.worker);
                if let Some(w) = holder.and_then(|w| self.workers.get(&w)) {
                    let _ = w.tx.send(Push::ChildDone {
                        parent,
                        child: a.task.clone(),
                    });
                }
            }
            self.finishing.insert(id, a.task);
        }
    }

    fn set_state(&mut self, id: TaskId, to: TaskState) {
        if let Some(a) = self.tasks.get_mut(&id) {
            let from = a.task.rt.state;
            a.task.rt.state = to;
            let (t, name) = (a.task.spec.task_type, a.task.spec.name.clone());
            self.counts.moved(t, &name, from, to);
        }
    }

    /// Starts a task on a worker.
    fn assign(&mut self, id: TaskId, wid: u64, default_timeout: Option<Duration>) {
        let now = now_micros();
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        let slot = if a.task.spec.immediate && w.free_imm() > 0 {
            w.used_imm += 1;
            SlotKind::Immediate
        } else {
            w.used += 1;
            SlotKind::Normal
        };
        w.running.insert(id);
        let worker_name = w.id.clone();
        a.worker = Some(wid);
        a.slot = slot;
        a.queued = None;
        if a.task.rt.repeat {
            a.task.rt.repeat = false;
        } else {
            a.task.rt.attempt += 1;
        }
        a.task.rt.started_at = Some(now);
        a.task.rt.worker_id = Some(Box::from(&*worker_name));
        a.task.rt.progress = 0.0;
        a.task.rt.progress_message = None;
        let attempt = a.task.rt.attempt;
        let key = a.key.clone();
        let ready_since = a.ready_since;
        let (task_type, task_timeout) = (a.task.spec.task_type, a.task.spec.execution_timeout);
        self.queue(&key).running += 1;
        if is_backend_key(&key) {
            // Handed to an external engine: the task is not running yet. The
            // backend mirrors the engine's own states (and timeouts).
            if let Some(a) = self.tasks.get_mut(&id) {
                a.task.rt.started_at = None;
                // The engine now owns a delay; anything else is queued there.
                if a.task.rt.waiting_reason != Some(WaitingReason::Delayed) {
                    a.task.rt.waiting_reason = Some(WaitingReason::Queued);
                }
            }
            let engine = key.trim_start_matches('#').to_string();
            // Rebuilt after a crash (the task is offered to the backend
            // again): it rides on the next commit.
            self.lazily(|st| {
                st.emit(
                    id,
                    EventKind::Updated,
                    vec![LogEntry::system(
                        id,
                        attempt,
                        format!("handed to the {engine} backend"),
                    )],
                )
            });
        } else {
            let s2s = now - ready_since;
            // A workflow enforces its own timeout (and compensates); the core
            // times out attempts of every other type.
            let timeout = if task_type == TaskType::Complex {
                None
            } else {
                task_timeout.or(default_timeout)
            };
            let deadline = timeout.map(|d| add_micros(now, d));
            self.s2s.record(now, s2s.max(0));
            self.set_state(id, TaskState::Running);
            self.set_deadline(id, deadline.map(|d| (d, DeadlineKind::Execution)));
            self.emit(
                id,
                EventKind::Started,
                vec![LogEntry::system(
                    id,
                    attempt,
                    format!("attempt {attempt} started on worker {worker_name}"),
                )],
            );
        }
        let deadline = self
            .tasks
            .get(&id)
            .and_then(|a| a.deadline)
            .filter(|(_, k)| *k == DeadlineKind::Execution)
            .map(|(t, _)| t);
        let Some(a) = self.tasks.get(&id) else {
            return;
        };
        let run_traceparent = if crate::telemetry::enabled() {
            let t = &a.task;
            let span = tracing::info_span!(
                parent: None,
                "task.run",
                task.id = %t.id,
                task.name = %t.spec.name,
                task.type = t.spec.task_type.as_str(),
                task.attempt = t.rt.attempt,
                task.queue = &*a.key,
                worker.id = %worker_name,
                task.outcome = tracing::field::Empty,
            );
            let tp = crate::telemetry::adopt(&span, t.spec.traceparent.as_deref());
            self.runs.insert(id, span);
            tp
        } else {
            None
        };
        let Some(a) = self.tasks.get(&id) else {
            return;
        };
        let push = Push::Assign(Assignment {
            task: a.task.clone(),
            payload: a.payload.clone(),
            deadline,
            again: a.again,
            run_traceparent,
        });
        if let Some(w) = self.workers.get(&wid) {
            let _ = w.tx.send(push);
        }
    }

    /// Dispatches what can be dispatched on the dirty queues.
    fn dispatch(&mut self, default_timeout: Option<Duration>) {
        if self.draining {
            self.dirty_keys.clear();
            return;
        }
        while let Some(key) = self.dirty_keys.pop() {
            while let Some(q) = self.queues.get(&key) {
                let Some(head) = q.ready.first().copied() else {
                    break;
                };
                // The worker with the most free slots that can take the head.
                let best = q
                    .workers
                    .iter()
                    .filter_map(|wid| self.workers.get(wid).map(|w| (*wid, w)))
                    .filter(|(_, w)| w.can_take(head.lane))
                    .map(|(wid, w)| {
                        let imm = if head.lane == 0 { w.free_imm() } else { 0 };
                        (wid, w.free_normal() + imm)
                    })
                    .max_by_key(|(_, free)| *free);
                let Some((wid, _)) = best else {
                    break;
                };
                if let Some(q) = self.queues.get_mut(&key) {
                    q.ready.remove(&head);
                }
                self.assign(head.id, wid, default_timeout);
            }
        }
    }

    /// Takes a task off its worker and puts it back to PENDING, runnable
    /// again after `delay` (a backoff, or an unreachable engine).
    fn back_to_pending(&mut self, id: TaskId, delay: Duration, reason: WaitingReason) {
        self.end_run(
            id,
            match reason {
                WaitingReason::EngineUnreachable => "engine_unreachable",
                _ => "retry",
            },
        );
        self.set_deadline(id, None);
        self.release_slot(id);
        self.set_state(id, TaskState::Pending);
        if let Some(a) = self.tasks.get_mut(&id) {
            a.task.rt.run_at = add_micros(now_micros(), delay);
            a.task.rt.worker_id = None;
            a.task.rt.waiting_reason = Some(reason);
        }
        self.place(id, now_micros());
    }

    /// Puts a task its engine did not run (unreachable, or busy) back to
    /// PENDING without using its attempt, offered again after `retry_after`,
    /// and logs why.
    fn offer_again(
        &mut self,
        id: TaskId,
        attempt: u32,
        retry_after: Duration,
        reason: WaitingReason,
        log: LogEntry,
    ) {
        self.back_to_pending(id, retry_after, reason);
        if let Some(a) = self.tasks.get_mut(&id) {
            a.task.rt.attempt = attempt;
            a.task.rt.repeat = attempt > 0;
            a.again = true;
        }
        self.emit(id, EventKind::Updated, vec![log]);
    }

    /// Requeues a running task whose worker is gone, or ends it.
    fn requeue_lost(&mut self, id: TaskId, why: &str, counts_as_loss: bool, max_losses: u32) {
        let Some(a) = self.tasks.get(&id) else {
            return;
        };
        let attempt = a.task.rt.attempt;
        if a.task.rt.cancel_requested {
            self.finish(
                id,
                TaskState::Cancelled,
                EventKind::Cancelled,
                vec![LogEntry::system(
                    id,
                    attempt,
                    format!("{why}; the requested cancel is complete"),
                )],
            );
            return;
        }
        let losses = a.task.rt.lease_losses + u32::from(counts_as_loss);
        let (max_attempts, backoff) = (a.task.spec.max_attempts, a.task.spec.backoff);
        if losses > max_losses && attempt < max_attempts {
            // Lost too often, this attempt fails; the next one starts afresh
            // (lease losses count per attempt, so every attempt is used).
            let err = TaskError {
                message: format!("{why}; the worker was lost {losses} times in this attempt"),
                kind: "worker_lost".into(),
                details: String::new(),
                retryable: true,
                attempt,
            };
            let delay = backoff.delay(attempt);
            self.back_to_pending(id, delay, WaitingReason::BackingOff);
            if let Some(a) = self.tasks.get_mut(&id) {
                a.task.rt.last_error = Some(Box::new(err.clone()));
                a.task.rt.lease_losses = 0;
            }
            self.emit(
                id,
                EventKind::Retrying,
                vec![LogEntry::system(
                    id,
                    attempt,
                    format!(
                        "attempt {attempt} of {max_attempts} failed: {}; retrying in {}",
                        err.message,
                        humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
                    ),
                )
                .level("warn")],
            );
            return;
        }
        if losses > max_losses {
            let err = TaskError {
                message: format!("{why}; the worker was lost {losses} times in its last attempt"),
                kind: "worker_lost".into(),
                details: String::new(),
                retryable: false,
                attempt,
            };
            if let Some(a) = self.tasks.get_mut(&id) {
                a.task.rt.last_error = Some(Box::new(err.clone()));
                a.task.rt.lease_losses = losses;
            }
            self.finish(
                id,
                TaskState::Failed,
                EventKind::Failed,
                vec![LogEntry::system(id, attempt, err.message).level("error")],
            );
            return;
        }
        self.end_run(id, "requeued");
        self.set_deadline(id, None);
        self.release_slot(id);
        self.set_state(id, TaskState::Pending);
        if let Some(a) = self.tasks.get_mut(&id) {
            a.task.rt.lease_losses = losses;
            // The attempt did not finish: the next delivery repeats it.
            a.task.rt.repeat = attempt > 0;
            a.task.rt.worker_id = None;
            a.task.rt.waiting_reason = Some(WaitingReason::Queued);
            a.again = true;
        }
        self.place(id, now_micros());
        self.emit(
            id,
            EventKind::Requeued,
            vec![
                LogEntry::system(id, attempt, format!("{why}; attempt {attempt} requeued"))
                    .level("warn"),
            ],
        );
    }
}

/// How a new task was taken.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// The task (the existing one if `existing`).
    pub task: Task,
    /// Whether the idempotency key matched an existing task.
    pub existing: bool,
}

impl Core {
    /// Loads the active tasks from the store and starts the core's loops.
    pub async fn start(store: Arc<dyn Store>, cfg: CoreConfig) -> Result<Core, CoreError> {
        let max_seq = store.max_seq().await?;
        let hub = Arc::new(EventHub::new(cfg.event_history, max_seq));
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                tasks: HashMap::new(),
                finishing: HashMap::new(),
                queues: HashMap::new(),
                timers: BTreeSet::new(),
                deadlines: BTreeSet::new(),
                workers: HashMap::new(),
                worker_ids: HashMap::new(),
                next_worker: 0,
                by_user: HashMap::new(),
                by_session: HashMap::new(),
                next_seq: max_seq,
                cached_bytes: 0,
                counts: Counts::default(),
                s2s: Window::new(5),
                run_time: Window::new(5),
                throughput: Throughput::default(),
                draining: false,
                pending_ops: Vec::new(),
                lazy: false,
                eager: false,
                dirty_keys: Vec::new(),
                timer_wake: 0,
                routes: cfg.routes.clone(),
                runs: HashMap::new(),
            }),
            store: store.clone(),
            hub: hub.clone(),
            cfg,
            wake: Notify::new(),
            started_at: now_micros(),
            closed: AtomicBool::new(false),
            admissions: Default::default(),
        });
        store.set_listener(Arc::new(Listener {
            hub,
            core: Arc::downgrade(&inner),
        }));
        let core = Core { inner };
        // Start-up with a million tasks takes seconds, so three things run
        // side by side: the store reads and decodes the active tasks in
        // chunks, this task places each chunk as it comes (and the memory of
        // one chunk is reused for the next), and another connection counts
        // the finished tasks.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Task>>(2);
        let (mut n, mut requeued) = (0usize, 0usize);
        let place = async {
            while let Some(chunk) = rx.recv().await {
                n += chunk.len();
                requeued += core.recover(chunk);
            }
            Ok::<(), StoreError>(())
        };
        let (finished, (), ()) = tokio::try_join!(
            store.final_counts(),
            store.stream_active(RECOVERY_CHUNK, tx),
            place
        )?;
        core.with_state(|st, _| {
            for (t, name, s, n) in finished {
                st.counts.add(t, &name, s, n);
            }
        });
        if n > 0 {
            tracing::info!(active = n, requeued, "recovered tasks from the store");
        }
        let loop_core = core.clone();
        // Policy on shutdown: stops by itself once `shutdown` closes the core.
        tokio::spawn(tracing::Instrument::instrument(
            async move { loop_core.timer_loop().await },
            tracing::info_span!("core-timers"),
        ));
        Ok(core)
    }

    /// Puts tasks that were active when the server stopped back in place,
    /// and counts them; returns how many were requeued.
    fn recover(&self, active: Vec<Task>) -> usize {
        let mut requeued = 0usize;
        self.with_state(|st, cfg| {
            for mut t in active {
                let id = t.id;
                st.counts.add(t.spec.task_type, &t.spec.name, t.rt.state, 1);
                match t.rt.state {
                    TaskState::Running if t.rt.cancel_requested => {
                        let attempt = t.rt.attempt;
                        st.add_pending(t, None, 0);
                        st.unplace(id);
                        st.set_state(id, TaskState::Running);
                        st.finish(
                            id,
                            TaskState::Cancelled,
                            EventKind::Cancelled,
                            vec![LogEntry::system(
                                id,
                                attempt,
                                "server restarted while a cancel was pending; cancelled",
                            )],
                        );
                    }
                    TaskState::Running | TaskState::Compensating => {
                        let attempt = t.rt.attempt;
                        let was = t.rt.state;
                        t.rt.state = TaskState::Pending;
                        t.rt.repeat = attempt > 0;
                        t.rt.worker_id = None;
                        t.rt.waiting_reason = Some(WaitingReason::Queued);
                        st.counts
                            .moved(t.spec.task_type, &t.spec.name, was, TaskState::Pending);
                        st.add_pending(t, None, 0);
                        if let Some(a) = st.tasks.get_mut(&id) {
                            a.again = true;
                        }
                        st.emit(
                            id,
                            EventKind::Requeued,
                            vec![LogEntry::system(
                                id,
                                attempt,
                                format!("server restarted while attempt {attempt} was running; requeued"),
                            )
                            .level("warn")],
                        );
                        requeued += 1;
                    }
                    _ => {
                        let maybe_handed = t.rt.state == TaskState::Pending && !t.rt.forwarded;
                        st.add_pending(t, None, cfg.payload_cache_bytes);
                        // Its backend may have had it before the crash: the
                        // write that says so is lazy (`Report::Forwarded`).
                        if let Some(a) = st.tasks.get_mut(&id) {
                            if maybe_handed && is_backend_key(&a.key) {
                                a.again = true;
                            }
                        }
                    }
                }
            }
        });
        requeued
    }

    /// Runs `f` on the state, then submits its writes and dispatches.
    fn with_state<R>(&self, f: impl FnOnce(&mut State, &CoreConfig) -> R) -> R {
        let mut st = self.inner.state.lock();
        let r = f(&mut st, &self.inner.cfg);
        st.dispatch(self.inner.cfg.default_execution_timeout);
        let ops = std::mem::take(&mut st.pending_ops);
        if !ops.is_empty() {
            // Submitted under the lock so the store sees sequence order.
            if std::mem::take(&mut st.eager) {
                self.inner.store.submit(ops, None);
            } else {
                self.inner.store.submit_lazy(ops);
            }
        }
        let earliest = [
            st.timers.first().map(|t| t.0),
            st.deadlines.first().map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .min();
        let wake = earliest.is_some_and(|e| e < st.timer_wake);
        if let Some(e) = earliest.filter(|_| wake) {
            st.timer_wake = e;
        }
        drop(st);
        if wake {
            self.inner.wake.notify_one();
        }
        r
    }

    /// The event hub.
    pub fn events(&self) -> &Arc<EventHub> {
        &self.inner.hub
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.inner.cfg
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.inner.state.lock().draining
    }

    /// Accepts a task: commits it durably before answering.
    ///
    /// A task on a worker queue of the embedded engine is placed in its
    /// queue in the same critical section that submits its insert (see
    /// [`overlaps_commit`]): a worker may start it while the group commit is
    /// under way, so the commit's wait is not added to schedule-to-start.
    /// Its RUNNING write queues behind the insert, so no event of it is
    /// published, and the caller is not answered, before the insert is
    /// durable. Should the commit fail, the task is withdrawn (its worker is
    /// told to stop) and the caller gets the error. Tasks with an
    /// idempotency key (which may turn out to be an existing task) and tasks
    /// for an engine or in-process executor (whose side effects must never
    /// belong to a task the store does not have) are queued only once their
    /// insert is durable.
    pub async fn schedule(&self, new: NewTask) -> Result<Scheduled, CoreError> {
        let (key, source) = self.inner.cfg.routes.route(&new.spec);
        if key.starts_with('#') && !self.has_consumer(key) {
            return Err(CoreError::FailedPrecondition(format!(
                "no executor for {} tasks is running on this server (queue {key})",
                new.spec.task_type.as_str()
            )));
        }
        if let Some(admit) = self.inner.admissions.read().get(key) {
            admit(&new.spec)?;
        }
        let early = overlaps_commit(key, &new.spec);
        let now = now_micros();
        let id = TaskId::now_v7();
        let run_at = add_micros(now, new.delay);
        let reason = if new.delay.is_zero() {
            WaitingReason::Queued
        } else {
            WaitingReason::Delayed
        };
        let mut task = Task {
            id,
            created_at: now,
            spec: Arc::new(new.spec),
            rt: TaskRuntime::new_pending(run_at, source, reason),
        };
        let mut msg = format!("scheduled ({})", task.spec.task_type.as_str());
        if !new.delay.is_zero() {
            msg.push_str(&format!(
                ", delayed {}",
                humantime::format_duration(new.delay)
            ));
        }
        let cached = match &new.payload {
            Payload::Json(p) => Some(p.clone()),
            Payload::CopyOf(_) => None,
        };
        let (tx, rx) = oneshot::channel();
        // Submitted under the state lock: the store sees sequence order.
        let accept = |st: &mut State, task: &mut Task| {
            if st.draining {
                return Err(CoreError::Unavailable("the server is shutting down".into()));
            }
            task.rt.seq = st.seq();
            self.inner.store.submit(
                vec![WriteOp::Insert {
                    task: task.clone(),
                    payload: new.payload.clone(),
                    log: vec![LogEntry::system(id, 0, msg)],
                    event: Some(EventKind::Scheduled),
                }],
                Some(tx),
            );
            Ok(())
        };
        // Counts the task and puts it in its queue; returns it as accepted.
        let queue = |st: &mut State, cfg: &CoreConfig, task: Task, cached: Option<Arc<str>>| {
            st.counts
                .add(task.spec.task_type, &task.spec.name, TaskState::Pending, 1);
            let mut snapshot = task.clone();
            st.add_pending(task, cached, cfg.payload_cache_bytes);
            if let Some(a) = st.tasks.get(&snapshot.id) {
                snapshot.rt.waiting_reason = st.derived_reason(a);
            }
            snapshot
        };
        /// Where the task is while its insert commits.
        enum Placed {
            /// In its queue already; the task as accepted.
            Queued(Task),
            /// To be queued once the insert is durable, with its payload.
            AfterCommit(Task, Option<Arc<str>>),
        }
        let placed = if early {
            // `with_state` dispatches after the closure, and submits what the
            // dispatch wrote (the RUNNING transition) after the insert.
            Placed::Queued(self.with_state(move |st, cfg| {
                accept(st, &mut task)?;
                Ok::<_, CoreError>(queue(st, cfg, task, cached))
            })?)
        } else {
            accept(&mut self.inner.state.lock(), &mut task)?;
            Placed::AfterCommit(task, cached)
        };
        let outcome = match rx.await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                if early {
                    self.withdraw(id, &format!("its insert failed: {e}"));
                }
                return Err(CoreError::Store(e));
            }
            Err(_) => {
                if early {
                    self.withdraw(id, "the store closed before its insert was durable");
                }
                return Err(CoreError::Unavailable("the store is closed".into()));
            }
        };
        match (outcome.first(), placed) {
            (Some(WriteOutcome::Existing(existing)), placed) => {
                if matches!(placed, Placed::Queued(_)) {
                    // Not expected without an idempotency key (the id is new).
                    self.withdraw(id, "the store holds another task under its key");
                }
                let task = self.status(*existing).await?;
                Ok(Scheduled {
                    task,
                    existing: true,
                })
            }
            (_, Placed::Queued(task)) => Ok(Scheduled {
                task,
                existing: false,
            }),
            (_, Placed::AfterCommit(task, cached)) => {
                let task = self.with_state(|st, cfg| queue(st, cfg, task, cached));
                Ok(Scheduled {
                    task,
                    existing: false,
                })
            }
        }
    }

    /// Takes back a task that was queued before its insert was durable and
    /// whose insert then failed: it leaves memory without a write (the store
    /// has no row to change), and a worker that started it is told to stop.
    fn withdraw(&self, id: TaskId, why: &str) {
        self.with_state(|st, _| {
            let Some(a) = st.tasks.get(&id) else {
                return;
            };
            let (state, attempt) = (a.task.rt.state, a.task.rt.attempt);
            let holder = a.worker;
            st.end_run(id, "withdrawn");
            st.unplace(id);
            st.set_deadline(id, None);
            st.release_slot(id);
            if let Some(w) = holder.and_then(|w| st.workers.get(&w)) {
                let _ = w.tx.send(Push::Cancel {
                    task_id: id,
                    attempt,
                    reason: format!("not accepted: {why}"),
                    force: true,
                });
            }
            if let Some(a) = st.tasks.remove(&id) {
                if let Some(p) = &a.payload {
                    st.cached_bytes = st.cached_bytes.saturating_sub(p.len());
                }
                st.counts
                    .remove(a.task.spec.task_type, &a.task.spec.name, state);
                st.unindex_owner(&a.task);
            }
            tracing::error!(task_id = %id, why, "task withdrawn: it was queued before its insert was durable, and the insert failed");
        });
    }

    /// Schedules a task from inside the server (cleanups, workflow steps):
    /// queued in order behind the write that caused it, not awaited.
    pub fn schedule_internal(&self, new: NewTask) -> Task {
        self.with_state(|st, cfg| schedule_internal(st, cfg, new))
    }

    /// Sets the admission check of the tasks routed to queue `key`.
    pub fn set_admission(&self, key: &str, admit: Admission) {
        self.inner.admissions.write().insert(key.to_string(), admit);
    }

    fn has_consumer(&self, key: &str) -> bool {
        let st = self.inner.state.lock();
        st.queues.get(key).is_some_and(|q| !q.workers.is_empty())
    }

    /// The current status of a task.
    pub async fn status(&self, id: TaskId) -> Result<Task, CoreError> {
        {
            let st = self.inner.state.lock();
            if let Some(a) = st.tasks.get(&id) {
                let mut t = a.task.clone();
                t.rt.waiting_reason = st.derived_reason(a);
                return Ok(t);
            }
            if let Some(t) = st.finishing.get(&id) {
                return Ok(t.clone());
            }
        }
        match self.inner.store.get(id).await? {
            Some((t, _)) => Ok(t),
            None => Err(CoreError::NotFound(id.to_string())),
        }
    }

    /// The live status of every active task that matches a filter.
    pub fn active_tasks(&self, filter: &TaskFilter) -> Vec<Task> {
        let st = self.inner.state.lock();
        let mut out: Vec<Task> = st
            .tasks
            .values()
            .filter(|a| filter.matches(&a.task))
            .map(|a| {
                let mut t = a.task.clone();
                t.rt.waiting_reason = st.derived_reason(a);
                t
            })
            .collect();
        out.sort_by_key(|t| t.id);
        out
    }

    /// A task's status and payload.
    pub async fn status_with_payload(&self, id: TaskId) -> Result<(Task, Arc<str>), CoreError> {
        let t = self.status(id).await?;
        let payload = match self.inner.store.payload(id).await? {
            Some(p) => p,
            None => return Err(CoreError::NotFound(id.to_string())),
        };
        Ok((t, payload))
    }

    /// Lists tasks, newest first. Active tasks show their live status.
    pub async fn list(&self, q: ListQuery) -> Result<Vec<Task>, CoreError> {
        // The store filters by its own columns: flush first, so a task seen
        // in a new state before the call (GetTaskStatus, an event) is
        // selected by that state.
        self.inner.store.flush().await.map_err(CoreError::Store)?;
        let mut tasks = self.inner.store.list(q).await?;
        let st = self.inner.state.lock();
        for t in tasks.iter_mut() {
            if let Some(a) = st.tasks.get(&t.id) {
                *t = a.task.clone();
                t.rt.waiting_reason = st.derived_reason(a);
            } else if let Some(f) = st.finishing.get(&t.id) {
                *t = f.clone();
            }
        }
        Ok(tasks)
    }

    /// A task's log.
    pub async fn logs(
        &self,
        id: TaskId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, CoreError> {
        // Known task? (NOT_FOUND otherwise.)
        self.status(id).await?;
        // Lines queued but not yet committed are not shown; flush first so a
        // reader sees everything that happened before its call.
        self.inner.store.flush().await.map_err(CoreError::Store)?;
        Ok(self.inner.store.logs(id, after, limit).await?)
    }

    /// Cancels a task.
    pub async fn cancel(
        &self,
        id: TaskId,
        reason: &str,
        force: bool,
    ) -> Result<(CancelOutcome, Task), CoreError> {
        // Subscribe first so the outcome of a quick backend cancel is not missed.
        let mut rx = self.inner.hub.subscribe(0).rx;
        // The wait for a backend to settle counts from the request, so that
        // a slow commit does not lengthen it (nor let a job that took the
        // window's length to wind down answer CANCELLED).
        let settle_by = tokio::time::Instant::now() + CANCEL_SETTLE;
        let local_holder = {
            let st = self.inner.state.lock();
            st.tasks
                .get(&id)
                .and_then(|a| a.worker)
                .and_then(|w| st.workers.get(&w))
                .is_some_and(|w| w.local)
        };
        let r = self.with_state(|st, cfg| cancel_locked(st, cfg, id, "cancelled", reason, force));
        if r.is_some() {
            // The cancel is durable before the reply, like a schedule.
            self.inner.store.flush().await.map_err(CoreError::Store)?;
        }
        match r {
            Some((CancelOutcome::CancelRequested, t)) if local_holder => {
                // An in-process backend (a queued BullMQ job, a webhook call)
                // usually settles at once: answer with the truth if it does.
                let settled = tokio::time::timeout_at(settle_by, async {
                    loop {
                        match rx.recv().await {
                            Ok(e) if e.task.id == id && e.task.rt.state.is_final() => {
                                return Some(e.task.clone())
                            }
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(_) => return None,
                        }
                    }
                })
                .await
                .ok()
                .flatten();
                Ok(match settled {
                    Some(t) if t.rt.state == TaskState::Cancelled => (CancelOutcome::Cancelled, t),
                    Some(t) => (CancelOutcome::CancelRequested, t),
                    None => (CancelOutcome::CancelRequested, t),
                })
            }
            Some(out) => Ok(out),
            None => {
                let t = self.status(id).await?;
                if t.rt.state.is_final() {
                    Ok((CancelOutcome::AlreadyFinished, t))
                } else {
                    Err(CoreError::FailedPrecondition(format!(
                        "task {id} is {} but not active on this server",
                        t.rt.state.as_str()
                    )))
                }
            }
        }
    }

    /// Cancels every active task of a user or session; durable before it
    /// returns.
    pub async fn disconnect(
        &self,
        user_id: Option<&str>,
        session_id: Option<&str>,
        reason: &str,
    ) -> Result<Vec<(TaskId, String, CancelOutcome)>, CoreError> {
        let receipts = self.with_state(|st, cfg| {
            let mut ids: Vec<TaskId> = Vec::new();
            if let Some(u) = user_id {
                ids.extend(st.by_user.get(u).into_iter().flatten().copied());
            }
            if let Some(s) = session_id {
                ids.extend(st.by_session.get(s).into_iter().flatten().copied());
            }
            ids.sort();
            ids.dedup();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some((o, t)) = cancel_locked(st, cfg, id, "disconnected", reason, false) {
                    out.push((id, t.spec.name.clone(), o));
                }
            }
            out
        });
        self.inner.store.flush().await.map_err(CoreError::Store)?;
        Ok(receipts)
    }

    /// Registers a worker for queue keys; returns its id and push channel.
    pub fn register_worker(
        &self,
        name: &str,
        keys: &[String],
        slots: u32,
        immediate_slots: u32,
        local: bool,
    ) -> Result<WorkerLink, CoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.with_state(|st, _| {
            if st.draining {
                return Err(CoreError::Unavailable("the server is shutting down".into()));
            }
            st.next_worker += 1;
            let n = st.next_worker;
            let wid: Arc<str> = Arc::from(format!("w{n}-{}", &TaskId::now_v7().simple().to_string()[20..]));
            let mut kv: Vec<Arc<str>> = Vec::new();
            for k in keys {
                let key: Arc<str> = match st.queues.get_key_value(k.as_str()) {
                    Some((key, _)) => key.clone(),
                    None => Arc::from(k.as_str()),
                };
                if !kv.contains(&key) {
                    st.queue(&key).workers.push(n);
                    kv.push(key.clone());
                    st.dirty_keys.push(key);
                }
            }
            st.workers.insert(
                n,
                WorkerSlot {
                    id: wid.clone(),
                    name: name.to_string(),
                    keys: kv,
                    slots,
                    imm_slots: immediate_slots,
                    used: 0,
                    used_imm: 0,
                    tx,
                    running: HashSet::new(),
                    last_seen: now_micros(),
                    draining: false,
                    local,
                },
            );
            st.worker_ids.insert(wid.clone(), n);
            tracing::info!(worker_id = %wid, worker_name = name, slots, immediate_slots, "worker registered");
            Ok(wid.to_string())
        })?;
        Ok(WorkerLink { id, rx })
    }

    /// A message arrived from a worker: its leases are renewed.
    pub fn touch(&self, worker_id: &str) {
        let mut st = self.inner.state.lock();
        if let Some(n) = st.worker_ids.get(worker_id).copied() {
            if let Some(w) = st.workers.get_mut(&n) {
                w.last_seen = now_micros();
            }
        }
    }

    /// The worker takes no more tasks.
    pub fn drain_worker(&self, worker_id: &str) {
        self.with_state(|st, _| {
            if let Some(n) = st.worker_ids.get(worker_id).copied() {
                if let Some(w) = st.workers.get_mut(&n) {
                    w.draining = true;
                }
            }
        })
    }

    /// The worker's stream closed: its tasks are requeued.
    pub fn worker_gone(&self, worker_id: &str, why: &str) {
        self.with_state(|st, cfg| remove_worker(st, cfg, worker_id, why, true))
    }

    /// A worker reports on a task it holds. Refused (with the reason) if it
    /// does not hold that attempt.
    pub fn report(
        &self,
        worker_id: &str,
        id: TaskId,
        attempt: u32,
        report: Report,
    ) -> Result<(), CoreError> {
        self.with_state(|st, cfg| {
            let n = st.worker_ids.get(worker_id).copied();
            let holds = match (n, st.tasks.get(&id)) {
                (Some(n), Some(a)) => {
                    a.worker == Some(n)
                        && a.task.rt.attempt == attempt
                        && matches!(
                            a.task.rt.state,
                            TaskState::Running | TaskState::Compensating | TaskState::Pending
                        )
                }
                _ => false,
            };
            if !holds {
                return Err(CoreError::FailedPrecondition(format!(
                    "worker {worker_id} does not hold attempt {attempt} of task {id}"
                )));
            }
            let mut report = report;
            if let Some(n) = n {
                if let Some(w) = st.workers.get_mut(&n) {
                    w.last_seen = now_micros();
                    // A backend's log lines come from its engine (BullMQ's job
                    // log, Temporal's history); an embedded executor's are
                    // Switchyard's own; a remote worker's are the worker's.
                    if let Report::Log { source, .. } = &mut report {
                        if w.local {
                            *source = if w.keys.iter().any(|k| is_backend_key(k)) {
                                LogSource::Engine
                            } else {
                                LogSource::System
                            };
                        }
                    }
                }
            }
            apply_report(st, cfg, id, attempt, report);
            Ok(())
        })
    }

    /// Records a signal for an active COMPLEX task, durably, and wakes the
    /// executor that holds it.
    pub async fn signal(
        &self,
        id: TaskId,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<Task, CoreError> {
        let r = self.with_state(|st, _| {
            let Some(a) = st.tasks.get_mut(&id) else {
                return Err(None);
            };
            if a.task.spec.task_type != TaskType::Complex {
                return Err(Some(format!("task {id} is not a workflow (COMPLEX) task")));
            }
            let mut run = WorkflowRun::from_detail(a.task.rt.detail.as_deref());
            run.signals.push(SignalRecord {
                name: name.to_string(),
                payload,
                received_at: now_micros(),
                consumed_by: None,
            });
            a.task.rt.detail = serde_json::to_value(&run).ok().map(Box::new);
            let attempt = a.task.rt.attempt;
            let holder = a.worker;
            st.emit(
                id,
                EventKind::Updated,
                vec![LogEntry::system(
                    id,
                    attempt,
                    format!("signal {name:?} received"),
                )],
            );
            if let Some(w) = holder.and_then(|w| st.workers.get(&w)) {
                let _ = w.tx.send(Push::Signal {
                    task_id: id,
                    name: name.to_string(),
                });
            }
            Ok(())
        });
        match r {
            Ok(()) => {}
            Err(Some(msg)) => return Err(CoreError::FailedPrecondition(msg)),
            Err(None) => {
                let t = self.status(id).await?;
                return Err(CoreError::FailedPrecondition(format!(
                    "task {id} is {}; only an active workflow takes signals",
                    t.rt.state.as_str()
                )));
            }
        }
        self.inner.store.flush().await.map_err(CoreError::Store)?;
        self.status(id).await
    }

    /// Changes the workflow run of an active COMPLEX task held by `worker_id`
    /// and records it (an `UPDATED` event, with `logs` in the task's log).
    pub fn update_workflow<R>(
        &self,
        worker_id: &str,
        id: TaskId,
        f: impl FnOnce(&mut WorkflowRun) -> (R, Vec<String>),
    ) -> Result<R, CoreError> {
        self.with_state(|st, _| {
            let mut run = held_workflow(st, worker_id, id)?;
            let (r, logs) = f(&mut run);
            store_run(st, id, &run, logs)?;
            Ok(r)
        })
    }

    /// Schedules a child task (a workflow step or compensation) of a workflow
    /// held by `worker_id`, and records it in the run with `f`, in one
    /// atomic write group.
    pub fn start_child(
        &self,
        worker_id: &str,
        parent: TaskId,
        mut new: NewTask,
        f: impl FnOnce(&mut WorkflowRun, TaskId) -> Vec<String>,
    ) -> Result<TaskId, CoreError> {
        self.with_state(|st, cfg| {
            let mut run = held_workflow(st, worker_id, parent)?;
            new.spec.parent_id = Some(parent);
            let child = schedule_internal(st, cfg, new);
            let logs = f(&mut run, child.id);
            store_run(st, parent, &run, logs)?;
            Ok(child.id)
        })
    }

    /// The workflow run of a task (from memory or the store).
    pub async fn workflow_run(&self, id: TaskId) -> Result<WorkflowRun, CoreError> {
        let t = self.status(id).await?;
        Ok(WorkflowRun::from_detail(t.rt.detail.as_deref()))
    }

    /// Workers, for metrics and the dashboard.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let st = self.inner.state.lock();
        st.workers
            .values()
            .map(|w| WorkerInfo {
                id: w.id.to_string(),
                name: w.name.clone(),
                keys: w.keys.iter().map(|k| k.to_string()).collect(),
                slots: w.slots,
                immediate_slots: w.imm_slots,
                running: w.running.len(),
                local: w.local,
            })
            .collect()
    }

    /// Metrics.
    pub fn metrics(&self) -> MetricsSnapshot {
        let st = self.inner.state.lock();
        let now = now_micros();
        let mut queues: Vec<QueueInfo> = st
            .queues
            .iter()
            .filter(|(_, q)| {
                !q.ready.is_empty() || q.scheduled > 0 || q.running > 0 || !q.workers.is_empty()
            })
            .map(|(k, q)| {
                let ws: Vec<&WorkerSlot> =
                    q.workers.iter().filter_map(|w| st.workers.get(w)).collect();
                QueueInfo {
                    name: k.to_string(),
                    ready: q.ready.len() as u64,
                    scheduled: q.scheduled,
                    running: q.running,
                    workers: ws.len() as u32,
                    free_slots: ws
                        .iter()
                        .filter(|w| !w.draining)
                        .map(|w| w.free_normal() + w.free_imm())
                        .sum(),
                }
            })
            .collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        MetricsSnapshot {
            counts: st.counts.clone(),
            queues,
            throughput: st.throughput.per_sec(now),
            schedule_to_start: st.s2s.summary(now),
            run_time: st.run_time.summary(now),
            workers_connected: st.workers.values().filter(|w| !w.local).count() as u32,
            started_at: self.inner.started_at,
            last_seq: self.inner.hub.last_seq(),
        }
    }

    /// Starts a drain: nothing new is accepted or dispatched; running tasks get
    /// until `grace` to finish, then are requeued durably and their workers
    /// told to stop. Resolves once the store has committed everything.
    pub async fn shutdown(&self, grace: Duration) {
        self.with_state(|st, _| st.draining = true);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let running = self
                .inner
                .state
                .lock()
                .tasks
                .values()
                // Workflows and engine-held tasks cannot progress during a
                // drain; they are requeued and resume after the restart.
                .filter(|a| {
                    a.worker.is_some()
                        && !is_backend_key(&a.key)
                        && a.task.spec.task_type != TaskType::Complex
                })
                .count();
            if running == 0 {
                break;
            }
            tracing::info!(running, "draining: waiting for running tasks");
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        self.with_state(|st, cfg| {
            let ids: Vec<String> = st.workers.values().map(|w| w.id.to_string()).collect();
            for id in ids {
                remove_worker(st, cfg, &id, "server shutting down", false);
            }
        });
        if let Err(e) = self.inner.store.flush().await {
            tracing::error!(cause = %e, "final flush failed");
        }
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }

    async fn timer_loop(&self) {
        // Leases are checked when the earliest one can run out (a worker's
        // last message plus `lease_ttl`), not on a period, so a lost worker
        // is found on time.
        let mut next_lease_check = now_micros();
        loop {
            if self.inner.closed.load(Ordering::Acquire) {
                return;
            }
            let now = now_micros();
            let run_lease_check = now >= next_lease_check;
            let next = self.with_state(|st, cfg| {
                while let Some(&(t, id)) = st.timers.first() {
                    if t > now {
                        break;
                    }
                    st.timers.pop_first();
                    if let Some(a) = st.tasks.get_mut(&id) {
                        a.timer = None;
                        let key = a.key.clone();
                        let q = st.queue(&key);
                        q.scheduled = q.scheduled.saturating_sub(1);
                        st.place(id, now);
                    }
                }
                while let Some(&(t, id)) = st.deadlines.first() {
                    if t > now {
                        break;
                    }
                    st.deadlines.pop_first();
                    deadline_passed(st, cfg, id);
                }
                if run_lease_check {
                    let ttl = add_micros(0, cfg.lease_ttl);
                    let lost: Vec<String> = st
                        .workers
                        .values()
                        .filter(|w| !w.local && now - w.last_seen >= ttl)
                        .map(|w| w.id.to_string())
                        .collect();
                    for w in lost {
                        remove_worker(
                            st,
                            cfg,
                            &w,
                            "lease expired: no heartbeat from its worker",
                            true,
                        );
                    }
                    next_lease_check = st
                        .workers
                        .values()
                        .filter(|w| !w.local)
                        .map(|w| w.last_seen.saturating_add(ttl))
                        .min()
                        .unwrap_or(now + ttl)
                        .max(now + 1_000);
                }
                let until = [
                    st.timers.first().map(|t| t.0),
                    st.deadlines.first().map(|t| t.0),
                ]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_lease_check)
                .min(next_lease_check);
                st.timer_wake = until;
                until
            });
            let until = next;
            let wait = Duration::from_micros((until - now_micros()).max(0) as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.wake.notified() => {}
            }
        }
    }
}

fn held_workflow(st: &State, worker_id: &str, id: TaskId) -> Result<WorkflowRun, CoreError> {
    let n = st.worker_ids.get(worker_id).copied();
    let a = st
        .tasks
        .get(&id)
        .ok_or_else(|| CoreError::NotFound(id.to_string()))?;
    if n.is_none() || a.worker != n {
        return Err(CoreError::FailedPrecondition(format!(
            "worker {worker_id} does not hold workflow {id}"
        )));
    }
    Ok(WorkflowRun::from_detail(a.task.rt.detail.as_deref()))
}

/// Writes a workflow run back to its task and records the change (an
/// `UPDATED` event with `logs`).
fn store_run(
    st: &mut State,
    id: TaskId,
    run: &WorkflowRun,
    logs: Vec<String>,
) -> Result<(), CoreError> {
    let a = st
        .tasks
        .get_mut(&id)
        .ok_or_else(|| CoreError::NotFound(id.to_string()))?;
    a.task.rt.detail = serde_json::to_value(run).ok().map(Box::new);
    let attempt = a.task.rt.attempt;
    let logs = logs
        .into_iter()
        .map(|m| LogEntry::system(id, attempt, m))
        .collect();
    st.emit(id, EventKind::Updated, logs);
    Ok(())
}

/// Whether a task accepted by [`Core::schedule`] is queued while its insert
/// commits, rather than after: a task for a worker queue of the embedded
/// engine (a key without `#`) and with no idempotency key.
fn overlaps_commit(key: &str, spec: &TaskSpec) -> bool {
    !key.starts_with('#') && spec.idempotency_key.is_none()
}

fn schedule_internal(st: &mut State, cfg: &CoreConfig, new: NewTask) -> Task {
    let now = now_micros();
    let id = TaskId::now_v7();
    let reason = if new.delay.is_zero() {
        WaitingReason::Queued
    } else {
        WaitingReason::Delayed
    };
    let source = st.routes.route(&new.spec).1;
    let mut task = Task {
        id,
        created_at: now,
        spec: Arc::new(new.spec),
        rt: TaskRuntime::new_pending(add_micros(now, new.delay), source, reason),
    };
    task.rt.seq = st.seq();
    let cached = match &new.payload {
        Payload::Json(p) => Some(p.clone()),
        Payload::CopyOf(_) => None,
    };
    st.push_op(WriteOp::Insert {
        task: task.clone(),
        payload: new.payload,
        log: vec![LogEntry::system(
            id,
            0,
            format!("scheduled ({})", task.spec.task_type.as_str()),
        )],
        event: Some(EventKind::Scheduled),
    });
    st.counts
        .add(task.spec.task_type, &task.spec.name, TaskState::Pending, 1);
    st.add_pending(task.clone(), cached, cfg.payload_cache_bytes);
    task
}

/// Schedules the cleanup task of a task that failed for good or was cancelled.
fn schedule_cleanup(st: &mut State, cfg: &CoreConfig, id: TaskId, why: &str) {
    let Some(t) = st.finishing.get(&id) else {
        return;
    };
    let Some(cleanup) = t.spec.cleanup.clone() else {
        return;
    };
    let spec = &t.spec;
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("cleanup_of".to_string(), id.to_string());
    labels.insert("cleanup_reason".to_string(), why.to_string());
    let new_spec = TaskSpec {
        name: cleanup.clone(),
        task_type: TaskType::Simple,
        priority: spec.priority,
        max_attempts: spec.max_attempts.max(3),
        backoff: spec.backoff,
        execution_timeout: spec.execution_timeout,
        user_id: None,
        session_id: None,
        immediate: false,
        idempotency_key: None,
        labels,
        cleanup: None,
        target: Target::Simple { queue: None },
        traceparent: spec.traceparent.clone(),
        parent_id: None,
    };
    let new = NewTask {
        spec: new_spec,
        payload: Payload::CopyOf(id),
        delay: Duration::ZERO,
    };
    let task = schedule_internal(st, cfg, new);
    st.log(LogEntry::system(
        id,
        0,
        format!("cleanup task {cleanup} scheduled as {}", task.id),
    ));
}

/// Cancels an active task. `word` is what the worker is told
/// (`cancelled` or `disconnected`); `reason` goes to the task's log.
/// A workflow ended by force outside its engine: the steps it shows as
/// running or compensating are stopped (the engine cancels their tasks when
/// it learns of the end), so the final status shows no step still running.
fn stop_running_steps(rt: &mut TaskRuntime) {
    let Some(detail) = rt.detail.as_mut() else {
        return;
    };
    let Ok(mut run) = serde_json::from_value::<WorkflowRun>((**detail).clone()) else {
        return;
    };
    let now = now_micros();
    let mut changed = false;
    for step in &mut run.steps {
        if matches!(step.state, StepState::Running | StepState::Compensating) {
            step.state = StepState::Cancelled;
            step.finished_at = Some(now);
            step.wake_at = None;
            changed = true;
        }
    }
    if changed {
        if let Ok(v) = serde_json::to_value(&run) {
            **detail = v;
        }
    }
}

fn cancel_locked(
    st: &mut State,
    cfg: &CoreConfig,
    id: TaskId,
    word: &str,
    reason: &str,
    force: bool,
) -> Option<(CancelOutcome, Task)> {
    let a = st.tasks.get(&id)?;
    let attempt = a.task.rt.attempt;
    let why = if reason.is_empty() {
        "cancelled".to_string()
    } else {
        format!("cancelled: {reason}")
    };
    let held = a.worker.is_some();
    match a.task.rt.state {
        TaskState::Pending if !held => {
            st.finish(
                id,
                TaskState::Cancelled,
                EventKind::Cancelled,
                vec![LogEntry::system(id, attempt, why)],
            );
            schedule_cleanup(st, cfg, id, "cancelled");
            let t = st.finishing.get(&id)?.clone();
            Some((CancelOutcome::Cancelled, t))
        }
        TaskState::Pending | TaskState::Running | TaskState::Compensating => {
            let wid = a.worker;
            if let Some(w) = wid.and_then(|w| st.workers.get(&w)) {
                let _ = w.tx.send(Push::Cancel {
                    task_id: id,
                    attempt,
                    reason: word.to_string(),
                    force,
                });
            }
            if force || wid.is_none() {
                if let Some(a) = st.tasks.get_mut(&id) {
                    stop_running_steps(&mut a.task.rt);
                }
                st.finish(
                    id,
                    TaskState::Cancelled,
                    EventKind::Cancelled,
                    vec![LogEntry::system(id, attempt, format!("{why} (forced)"))],
                );
                schedule_cleanup(st, cfg, id, "cancelled");
                let t = st.finishing.get(&id)?.clone();
                return Some((CancelOutcome::Cancelled, t));
            }
            if !a.task.rt.cancel_requested {
                let local = wid
                    .and_then(|w| st.workers.get(&w))
                    .is_some_and(|w| w.local);
                if let Some(a) = st.tasks.get_mut(&id) {
                    a.task.rt.cancel_requested = true;
                }
                // A remote worker must acknowledge within its lease; an
                // in-process executor (a compensating workflow) is trusted to
                // finish the cancel itself.
                if !local {
                    let until = add_micros(now_micros(), cfg.lease_ttl);
                    st.set_deadline(id, Some((until, DeadlineKind::Cancel)));
                }
                st.emit(
                    id,
                    EventKind::CancelRequested,
                    vec![LogEntry::system(
                        id,
                        attempt,
                        format!("{why}; asked the worker to stop"),
                    )],
                );
            }
            let t = st.tasks.get(&id)?.task.clone();
            Some((CancelOutcome::CancelRequested, t))
        }
        _ => None,
    }
}

fn apply_report(st: &mut State, cfg: &CoreConfig, id: TaskId, attempt: u32, report: Report) {
    match report {
        Report::Progress { percent, message } => {
            if let Some(a) = st.tasks.get_mut(&id) {
                a.task.rt.progress = crate::domain::progress_percent(percent);
                a.task.rt.progress_message =
                    (!message.is_empty()).then(|| message.into_boxed_str());
            }
            st.emit(id, EventKind::Progress, Vec::new());
        }
        Report::Log {
            level,
            message,
            source,
        } => {
            let mut l = LogEntry::system(id, attempt, message);
            l.source = source;
            l.level = level;
            st.log(l);
        }
        Report::Complete(result) => {
            if let Some(a) = st.tasks.get_mut(&id) {
                a.task.rt.result = Some(Box::new(result));
                a.task.rt.progress = 100.0;
            }
            st.finish(
                id,
                TaskState::Completed,
                EventKind::Completed,
                vec![LogEntry::system(
                    id,
                    attempt,
                    format!("attempt {attempt} completed"),
                )],
            );
        }
        Report::ExternalId(x) => {
            if let Some(a) = st.tasks.get_mut(&id) {
                a.task.rt.external_id = Some(x);
            }
            st.emit(id, EventKind::Updated, Vec::new());
        }
        Report::Forwarded {
            external_id,
            waiting_reason,
        } => {
            let Some(a) = st.tasks.get_mut(&id) else {
                return;
            };
            a.task.rt.external_id = Some(external_id);
            a.task.rt.forwarded = true;
            if a.task.rt.state == TaskState::Pending {
                a.task.rt.waiting_reason = Some(waiting_reason);
            }
            st.lazily(|st| st.emit(id, EventKind::Updated, Vec::new()));
        }
        Report::Mirror {
            state,
            waiting_reason,
            progress,
            attempt: engine_attempt,
            message,
        } => {
            if !matches!(state, TaskState::Pending | TaskState::Running) {
                return;
            }
            st.set_state(id, state);
            if let Some(a) = st.tasks.get_mut(&id) {
                a.task.rt.forwarded = true;
                if state == TaskState::Pending {
                    a.task.rt.waiting_reason = waiting_reason.or(Some(WaitingReason::Queued));
                }
                if let Some(p) = progress {
                    a.task.rt.progress = crate::domain::progress_percent(p);
                }
                if let Some(n) = engine_attempt {
                    a.task.rt.attempt = n.max(1);
                }
                if state == TaskState::Running && a.task.rt.started_at.is_none() {
                    a.task.rt.started_at = Some(now_micros());
                }
            }
            let log = message
                .map(|m| {
                    let mut l = LogEntry::system(id, attempt, m);
                    l.source = LogSource::Engine;
                    vec![l]
                })
                .unwrap_or_default();
            let kind = if state == TaskState::Running {
                EventKind::Started
            } else {
                EventKind::Updated
            };
            st.emit(id, kind, log);
        }
        Report::Unreachable {
            retry_after,
            message,
        } => {
            let line = format!(
                "engine unreachable: {message}; kept and offered again in {}",
                humantime::format_duration(whole_millis(retry_after))
            );
            let log = LogEntry::system(id, attempt, line).level("warn");
            // The engine never ran it: this attempt does not count.
            st.offer_again(
                id,
                attempt,
                retry_after,
                WaitingReason::EngineUnreachable,
                log,
            );
        }
        Report::Busy {
            retry_after,
            message,
        } => {
            let line = format!(
                "{message}; not sent, kept and offered again in {}",
                humantime::format_duration(whole_millis(retry_after))
            );
            let log = LogEntry::system(id, attempt, line);
            // Nothing was sent: this attempt does not count.
            st.offer_again(id, attempt, retry_after, WaitingReason::CapacityFull, log);
        }
        Report::Compensating => {
            st.set_state(id, TaskState::Compensating);
            st.emit(
                id,
                EventKind::Updated,
                vec![LogEntry::system(
                    id,
                    attempt,
                    "compensating: undoing completed steps in reverse order",
                )],
            );
        }
        Report::End {
            state,
            result,
            error,
            message,
        } => {
            if !state.is_final() {
                return;
            }
            if let Some(a) = st.tasks.get_mut(&id) {
                if result.is_some() {
                    a.task.rt.result = result.map(Box::new);
                }
                if let Some(error) = error {
                    a.task.rt.last_error = Some(Box::new(error));
                }
            }
            let kind = match state {
                TaskState::Completed => EventKind::Completed,
                TaskState::Cancelled => EventKind::Cancelled,
                TaskState::Failed => EventKind::Failed,
                _ => EventKind::Updated,
            };
            let level = if state == TaskState::Completed {
                "info"
            } else {
                "warn"
            };
            st.finish(
                id,
                state,
                kind,
                vec![LogEntry::system(id, attempt, message).level(level)],
            );
            if matches!(
                state,
                TaskState::Failed | TaskState::Cancelled | TaskState::Compensated
            ) {
                schedule_cleanup(
                    st,
                    cfg,
                    id,
                    if state == TaskState::Failed {
                        "failed"
                    } else {
                        "cancelled"
                    },
                );
            }
        }
        Report::CancelAck => {
            st.finish(
                id,
                TaskState::Cancelled,
                EventKind::Cancelled,
                vec![LogEntry::system(
                    id,
                    attempt,
                    "the worker stopped the task; cancelled",
                )],
            );
            schedule_cleanup(st, cfg, id, "cancelled");
        }
        Report::Fail {
            mut error,
            retry_after,
        } => {
            error.attempt = attempt;
            let Some(a) = st.tasks.get_mut(&id) else {
                return;
            };
            let cancel_requested = a.task.rt.cancel_requested;
            let max = a.task.spec.max_attempts;
            let backoff = a.task.spec.backoff;
            a.task.rt.last_error = Some(Box::new(error.clone()));
            if cancel_requested {
                st.finish(
                    id,
                    TaskState::Cancelled,
                    EventKind::Cancelled,
                    vec![LogEntry::system(
                        id,
                        attempt,
                        format!("the worker stopped the task ({}); cancelled", error.message),
                    )],
                );
                schedule_cleanup(st, cfg, id, "cancelled");
            } else if error.retryable && attempt < max {
                let delay = retry_after.unwrap_or_else(|| backoff.delay(attempt));
                st.back_to_pending(id, delay, WaitingReason::BackingOff);
                st.emit(
                    id,
                    EventKind::Retrying,
                    vec![LogEntry::system(
                        id,
                        attempt,
                        format!(
                            "attempt {attempt} of {max} failed: {}; retrying in {}",
                            error.message,
                            humantime::format_duration(Duration::from_millis(
                                delay.as_millis() as u64
                            ))
                        ),
                    )
                    .level("warn")],
                );
            } else {
                let why = if error.retryable {
                    format!(
                        "attempt {attempt} of {max} failed: {}; no attempts left",
                        error.message
                    )
                } else {
                    format!(
                        "attempt {attempt} failed with a non-retryable error: {}",
                        error.message
                    )
                };
                st.finish(
                    id,
                    TaskState::Failed,
                    EventKind::Failed,
                    vec![LogEntry::system(id, attempt, why).level("error")],
                );
                schedule_cleanup(st, cfg, id, "failed");
            }
        }
    }
}

fn deadline_passed(st: &mut State, cfg: &CoreConfig, id: TaskId) {
    let Some(a) = st.tasks.get_mut(&id) else {
        return;
    };
    let Some((_, kind)) = a.deadline.take() else {
        return;
    };
    let attempt = a.task.rt.attempt;
    match kind {
        DeadlineKind::Cancel => {
            st.finish(
                id,
                TaskState::Cancelled,
                EventKind::Cancelled,
                vec![LogEntry::system(
                    id,
                    attempt,
                    "the worker did not acknowledge the cancel within the lease; cancelled",
                )
                .level("warn")],
            );
            schedule_cleanup(st, cfg, id, "cancelled");
        }
        DeadlineKind::Execution => {
            if let Some(w) = a.worker.and_then(|w| st.workers.get(&w)) {
                let _ = w.tx.send(Push::Cancel {
                    task_id: id,
                    attempt,
                    reason: "timeout".into(),
                    force: false,
                });
            }
            let timeout = a
                .task
                .spec
                .execution_timeout
                .or(cfg.default_execution_timeout)
                .unwrap_or_default();
            apply_report(
                st,
                cfg,
                id,
                attempt,
                Report::Fail {
                    error: TaskError {
                        message: format!(
                            "execution timed out after {}",
                            humantime::format_duration(timeout)
                        ),
                        kind: "timeout".into(),
                        details: String::new(),
                        retryable: true,
                        attempt,
                    },
                    retry_after: None,
                },
            );
        }
    }
}

fn remove_worker(
    st: &mut State,
    cfg: &CoreConfig,
    worker_id: &str,
    why: &str,
    counts_as_loss: bool,
) {
    let Some(n) = st.worker_ids.remove(worker_id) else {
        return;
    };
    let Some(w) = st.workers.remove(&n) else {
        return;
    };
    for k in &w.keys {
        if let Some(q) = st.queues.get_mut(k) {
            q.workers.retain(|x| *x != n);
        }
    }
    let _ = w.tx.send(Push::Close(why.to_string()));
    let mut running: Vec<TaskId> = w.running.iter().copied().collect();
    running.sort();
    if !running.is_empty() {
        tracing::warn!(
            worker_id,
            tasks = running.len(),
            why,
            "worker removed; requeueing its tasks"
        );
    }
    for id in running {
        // The worker is gone: its slot accounting went with it.
        if let Some(a) = st.tasks.get_mut(&id) {
            a.worker = None;
            let key = a.key.clone();
            let q = st.queue(&key);
            q.running = q.running.saturating_sub(1);
        }
        st.requeue_lost(
            id,
            &format!("worker {worker_id} lost ({why})"),
            counts_as_loss,
            cfg.max_lease_losses,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};
    use crate::store::{Completion, Counts as StoreCounts};
    use async_trait::async_trait;

    /// A store whose writer can be paused: while paused, submitted groups
    /// wait in order; on resume they are applied in that order, or groups
    /// with an insert fail without being written (a full disk, say).
    struct PausableStore {
        inner: Arc<SqliteStore>,
        held: parking_lot::Mutex<Option<Vec<HeldGroup>>>,
    }

    /// A submitted group waiting for the paused writer.
    type HeldGroup = (Vec<WriteOp>, Option<Completion>);

    impl PausableStore {
        fn pause(&self) {
            *self.held.lock() = Some(Vec::new());
        }
        fn resume(&self, fail_inserts: bool) {
            let held = self.held.lock().take().unwrap_or_default();
            for (ops, done) in held {
                let insert = ops.iter().any(|o| matches!(o, WriteOp::Insert { .. }));
                if fail_inserts && insert {
                    if let Some(done) = done {
                        let _ = done.send(Err(Arc::new(StoreError::Closed)));
                    }
                } else {
                    self.inner.submit(ops, done);
                }
            }
        }
    }

    #[async_trait]
    impl Store for PausableStore {
        fn submit(&self, ops: Vec<WriteOp>, done: Option<Completion>) {
            let mut held = self.held.lock();
            match held.as_mut() {
                Some(v) => v.push((ops, done)),
                None => self.inner.submit(ops, done),
            }
        }
        fn set_listener(&self, listener: Arc<dyn CommitListener>) {
            self.inner.set_listener(listener)
        }
        async fn flush(&self) -> Result<(), Arc<StoreError>> {
            self.inner.flush().await
        }
        async fn get(&self, id: TaskId) -> Result<Option<(Task, Arc<str>)>, StoreError> {
            self.inner.get(id).await
        }
        async fn payload(&self, id: TaskId) -> Result<Option<Arc<str>>, StoreError> {
            self.inner.payload(id).await
        }
        async fn list(&self, q: ListQuery) -> Result<Vec<Task>, StoreError> {
            self.inner.list(q).await
        }
        async fn logs(
            &self,
            id: TaskId,
            after: u64,
            limit: usize,
        ) -> Result<Vec<LogEntry>, StoreError> {
            self.inner.logs(id, after, limit).await
        }
        async fn load_active(&self) -> Result<Vec<Task>, StoreError> {
            self.inner.load_active().await
        }
        async fn changed_since(
            &self,
            after: u64,
            up_to: u64,
            filter: TaskFilter,
            limit: usize,
        ) -> Result<Vec<Task>, StoreError> {
            self.inner.changed_since(after, up_to, filter, limit).await
        }
        async fn counts(&self) -> Result<StoreCounts, StoreError> {
            self.inner.counts().await
        }
        async fn max_seq(&self) -> Result<u64, StoreError> {
            self.inner.max_seq().await
        }
    }

    fn spec(name: &str, idempotency_key: Option<&str>) -> TaskSpec {
        TaskSpec::test_simple(name, idempotency_key)
    }

    async fn core_on_pausable_store() -> (Core, Arc<PausableStore>) {
        let store = Arc::new(PausableStore {
            inner: SqliteStore::open(SqliteOptions::default()).unwrap(),
            held: parking_lot::Mutex::new(None),
        });
        let core = Core::start(store.clone(), CoreConfig::default())
            .await
            .unwrap();
        (core, store)
    }

    fn schedule_in_background(
        core: &Core,
        spec: TaskSpec,
    ) -> tokio::task::JoinHandle<Result<Scheduled, CoreError>> {
        let core = core.clone();
        tokio::spawn(async move {
            core.schedule(NewTask {
                spec,
                payload: Payload::Json(Arc::from("{}")),
                delay: Duration::ZERO,
            })
            .await
        })
    }

    async fn next_push(rx: &mut mpsc::UnboundedReceiver<Push>) -> Push {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a push within 5 s")
            .expect("the worker's channel is open")
    }

    /// Whether the worker is pushed nothing for `d`.
    async fn no_push_within(rx: &mut mpsc::UnboundedReceiver<Push>, d: Duration) -> bool {
        tokio::time::timeout(d, rx.recv()).await.is_err()
    }

    /// A core with one worker for `t`, the store paused, and a task being
    /// scheduled that the worker has been handed.
    async fn started_while_paused() -> (
        Core,
        Arc<PausableStore>,
        WorkerLink,
        tokio::task::JoinHandle<Result<Scheduled, CoreError>>,
        Assignment,
    ) {
        let (core, store) = core_on_pausable_store().await;
        let mut link = core
            .register_worker("w", &["t".to_string()], 1, 0, false)
            .unwrap();
        store.pause();
        let call = schedule_in_background(&core, spec("t", None));
        let Push::Assign(a) = next_push(&mut link.rx).await else {
            panic!("expected an assignment");
        };
        (core, store, link, call, a)
    }

    /// A worker starts a task while its insert is still being committed;
    /// the caller is answered, and the task's events published, only once
    /// the insert is durable, and the store then holds it RUNNING.
    #[tokio::test]
    async fn a_task_starts_while_its_insert_commits_and_is_answered_once_durable() {
        let (_core, store, _link, mut call, a) = started_while_paused().await;
        let id = a.task.id;
        assert_eq!(a.task.rt.state, TaskState::Running);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut call)
                .await
                .is_err(),
            "answered before the insert was durable"
        );
        assert!(store.inner.get(id).await.unwrap().is_none());
        store.resume(false);
        let scheduled = call.await.unwrap().unwrap();
        assert_eq!(scheduled.task.id, id);
        assert!(!scheduled.existing);
        store.flush().await.unwrap();
        let (stored, _) = store.inner.get(id).await.unwrap().unwrap();
        assert_eq!(stored.rt.state, TaskState::Running);
        let logs = crate::store::log_messages(&*store, id).await;
        assert!(logs[0].starts_with("scheduled"), "{logs:?}");
        assert!(logs[1].starts_with("attempt 1 started"), "{logs:?}");
    }

    /// When the insert of a task that a worker already started fails, the
    /// caller gets the error, the worker is told to stop, its report is
    /// refused, and nothing of the task remains: no status, no count, no row.
    #[tokio::test]
    async fn a_started_task_whose_insert_fails_is_withdrawn() {
        let (core, store, mut link, call, a) = started_while_paused().await;
        let id = a.task.id;
        store.resume(true);
        assert!(matches!(call.await.unwrap(), Err(CoreError::Store(_))));
        match next_push(&mut link.rx).await {
            Push::Cancel { task_id, force, .. } => {
                assert_eq!(task_id, id);
                assert!(force);
            }
            other => panic!("expected a cancel, got {other:?}"),
        }
        assert!(core
            .report(&link.id, id, 1, Report::Complete(serde_json::json!({})))
            .is_err());
        store.flush().await.unwrap();
        assert!(matches!(core.status(id).await, Err(CoreError::NotFound(_))));
        assert_eq!(core.metrics().counts.total(), [0; 7]);
        // The slot is free again: the next task starts on the same worker.
        let call = schedule_in_background(&core, spec("t", None));
        assert!(matches!(next_push(&mut link.rx).await, Push::Assign(_)));
        assert!(call.await.unwrap().is_ok());
    }

    /// A task with an idempotency key may turn out to be an existing one:
    /// it is queued only once the store has said it is new.
    #[tokio::test]
    async fn a_task_with_an_idempotency_key_waits_for_its_commit() {
        let (core, store) = core_on_pausable_store().await;
        let mut link = core
            .register_worker("w", &["t".to_string()], 1, 0, false)
            .unwrap();
        store.pause();
        let call = schedule_in_background(&core, spec("t", Some("k1")));
        assert!(
            no_push_within(&mut link.rx, Duration::from_millis(100)).await,
            "dispatched before its commit"
        );
        store.resume(false);
        let first = call.await.unwrap().unwrap();
        assert!(matches!(next_push(&mut link.rx).await, Push::Assign(_)));
        let again = schedule_in_background(&core, spec("t", Some("k1")))
            .await
            .unwrap()
            .unwrap();
        assert!(again.existing);
        assert_eq!(again.task.id, first.task.id);
        assert!(
            no_push_within(&mut link.rx, Duration::from_millis(100)).await,
            "the existing task ran again"
        );
    }

    /// Every pending task holds one `Box<Active>` and one `Arc<TaskSpec>`,
    /// so their sizes decide the RSS with a million pending tasks. mimalloc
    /// serves them from size classes 64 bytes apart at this size (320, 384,
    /// 448, 512): a field that pushes either past its class costs 64 MiB
    /// per million tasks, not 8. Box rare fields instead of growing these.
    #[test]
    fn a_pending_task_fits_its_allocator_size_classes() {
        let active = std::mem::size_of::<Active>();
        // An Arc's allocation is the value plus two reference counts.
        let spec = std::mem::size_of::<TaskSpec>() + 2 * std::mem::size_of::<usize>();
        assert!(active <= 320, "Active is {active} bytes");
        assert!(spec <= 384, "Arc<TaskSpec>'s allocation is {spec} bytes");
    }

    fn routed_to_bullmq() -> CoreConfig {
        CoreConfig {
            routes: Routes {
                bullmq_queues: vec!["t".into()],
                temporal_workflows: vec![],
            },
            ..CoreConfig::default()
        }
    }

    /// The backend's "the engine has the job" is written lazily: the core
    /// answers with it at once, and the store has it with the next commit.
    #[tokio::test]
    async fn forwarded_is_shown_at_once_and_rides_on_the_next_commit() {
        let store = SqliteStore::open(SqliteOptions {
            lazy_within: Duration::from_secs(30),
            ..Default::default()
        })
        .unwrap();
        let core = Core::start(store.clone(), routed_to_bullmq())
            .await
            .unwrap();
        let mut link = core
            .register_worker("bullmq", &[BULLMQ_KEY.to_string()], 100, 0, true)
            .unwrap();
        let first = schedule_in_background(&core, spec("t", None))
            .await
            .unwrap()
            .unwrap();
        let Push::Assign(a) = next_push(&mut link.rx).await else {
            panic!("expected an assignment");
        };
        assert_eq!(a.task.id, first.task.id);
        assert!(!a.again);
        let id = a.task.id;
        let forwarded = Report::Forwarded {
            external_id: id.to_string(),
            waiting_reason: WaitingReason::Delayed,
        };
        core.report(&link.id, id, a.task.rt.attempt, forwarded)
            .unwrap();
        let shown = core.status(id).await.unwrap();
        assert_eq!(shown.rt.state, TaskState::Pending);
        assert_eq!(shown.rt.external_id.as_deref(), Some(&*id.to_string()));
        assert_eq!(shown.rt.waiting_reason, Some(WaitingReason::Delayed));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (stored, _) = store.get(id).await.unwrap().unwrap();
        assert!(!stored.rt.forwarded && stored.rt.external_id.is_none());
        // The hand-over to the backend was lazy too.
        assert_eq!(store.logs(id, 0, 10).await.unwrap().len(), 1);
        // The next write that needs a commit (another task's insert)
        // carries it.
        schedule_in_background(&core, spec("t", None))
            .await
            .unwrap()
            .unwrap();
        let (stored, _) = store.get(id).await.unwrap().unwrap();
        assert!(stored.rt.forwarded);
        assert_eq!(stored.rt.external_id.as_deref(), Some(&*id.to_string()));
        let logs = crate::store::log_messages(&*store, id).await;
        assert_eq!(logs, ["scheduled (SIMPLE)", "handed to the bullmq backend"]);
    }

    /// After a restart, a task its backend may have had (handed to it, the
    /// lazy "forwarded" not yet written) is offered again as `again`, so the
    /// backend reads where its job is; a forwarded one is resumed.
    #[tokio::test]
    async fn a_backend_task_not_known_forwarded_is_offered_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions {
            path: Some(dir.path().join("t.db")),
            ..Default::default()
        };
        let store = SqliteStore::open(opts.clone()).unwrap();
        let mut ids = Vec::new();
        for forwarded in [false, true] {
            let mut rt = TaskRuntime::new_pending(0, Source::Bullmq, WaitingReason::Queued);
            rt.forwarded = forwarded;
            let t = Task {
                id: TaskId::now_v7(),
                created_at: now_micros(),
                spec: Arc::new(spec("t", None)),
                rt,
            };
            ids.push(t.id);
            store.submit(
                vec![WriteOp::Insert {
                    task: t,
                    payload: Payload::Json(Arc::from("{}")),
                    log: vec![],
                    event: None,
                }],
                None,
            );
        }
        store.close();
        drop(store);
        let store = SqliteStore::open(opts).unwrap();
        let core = Core::start(store, routed_to_bullmq()).await.unwrap();
        let mut link = core
            .register_worker("bullmq", &[BULLMQ_KEY.to_string()], 100, 0, true)
            .unwrap();
        let mut again = HashMap::new();
        for _ in 0..2 {
            let Push::Assign(a) = next_push(&mut link.rx).await else {
                panic!("expected an assignment");
            };
            again.insert(a.task.id, (a.again, a.task.rt.forwarded));
        }
        assert_eq!(again[&ids[0]], (true, false), "not known forwarded");
        assert_eq!(again[&ids[1]], (false, true), "forwarded: resumed");
    }
}
