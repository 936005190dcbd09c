//! What the core and a worker say to each other: [`Push`] (core → worker),
//! [`Report`] (worker → core), [`Assignment`], and the worker handles.
//!
//! Owns: the message types of the worker protocol, for remote workers (via
//! `api::worker`) and in-process engines alike.
//! Must not: hold state or logic; the transitions live in `report`,
//! `dispatch` and `cancel`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::domain::*;

use super::EngineKind;

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
        reason: CancelReason,
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

/// Why the core stops an attempt ([`Push::Cancel`]). A worker on the wire
/// reads its [`Display`](std::fmt::Display) form in
/// `CancelAssignment.reason`: `cancelled`, `disconnected`, `timeout` or
/// `not accepted: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelReason {
    /// `CancelTask`.
    Cancelled,
    /// `Disconnect`: every task of the user or session stops.
    Disconnected,
    /// The attempt ran past its execution timeout; it fails (and may be
    /// retried) rather than ending CANCELLED.
    Timeout,
    /// The task was handed out before its commit, and the commit failed:
    /// it does not exist (why).
    NotAccepted(String),
}

impl std::fmt::Display for CancelReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CancelReason::Cancelled => f.write_str("cancelled"),
            CancelReason::Disconnected => f.write_str("disconnected"),
            CancelReason::Timeout => f.write_str("timeout"),
            CancelReason::NotAccepted(why) => write!(f, "not accepted: {why}"),
        }
    }
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
    /// Normal slots; none for an engine without a concurrency limit.
    pub slots: Option<u32>,
    /// The in-process engine it is, if any.
    pub engine: Option<EngineKind>,
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
