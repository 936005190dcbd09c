//! Cancelling a task's BullMQ job: a waiting job is taken out of its lists
//! and removed (CANCELLED at once), an active one's worker is asked to stop
//! over the `switchyard:cancel` channel, and a cancel Redis could not take
//! is tried again.
//!
//! It owns the cancel state of a job ([`CancelState`]) and its `CancelAck`;
//! it must not decide when a cancel is due (the core does) nor read the
//! stream. The reason of a cancel is only logged.

use std::time::Duration;

use super::conn::TakeOut;
use super::follower::{CancelState, Follower, Msg};
use super::mapping::stream_id_ge;
use crate::core::{CancelReason, Report};
use crate::domain::TaskId;

/// How soon a cancel that could not reach Redis is tried again.
const CANCEL_RETRY: Duration = Duration::from_secs(1);

impl Follower {
    pub(super) async fn cancel(&mut self, task_id: TaskId, reason: &CancelReason) {
        let job_id = task_id.to_string();
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        tracing::debug!(task_id = %task_id, %reason, "cancel");
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
    pub(super) async fn try_cancel(&mut self, job_id: &str) {
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
                    self.cancels_until.insert(job_id.to_string());
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

    /// Tries a cancel that is still wanted: after `CANCEL_RETRY`, or once
    /// the job's add or state read let it go ahead.
    pub(super) async fn cancel_if_wanted(&mut self, job_id: &str) {
        if self
            .jobs
            .get(job_id)
            .is_some_and(|j| j.cancel == CancelState::Wanted)
        {
            self.try_cancel(job_id).await;
        }
    }
}
