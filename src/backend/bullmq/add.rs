//! Adding a task's job to its BullMQ queue: the follower's side (a new
//! assignment, one add at a time per job, adds waiting for the reader's
//! first position, a round's adds sent together and their answers reported
//! in one group, the events buffered meanwhile) and
//! the add itself (the payload from the core, BullMQ's options, the add
//! script).
//!
//! It owns the `Forwarded` report and the outbox's `Unreachable` answer of
//! an add; it must not read the stream (the reader does) nor decide what an
//! event means (the follower does).

use std::collections::HashMap;
use std::sync::Arc;

use super::follower::{CancelState, Follower, Job, Msg};
use super::mapping::AddOptions;
use super::Shared;
use crate::core::{Assignment, CoreError, Report};
use crate::domain::*;

impl Follower {
    pub(super) async fn assign(&mut self, a: Assignment) {
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
            Box::new(Job {
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
            }),
        );
        if cancel == CancelState::Wanted && !resume {
            // Cancelled while in the outbox after an add whose outcome was
            // not known: make sure the job is not in Redis before the ack.
            self.try_cancel(&job_id).await;
        } else if resume {
            self.resync_jobs(vec![job_id.clone()]).await;
            self.cancel_if_wanted(&job_id).await;
        } else {
            self.start_add(&job_id, a.payload);
        }
    }

    pub(super) fn start_add(&mut self, job_id: &str, payload: Option<Arc<str>>) {
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
        self.to_add.push((job_id.to_string(), task, payload));
    }

    /// Sends the adds of this round to Redis side by side (on the
    /// multiplexed connection); the follower hears of them together.
    pub(super) fn flush_adds(&mut self) {
        if self.to_add.is_empty() {
            return;
        }
        let adds = std::mem::take(&mut self.to_add);
        let (shared, queue, tx, epoch) = (
            self.shared.clone(),
            self.queue.clone(),
            self.tx.clone(),
            self.epoch,
        );
        tokio::spawn(async move {
            let results =
                futures::future::join_all(adds.into_iter().map(|(job_id, task, payload)| {
                    let (shared, queue) = (&shared, &queue);
                    async move {
                        let result = add(shared, queue, &task, payload).await;
                        (job_id, result)
                    }
                }))
                .await;
            let _ = tx.send(Msg::Added { results, epoch });
        });
    }

    pub(super) async fn added(&mut self, results: Vec<(String, Result<bool, String>)>, epoch: u64) {
        // First every answer's report, in one group: Redis has the job
        // (one lazy write each: should the server die before it commits,
        // the task is offered again after the restart, the add finds the
        // job, and the follower reads where it is: `again`), or could not
        // be reached (the task goes back to the outbox).
        let mut reports = Vec::with_capacity(results.len());
        let mut forwarded = Vec::with_capacity(results.len());
        let mut unreachable = Vec::new();
        for (job_id, result) in results {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            job.adding = false;
            let events = std::mem::take(&mut job.buffered);
            match result {
                Ok(delayed) => {
                    let reason = if delayed {
                        WaitingReason::Delayed
                    } else {
                        WaitingReason::Queued
                    };
                    let report = Report::Forwarded {
                        external_id: job_id.clone(),
                        waiting_reason: reason,
                    };
                    reports.push((job_id.clone(), report));
                    forwarded.push((job_id, reason, events));
                }
                Err(message) => {
                    let retry_after = self.shared.retry_after();
                    tracing::warn!(task_id = %job_id, cause = %message, ?retry_after, "cannot add the job; kept in the outbox");
                    let report = Report::Unreachable {
                        retry_after,
                        message,
                    };
                    reports.push((job_id.clone(), report));
                    unreachable.push(job_id);
                }
            }
        }
        if !forwarded.is_empty() {
            self.shared.reached();
        }
        let accepted = self.report_all(reports);
        for id in unreachable {
            self.forget(&id);
        }
        // Then, for each job Redis has, what happened to it meanwhile.
        for (job_id, reason, events) in forwarded {
            if !accepted.contains(&job_id) {
                continue;
            }
            if let Some(job) = self.jobs.get_mut(&job_id) {
                job.shown = Some((TaskState::Pending, Some(reason)));
            }
            for entry in events {
                self.event(entry, &HashMap::new()).await;
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
            self.cancel_if_wanted(&job_id).await;
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
    // Checked, not parsed into a tree: it goes to Redis as it is.
    let data = serde_json::value::RawValue::from_string(payload.to_string())
        .map_err(|e| format!("the payload is not JSON: {e}"))?;
    let opts = AddOptions::of(task, now_micros());
    shared.conn.add(queue, &task.spec.name, data, &opts).await?;
    Ok(!opts.delay.is_zero())
}
