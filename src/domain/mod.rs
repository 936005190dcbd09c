//! The domain model: what a task is, independent of protobuf and of storage.
//!
//! Owns the task types, states, options and the pure rules over them (final
//! states, backoff). It must not know about gRPC, SQL or any engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A task id: a UUIDv7, so ids sort by creation time.
pub type TaskId = Uuid;

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// The current wall-clock time in microseconds since the epoch.
pub fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Adds a duration to a timestamp, saturating.
pub fn add_micros(t: Micros, d: Duration) -> Micros {
    t.saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Progress in percent as the domain keeps it: within 0..=100, and a number
/// JSON can hold. A NaN (which a worker or an engine may send) reads as 0;
/// infinities clamp to the ends.
pub fn progress_percent(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 100.0)
    }
}

pub mod debounce;
pub mod failure;
pub mod flow;
pub mod namespace;
pub mod retention;
pub mod schedule;

pub use failure::FailureKind;

/// The rules every edge and the workflow parser apply to names and sizes:
/// one place, so the gRPC API, the admin API and a workflow definition
/// refuse the same things.
pub mod rules {
    use std::time::Duration;

    /// The longest task, queue, signal or worker task name.
    pub const MAX_NAME_BYTES: usize = 200;
    /// The priority scale: higher runs first.
    pub const PRIORITY: std::ops::RangeInclusive<i32> = -1000..=1000;
    /// The most attempts a task may have.
    pub const MAX_ATTEMPTS: u32 = 100;
    /// The most values one filter list (`task_ids`, `names`, …) may hold.
    pub const MAX_FILTER_VALUES: usize = 1000;
    /// Most tasks in one `ScheduleTasks` call.
    pub const MAX_BULK_TASKS: usize = 1000;
    /// The longest user or session id.
    pub const MAX_OWNER_BYTES: usize = 256;
    /// The longest error kind (`TaskError.kind`, and the `error_kind`
    /// filter).
    pub const MAX_ERROR_KIND_BYTES: usize = 128;
    /// The longest reason of a cancel or a disconnect.
    pub const MAX_REASON_BYTES: usize = 1024;
    /// The longest workflow definition `RegisterWorkflow` takes.
    pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;
    /// The longest `Fail.retry_after` a worker may ask for.
    pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 86_400);

    /// Checks a task name (also queue names and worker task names).
    pub fn check_name(v: &str) -> Result<(), String> {
        if v.is_empty() {
            return Err("must not be empty".into());
        }
        if v.len() > MAX_NAME_BYTES {
            return Err(format!(
                "must be at most {MAX_NAME_BYTES} bytes, got {}",
                v.len()
            ));
        }
        if let Some(c) = v
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/')))
        {
            return Err(format!(
                "may hold only letters, digits and _ - . : / (found {c:?})"
            ));
        }
        Ok(())
    }
}

/// Bounded text: every value a request, a worker or an engine sends may be
/// as long as a message allows, so what the server keeps of it, and what an
/// error quotes back, is cut here.
pub mod text {
    /// The longest prefix of `s` of at most `max` bytes that ends on a
    /// character boundary.
    pub fn prefix(s: &str, max: usize) -> &str {
        if s.len() <= max {
            return s;
        }
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        &s[..end]
    }

    /// `s` cut to at most `max` bytes, with `…` appended when it was cut.
    pub fn cut(s: &str, max: usize) -> String {
        let p = prefix(s, max);
        if p.len() == s.len() {
            s.to_string()
        } else {
            format!("{p}…")
        }
    }

    /// How an error message quotes a value it refuses: at most
    /// [`QUOTE_BYTES`] of it, debug-escaped, and its length when it was
    /// longer, so an error never echoes a large input.
    pub fn quote(s: &str) -> String {
        let p = prefix(s, QUOTE_BYTES);
        if p.len() == s.len() {
            format!("{s:?}")
        } else {
            format!("{p:?}… ({} bytes)", s.len())
        }
    }

    /// The most of a refused value an error message quotes.
    pub const QUOTE_BYTES: usize = 64;

