//! [`TaskContext`]: what a handler knows about its task, and how it talks back
//! (progress, log lines) and learns it should stop (cancellation).
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::truncate_utf8;
use crate::pb::{self, worker_message::Msg};

/// The most bytes of a progress message (`Progress.message`).
const MAX_PROGRESS_MESSAGE_BYTES: usize = 1024;

/// `cancel_reason` when the worker cancels a task itself because it is shutting
/// down and the drain timeout has passed.
pub const REASON_WORKER_SHUTDOWN: &str = "worker_shutdown";
/// `cancel_reason` when the worker cancels a task itself because its stream to
/// the server broke (the server requeues the task).
pub const REASON_CONNECTION_LOST: &str = "connection_lost";

/// Who asked a task to stop, and why.
#[derive(Debug, Default)]
pub(crate) struct CancelState {
    token: CancellationToken,
    reason: Mutex<Option<String>>,
    by_server: AtomicBool,
}

impl CancelState {
    /// The server sent `CancelAssignment`: the outcome is acknowledged with
    /// `CancelAck` if the handler gives up.
    pub(crate) fn cancel_by_server(&self, reason: &str) {
        self.by_server.store(true, Ordering::SeqCst);
        self.cancel(reason);
    }

    /// The worker stops the task on its own (shutdown, lost stream): nothing is
    /// acknowledged; the server requeues the task when the stream closes.
    pub(crate) fn cancel_locally(&self, reason: &str) {
        self.cancel(reason);
    }

    fn cancel(&self, reason: &str) {
        {
            let mut current = self.reason.lock();
            if current.is_none() {
                *current = Some(reason.to_owned());
            }
        }
        self.token.cancel();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub(crate) fn by_server(&self) -> bool {
        self.by_server.load(Ordering::SeqCst)
    }
}

/// What a handler gets: the task's assignment, its cancellation, and a way to
/// report progress and log lines.
///
/// Cheap to clone (an `Arc`); clones share everything. Progress and log lines
/// sent after the handler returned are dropped.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<Inner>,
}

