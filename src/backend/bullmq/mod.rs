//! The BullMQ backend: SIMPLE tasks of the routed queues run as real BullMQ
//! jobs on Redis, processed by unchanged Node BullMQ 5 workers, while their
//! status, cancel and watch go through Switchyard.
//!
//! It is an in-process local worker of the core's `#bullmq` key. Each
//! [`Push::Assign`] adds a job (queue = the task's queue or name, job name =
//! the task name, data = the payload, job id = the task id, so a repeated
//! add is a no-op) or, for a task added before a restart, resumes following
//! it. A successful add is reported as [`Report::Forwarded`], a lazy write
//! (it rides on the next commit): if it is lost in a crash, the task is
//! offered again with `again` set, the add finds the job, and the follower
//! reads its state. If Redis cannot be reached the task goes back to the core with
//! [`Report::Unreachable`]: it stays PENDING (ENGINE_UNREACHABLE) in the
//! store and is offered again later (the outbox).
//!
//! One follower per queue reads the queue's events stream
//! (`<prefix>:<queue>:events`, `XREAD BLOCK` from the last id it saw) and
//! mirrors the jobs Switchyard added: waiting/prioritized/delayed → PENDING,
//! active → RUNNING, progress, completed (with `job.log` lines) and failed.
//! After a reconnect it goes on from its position if the stream is intact,
//! else (Redis restarted, or the stream was trimmed past it) it reads the
//! state of every job it follows, and adds again those Redis lost.
//!
//! It owns only what is under `<prefix>:` in Redis that BullMQ's scripts and
//! this module write; it must not decide retries (BullMQ does) nor touch the
//! store except through the core.
//!
//! This file is the backend's dispatcher: it starts the backend, routes the
//! core's pushes to the follower of each task's queue, and removes the jobs
//! of tasks retention removed. The rest, by concern: `follower.rs` (a
//! queue's jobs, its mailbox, its reports), `apply.rs` (the stream's events
//! applied to them), `add.rs` (adding a job, the add's answer), `cancel.rs`,
//! `resync.rs` (lost contact, a new position, reading jobs' state again),
//! `pause.rs` (a queue paused through `FlowService` paused in BullMQ too),
//! `reader.rs` (the events stream) and `event.rs` (a stream entry, parsed
//! once into a typed event).

pub mod config;
pub mod conn;
pub mod mapping;

mod add;
mod apply;
mod cancel;
mod event;
mod follower;
mod pause;
mod reader;
mod resync;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::core::{Core, CoreError, EngineKind, Push};
use crate::domain::*;

pub use config::BullmqConfig;
use conn::Conn;
use follower::{Follower, Msg};

/// Registers the backend as the worker of `#bullmq` and starts it. The
/// configuration is checked now; Redis itself need not be up: tasks then
/// wait as ENGINE_UNREACHABLE. Shutdown policy: abort (followers stop; the
/// core requeues their tasks, and after a restart they resume following
/// their jobs).
pub fn start(core: &Core, cfg: &BullmqConfig) -> Result<JoinHandle<()>, CoreError> {
    let conn = Conn::new(cfg).map_err(CoreError::FailedPrecondition)?;
    if cfg.queues.is_empty() {
        tracing::warn!(
            "bullmq.enabled is set but bullmq.queues is empty: nothing is routed to BullMQ"
        );
    }
    let link = core.register_engine(EngineKind::Bullmq, None)?;
    let shared = Arc::new(Shared {
        core: core.clone(),
        worker_id: link.id,
        conn,
        routes: Mutex::new(HashMap::new()),
        down_since: AtomicU64::new(0),
        started: std::time::Instant::now(),
        stop: CancellationToken::new(),
    });
    shared.core.on_removed(Source::Bullmq, {
        let shared = shared.clone();
        Arc::new(move |ended| {
            let shared = shared.clone();
            tokio::spawn(remove_jobs(shared, ended));
        })
    });
    // Paused queues are paused in BullMQ too; the loop stops with the
    // backend (`shared.stop`).
    tokio::spawn(tracing::Instrument::instrument(
        pause::run(
            shared.clone(),
            cfg.queues.clone(),
            shared.core.watch_flow_rules(),
        ),
        tracing::info_span!("bullmq-pause"),
    ));
    tracing::info!(url = %cfg.redacted_url(), prefix = %cfg.prefix, queues = ?cfg.queues, "bullmq backend started");
    let span = tracing::info_span!("bullmq-backend");
    Ok(tokio::spawn(tracing::Instrument::instrument(
        run(shared, link.rx),
        span,
    )))
}