    /// A duration for a log line or a message: human units, rounded down
    /// to whole milliseconds (`1s 250ms`, not `1s 250ms 3us 12ns`).
    pub fn duration(d: std::time::Duration) -> String {
        humantime::format_duration(std::time::Duration::from_millis(d.as_millis() as u64))
            .to_string()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn cuts_on_character_boundaries() {
            assert_eq!(prefix("héllo", 2), "h");
            assert_eq!(cut("héllo", 3), "hé…");
            assert_eq!(cut("abc", 3), "abc");
            let long = "x".repeat(1 << 20);
            assert!(quote(&long).len() < 100);
            assert!(quote(&long).ends_with("(1048576 bytes)"));
            assert_eq!(quote("a\nb"), "\"a\\nb\"");
        }
    }
}

/// The kind of work; it picks the executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskType {
    /// A short queue job run by a worker.
    Simple,
    /// A workflow.
    Complex,
    /// A webhook call.
    Integration,
}

impl TaskType {
    /// All types, in order.
    pub const ALL: [TaskType; 3] = [TaskType::Simple, TaskType::Complex, TaskType::Integration];

    /// Stable small integer for storage.
    pub fn code(self) -> i64 {
        match self {
            TaskType::Simple => 1,
            TaskType::Complex => 2,
            TaskType::Integration => 3,
        }
    }

    /// Inverse of [`TaskType::code`].
    pub fn from_code(c: i64) -> Option<Self> {
        Some(match c {
            1 => TaskType::Simple,
            2 => TaskType::Complex,
            3 => TaskType::Integration,
            _ => return None,
        })
    }

    /// Upper-case name, as in metrics maps.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Simple => "SIMPLE",
            TaskType::Complex => "COMPLEX",
            TaskType::Integration => "INTEGRATION",
        }
    }
}

/// The engine that runs a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Source {
    /// Not decided yet.
    #[default]
    Unspecified,
    /// Switchyard's embedded engine.
    Embedded,
    /// BullMQ on Redis.
    Bullmq,
    /// A Temporal cluster.
    Temporal,
    /// n8n or another webhook.
    N8n,
}

impl Source {
    /// Stable small integer for storage.
    pub fn code(self) -> i64 {
        match self {
            Source::Unspecified => 0,
            Source::Embedded => 1,
            Source::Bullmq => 2,
            Source::Temporal => 3,
            Source::N8n => 4,
        }
    }

    /// Inverse of [`Source::code`].
    pub fn from_code(c: i64) -> Self {
        match c {
            1 => Source::Embedded,
            2 => Source::Bullmq,
            3 => Source::Temporal,
            4 => Source::N8n,
            _ => Source::Unspecified,
        }
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskState {
    /// Accepted, not running.
    Pending,
    /// An attempt is in progress.
    Running,
    /// Finished successfully.
    Completed,
    /// Failed for good.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Running compensations.
    Compensating,
    /// Compensations done.
    Compensated,
}

impl TaskState {
    /// All states, in order.
    pub const ALL: [TaskState; 7] = [
        TaskState::Pending,
        TaskState::Running,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::Compensating,
        TaskState::Compensated,
    ];

    /// Whether the state never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Completed
                | TaskState::Failed
                | TaskState::Cancelled
                | TaskState::Compensated
        )
    }

    /// Stable small integer for storage.
    pub fn code(self) -> i64 {
        match self {
            TaskState::Pending => 1,
            TaskState::Running => 2,
            TaskState::Completed => 3,
            TaskState::Failed => 4,
            TaskState::Cancelled => 5,
            TaskState::Compensating => 6,
            TaskState::Compensated => 7,
        }
    }

    /// Inverse of [`TaskState::code`].
    pub fn from_code(c: i64) -> Option<Self> {
        Some(match c {
            1 => TaskState::Pending,
            2 => TaskState::Running,
            3 => TaskState::Completed,
            4 => TaskState::Failed,
            5 => TaskState::Cancelled,
            6 => TaskState::Compensating,
            7 => TaskState::Compensated,
            _ => return None,
        })
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Compensating => "compensating",
            TaskState::Compensated => "compensated",
        }
    }
}