struct Inner {
    task_id: String,
    name: String,
    attempt: u32,
    max_attempts: u32,
    idempotency_key: String,
    payload: serde_json::Value,
    labels: HashMap<String, String>,
    traceparent: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    immediate: bool,
    deadline: Option<SystemTime>,
    cancel: Arc<CancelState>,
    finished: AtomicBool,
    outbound: mpsc::Sender<pb::WorkerMessage>,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl TaskContext {
    /// Builds the context of one assignment; `payload` is already converted.
    pub(crate) fn new(
        assignment: pb::Assignment,
        payload: serde_json::Value,
        outbound: mpsc::Sender<pb::WorkerMessage>,
    ) -> Self {
        let deadline = assignment
            .deadline
            .and_then(|ts| SystemTime::try_from(ts).ok());
        Self {
            inner: Arc::new(Inner {
                task_id: assignment.task_id,
                name: assignment.name,
                attempt: assignment.attempt,
                max_attempts: assignment.max_attempts,
                idempotency_key: assignment.idempotency_key,
                payload,
                labels: assignment.labels,
                traceparent: non_empty(assignment.traceparent),
                user_id: non_empty(assignment.user_id),
                session_id: non_empty(assignment.session_id),
                immediate: assignment.immediate,
                deadline,
                cancel: Arc::new(CancelState::default()),
                finished: AtomicBool::new(false),
                outbound,
            }),
        }
    }

    pub(crate) fn cancel_state(&self) -> Arc<CancelState> {
        Arc::clone(&self.inner.cancel)
    }

    /// Marks the attempt as reported: later progress and log lines are dropped.
    pub(crate) fn finish(&self) {
        self.inner.finished.store(true, Ordering::SeqCst);
    }

    pub(crate) fn outbound(&self) -> &mpsc::Sender<pb::WorkerMessage> {
        &self.inner.outbound
    }

    /// The task id (a UUIDv7 string).
    pub fn task_id(&self) -> &str {
        &self.inner.task_id
    }

    /// The task name, the one the handler was registered for.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// This attempt, from 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The number of attempts allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// `<task id>:<attempt>`: the same if this very attempt is delivered again
    /// (after a lost connection), so side effects can be deduplicated on it.
    pub fn idempotency_key(&self) -> &str {
        &self.inner.idempotency_key
    }

    /// The input: the task's `google.protobuf.Struct` payload as a JSON
    /// object (an empty object if the task had none). Integral numbers are
    /// JSON integers; see [`convert`](super::convert).
    pub fn payload(&self) -> &serde_json::Value {
        &self.inner.payload
    }

    /// The task's labels, as scheduled.
    pub fn labels(&self) -> &HashMap<String, String> {
        &self.inner.labels
    }

    /// The W3C trace context (`traceparent`) of this attempt, if any: with
    /// tracing on in the server, its parent is the server's `task.run` span
    /// of this attempt; otherwise it is the one the task was scheduled with.
    /// The handler already runs inside a `task` span whose OpenTelemetry
    /// parent is this context, when this process has a
    /// `tracing-opentelemetry` layer.
    pub fn traceparent(&self) -> Option<&str> {
        self.inner.traceparent.as_deref()
    }

    /// [`TaskContext::traceparent`] as an OpenTelemetry context (a remote
    /// parent), for code that makes spans with the OpenTelemetry API
    /// directly; empty without one.
    pub fn otel_context(&self) -> opentelemetry::Context {
        self.traceparent()
            .map(crate::trace::context_of)
            .unwrap_or_default()
    }

    /// The owner, if the task was scheduled with one.
    pub fn user_id(&self) -> Option<&str> {
        self.inner.user_id.as_deref()
    }

    /// The session, if the task was scheduled with one.
    pub fn session_id(&self) -> Option<&str> {
        self.inner.session_id.as_deref()
    }

    /// Whether the task runs in the immediate lane.
    pub fn immediate(&self) -> bool {
        self.inner.immediate
    }

    /// When this attempt times out, if it has a timeout. The server enforces
    /// it (it sends a cancel with reason `timeout`); handlers can use it to
    /// bound their own calls.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.inner.deadline
    }

    /// The token cancelled when the task should stop: on the server's
    /// `CancelAssignment`, when the stream to the server breaks, or when the
    /// worker's drain timeout passes. See [`cancel_reason`](Self::cancel_reason).
    pub fn cancellation(&self) -> CancellationToken {
        self.inner.cancel.token.clone()
    }

    /// Whether the task has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Resolves when the task is asked to stop; use it in `tokio::select!`.
    pub async fn cancelled(&self) {
        self.inner.cancel.token.cancelled().await
    }

    /// Why the task was asked to stop: the server's `CancelAssignment.reason`
    /// (`cancelled`, `disconnected`, `timeout`, `shutdown`), or
    /// [`REASON_WORKER_SHUTDOWN`] / [`REASON_CONNECTION_LOST`] when the worker
    /// stopped it on its own. `None` while not cancelled.
    pub fn cancel_reason(&self) -> Option<String> {
        self.inner.cancel.reason.lock().clone()
    }

    /// Reports progress (`percent` is clamped to 0..=100, the message cut at
    /// 1 KiB). Never blocks: if the outbound buffer is full the update is
    /// dropped, which is harmless since a later one supersedes it.
    pub fn progress(&self, percent: f64, message: impl Into<String>) {
        let percent = if percent.is_nan() {
            0.0
        } else {
            percent.clamp(0.0, 100.0)
        };
        self.send(Msg::Progress(pb::Progress {
            task_id: self.inner.task_id.clone(),
            attempt: self.inner.attempt,
            percent,
            message: truncate_utf8(message.into(), MAX_PROGRESS_MESSAGE_BYTES),
        }));
    }

