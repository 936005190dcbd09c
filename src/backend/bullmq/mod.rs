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

pub mod config;
pub mod conn;
pub mod mapping;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::core::{Assignment, Core, CoreError, EngineKind, Push, Report};
use crate::domain::*;

pub use config::BullmqConfig;
use conn::{Conn, Probe, TakeOut};
use mapping::{mirror_of, stream_id_ge, AddOptions, JobPlace};

/// How long one `XREAD` blocks.
const BLOCK: Duration = Duration::from_secs(2);
/// Most events read at once.
const READ_COUNT: usize = 512;
/// Most jobs read in one round trip.
const PROBE_CHUNK: usize = 256;
/// How soon a cancel that could not reach Redis is tried again.
const CANCEL_RETRY: Duration = Duration::from_secs(1);
/// What a task's log says when Redis is lost while it runs.
const LOST: &str = "lost contact with Redis; status as last seen";

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
                    let _ = tx.send(Msg::Cancel {
                        task_id,
                        reason: reason.to_string(),
                    });
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

/// What a follower is told.
enum Msg {
    /// A task to add or to resume following.
    Assign(Box<Assignment>),
    /// Cancel a task.
    Cancel { task_id: TaskId, reason: String },
    /// An add finished.
    Added {
        job_id: String,
        result: Result<bool, String>,
        epoch: u64,
    },
    /// The reader is (again) reading from `pos`; `continuous` if nothing
    /// was missed since it last read.
    Ready { continuous: bool, pos: String },
    /// The reader lost Redis.
    Lost(String),
    /// Events, in stream order.
    Events(Vec<(String, HashMap<String, String>)>),
    /// Read these jobs' state again (an earlier read failed).
    Resync(Vec<String>),
    /// Try a cancel again that could not reach Redis.
    RetryCancel(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelState {
    None,
    /// Asked for, not done yet (tried again after `CANCEL_RETRY`, and on
    /// the next event or reconnect).
    Wanted,
    /// The job is active; its worker was asked to stop.
    Published,
}

/// A job a follower follows.
struct Job {
    task: Task,
    /// The attempt the core holds (reports name it).
    attempt: u32,
    /// BullMQ's attempts made, as last known.
    attempts_made: u32,
    /// What was last mirrored.
    shown: Option<(TaskState, Option<WaitingReason>)>,
    /// An add is in flight; events wait in `buffered`.
    adding: bool,
    buffered: Vec<(String, HashMap<String, String>)>,
    cancel: CancelState,
    /// The job is gone from Redis; the cancel completes once the follower
    /// has read the stream up to this id without seeing the job finish.
    cancel_until: Option<String>,
    /// Switchyard is removing it (its `removed` event is ours).
    removing: bool,
    /// An earlier try may have added the job already (its add timed out,
    /// or the server restarted): the add is then a no-op whose events went
    /// by unheard, so the job's state is read once the add returns.
    maybe_added: bool,
}

struct Follower {
    shared: Arc<Shared>,
    queue: Arc<str>,
    tx: mpsc::UnboundedSender<Msg>,
    jobs: HashMap<String, Job>,
    /// Bumped whenever the reader starts from a position it did not read up
    /// to (adds in flight then read their job's state).
    epoch: u64,
    /// The id of the last event applied.
    seen: String,
    contact: bool,
    /// Whether the reader has had a position yet. Until then adds wait
    /// (in `waiting_adds`), so that no event of a new job comes before it.
    positioned: bool,
    waiting_adds: Vec<(String, Option<Arc<str>>)>,
}

impl Follower {
    /// Starts a queue's follower and its reader; returns its channel.
    fn spawn(shared: Arc<Shared>, queue: Arc<str>) -> mpsc::UnboundedSender<Msg> {
        let (tx, rx) = mpsc::unbounded_channel();
        let f = Follower {
            shared: shared.clone(),
            queue: queue.clone(),
            tx: tx.clone(),
            jobs: HashMap::new(),
            epoch: 0,
            seen: "0-0".into(),
            contact: true,
            positioned: false,
            waiting_adds: Vec::new(),
        };
        let span = tracing::info_span!("bullmq-follower", queue = %queue);
        // Policy on shutdown: both stop when the backend's token is cancelled.
        tokio::spawn(tracing::Instrument::instrument(f.run(rx), span.clone()));
        tokio::spawn(tracing::Instrument::instrument(
            reader(shared, queue, tx.clone()),
            span,
        ));
        tx
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let stop = self.shared.stop.clone();
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            match msg {
                Msg::Assign(a) => self.assign(*a).await,
                Msg::Cancel { task_id, reason } => self.cancel(task_id, &reason).await,
                Msg::Added {
                    job_id,
                    result,
                    epoch,
                } => self.added(job_id, result, epoch).await,
                Msg::Ready { continuous, pos } => self.ready(continuous, pos).await,
                Msg::Lost(why) => self.lost(&why),
                Msg::Events(batch) => self.events(batch).await,
                Msg::Resync(ids) => {
                    let ids = ids
                        .into_iter()
                        .filter(|id| self.jobs.get(id).is_some_and(|j| !j.adding))
                        .collect();
                    self.resync_jobs(ids).await;
                }
                Msg::RetryCancel(job_id) => {
                    if self
                        .jobs
                        .get(&job_id)
                        .is_some_and(|j| j.cancel == CancelState::Wanted)
                    {
                        self.try_cancel(&job_id).await;
                    }
                }
            }
        }
    }

    /// Tries a cancel again after `CANCEL_RETRY`: an active job may send no
    /// event for a long time, and a lost Redis may come back without the
    /// reader noticing a gap.
    fn retry_cancel_later(&self, job_id: &str) {
        let (tx, job_id) = (self.tx.clone(), job_id.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(CANCEL_RETRY).await;
            let _ = tx.send(Msg::RetryCancel(job_id));
        });
    }