/// What the dispatcher and the followers share.
struct Shared {
    core: Core,
    worker_id: String,
    conn: Conn,
    /// The queue of every task a follower holds.
    routes: Mutex<HashMap<TaskId, Arc<str>>>,
    /// When adds started failing (ms since the backend started; 0: they
    /// do not): the outbox's backoff grows with the outage.
    down_since: AtomicU64,
    started: std::time::Instant,
    stop: CancellationToken,
}

impl Shared {
    /// When to offer a task again after Redis could not be reached: as long
    /// as the outage has lasted, from 0.5 s up to 10 s.
    fn retry_after(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let since =
            match self
                .down_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => now,
                Err(t) => t,
            };
        outbox_backoff(Duration::from_millis(now.saturating_sub(since)))
    }

    fn reached(&self) {
        self.down_since.store(0, Ordering::Relaxed);
    }
}

/// The outbox's delay after an outage of `down`: 0.5 s, then as long as the
/// outage has lasted, at most 10 s.
pub fn outbox_backoff(down: Duration) -> Duration {
    down.clamp(Duration::from_millis(500), Duration::from_secs(10))
}

/// Removes the BullMQ jobs of tasks retention removed: the jobs are
/// Switchyard's (it added them, with the task's id as the job id), so they
/// go with their tasks instead of staying in Redis for ever. Best effort: a
/// job Redis cannot remove now (Redis down, a job still locked) is left,
/// and the log says how many.
async fn remove_jobs(shared: Arc<Shared>, ended: Vec<crate::store::Ended>) {
    let mut left = 0usize;
    for e in &ended {
        let Some(queue) = &e.queue else { continue };
        if let Err(err) = shared.conn.remove(queue, &e.id.to_string()).await {
            left += 1;
            tracing::debug!(task = %e.id, queue = %queue, cause = %err, "a removed task's BullMQ job stays");
        }
    }
    if left > 0 {
        tracing::warn!(
            left,
            of = ended.len(),
            "retention removed tasks whose BullMQ jobs could not be removed from Redis"
        );
    }
}

/// The BullMQ queue of a task: its target queue, else its name.
pub fn queue_of(spec: &TaskSpec) -> &str {
    match &spec.target {
        Target::Simple { queue: Some(q) } if !q.is_empty() => q,
        _ => &spec.name,
    }
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Push>) {
    // Followers stop with the dispatcher, also when it is aborted.
    let _stop = shared.stop.clone().drop_guard();
    let mut followers: HashMap<Arc<str>, mpsc::UnboundedSender<Msg>> = HashMap::new();
    while let Some(push) = rx.recv().await {
        match push {
            Push::Assign(a) => {
                let q: Arc<str> = Arc::from(queue_of(&a.task.spec));
                shared.routes.lock().insert(a.task.id, q.clone());
                let tx = followers
                    .entry(q.clone())
                    .or_insert_with(|| Follower::spawn(shared.clone(), q.clone()));
                let _ = tx.send(Msg::Assign(Box::new(a)));
            }
            Push::Cancel {
                task_id, reason, ..
            } => {
                let q = shared.routes.lock().get(&task_id).cloned();
                if let Some(tx) = q.and_then(|q| followers.get(&q)) {
                    let _ = tx.send(Msg::Cancel { task_id, reason });
                }
            }
            Push::Close(why) => {
                tracing::info!(why, "bullmq backend closed by the core");
                break;
            }
            Push::Rejected {
                task_id, message, ..
            } => {
                tracing::debug!(task_id, message, "a report was refused");
            }
            Push::ChildDone { .. } | Push::Signal { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_backoff_grows_with_the_outage() {
        assert_eq!(outbox_backoff(Duration::ZERO), Duration::from_millis(500));
        assert_eq!(
            outbox_backoff(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        assert_eq!(
            outbox_backoff(Duration::from_secs(60)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn the_queue_is_the_target_queue_else_the_name() {
        let mut spec = TaskSpec::new("resize", TaskType::Simple, Target::Simple { queue: None });
        assert_eq!(queue_of(&spec), "resize");
        spec.target = Target::Simple {
            queue: Some("images".into()),
        };
        assert_eq!(queue_of(&spec), "images");
    }
}
