//! Where the follower's jobs are after a gap: contact with Redis lost (the
//! tasks say so), the reader (re)positioned (adds that waited start; after
//! a gap every job's state is read again), and the reading of jobs' state
//! itself, which mirrors it, ends the jobs that finished unheard and adds
//! again the jobs Redis lost.
//!
//! It owns that recovery; it must not read the stream (the reader does) nor
//! apply its events (the follower does).

use std::collections::HashSet;
use std::time::Duration;

use super::conn::Probe;
use super::follower::{warning, CancelState, Follower, Msg};
use super::mapping::{self, mirror_of, JobPlace};
use crate::core::Report;
use crate::domain::*;

/// Most jobs read in one round trip.
const PROBE_CHUNK: usize = 256;
/// What a task's log says when Redis is lost while it runs.
const LOST: &str = "lost contact with Redis; status as last seen";

impl Follower {
    pub(super) fn lost(&mut self, why: &str) {
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
                    self.report(&id, warning(LOST.into()));
                }
            }
        }
    }

    pub(super) async fn ready(&mut self, continuous: bool, pos: String) {
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
    pub(super) async fn resync_jobs(&mut self, ids: Vec<String>) {
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
                    let message = format!(
                        "BullMQ job {job_id} not found in Redis (Redis lost its data?); adding it again"
                    );
                    self.report(job_id, warning(message));
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

    /// Reads jobs' state again after an earlier read failed (those still
    /// followed and not being added).
    pub(super) async fn resync_again(&mut self, ids: Vec<String>) {
        let ids = ids
            .into_iter()
            .filter(|id| self.jobs.get(id).is_some_and(|j| !j.adding))
            .collect();
        self.resync_jobs(ids).await;
    }
}
