//! `tracking_queue`: each committed state change of a Temporal-run task is
//! published as a job on the BullMQ queue the task names.
//!
//! The seam is [`TrackingSink`]. With a BullMQ connection configured
//! (`[bullmq] enabled`) the sink is [`BullmqTrackingSink`]: one job per
//! change, named after the event, with the job id `<task id>:<sequence>` (a
//! repeated publish is a no-op). Without one it is [`NoopTrackingSink`] and
//! each task that sets `tracking_queue` says so in its log.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use crate::core::Core;
use crate::domain::{EventKind, Source, Target, TaskEvent, TaskState};

/// One state change, as the job data published on the tracking queue.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrackingEvent {
    /// The Switchyard task id.
    pub task_id: String,
    /// The task name.
    pub name: String,
    /// The Temporal workflow id.
    pub workflow_id: String,
    /// The Temporal run id, once started.
    pub run_id: Option<String>,
    /// The task's state: `pending`, `running`, `completed`, `failed`,
    /// `cancelled`.
    pub state: &'static str,
    /// What happened (`started`, `progress`, `completed`, ...).
    pub event: &'static str,
    /// The event's sequence number (increasing).
    pub sequence: u64,
    /// When it was committed, microseconds since the epoch.
    pub time_micros: i64,
    /// A COMPLETED task's result.
    pub result: Option<serde_json::Value>,
    /// A FAILED (or terminated) task's error message.
    pub error: Option<String>,
    /// The progress line (pending activities).
    pub progress_message: Option<String>,
    /// Whether a cancel is pending.
    pub cancel_requested: bool,
}

impl TrackingEvent {
    /// The tracking queue and the job for a committed event, if the event is
    /// about a Temporal task that names a tracking queue.
    pub fn from_event(e: &TaskEvent) -> Option<(String, TrackingEvent)> {
        let t = &e.task;
        if t.rt.source != Source::Temporal {
            return None;
        }
        let Target::Complex {
            tracking_queue: Some(queue),
            workflow_id,
            ..
        } = &t.spec.target
        else {
            return None;
        };
        let ev = TrackingEvent {
            task_id: t.id.to_string(),
            name: t.spec.name.clone(),
            workflow_id: workflow_id.clone().unwrap_or_else(|| t.id.to_string()),
            run_id: t.rt.external_id.as_deref().map(String::from),
            state: t.rt.state.as_str(),
            event: event_name(e.kind),
            sequence: e.seq,
            time_micros: e.time,
            result: if t.rt.state == TaskState::Completed {
                t.rt.result.as_deref().cloned()
            } else {
                None
            },
            error: t
                .rt
                .last_error
                .as_ref()
                .map(|e| format!("{}: {}", e.kind, e.message)),
            progress_message: t.rt.progress_message.as_deref().map(str::to_owned),
            cancel_requested: t.rt.cancel_requested,
        };
        Some((queue.clone(), ev))
    }
}

fn event_name(k: EventKind) -> &'static str {
    match k {
        EventKind::Scheduled => "scheduled",
        EventKind::Started => "started",
        EventKind::Progress => "progress",
        EventKind::Completed => "completed",
        EventKind::Retrying => "retrying",
        EventKind::Failed => "failed",
        EventKind::CancelRequested => "cancel_requested",
        EventKind::Cancelled => "cancelled",
        EventKind::Requeued => "requeued",
        EventKind::Updated => "updated",
        EventKind::Snapshot => "snapshot",
    }
}

/// Where tracking events go: a BullMQ queue per task's `tracking_queue`.
#[async_trait::async_trait]
pub trait TrackingSink: Send + Sync {
    /// Whether events are published at all (false: tasks that ask for a
    /// tracking queue are told in their log that it is not published).
    fn enabled(&self) -> bool;
    /// Adds one job with `event` as its data to `queue`.
    async fn publish(&self, queue: &str, event: &TrackingEvent) -> Result<(), String>;
}

/// The sink used while no BullMQ connection is configured: publishes nothing.
pub struct NoopTrackingSink;

#[async_trait::async_trait]
impl TrackingSink for NoopTrackingSink {
    fn enabled(&self) -> bool {
        false
    }
    async fn publish(&self, _queue: &str, _event: &TrackingEvent) -> Result<(), String> {
        Ok(())
    }
}

/// Publishes tracking events as jobs on BullMQ queues, through the BullMQ
/// backend's connection code (its own connection).
pub struct BullmqTrackingSink {
    conn: crate::backend::bullmq::conn::Conn,
}

impl BullmqTrackingSink {
    /// A sink on the configured Redis (connects on first use).
    pub fn new(cfg: &crate::backend::bullmq::config::BullmqConfig) -> Result<Self, String> {
        Ok(BullmqTrackingSink {
            conn: crate::backend::bullmq::conn::Conn::new(cfg)?,
        })
    }
}

#[async_trait::async_trait]
impl TrackingSink for BullmqTrackingSink {
    fn enabled(&self) -> bool {
        true
    }

    async fn publish(&self, queue: &str, event: &TrackingEvent) -> Result<(), String> {
        let data = serde_json::value::to_raw_value(event).map_err(|e| e.to_string())?;
        let opts = crate::backend::bullmq::mapping::AddOptions {
            priority: 0,
            delay: std::time::Duration::ZERO,
            attempts: 1,
            backoff: None,
            job_id: format!("{}:{}", event.task_id, event.sequence),
        };
        self.conn.add(queue, event.event, data, &opts).await
    }
}

/// Publishes committed events of tracked Temporal tasks to `sink`, live,
/// in commit order. At most once: events missed while the server was down,
/// or by a lagging subscription, are not replayed (the log says so).
pub(super) async fn run(core: Core, sink: Arc<dyn TrackingSink>) {
    let mut rx = core.events().subscribe(0).rx;
    loop {
        match rx.recv().await {
            Ok(e) => {
                if let Some((queue, ev)) = TrackingEvent::from_event(&e) {
                    if let Err(cause) = sink.publish(&queue, &ev).await {
                        tracing::warn!(task_id = %ev.task_id, queue, %cause, "tracking event not published");
                    }
                }
            }
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "the tracking publisher fell behind; events were not published"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}
