//! A queue's follower: the jobs Switchyard added to one BullMQ queue, its
//! mailbox ([`Msg`]: the dispatcher's assignments and cancels, the adds'
//! answers, the reader's news) and the reports it makes to the core.
//!
//! It owns the per-job state ([`Job`]) and the reader's position; applying
//! events (`apply.rs`), adding (`add.rs`), cancelling (`cancel.rs`) and
//! reading jobs' state again (`resync.rs`) are its methods in their own
//! files. It must not read the stream (the reader does) nor parse its
//! entries (`event.rs` does), and it reaches the store only through the
//! core's reports.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::conn::Probe;
use super::event::Entry;
use super::mapping;
use super::reader::reader;
use super::Shared;
use crate::core::{Assignment, CancelReason, Report};
use crate::domain::*;

/// What a follower is told.
pub(super) enum Msg {
    /// A task to add or to resume following.
    Assign(Box<Assignment>),
    /// Cancel a task.
    Cancel {
        task_id: TaskId,
        reason: CancelReason,
    },
    /// A round of adds finished: each job's result (whether it is delayed,
    /// or why Redis could not be reached).
    Added {
        results: Vec<(String, Result<bool, String>)>,
        epoch: u64,
    },
    /// The reader is (again) reading from `pos`; `continuous` if nothing
    /// was missed since it last read.
    Ready { continuous: bool, pos: String },
    /// The reader lost Redis.
    Lost(String),
    /// Events, in stream order.
    Events(Vec<Entry>),
    /// Read these jobs' state again (an earlier read failed).
    Resync(Vec<String>),
    /// Try a cancel again that could not reach Redis.
    RetryCancel(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CancelState {
    None,
    /// Asked for, not done yet (tried again after `CANCEL_RETRY`, and on
    /// the next event or reconnect).
    Wanted,
    /// The job is active; its worker was asked to stop.
    Published,
}

/// A job a follower follows.
pub(super) struct Job {
    pub(super) task: Task,
    /// The attempt the core holds (reports name it).
    pub(super) attempt: u32,
    /// BullMQ's attempts made, as last known.
    pub(super) attempts_made: u32,
    /// What was last mirrored.
    pub(super) shown: Option<(TaskState, Option<WaitingReason>)>,
    /// An add is in flight; events wait in `buffered`.
    pub(super) adding: bool,
    pub(super) buffered: Vec<Entry>,
    pub(super) cancel: CancelState,
    /// The job is gone from Redis; the cancel completes once the follower
    /// has read the stream up to this id without seeing the job finish.
    pub(super) cancel_until: Option<String>,
    /// Switchyard is removing it (its `removed` event is ours).
    pub(super) removing: bool,
    /// An earlier try may have added the job already (its add timed out,
    /// or the server restarted): the add is then a no-op whose events went
    /// by unheard, so the job's state is read once the add returns.
    pub(super) maybe_added: bool,
}

pub(super) struct Follower {
    pub(super) shared: Arc<Shared>,
    pub(super) queue: Arc<str>,
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    /// Boxed: the map grows with a backlog, and each time it does it
    /// moves its entries (a job holds its whole task).
    pub(super) jobs: HashMap<String, Box<Job>>,
    /// Bumped whenever the reader starts from a position it did not read up
    /// to (adds in flight then read their job's state).
    pub(super) epoch: u64,
    /// The id of the last event applied.
    pub(super) seen: String,
    pub(super) contact: bool,
    /// Whether the reader has had a position yet. Until then adds wait
    /// (in `waiting_adds`), so that no event of a new job comes before it.
    pub(super) positioned: bool,
    pub(super) waiting_adds: Vec<(String, Option<Arc<str>>)>,
    /// Adds started while handling the current messages: they go to Redis
    /// together once those are handled ([`Follower::flush_adds`]).
    pub(super) to_add: Vec<(String, Task, Option<Arc<str>>)>,
    /// The jobs whose `cancel_until` is set: checked after each batch of
    /// events (a scan of `jobs` would cost every batch the whole backlog).
    pub(super) cancels_until: HashSet<String>,
}

/// Most messages handled before the adds they started go out.
const ROUND: usize = 256;

impl Follower {
    /// Starts a queue's follower and its reader; returns its channel.
    pub(super) fn spawn(shared: Arc<Shared>, queue: Arc<str>) -> mpsc::UnboundedSender<Msg> {
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
            to_add: Vec::new(),
            cancels_until: HashSet::new(),
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
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            // The messages already waiting are handled in a round, and the
            // jobs they add go to Redis together at its end: a bulk of
            // tasks becomes one round of adds and one group of reports.
            let mut msg = Some(first);
            let mut handled = 0;
            while let Some(m) = msg.take() {
                self.handle(m).await;
                handled += 1;
                if handled < ROUND {
                    msg = rx.try_recv().ok();
                }
            }
            self.flush_adds();
        }
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Assign(a) => self.assign(*a).await,
            Msg::Cancel { task_id, reason } => self.cancel(task_id, &reason).await,
            Msg::Added { results, epoch } => self.added(results, epoch).await,
            Msg::Ready { continuous, pos } => self.ready(continuous, pos).await,
            Msg::Lost(why) => self.lost(&why),
            Msg::Events(batch) => self.events(batch).await,
            Msg::Resync(ids) => self.resync_again(ids).await,
            Msg::RetryCancel(job_id) => self.cancel_if_wanted(&job_id).await,
        }
    }

    // ---- reports ---------------------------------------------------------

    /// Reports on a job's task; a refused report means the core no longer
    /// gives the task to this backend, so the job is dropped.
    pub(super) fn report(&mut self, job_id: &str, r: Report) -> bool {
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

    /// Reports on several jobs' tasks in one group; returns the jobs whose
    /// reports were taken (a refused one's job is dropped, as
    /// [`Follower::report`]'s).
    pub(super) fn report_all(&mut self, reports: Vec<(String, Report)>) -> HashSet<String> {
        let mut ids = Vec::with_capacity(reports.len());
        let mut batch = Vec::with_capacity(reports.len());
        for (job_id, r) in reports {
            if let Some(job) = self.jobs.get(&job_id) {
                batch.push((job.task.id, job.attempt, r));
                ids.push(job_id);
            }
        }
        let answers = self.shared.core.report_all(&self.shared.worker_id, batch);
        let mut taken = HashSet::with_capacity(ids.len());
        for (job_id, answer) in ids.into_iter().zip(answers) {
            match answer {
                Ok(()) => {
                    taken.insert(job_id);
                }
                Err(e) => {
                    tracing::debug!(task_id = %job_id, cause = %e, "report refused; no longer following");
                    self.forget(&job_id);
                }
            }
        }
        taken
    }

    /// Reports a final outcome and stops following.
    pub(super) fn end(&mut self, job_id: &str, r: Report) {
        self.report(job_id, r);
        self.forget(job_id);
    }

    pub(super) fn forget(&mut self, job_id: &str) {
        if let Some(j) = self.jobs.remove(job_id) {
            self.shared.routes.lock().remove(&j.task.id);
        }
    }

    /// Mirrors a state unless it is what was last shown (a message always
    /// goes out).
    pub(super) fn mirror(
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

    pub(super) fn logs(&mut self, job_id: &str, lines: Vec<String>) {
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

    /// A job failed for good.
    pub(super) fn failed(&mut self, job_id: &str, p: &Probe, cancel: CancelState) {
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
}

/// A warning in the task's log, as its worker's.
pub(super) fn warning(message: String) -> Report {
    Report::Log {
        source: LogSource::Worker,
        level: "warn".into(),
        message,
    }
}