    // ---- reports ---------------------------------------------------------

    /// Reports on a job's task; a refused report means the core no longer
    /// gives the task to this backend, so the job is dropped.
    fn report(&mut self, job_id: &str, r: Report) -> bool {
        let Some(job) = self.jobs.get(job_id) else {
            return false;
        };
        let (id, attempt) = (job.task.id, job.attempt);
        match self
            .shared
            .core
            .report(&self.shared.worker_id, id, attempt, r)
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(task_id = %id, cause = %e, "report refused; no longer following");
                self.forget(job_id);
                false
            }
        }
    }

    /// Reports a final outcome and stops following.
    fn end(&mut self, job_id: &str, r: Report) {
        self.report(job_id, r);
        self.forget(job_id);
    }

    fn forget(&mut self, job_id: &str) {
        if let Some(j) = self.jobs.remove(job_id) {
            self.shared.routes.lock().remove(&j.task.id);
        }
    }

    /// Mirrors a state unless it is what was last shown (a message always
    /// goes out).
    fn mirror(
        &mut self,
        job_id: &str,
        state: TaskState,
        reason: Option<WaitingReason>,
        attempt: Option<u32>,
        message: Option<String>,
    ) {
        let Some(job) = self.jobs.get(job_id) else {
            return;
        };
        let same =
            job.shown == Some((state, reason)) && attempt.is_none_or(|a| a.max(1) == job.attempt);
        if same && message.is_none() {
            return;
        }
        let r = Report::Mirror {
            state,
            waiting_reason: reason,
            progress: None,
            attempt,
            message,
        };
        if self.report(job_id, r) {
            if let Some(job) = self.jobs.get_mut(job_id) {
                job.shown = Some((state, reason));
                if let Some(a) = attempt {
                    job.attempt = a.max(1);
                }
            }
        }
    }

    fn logs(&mut self, job_id: &str, lines: Vec<String>) {
        for l in lines {
            if !self.report(
                job_id,
                Report::Log {
                    source: crate::domain::LogSource::Worker,
                    level: "info".into(),
                    message: l,
                },
            ) {
                return;
            }
        }
    }

    // ---- assign and add ----------------------------------------------------

    async fn assign(&mut self, a: Assignment) {
        let maybe_added = a.again;
        let task = a.task;
        let job_id = task.id.to_string();
        let resume = task.rt.forwarded;
        let cancel = if task.rt.cancel_requested {
            CancelState::Wanted
        } else {
            CancelState::None
        };
        self.jobs.insert(
            job_id.clone(),
            Job {
                attempt: task.rt.attempt,
                attempts_made: 0,
                shown: None,
                adding: false,
                buffered: Vec::new(),
                cancel,
                cancel_until: None,
                removing: false,
                maybe_added,
                task,
            },
        );
        if cancel == CancelState::Wanted && !resume {
            // Cancelled while in the outbox after an add whose outcome was
            // not known: make sure the job is not in Redis before the ack.
            self.try_cancel(&job_id).await;
        } else if resume {
            self.resync_jobs(vec![job_id.clone()]).await;
            if self
                .jobs
                .get(&job_id)
                .is_some_and(|j| j.cancel == CancelState::Wanted)
            {
                self.try_cancel(&job_id).await;
            }
        } else {
            self.start_add(&job_id, a.payload);
        }
    }

    fn start_add(&mut self, job_id: &str, payload: Option<Arc<str>>) {
        if !self.positioned {
            self.waiting_adds.push((job_id.to_string(), payload));
            return;
        }
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        if job.adding {
            // One add at a time: a second one's answer would mirror PENDING
            // over whatever the first one's job has become since.
            return;
        }
        job.adding = true;
        let task = job.task.clone();
        let (shared, queue, tx, epoch) = (
            self.shared.clone(),
            self.queue.clone(),
            self.tx.clone(),
            self.epoch,
        );
        let job_id = job_id.to_string();
        // Adds run side by side on the multiplexed connection; the follower
        // hears of each when it is done.
        tokio::spawn(async move {
            let result = add(&shared, &queue, &task, payload).await;
            let _ = tx.send(Msg::Added {
                job_id,
                result,
                epoch,
            });
        });
    }

    async fn added(&mut self, job_id: String, result: Result<bool, String>, epoch: u64) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.adding = false;
        let buffered = std::mem::take(&mut job.buffered);
        let delayed = match result {
            Ok(d) => d,
            Err(message) => {
                let retry_after = self.shared.retry_after();
                tracing::warn!(task_id = %job_id, cause = %message, ?retry_after, "cannot add the job; kept in the outbox");
                self.end(
                    &job_id,
                    Report::Unreachable {
                        retry_after,
                        message,
                    },
                );
                return;
            }
        };
        self.shared.reached();
        let reason = if delayed {
            WaitingReason::Delayed
        } else {
            WaitingReason::Queued
        };
        // One lazy write: should the server die before it commits, the task
        // is offered again after the restart, the add finds the job, and the
        // follower reads where it is (`again`).
        let forwarded = Report::Forwarded {
            external_id: job_id.clone(),
            waiting_reason: reason,
        };
        if !self.report(&job_id, forwarded) {
            return;
        }
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.shown = Some((TaskState::Pending, Some(reason)));
        }
        for (id, ev) in buffered {
            self.event(&id, ev, &HashMap::new()).await;
        }
        // Read where the job is now if the reader restarted from a later
        // position while the add was in flight, or if an earlier try had
        // added the job already (this add then changed nothing and its
        // events are long gone).
        let maybe_added = self
            .jobs
            .get_mut(&job_id)
            .map(|j| std::mem::take(&mut j.maybe_added));
        if maybe_added.is_some_and(|m| m || epoch != self.epoch) {
            self.resync_jobs(vec![job_id.clone()]).await;
        }
        if self
            .jobs
            .get(&job_id)
            .is_some_and(|j| j.cancel == CancelState::Wanted)
        {
            self.try_cancel(&job_id).await;
        }
    }

    // ---- cancel --------------------------------------------------------------

    async fn cancel(&mut self, task_id: TaskId, reason: &str) {
        let job_id = task_id.to_string();
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        tracing::debug!(task_id = %task_id, reason, "cancel");
        if job.cancel == CancelState::None {
            job.cancel = CancelState::Wanted;
        }
        if !job.adding {
            self.try_cancel(&job_id).await;
        }
    }

    /// Cancels what can be cancelled now: a waiting job is taken out and
    /// removed (CANCELLED); an active one's worker is asked to stop (the
    /// task stays RUNNING with `cancel_requested` until the job ends).
    async fn try_cancel(&mut self, job_id: &str) {
        let Some(job) = self.jobs.get(job_id) else {
            return;
        };
        if job.adding || job.cancel == CancelState::None {
            return;
        }
        let published = job.cancel == CancelState::Published;
        let queue = self.queue.clone();
        match self.shared.conn.take_out(&queue, job_id).await {
            Err(e) => {
                tracing::warn!(task_id = %job_id, cause = %e, retry_in = ?CANCEL_RETRY, "cannot cancel the job now");
                self.retry_cancel_later(job_id);
            }
            Ok(TakeOut::TakenOut) => {
                if let Some(j) = self.jobs.get_mut(job_id) {
                    j.removing = true;
                }
                if let Err(e) = self.shared.conn.remove(&queue, job_id).await {
                    // It is out of every list already: no worker can start it.
                    tracing::warn!(task_id = %job_id, cause = %e, "the cancelled job's keys were not removed");
                }
                self.logs(
                    job_id,
                    vec![format!("BullMQ job {job_id} removed from queue {queue}")],
                );
                self.end(job_id, Report::CancelAck);
            }
            Ok(TakeOut::Active) if !published => {
                match self.shared.conn.publish_cancel(&queue, job_id).await {
                    Ok(()) => {
                        if let Some(j) = self.jobs.get_mut(job_id) {
                            j.cancel = CancelState::Published;
                        }
                        self.logs(
                            job_id,
                            vec![format!(
                                "the job is active: asked its worker to stop (channel {})",
                                self.shared.conn.key(&queue, "switchyard:cancel")
                            )],
                        );
                    }
                    Err(e) => {
                        tracing::warn!(task_id = %job_id, cause = %e, retry_in = ?CANCEL_RETRY, "cannot publish the cancel now");
                        self.retry_cancel_later(job_id);
                    }
                }
            }
            Ok(TakeOut::Active) | Ok(TakeOut::Finished) | Ok(TakeOut::Elsewhere) => {
                // Finished: its final event decides. Elsewhere: tried again
                // on its next event.
            }
            Ok(TakeOut::Missing(until)) => {
                if stream_id_ge(&self.seen, &until) {
                    self.logs(job_id, vec![format!("BullMQ job {job_id} is not in Redis")]);
                    self.end(job_id, Report::CancelAck);
                } else if let Some(j) = self.jobs.get_mut(job_id) {
                    j.cancel_until = Some(until);
                }
            }
        }
    }

    // ---- the reader's news -----------------------------------------------------

    fn lost(&mut self, why: &str) {
        // Adds that wait for a first position: Redis is not there.
        for (job_id, _) in std::mem::take(&mut self.waiting_adds) {
            let retry_after = self.shared.retry_after();
            self.end(
                &job_id,
                Report::Unreachable {
                    retry_after,
                    message: why.to_string(),
                },
            );
        }
        if !self.contact {
            return;
        }
        self.contact = false;
        tracing::warn!(cause = why, "lost contact with Redis");
        let ids: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, j)| !j.adding)
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            let shown = self.jobs.get(&id).and_then(|j| j.shown);
            match shown {
                Some((TaskState::Pending, reason)) => {
                    self.mirror(&id, TaskState::Pending, reason, None, Some(LOST.into()));
                }
                _ => {
                    self.report(
                        &id,
                        Report::Log {
                            source: crate::domain::LogSource::Worker,
                            level: "warn".into(),
                            message: LOST.into(),
                        },
                    );
                }
            }
        }
    }

    async fn ready(&mut self, continuous: bool, pos: String) {
        let was_lost = !self.contact;
        self.contact = true;
        if !self.positioned {
            self.positioned = true;
            self.seen = pos;
            // Jobs resumed before the reader had a position: read them again,
            // now that no later event can be missed. Not the new ones that
            // wait to be added: they are not in Redis yet, and reading one
            // would take it for a job Redis lost and add it twice.
            let waiting: HashSet<&str> = self
                .waiting_adds
                .iter()
                .map(|(id, _)| id.as_str())
                .collect();
            let ids: Vec<String> = self
                .jobs
                .iter()
                .filter(|(k, j)| !j.adding && !waiting.contains(k.as_str()))
                .map(|(k, _)| k.clone())
                .collect();
            self.resync_jobs(ids).await;
            for (job_id, payload) in std::mem::take(&mut self.waiting_adds) {
                self.start_add(&job_id, payload);
            }
            return;
        }
        if was_lost {
            tracing::info!(continuous, "contact with Redis restored");
        }
        if continuous {
            // Nothing missed: the events from `pos` on tell the rest.
            let ids: Vec<String> = self
                .jobs
                .iter()
                .filter(|(_, j)| j.cancel == CancelState::Wanted)
                .map(|(k, _)| k.clone())
                .collect();
            for id in ids {
                self.try_cancel(&id).await;
            }
            return;
        }
        self.epoch += 1;
        self.seen = pos;
        let ids: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, j)| !j.adding)
            .map(|(k, _)| k.clone())
            .collect();
        self.resync_jobs(ids).await;
        let ids: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.cancel != CancelState::None)
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            self.try_cancel(&id).await;
        }
    }

    /// Reads jobs' state from Redis and mirrors it; re-adds jobs Redis lost.
    /// A read that fails (the first command on a connection Redis dropped
    /// does) is tried again a few times, then later.
    async fn resync_jobs(&mut self, ids: Vec<String>) {
        for (n, chunk) in ids.chunks(PROBE_CHUNK).enumerate() {
            let mut pause = Duration::from_millis(50);
            let mut tries = 0;
            let probes = loop {
                match self.shared.conn.probe(&self.queue, chunk).await {
                    Ok(p) => break p,
                    Err(e) if tries < 4 => {
                        tracing::debug!(cause = %e, "cannot read job states yet");
                        tries += 1;
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                    Err(e) => {
                        tracing::warn!(cause = %e, "cannot read job states; trying again in 1s");
                        let rest: Vec<String> = ids[n * PROBE_CHUNK..].to_vec();
                        let tx = self.tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let _ = tx.send(Msg::Resync(rest));
                        });
                        return;
                    }
                }
            };
            for (id, p) in chunk.iter().zip(probes) {
                self.apply_probe(id, p);
            }
        }
    }

    fn apply_probe(&mut self, job_id: &str, p: Probe) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        job.attempts_made = p.attempts_made;
        let cancel = job.cancel;
        match p.place() {
            JobPlace::Completed => {
                self.logs(job_id, p.logs.clone());
                self.end(
                    job_id,
                    Report::Complete(mapping::return_value(p.returnvalue.as_deref())),
                );
            }
            JobPlace::Failed => {
                self.logs(job_id, p.logs.clone());
                self.failed(job_id, &p, cancel);
            }
            JobPlace::Missing => {
                if cancel != CancelState::None {
                    self.end(job_id, Report::CancelAck);
                } else {
                    tracing::warn!(task_id = %job_id, "the job is not in Redis (lost with Redis's data?); adding it again");
                    self.report(
                        job_id,
                        Report::Log { source: crate::domain::LogSource::Worker,
                            level: "warn".into(),
                            message: format!("BullMQ job {job_id} not found in Redis (Redis lost its data?); adding it again"),
                        },
                    );
                    if self.jobs.contains_key(job_id) {
                        self.start_add(job_id, None);
                    }
                }
            }
            JobPlace::Nowhere => {}
            place => {
                if let Some((state, reason)) = mirror_of(place, p.attempts_made) {
                    let attempt = (state == TaskState::Running).then_some(p.attempts_made + 1);
                    self.mirror(job_id, state, reason, attempt, None);
                }
            }
        }
    }

    /// A job failed for good.
    fn failed(&mut self, job_id: &str, p: &Probe, cancel: CancelState) {
        let reason = p.failed_reason.clone().unwrap_or_else(|| "failed".into());
        if cancel == CancelState::Published {
            self.logs(
                job_id,
                vec![format!("the worker stopped the job: {reason}")],
            );
            self.end(job_id, Report::CancelAck);
            return;
        }
        let details = mapping::stacktrace(p.stacktrace.as_deref());
        let attempt = self.jobs.get(job_id).map(|j| j.attempt).unwrap_or(0);
        let error = TaskError {
            message: reason.clone(),
            kind: mapping::error_kind(&details),
            details,
            retryable: false,
            attempt: p.attempts_made.max(attempt),
        };
        self.end(
            job_id,
            Report::End {
                state: TaskState::Failed,
                result: None,
                error: Some(error),
                message: format!(
                    "BullMQ job failed after {} attempt(s): {reason}",
                    p.attempts_made.max(1)
                ),
            },
        );
    }

    async fn events(&mut self, batch: Vec<(String, HashMap<String, String>)>) {
        // One round trip for the logs and errors of the jobs that finish.
        let finishing: Vec<String> = batch
            .iter()
            .filter(|(_, e)| {
                matches!(
                    e.get("event").map(String::as_str),
                    Some("completed" | "failed")
                )
            })
            .filter_map(|(_, e)| e.get("jobId"))
            .filter(|id| self.jobs.get(*id).is_some_and(|j| !j.adding))
            .cloned()
            .collect();
        let mut details = HashMap::new();
        if !finishing.is_empty() {
            match self.shared.conn.probe(&self.queue, &finishing).await {
                Ok(ps) => details.extend(finishing.into_iter().zip(ps)),
                Err(e) => tracing::warn!(cause = %e, "cannot read finished jobs' logs"),
            }
        }
        let last = batch.last().map(|(id, _)| id.clone());
        for (id, ev) in batch {
            self.event(&id, ev, &details).await;
        }
        if let Some(last) = last {
            self.seen = last;
            let done: Vec<String> = self
                .jobs
                .iter()
                .filter(|(_, j)| {
                    j.cancel_until
                        .as_deref()
                        .is_some_and(|u| stream_id_ge(&self.seen, u))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for id in done {
                self.logs(&id, vec![format!("BullMQ job {id} is not in Redis")]);
                self.end(&id, Report::CancelAck);
            }
        }
    }

    /// A finished job's logs and error: read with its batch, else now.
    async fn details(&self, job_id: &str, read: &HashMap<String, Probe>) -> Probe {
        if let Some(p) = read.get(job_id) {
            return p.clone();
        }
        match self
            .shared
            .conn
            .probe(&self.queue, &[job_id.to_string()])
            .await
        {
            Ok(mut v) => v.pop().unwrap_or_default(),
            Err(e) => {
                tracing::warn!(task_id = %job_id, cause = %e, "cannot read the finished job's logs");
                Probe::default()
            }
        }
    }

    /// Applies one event of the queue's stream.
    async fn event(
        &mut self,
        stream_id: &str,
        ev: HashMap<String, String>,
        details: &HashMap<String, Probe>,
    ) {
        let Some(job_id) = ev.get("jobId").cloned() else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&job_id) else {
            // Not a job Switchyard added (or no longer followed).
            return;
        };
        if job.adding {
            tracing::debug!(task_id = %job_id, stream_id, "event buffered while adding");
            job.buffered.push((stream_id.to_string(), ev));
            return;
        }
        let was_running = matches!(job.shown, Some((TaskState::Running, _)));
        let cancel = job.cancel;
        let removing = job.removing;
        let kind = ev.get("event").map(String::as_str).unwrap_or("");
        tracing::debug!(task_id = %job_id, stream_id, kind, "event");
        match kind {
            "waiting" | "delayed" if was_running => {
                // The attempt ended without finishing: a retry.
                let p = match self
                    .shared
                    .conn
                    .probe(&self.queue, std::slice::from_ref(&job_id))
                    .await
                {
                    Ok(mut v) => v.pop().unwrap_or_default(),
                    Err(_) => Probe::default(),
                };
                let reason = if kind == "delayed" {
                    WaitingReason::BackingOff
                } else {
                    WaitingReason::Queued
                };
                let made = p.attempts_made;
                let msg = match (&p.failed_reason, kind) {
                    (Some(r), "delayed") => {
                        let at = ev.get("delay").and_then(|d| d.parse::<i64>().ok());
                        let wait = at
                            .map(|ms| Duration::from_millis((ms * 1000 - now_micros()).max(0) as u64 / 1000))
                            .map(|d| format!(" in {}", humantime::format_duration(d)))
                            .unwrap_or_default();
                        format!("attempt {made} failed: {r}; BullMQ retries{wait}")
                    }
                    (Some(r), _) => format!("attempt {made} failed: {r}; BullMQ retries now"),
                    (None, _) => "the attempt stopped without finishing (stalled or rate-limited); back in the queue".into(),
                };
                if let Some(j) = self.jobs.get_mut(&job_id) {
                    j.attempts_made = made;
                }
                self.mirror(&job_id, TaskState::Pending, Some(reason), None, Some(msg));
                if cancel != CancelState::None {
                    self.try_cancel(&job_id).await;
                }
            }
            "waiting" | "waiting-children" => {
                self.mirror(
                    &job_id,
                    TaskState::Pending,
                    Some(WaitingReason::Queued),
                    None,
                    None,
                );
                if cancel == CancelState::Wanted {
                    self.try_cancel(&job_id).await;
                }
            }
            "delayed" => {
                self.mirror(
                    &job_id,
                    TaskState::Pending,
                    Some(WaitingReason::Delayed),
                    None,
                    None,
                );
            }
            "active" => {
                let attempt = self
                    .jobs
                    .get(&job_id)
                    .map(|j| j.attempts_made + 1)
                    .unwrap_or(1);
                self.mirror(&job_id, TaskState::Running, None, Some(attempt), None);
                if cancel == CancelState::Wanted {
                    self.try_cancel(&job_id).await;
                }
            }
            "progress" => {
                let (percent, message) =
                    mapping::progress_of(ev.get("data").map(String::as_str).unwrap_or(""));
                let current = self
                    .jobs
                    .get(&job_id)
                    .map(|j| j.task.rt.progress)
                    .unwrap_or(0.0);
                self.report(
                    &job_id,
                    Report::Progress {
                        percent: percent.unwrap_or(current),
                        message,
                    },
                );
            }
            "completed" => {
                let mut p = self.details(&job_id, details).await;
                self.logs(&job_id, std::mem::take(&mut p.logs));
                // The event carries the result even if the worker removed the
                // job on completion.
                let rv = ev
                    .get("returnvalue")
                    .map(String::as_str)
                    .or(p.returnvalue.as_deref());
                self.end(&job_id, Report::Complete(mapping::return_value(rv)));
            }
            "failed" => {
                let mut p = self.details(&job_id, details).await;
                self.logs(&job_id, std::mem::take(&mut p.logs));
                if let Some(r) = ev.get("failedReason") {
                    p.failed_reason = Some(r.clone());
                }
                self.failed(&job_id, &p, cancel);
            }
            "removed" if !removing => {
                self.end(
                    &job_id,
                    Report::End {
                        state: TaskState::Cancelled,
                        result: None,
                        error: None,
                        message: format!(
                            "BullMQ job {job_id} was removed from Redis outside Switchyard"
                        ),
                    },
                );
            }
            "stalled" => {
                self.report(
                    &job_id,
                    Report::Log {
                        source: crate::domain::LogSource::Worker,
                        level: "warn".into(),
                        message:
                            "BullMQ found the job stalled (its worker stopped renewing the lock)"
                                .into(),
                    },
                );
            }
            _ => {}
        }
    }
}