/// Why a pending task waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WaitingReason {
    /// Behind other tasks.
    Queued,
    /// No worker registered the name.
    NoWorker,
    /// Delayed until `run_at`.
    Delayed,
    /// Backing off until `run_at`.
    BackingOff,
    /// Every slot busy.
    CapacityFull,
    /// The external engine cannot be reached.
    EngineUnreachable,
    /// Its concurrency key has as many tasks running as its policy allows
    /// (`TaskRuntime::hold` names the rule, the key and the limit).
    ConcurrencyLimit,
    /// Its name or queue is paused (`TaskRuntime::hold` names it).
    QueuePaused,
    /// Its rate limit has no token now (`TaskRuntime::hold` names the rate
    /// limit and when the task may start).
    RateLimited,
}

impl WaitingReason {
    /// Stable small integer for storage.
    pub fn code(self) -> i64 {
        match self {
            WaitingReason::Queued => 1,
            WaitingReason::NoWorker => 2,
            WaitingReason::Delayed => 3,
            WaitingReason::BackingOff => 4,
            WaitingReason::CapacityFull => 5,
            WaitingReason::EngineUnreachable => 6,
            WaitingReason::ConcurrencyLimit => 7,
            WaitingReason::QueuePaused => 8,
            WaitingReason::RateLimited => 9,
        }
    }

    /// Inverse of [`WaitingReason::code`].
    pub fn from_code(c: i64) -> Option<Self> {
        Some(match c {
            1 => WaitingReason::Queued,
            2 => WaitingReason::NoWorker,
            3 => WaitingReason::Delayed,
            4 => WaitingReason::BackingOff,
            5 => WaitingReason::CapacityFull,
            6 => WaitingReason::EngineUnreachable,
            7 => WaitingReason::ConcurrencyLimit,
            8 => WaitingReason::QueuePaused,
            9 => WaitingReason::RateLimited,
            _ => return None,
        })
    }
}

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackoffKind {
    /// Always the base delay.
    Fixed,
    /// Doubling from the base delay up to the cap.
    Exponential,
}

/// The delay between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// How it grows.
    pub kind: BackoffKind,
    /// The first delay.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// The cap.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            kind: BackoffKind::Exponential,
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay after attempt `attempt` (1-based) failed.
    pub fn delay(&self, attempt: u32) -> Duration {
        match self.kind {
            BackoffKind::Fixed => self.base,
            BackoffKind::Exponential => {
                let exp = attempt.saturating_sub(1).min(40);
                let factor = 1u64 << exp;
                let d = self
                    .base
                    .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX));
                d.min(self.max.max(self.base))
            }
        }
    }
}

/// Where a task goes, per type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Target {
    /// SIMPLE: a queue.
    Simple {
        /// The queue (defaults to the name on engines that need one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<String>,
    },
    /// COMPLEX: a workflow.
    Complex {
        /// The workflow type.
        workflow_type: String,
        /// Arguments, as JSON values.
        workflow_args: Vec<serde_json::Value>,
        /// The engine's task queue.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_queue: Option<String>,
        /// A BullMQ queue that follows the workflow.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tracking_queue: Option<String>,
        /// The workflow id (default the task id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workflow_id: Option<String>,
    },
    /// INTEGRATION: a webhook.
    Integration {
        /// n8n workflow id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workflow_id: Option<String>,
        /// Full URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        webhook_url: Option<String>,
        /// The external system.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        integration_source: Option<String>,
    },
}

impl Target {
    /// A short description for display.
    pub fn describe(&self) -> String {
        match self {
            Target::Simple { queue } => queue.clone().unwrap_or_default(),
            Target::Complex { workflow_type, .. } => workflow_type.clone(),
            Target::Integration {
                workflow_id,
                webhook_url,
                ..
            } => webhook_url
                .clone()
                .or_else(|| workflow_id.as_ref().map(|w| format!("n8n:{w}")))
                .unwrap_or_default(),
        }
    }
}

