//! The follower applies the events of its queue's stream: each event of a
//! job it follows becomes a mirrored state, progress, a log line or the
//! task's end (a finished job's logs and error are read with its batch),
//! and a cancel that waited for the stream to pass a point completes.
//!
//! It owns what each [`Event`] means for a task; it must not parse stream
//! entries (`event.rs`) nor decide retries (BullMQ does: a running job that
//! waits again is an attempt BullMQ retries).

use std::collections::HashMap;
use std::time::Duration;

use super::conn::Probe;
use super::event::{Entry, Event};
use super::follower::{warning, CancelState, Follower};
use super::mapping::{self, stream_id_ge};
use crate::core::Report;
use crate::domain::*;

impl Follower {
    pub(super) async fn events(&mut self, batch: Vec<Entry>) {
        // One round trip for the logs and errors of the jobs that finish.
        let finishing: Vec<String> = batch
            .iter()
            .filter(|e| e.event.finishes())
            .filter_map(|e| e.job_id.as_ref())
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
        let last = batch.last().map(|e| e.id.clone());
        for entry in batch {
            self.event(entry, &details).await;
        }
        if let Some(last) = last {
            self.seen = last;
            // Only the jobs waiting for a cancel's point: the others are
            // the backlog, which may be large.
            let mut done = Vec::new();
            let (jobs, seen) = (&self.jobs, &self.seen);
            self.cancels_until.retain(|id| {
                match jobs.get(id).and_then(|j| j.cancel_until.as_deref()) {
                    Some(u) if stream_id_ge(seen, u) => {
                        done.push(id.clone());
                        false
                    }
                    Some(_) => true,
                    None => false,
                }
            });
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
    pub(super) async fn event(&mut self, entry: Entry, details: &HashMap<String, Probe>) {
        let Some(job_id) = entry.job_id.clone() else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&job_id) else {
            // Not a job Switchyard added (or no longer followed).
            return;
        };
        if job.adding {
            tracing::debug!(task_id = %job_id, stream_id = %entry.id, "event buffered while adding");
            job.buffered.push(entry);
            return;
        }
        let was_running = matches!(job.shown, Some((TaskState::Running, _)));
        let cancel = job.cancel;
        let removing = job.removing;
        tracing::debug!(task_id = %job_id, stream_id = %entry.id, kind = entry.event.name(), "event");
        let id = job_id.as_str();
        match entry.event {
            // The attempt ended without finishing: a retry.
            Event::Waiting if was_running => self.retried(id, None, cancel).await,
            Event::Delayed { until_ms } if was_running => {
                self.retried(id, Some(until_ms), cancel).await
            }
            Event::Waiting | Event::WaitingChildren => {
                self.mirror(
                    id,
                    TaskState::Pending,
                    Some(WaitingReason::Queued),
                    None,
                    None,
                );
                if cancel == CancelState::Wanted {
                    self.try_cancel(id).await;
                }
            }
            Event::Delayed { .. } => {
                self.mirror(
                    id,
                    TaskState::Pending,
                    Some(WaitingReason::Delayed),
                    None,
                    None,
                );
            }
            Event::Active => self.active(id, cancel).await,
            Event::Progress { data } => self.progress(id, &data),
            Event::Completed { returnvalue } => self.completed(id, returnvalue, details).await,
            Event::Failed { reason } => self.failed_event(id, reason, details, cancel).await,
            Event::Removed if !removing => self.removed_outside(id),
            Event::Stalled => {
                let message = "BullMQ found the job stalled (its worker stopped renewing the lock)";
                self.report(id, warning(message.into()));
            }
            Event::Removed | Event::Other(_) => {}
        }
    }

    /// The job completed: its logs, then its result.
    async fn completed(
        &mut self,
        job_id: &str,
        returnvalue: Option<String>,
        details: &HashMap<String, Probe>,
    ) {
        let mut p = self.details(job_id, details).await;
        self.logs(job_id, std::mem::take(&mut p.logs));
        // The event carries the result even if the worker removed the job
        // on completion.
        let rv = returnvalue.as_deref().or(p.returnvalue.as_deref());
        self.end(job_id, Report::Complete(mapping::return_value(rv)));
    }

    /// The job failed for good: its logs, then its error (the event's
    /// reason wins over the one read).
    async fn failed_event(
        &mut self,
        job_id: &str,
        reason: Option<String>,
        details: &HashMap<String, Probe>,
        cancel: CancelState,
    ) {
        let mut p = self.details(job_id, details).await;
        self.logs(job_id, std::mem::take(&mut p.logs));
        if reason.is_some() {
            p.failed_reason = reason;
        }
        self.failed(job_id, &p, cancel);
    }

    /// A running job went back to waiting (`delayed`: `Some` with when it
    /// is due): its attempt ended without finishing, and BullMQ retries.
    async fn retried(&mut self, job_id: &str, delayed: Option<Option<i64>>, cancel: CancelState) {
        let p = match self
            .shared
            .conn
            .probe(&self.queue, &[job_id.to_string()])
            .await
        {
            Ok(mut v) => v.pop().unwrap_or_default(),
            Err(_) => Probe::default(),
        };
        let reason = if delayed.is_some() {
            WaitingReason::BackingOff
        } else {
            WaitingReason::Queued
        };
        let made = p.attempts_made;
        let msg = match (&p.failed_reason, delayed) {
            (Some(r), Some(at)) => {
                let wait = at
                    .map(|ms| {
                        Duration::from_millis((ms * 1000 - now_micros()).max(0) as u64 / 1000)
                    })
                    .map(|d| format!(" in {}", humantime::format_duration(d)))
                    .unwrap_or_default();
                format!("attempt {made} failed: {r}; BullMQ retries{wait}")
            }
            (Some(r), None) => format!("attempt {made} failed: {r}; BullMQ retries now"),
            (None, _) => {
                "the attempt stopped without finishing (stalled or rate-limited); back in the queue"
                    .into()
            }
        };
        if let Some(j) = self.jobs.get_mut(job_id) {
            j.attempts_made = made;
        }
        self.mirror(job_id, TaskState::Pending, Some(reason), None, Some(msg));
        if cancel != CancelState::None {
            self.try_cancel(job_id).await;
        }
    }

    async fn active(&mut self, job_id: &str, cancel: CancelState) {
        let attempt = self
            .jobs
            .get(job_id)
            .map(|j| j.attempts_made + 1)
            .unwrap_or(1);
        self.mirror(job_id, TaskState::Running, None, Some(attempt), None);
        if cancel == CancelState::Wanted {
            self.try_cancel(job_id).await;
        }
    }

    fn progress(&mut self, job_id: &str, data: &str) {
        let (percent, message) = mapping::progress_of(data);
        let current = self
            .jobs
            .get(job_id)
            .map(|j| j.task.rt.progress)
            .unwrap_or(0.0);
        self.report(
            job_id,
            Report::Progress {
                percent: percent.unwrap_or(current),
                message,
            },
        );
    }

    fn removed_outside(&mut self, job_id: &str) {
        self.end(
            job_id,
            Report::End {
                state: TaskState::Cancelled,
                result: None,
                error: None,
                message: format!("BullMQ job {job_id} was removed from Redis outside Switchyard"),
            },
        );
    }
}