/// Adds a task's job; returns whether it is delayed.
async fn add(
    shared: &Shared,
    queue: &str,
    task: &Task,
    payload: Option<Arc<str>>,
) -> Result<bool, String> {
    let payload = match shared.core.load_payload(task.id, payload).await {
        Ok(p) => p,
        Err(CoreError::NotFound(_)) => return Err("the payload is not in the store".into()),
        Err(e) => return Err(format!("reading the payload: {e}")),
    };
    let data: serde_json::Value =
        serde_json::from_str(&payload).map_err(|e| format!("the payload is not JSON: {e}"))?;
    let opts = AddOptions::of(task, now_micros());
    shared.conn.add(queue, &task.spec.name, data, &opts).await?;
    Ok(!opts.delay.is_zero())
}

/// Reads a queue's events stream and hands the events to its follower.
async fn reader(shared: Arc<Shared>, queue: Arc<str>, tx: mpsc::UnboundedSender<Msg>) {
    let key = shared.conn.key(&queue, "events");
    let mut pos: Option<String> = None;
    let mut run_id: Option<String> = None;
    let mut pause = Duration::from_millis(100);
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let connected = async {
            let mut c = shared.conn.dedicated(BLOCK).await?;
            let id = Conn::run_id(&mut c).await?;
            let same_server = run_id.as_deref() == Some(id.as_str());
            let continuous = match (&pos, same_server) {
                (Some(p), true) if p == "0-0" => true,
                (Some(p), true) => {
                    let v: Vec<redis::Value> = redis::cmd("XRANGE")
                        .arg(&key)
                        .arg(p)
                        .arg(p)
                        .query_async(&mut c)
                        .await
                        .map_err(|e| format!("xrange: {e}"))?;
                    !v.is_empty()
                }
                _ => false,
            };
            let start = if continuous {
                pos.clone().unwrap_or_else(|| "0-0".into())
            } else {
                let v: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| format!("xrevrange: {e}"))?;
                v.ids
                    .first()
                    .map(|e| e.id.clone())
                    .unwrap_or_else(|| "0-0".into())
            };
            Ok::<_, String>((c, id, continuous, start))
        };
        let stop = shared.stop.clone();
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = connected => r,
        };
        let (mut c, id, continuous, start) = match r {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(Msg::Lost(e));
                let stop = shared.stop.clone();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        pause = Duration::from_millis(100);
        run_id = Some(id);
        pos = Some(start.clone());
        if tx
            .send(Msg::Ready {
                continuous,
                pos: start,
            })
            .is_err()
        {
            return;
        }
        loop {
            let cur = pos.clone().unwrap_or_else(|| "0-0".into());
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&key)
                .arg(&cur);
            let read = cmd.query_async::<Option<redis::streams::StreamReadReply>>(&mut c);
            let stop = shared.stop.clone();
            let r = tokio::select! {
                _ = stop.cancelled() => return,
                r = read => r,
            };
            match r {
                Ok(None) => {}
                Ok(Some(reply)) => {
                    let mut batch = Vec::new();
                    for k in reply.keys {
                        for e in k.ids {
                            let fields: HashMap<String, String> = e
                                .map
                                .into_iter()
                                .filter_map(|(f, v)| {
                                    redis::from_redis_value::<String>(v).ok().map(|v| (f, v))
                                })
                                .collect();
                            batch.push((e.id, fields));
                        }
                    }
                    if let Some((last, _)) = batch.last() {
                        pos = Some(last.clone());
                    }
                    if !batch.is_empty() && tx.send(Msg::Events(batch)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Msg::Lost(format!("xread: {e}")));
                    break;
                }
            }
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
        let mut spec = TaskSpec {
            name: "resize".into(),
            task_type: TaskType::Simple,
            priority: 0,
            max_attempts: 1,
            backoff: Backoff::default(),
            execution_timeout: None,
            user_id: None,
            session_id: None,
            immediate: false,
            idempotency_key: None,
            labels: Default::default(),
            cleanup: None,
            target: Target::Simple { queue: None },
            traceparent: None,
            parent_id: None,
            retention: None,
        };
        assert_eq!(queue_of(&spec), "resize");
        spec.target = Target::Simple {
            queue: Some("images".into()),
        };
        assert_eq!(queue_of(&spec), "images");
    }
}