/// What was asked for: the immutable part of a task.
///
/// Stored as JSON (with [`TaskRuntime`], most of a task's row). An unset
/// `Option` field is left out of it rather than written as `null` (287 of
/// a new task's 647 bytes of JSON). Every version reads an absent `Option`
/// field as `None` (serde's rule for `Option` fields, `default` or not), so
/// rows written either way read the same in both directions
/// (`unset_fields_are_left_out_and_read_as_before`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task name.
    pub name: String,
    /// The type.
    pub task_type: TaskType,
    /// Priority, -1000..=1000, higher first.
    pub priority: i32,
    /// Attempts in all.
    pub max_attempts: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
    /// Time limit of one attempt.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub execution_timeout: Option<Duration>,
    /// Owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Immediate lane.
    pub immediate: bool,
    /// Idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<Box<str>>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Cleanup task name.
    /// (Boxed twice: the field costs one pointer, which keeps
    /// `Arc<TaskSpec>` in its allocator size class with `dedup`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<Box<Box<str>>>,
    /// Per-type target.
    pub target: Target,
    /// W3C traceparent of the scheduling request. (A boxed str, not a
    /// String: 8 bytes that keep the spec in a smaller allocator size class.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<Box<str>>,
    /// The workflow this task is a step of, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<TaskId>,
    /// How long it is kept once it has ended, where the task sets it
    /// (boxed: most tasks leave it to the server's policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Box<retention::Retention>>,
    /// The concurrency key (a user, tenant or resource id): the flow rules
    /// limit how many tasks of one key run at once and serve keys
    /// round-robin. At most [`flow::MAX_KEY_BYTES`] as the caller gives it;
    /// kept qualified by the task's namespace outside `default`
    /// (`namespace::qualify_key`), so two namespaces' keys never share a
    /// count; the edges show it bare.
    /// (Boxed twice: the field costs one pointer, see
    /// `a_pending_task_fits_its_allocator_size_classes`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<Box<flow::Key>>,
    /// The idempotency key's window and the debounce key
    /// (`debounce::Dedup`); boxed: most tasks have neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<Box<debounce::Dedup>>,
    /// Its first log line, "scheduled (TYPE)", is not stored: it is derived
    /// from the task when its log is read ([`Task::derived_first_line`]),
    /// which spares every new task a log row (an insert into the log's
    /// B-tree, and its removal). Set by the core on tasks whose first line
    /// says nothing else (no delay); rows of earlier versions lack it and
    /// keep their stored line. Here rather than in [`TaskRuntime`]: it is
    /// fixed at creation, and the spec has room for it in its size class.
    #[serde(default, skip_serializing_if = "is_false")]
    pub first_line_derived: bool,
}

impl TaskSpec {
    /// The concurrency key, if the task has one.
    pub fn concurrency_key(&self) -> Option<&str> {
        self.concurrency_key.as_deref().map(|k| &*k.0)
    }

    /// The schedule that fired this task (its `switchyard.schedule` label).
    pub fn schedule_id(&self) -> Option<&str> {
        self.labels.get(schedule::LABEL).map(String::as_str)
    }

    /// The namespace the task belongs to (its `switchyard.namespace`
    /// label; `default` without one).
    pub fn namespace(&self) -> &str {
        self.labels
            .get(namespace::LABEL)
            .map_or(namespace::DEFAULT, String::as_str)
    }

    /// The namespace column the stores keep: none for `default`.
    pub fn namespace_column(&self) -> Option<&str> {
        self.labels.get(namespace::LABEL).map(String::as_str)
    }

    /// A task named `name` of type `task_type` for `target`, with every
    /// option at its default: priority 0, one attempt, the default backoff,
    /// no time limit, owner, session, idempotency key, labels, cleanup,
    /// trace, parent or retention of its own. Callers set what they know
    /// with struct update syntax, so a new field has one default.
    pub fn new(name: impl Into<String>, task_type: TaskType, target: Target) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            task_type,
            priority: 0,
            max_attempts: 1,
            backoff: Backoff::default(),
            execution_timeout: None,
            user_id: None,
            session_id: None,
            immediate: false,
            idempotency_key: None,
            labels: BTreeMap::new(),
            cleanup: None,
            target,
            traceparent: None,
            parent_id: None,
            retention: None,
            concurrency_key: None,
            dedup: None,
            first_line_derived: false,
        }
    }

    /// A SIMPLE task named `name` of user `u1`, with default options: the
    /// unit tests' fixture.
    #[cfg(test)]
    pub(crate) fn test_simple(name: &str, idempotency_key: Option<&str>) -> TaskSpec {
        TaskSpec {
            user_id: Some("u1".into()),
            idempotency_key: idempotency_key.map(Box::from),
            ..TaskSpec::new(name, TaskType::Simple, Target::Simple { queue: None })
        }
    }
}