    /// Adds a line to the task's log, kept by the server (`GetTaskLogs`).
    /// `level` is `debug`, `info`, `warn` or `error` (empty means `info`).
    /// Never blocks: if the outbound buffer is full the line is dropped.
    pub fn log(&self, level: &str, message: impl Into<String>) {
        let level = match level.trim().to_ascii_lowercase().as_str() {
            "" => "info".to_owned(),
            "warning" => "warn".to_owned(),
            other => other.to_owned(),
        };
        self.send(Msg::Log(pb::Log {
            task_id: self.inner.task_id.clone(),
            attempt: self.inner.attempt,
            level,
            message: message.into(),
        }));
    }

    fn send(&self, msg: Msg) {
        if self.inner.finished.load(Ordering::SeqCst) {
            tracing::debug!(task_id = %self.inner.task_id, "dropping a message sent after the handler returned");
            return;
        }
        let msg = pb::WorkerMessage { msg: Some(msg) };
        match self.inner.outbound.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(task_id = %self.inner.task_id, "outbound buffer full; dropping a progress or log message");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(task_id = %self.inner.task_id, "stream closed; dropping a progress or log message");
            }
        }
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("task_id", &self.inner.task_id)
            .field("name", &self.inner.name)
            .field("attempt", &self.inner.attempt)
            .field("max_attempts", &self.inner.max_attempts)
            .field("immediate", &self.inner.immediate)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment() -> pb::Assignment {
        pb::Assignment {
            task_id: "t1".into(),
            name: "echo".into(),
            attempt: 2,
            max_attempts: 3,
            idempotency_key: "t1:2".into(),
            user_id: "u1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn empty_strings_are_none() {
        let (tx, _rx) = mpsc::channel(4);
        let ctx = TaskContext::new(assignment(), serde_json::json!({}), tx);
        assert_eq!(ctx.user_id(), Some("u1"));
        assert_eq!(ctx.session_id(), None);
        assert_eq!(ctx.traceparent(), None);
        assert_eq!(ctx.deadline(), None);
        assert_eq!(ctx.attempt(), 2);
        assert_eq!(ctx.idempotency_key(), "t1:2");
    }

    #[test]
    fn first_cancel_reason_wins_and_server_cancel_is_remembered() {
        let (tx, _rx) = mpsc::channel(4);
        let ctx = TaskContext::new(assignment(), serde_json::json!({}), tx);
        assert!(!ctx.is_cancelled());
        assert_eq!(ctx.cancel_reason(), None);
        let state = ctx.cancel_state();
        state.cancel_locally(REASON_WORKER_SHUTDOWN);
        assert!(ctx.is_cancelled());
        assert!(!state.by_server());
        state.cancel_by_server("cancelled");
        assert!(state.by_server());
        assert_eq!(ctx.cancel_reason().as_deref(), Some(REASON_WORKER_SHUTDOWN));
    }

    #[test]
    fn progress_is_clamped_and_dropped_after_finish() {
        let (tx, mut rx) = mpsc::channel(4);
        let ctx = TaskContext::new(assignment(), serde_json::json!({}), tx);
        ctx.progress(250.0, "x".repeat(5000));
        match rx.try_recv().map(|m| m.msg) {
            Ok(Some(Msg::Progress(p))) => {
                assert_eq!(p.percent, 100.0);
                assert_eq!(p.message.len(), MAX_PROGRESS_MESSAGE_BYTES);
                assert_eq!((p.task_id.as_str(), p.attempt), ("t1", 2));
            }
            other => panic!("expected progress, got {other:?}"),
        }
        ctx.log("WARNING", "careful");
        match rx.try_recv().map(|m| m.msg) {
            Ok(Some(Msg::Log(l))) => assert_eq!(l.level, "warn"),
            other => panic!("expected a log line, got {other:?}"),
        }
        ctx.finish();
        ctx.progress(1.0, "late");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_full_buffer_drops_instead_of_blocking() {
        let (tx, mut rx) = mpsc::channel(1);
        let ctx = TaskContext::new(assignment(), serde_json::json!({}), tx);
        ctx.progress(1.0, "kept");
        ctx.progress(2.0, "dropped");
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }
}