/// An error reported by a worker or engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TaskError {
    /// Message.
    pub message: String,
    /// Kind or class.
    pub kind: String,
    /// Detail (bounded).
    pub details: String,
    /// Whether another attempt was allowed.
    pub retryable: bool,
    /// The attempt that failed.
    pub attempt: u32,
}

impl TaskError {
    /// A failure Switchyard reports itself (not retryable, attempt 0: the
    /// core sets the attempt it ends).
    pub fn of(kind: FailureKind, message: impl Into<String>) -> TaskError {
        TaskError {
            message: message.into(),
            kind: kind.into(),
            ..Default::default()
        }
    }
}

/// The mutable part of a task. Stored as JSON; an unset `Option` field is
/// left out of it, as in [`TaskSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRuntime {
    /// State.
    pub state: TaskState,
    /// Current or last attempt (0 before the first).
    pub attempt: u32,
    /// When it may start.
    pub run_at: Micros,
    /// When the current or last attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Micros>,
    /// When it became final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Micros>,
    /// Progress 0..100. Rows written before NaN was refused hold `null`
    /// here; they read as 0.
    #[serde(deserialize_with = "progress_or_null")]
    pub progress: f64,
    /// Progress message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_message: Option<Box<str>>,
    /// Result of a completed task (boxed, as the other rare fields are:
    /// a pending task carries none of them, and each inline byte costs a
    /// million pending tasks a megabyte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<serde_json::Value>>,
    /// Last error. Boxed: most tasks never have one, and the 72 bytes it
    /// would take inline keep every in-memory task a size class larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Box<TaskError>>,
    /// The engine's id (boxed: 8 bytes less than a `String` in every
    /// in-memory task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<Box<str>>,
    /// The engine.
    pub source: Source,
    /// Why it waits, while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<WaitingReason>,
    /// A cancel is pending acknowledgement.
    pub cancel_requested: bool,
    /// The worker running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<Box<str>>,
    /// How often its worker was lost during the current attempt.
    pub lease_losses: u32,
    /// The next delivery repeats `attempt` instead of starting the next
    /// one: the attempt did not finish (its worker was lost, the server
    /// restarted, or its engine was unreachable), so `attempt` stays the
    /// current or last attempt while the task waits.
    #[serde(default, skip_serializing_if = "is_false")]
    pub repeat: bool,
    /// Sequence number of the last event.
    pub seq: u64,
    /// The run: 0 for the task's first, one more each time it is run again
    /// by request (`RetryTask`, `ReplayWorkflow`), at most [`MAX_RUN`]. A
    /// new run starts a new attempt budget (`attempt` starts again from 0).
    /// A `u16`: with the other small fields it fills the padding the
    /// runtime has anyway, so a pending task stays in its allocator size
    /// class (see `core::tests`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: u16,
    /// Whether it has been handed to its external engine (outbox).
    pub forwarded: bool,
    /// Executor-specific state (workflow steps), as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Box<serde_json::Value>>,
    /// While held by a flow rule (`ConcurrencyLimit`, `QueuePaused`,
    /// `RateLimited`): the
    /// rule and its figures at the time of the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Box<flow::Hold>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// The most runs a task may have (`TaskRuntime::run`).
pub const MAX_RUN: u16 = u16::MAX;

fn progress_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.map_or(0.0, progress_percent))
}

impl TaskRuntime {
    /// The kind of the last error, if it has one with a kind (what the
    /// stores keep in the `error_kind` column, and `TaskFilter::error_kind`
    /// selects).
    pub fn error_kind(&self) -> Option<&str> {
        self.last_error
            .as_deref()
            .map(|e| e.kind.as_str())
            .filter(|k| !k.is_empty())
    }

    /// A new pending task's runtime.
    pub fn new_pending(run_at: Micros, source: Source, reason: WaitingReason) -> Self {
        TaskRuntime {
            state: TaskState::Pending,
            attempt: 0,
            run_at,
            started_at: None,
            finished_at: None,
            progress: 0.0,
            progress_message: None,
            result: None,
            last_error: None,
            external_id: None,
            source,
            waiting_reason: Some(reason),
            cancel_requested: false,
            worker_id: None,
            lease_losses: 0,
            repeat: false,
            seq: 0,
            run: 0,
            forwarded: false,
            detail: None,
            hold: None,
        }
    }
}

/// A whole task: id, creation time, spec and runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Id.
    pub id: TaskId,
    /// Creation time.
    pub created_at: Micros,
    /// What was asked.
    pub spec: Arc<TaskSpec>,
    /// Where it is.
    pub rt: TaskRuntime,
}

impl Task {
    /// Its first log line, when it is derived rather than stored
    /// ([`TaskSpec::first_line_derived`]): "scheduled (TYPE)" at its
    /// creation time, numbered [`LogEntry::DERIVED_LINE`].
    pub fn derived_first_line(&self) -> Option<LogEntry> {
        self.spec.first_line_derived.then(|| LogEntry {
            line: LogEntry::DERIVED_LINE,
            time: self.created_at,
            ..LogEntry::system(self.id, 0, LogEntry::scheduled(self.spec.task_type))
        })
    }
}

/// A new task to schedule, as validated by the API edge.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// The spec.
    pub spec: TaskSpec,
    /// The payload.
    pub payload: Payload,
    /// Delay before the first attempt.
    pub delay: Duration,
}

/// The payload of an inserted task.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A JSON object, serialised.
    Json(Arc<str>),
    /// The payload of another stored task (a cleanup task reuses the
    /// original's).
    CopyOf(TaskId),
}

impl Payload {
    /// Its bytes of serialised JSON, as a key's `max_payload_bytes` counts
    /// them (none for a copy: its bytes were counted once).
    pub fn json_len(&self) -> usize {
        match self {
            Payload::Json(s) => s.len(),
            Payload::CopyOf(_) => 0,
        }
    }
}

/// Where a workflow step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waiting for its dependencies.
    #[default]
    Pending,
    /// Running or waiting (timer, signal).
    Running,
    /// Done.
    Completed,
    /// Failed for good.
    Failed,
    /// Stopped by a cancel.
    Cancelled,
    /// Not run.
    Skipped,
    /// Compensation running.
    Compensating,
    /// Compensation done.
    Compensated,
    /// Compensation failed.
    CompensationFailed,
}

/// One step of a workflow run, as kept in a COMPLEX task's
/// `TaskRuntime::detail` (see [`WorkflowRun`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StepRun {
    /// Step id from the definition.
    pub id: String,
    /// `task`, `webhook`, `timer` or `signal`.
    pub kind: String,
    /// Where it is.
    pub state: StepState,
    /// Attempts made.
    pub attempt: u32,
    /// Output.
    pub output: Option<serde_json::Value>,
    /// Last error.
    pub error: Option<TaskError>,
    /// Start time.
    pub started_at: Option<Micros>,
    /// End time.
    pub finished_at: Option<Micros>,
    /// The task running the step.
    pub task_id: Option<TaskId>,
    /// The task running its compensation.
    pub compensation_task_id: Option<TaskId>,
    /// Dependencies.
    pub depends_on: Vec<String>,
    /// When a timer fires or a signal wait times out.
    pub wake_at: Option<Micros>,
    /// Order in which steps completed (for reverse-order compensation).
    pub completed_order: Option<u32>,
}

/// A signal delivered to a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SignalRecord {
    /// Signal name.
    pub name: String,
    /// Payload.
    pub payload: serde_json::Value,
    /// When it arrived.
    pub received_at: Micros,
    /// The step that consumed it, once consumed.
    pub consumed_by: Option<String>,
}

/// The state of a workflow run, kept as JSON in the COMPLEX task's
/// `TaskRuntime::detail`. The core appends signals; the workflow engine owns
/// the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct WorkflowRun {
    /// The definition version this run uses.
    pub version: u32,
    /// Steps, in definition order.
    pub steps: Vec<StepRun>,
    /// Signals received, in arrival order.
    pub signals: Vec<SignalRecord>,
    /// Engine-specific state.
    pub engine: serde_json::Value,
}

impl WorkflowRun {
    /// Reads a run from a task's detail (empty if none or unreadable).
    pub fn from_detail(detail: Option<&serde_json::Value>) -> WorkflowRun {
        detail
            .and_then(|d| serde_json::from_value(d.clone()).ok())
            .unwrap_or_default()
    }
}

/// What happened to a task (an event's kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// Accepted.
    Scheduled,
    /// An attempt started.
    Started,
    /// Progress.
    Progress,
    /// Completed.
    Completed,
    /// Retrying.
    Retrying,
    /// Failed for good.
    Failed,
    /// Cancel requested.
    CancelRequested,
    /// Cancelled.
    Cancelled,
    /// Requeued after a lost lease or a restart.
    Requeued,
    /// Other change.
    Updated,
    /// Snapshot replayed from the store.
    Snapshot,
}

/// A committed change to a task.
#[derive(Debug, Clone)]
pub struct TaskEvent {
    /// Sequence number.
    pub seq: u64,
    /// Kind.
    pub kind: EventKind,
    /// Commit time.
    pub time: Micros,
    /// The whole task after the change.
    pub task: Task,
}

/// Who wrote a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogSource {
    /// Switchyard.
    System,
    /// The worker.
    Worker,
    /// The external engine.
    Engine,
}

impl LogSource {
    /// Stable small integer for storage.
    pub fn code(self) -> i64 {
        match self {
            LogSource::System => 1,
            LogSource::Worker => 2,
            LogSource::Engine => 3,
        }
    }

    /// Inverse of [`LogSource::code`].
    pub fn from_code(c: i64) -> Self {
        match c {
            2 => LogSource::Worker,
            3 => LogSource::Engine,
            _ => LogSource::System,
        }
    }
}

/// One line of a task's log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// The task.
    pub task_id: TaskId,
    /// Line number (assigned by the store).
    pub line: u64,
    /// Time.
    pub time: Micros,
    /// Who wrote it.
    pub source: LogSource,
    /// Level.
    pub level: String,
    /// Text.
    pub message: String,
    /// Attempt, 0 if none.
    pub attempt: u32,
}

impl LogEntry {
    /// The number of a derived first line ([`Task::derived_first_line`]):
    /// below every number the stores hand out, which start at 2, so it
    /// comes first in its task's log and `after_line = 0` includes it.
    pub const DERIVED_LINE: u64 = 1;

    /// A new task's first line.
    pub fn scheduled(task_type: TaskType) -> String {
        format!("scheduled ({})", task_type.as_str())
    }

    /// A system line at `info` level.
    pub fn system(task_id: TaskId, attempt: u32, message: impl Into<String>) -> Self {
        LogEntry {
            task_id,
            line: 0,
            time: now_micros(),
            source: LogSource::System,
            level: "info".into(),
            message: message.into(),
            attempt,
        }
    }

    /// Sets the level.
    pub fn level(mut self, level: &str) -> Self {
        self.level = level.to_string();
        self
    }
}

/// A filter over tasks, for watch and list. Empty means any.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Owner.
    pub user_id: Option<String>,
    /// Session.
    pub session_id: Option<String>,
    /// Ids.
    pub task_ids: Vec<TaskId>,
    /// Names.
    pub names: Vec<String>,
    /// Types.
    pub task_types: Vec<TaskType>,
    /// States.
    pub states: Vec<TaskState>,
    /// Sources.
    pub sources: Vec<Source>,
    /// Fires of this schedule.
    pub schedule_id: Option<String>,
    /// Tasks whose last error has this kind (`TaskError::kind`).
    pub error_kind: Option<String>,
    /// Tasks of this namespace only (`default`: the tasks without one).
    /// Every caller's list and watch sets it (`Principal::narrow`); only
    /// the server's own sweeps leave it unset.
    pub namespace: Option<String>,
}

impl TaskFilter {
    /// Whether a task matches.
    pub fn matches(&self, t: &Task) -> bool {
        if let Some(u) = &self.user_id {
            if t.spec.user_id.as_deref() != Some(u.as_str()) {
                return false;
            }
        }
        if let Some(s) = &self.session_id {
            if t.spec.session_id.as_deref() != Some(s.as_str()) {
                return false;
            }
        }
        if let Some(s) = &self.schedule_id {
            if t.spec.schedule_id() != Some(s.as_str()) {
                return false;
            }
        }
        if let Some(k) = &self.error_kind {
            if t.rt.error_kind() != Some(k.as_str()) {
                return false;
            }
        }
        if let Some(ns) = &self.namespace {
            if t.spec.namespace() != ns {
                return false;
            }
        }
        (self.task_ids.is_empty() || self.task_ids.contains(&t.id))
            && (self.names.is_empty() || self.names.iter().any(|n| *n == t.spec.name))
            && (self.task_types.is_empty() || self.task_types.contains(&t.spec.task_type))
            && (self.states.is_empty() || self.states.contains(&t.rt.state))
            && (self.sources.is_empty() || self.sources.contains(&t.rt.source))
    }
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Now cancelled.
    Cancelled,
    /// Asked the worker or engine to stop.
    CancelRequested,
    /// Already final.
    AlreadyFinished,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_doubles_and_caps() {
        let b = Backoff {
            kind: BackoffKind::Exponential,
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_millis(1000));
        assert_eq!(b.delay(500), Duration::from_millis(1000));
    }

    #[test]
    fn fixed_backoff_is_constant() {
        let b = Backoff {
            kind: BackoffKind::Fixed,
            base: Duration::from_millis(250),
            max: Duration::from_millis(10),
        };
        assert_eq!(b.delay(1), b.delay(9));
    }

    /// A new task's JSON has no `null` in it; the JSON of an earlier
    /// version (every unset field written as `null`) reads as the same
    /// task; and a reader of that version (plain `Option` fields, no
    /// `default`) reads the new JSON's absent fields as `None`.
    #[test]
    fn unset_fields_are_left_out_and_read_as_before() {
        let spec = TaskSpec::new(
            "send-email",
            TaskType::Simple,
            Target::Simple { queue: None },
        );
        let rt = TaskRuntime::new_pending(1_000, Source::Embedded, WaitingReason::Queued);
        let spec_json = serde_json::to_string(&spec).unwrap();
        let rt_json = serde_json::to_string(&rt).unwrap();
        for j in [&spec_json, &rt_json] {
            assert!(!j.contains("null"), "{j}");
        }
        // As the previous version wrote them: each unset field as `null`.
        fn earlier(v: &impl Serialize, unset: &[&str]) -> serde_json::Value {
            let mut v = serde_json::to_value(v).unwrap();
            for f in unset {
                assert!(v.get(f).is_none(), "{f}");
                v[*f] = serde_json::Value::Null;
            }
            v
        }
        let old_spec = earlier(
            &spec,
            &[
                "execution_timeout",
                "user_id",
                "session_id",
                "idempotency_key",
                "cleanup",
                "traceparent",
                "parent_id",
            ],
        );
        let old_rt = earlier(
            &rt,
            &[
                "started_at",
                "finished_at",
                "progress_message",
                "result",
                "last_error",
                "external_id",
                "worker_id",
                "detail",
            ],
        );
        assert_eq!(serde_json::from_value::<TaskSpec>(old_spec).unwrap(), spec);
        assert_eq!(serde_json::from_value::<TaskRuntime>(old_rt).unwrap(), rt);
        // A reader of the previous version: its `Option` fields had no
        // `default`.
        #[derive(Deserialize)]
        struct EarlierRuntime {
            attempt: u32,
            started_at: Option<Micros>,
            worker_id: Option<Box<str>>,
            last_error: Option<Box<TaskError>>,
        }
        let earlier: EarlierRuntime = serde_json::from_str(&rt_json).unwrap();
        assert_eq!(earlier.attempt, 0);
        assert!(earlier.started_at.is_none() && earlier.worker_id.is_none());
        assert!(earlier.last_error.is_none());
        // A set field is written, and read back.
        assert!(
            spec_json.contains(r#""target":{"Simple":{}}"#),
            "{spec_json}"
        );
        let mut set = spec.clone();
        set.user_id = Some("u1".into());
        set.target = Target::Simple {
            queue: Some("emails".into()),
        };
        set.execution_timeout = Some(Duration::from_secs(5));
        let back: TaskSpec = serde_json::from_str(&serde_json::to_string(&set).unwrap()).unwrap();
        assert_eq!(back, set);
    }

    #[test]
    fn codes_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::from_code(s.code()), Some(s));
        }
        for t in TaskType::ALL {
            assert_eq!(TaskType::from_code(t.code()), Some(t));
        }
        assert!(TaskState::Completed.is_final());
        assert!(!TaskState::Compensating.is_final());
    }
}
