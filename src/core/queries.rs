//! Read-only queries: status, listings, logs, workers and metrics.
//!
//! Owns: merging the live state with the store's rows.
//! Must not: change state.

use std::sync::Arc;

use crate::domain::*;
use crate::store::ListQuery;

use super::metrics::{Counts, Summary};
use super::workers::WorkerSlot;
use super::{Core, CoreError};

/// Metrics snapshot.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// Counts.
    pub counts: Counts,
    /// Per-queue figures: (key, ready, scheduled, running, workers, free slots).
    pub queues: Vec<QueueInfo>,
    /// Finished per second.
    pub throughput: f64,
    /// Schedule-to-start.
    pub schedule_to_start: Summary,
    /// Run time.
    pub run_time: Summary,
    /// Workers connected (remote).
    pub workers_connected: u32,
    /// Start time.
    pub started_at: Micros,
    /// Last event sequence.
    pub last_seq: u64,
    /// Pending tasks held by each flow rule: `concurrency_limit`,
    /// `queue_paused`, `rate_limited`.
    pub held: Vec<(&'static str, u64)>,
    /// Flow control per queue (by name, at most 100): top keys and tasks
    /// held per rule.
    pub flow: Vec<QueueFlowInfo>,
    /// The tokens left per rate limit: its pattern (`pattern@ns` outside
    /// `default`) and its tokens (the emptiest key's for a rate limit per
    /// key). One entry per rate limit, at most 1,000.
    pub rate_tokens: Vec<(String, f64)>,
}

/// One queue's flow-control figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueFlowInfo {
    /// The queue key.
    pub name: String,
    /// The concurrency keys with the most ready tasks in the queue, most
    /// first (ties by key), at most 5.
    pub top_keys: Vec<KeyPending>,
    /// Ready tasks held because their key runs its limit.
    pub held_limit: u64,
    /// Ready tasks held because their name or queue is paused.
    pub held_paused: u64,
    /// Pending tasks held because their rate limit had no token.
    pub held_rate: u64,
    /// The rate limits that apply to the queue (see
    /// `State::queue_flow`), in the order they are matched; at most
    /// [`super::flow::MAX_QUEUE_RATE_LIMITS`].
    pub rate_limits: Vec<RateTokens>,
}

/// A rate limit and the tokens in its bucket now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateTokens {
    /// Its pattern (`pattern@ns` for a rate limit of a namespace other
    /// than `default`).
    pub pattern: String,
    /// Tokens now, 0 to `burst` (the emptiest key's for a rate limit per
    /// key).
    pub tokens: f64,
    /// Starts per `interval`.
    pub rate: u32,
    /// The interval.
    pub interval: std::time::Duration,
    /// The bucket's size.
    pub burst: u32,
    /// One bucket per concurrency key.
    pub per_key: bool,
}

/// A concurrency key's ready tasks in one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPending {
    /// The key, as its caller gave it (the queue's name says its
    /// namespace).
    pub key: String,
    /// Its ready tasks in the queue.
    pub pending: u64,
    /// Its tasks running (over every queue of its namespace).
    pub running: u32,
}

/// One queue's figures.
#[derive(Debug, Clone, Default)]
pub struct QueueInfo {
    /// The queue key (task name).
    pub name: String,
    /// Runnable now.
    pub ready: u64,
    /// Delayed or backing off.
    pub scheduled: u64,
    /// Running.
    pub running: u64,
    /// Workers.
    pub workers: u32,
    /// Free slots of the workers with a limit.
    pub free_slots: u32,
    /// Whether an engine without a concurrency limit takes this queue.
    pub unbounded: bool,
}

impl Core {
    /// The current status of a task.
    pub async fn status(&self, id: TaskId) -> Result<Task, CoreError> {
        {
            let st = self.inner.state.lock();
            if let Some(a) = st.tasks.get(&id) {
                return Ok(st.shown(a, true));
            }
            if let Some(t) = st.finishing.get(&id) {
                return Ok(t.clone());
            }
        }
        match self.inner.store.get(id).await? {
            Some((t, _)) => Ok(t),
            None => Err(self.not_found(id)),
        }
    }

    /// The error for a task the store does not have: when its id (a UUIDv7,
    /// which carries its creation time) is older than the shortest
    /// retention, the message says it was likely removed.
    pub(super) fn not_found(&self, id: TaskId) -> CoreError {
        let created = id.get_timestamp().map(|t| {
            let (s, n) = t.to_unix();
            s as i64 * 1_000_000 + i64::from(n / 1_000)
        });
        let shortest = self.inner.cfg.retention.shortest();
        match (created, shortest) {
            (Some(at), Some(keep)) if now_micros() - at > keep.as_micros() as i64 => {
                let age = std::time::Duration::from_micros((now_micros() - at).max(0) as u64);
                CoreError::Removed(format!(
                    "task {id} not found: it was created {} ago, longer than this server keeps \
                     ended tasks ({}), so it was likely removed by retention",
                    crate::domain::text::duration(std::time::Duration::from_secs(age.as_secs())),
                    self.inner.cfg.retention.describe()
                ))
            }
            _ => CoreError::NotFound(id.to_string()),
        }
    }

    /// The live status of every active task that matches a filter.
    pub fn active_tasks(&self, filter: &TaskFilter) -> Vec<Task> {
        let st = self.inner.state.lock();
        let mut out: Vec<Task> = st
            .tasks
            .values()
            .filter(|a| filter.matches(&a.task))
            .map(|a| st.shown(a, false))
            .collect();
        out.sort_by_key(|t| t.id);
        out
    }

    /// A task's status and payload.
    pub async fn status_with_payload(&self, id: TaskId) -> Result<(Task, Arc<str>), CoreError> {
        let t = self.status(id).await?;
        let payload = match self.inner.store.payload(id).await? {
            Some(p) => p,
            // Known here but not stored yet: a task scheduled from inside
            // the server (a workflow step) is not awaited, and may finish
            // before its insert commits. Once everything submitted is
            // durable, the store has it.
            None => {
                self.inner.store.flush().await.map_err(CoreError::Store)?;
                self.inner
                    .store
                    .payload(id)
                    .await?
                    .ok_or_else(|| CoreError::NotFound(id.to_string()))?
            }
        };
        Ok((t, payload))
    }

    /// Lists tasks, newest first. Active tasks show their live status.
    pub async fn list(&self, q: ListQuery) -> Result<Vec<Task>, CoreError> {
        // The store filters by its own columns: flush first, so a task seen
        // in a new state before the call (GetTaskStatus, an event) is
        // selected by that state.
        self.flush_for_read().await?;
        let mut tasks = self.inner.store.list(q).await?;
        let st = self.inner.state.lock();
        for t in tasks.iter_mut() {
            if let Some(a) = st.tasks.get(&t.id) {
                *t = st.shown(a, false);
            } else if let Some(f) = st.finishing.get(&t.id) {
                *t = f.clone();
            }
        }
        Ok(tasks)
    }

    /// A task's log.
    pub async fn logs(
        &self,
        id: TaskId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, CoreError> {
        // Known task? (NOT_FOUND otherwise.)
        let task = self.status(id).await?;
        // Lines queued but not yet committed are not shown; flush first so a
        // reader sees everything that happened before its call.
        self.flush_for_read().await?;
        Ok(crate::store::task_logs(&*self.inner.store, &task, after, limit).await?)
    }

    /// Waits for what is queued to be committed before a read, so the read
    /// sees everything that happened before its call; unless the store
    /// cannot commit now (a full disk, a database out of reach): then the
    /// read answers from what is committed rather than wait or fail, since
    /// reads must keep working while writes cannot.
    async fn flush_for_read(&self) -> Result<(), CoreError> {
        if self.inner.store.writable().is_err() {
            return Ok(());
        }
        match self.inner.store.flush().await {
            Ok(()) => Ok(()),
            // The store stopped committing while we waited: same answer.
            Err(_) if self.inner.store.writable().is_err() => Ok(()),
            Err(e) => Err(CoreError::Store(e)),
        }
    }

    /// Metrics.
    pub fn metrics(&self) -> MetricsSnapshot {
        let st = self.inner.state.lock();
        let now = now_micros();
        let mut queues: Vec<QueueInfo> = st
            .queues
            .iter()
            .filter(|(_, q)| {
                !q.ready.is_empty()
                    || q.fair.as_ref().is_some_and(|f| !f.lines.is_empty())
                    || q.scheduled > 0
                    || q.running > 0
                    || !q.workers.is_empty()
            })
            .map(|(k, q)| {
                let ws: Vec<&WorkerSlot> =
                    q.workers.iter().filter_map(|w| st.workers.get(w)).collect();
                let keyed: usize = q
                    .fair
                    .as_ref()
                    .map_or(0, |f| f.lines.values().map(|l| l.waiting.len()).sum());
                QueueInfo {
                    name: k.to_string(),
                    ready: (q.ready.len() + keyed) as u64,
                    scheduled: q.scheduled,
                    running: q.running,
                    workers: ws.len() as u32,
                    unbounded: ws.iter().any(|w| w.unbounded()),
                    free_slots: ws
                        .iter()
                        .filter(|w| !w.draining && !w.unbounded())
                        .map(|w| w.free_normal() + w.free_imm())
                        .sum(),
                }
            })
            .collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        let (limited, paused) = st.held_counts();
        MetricsSnapshot {
            held: vec![
                ("concurrency_limit", limited),
                ("queue_paused", paused),
                ("rate_limited", st.rate_held_count()),
            ],
            flow: st.queue_flow(now),
            rate_tokens: st.rate_tokens(now),
            counts: st.counts.clone(),
            queues,
            throughput: st.throughput.per_sec(now),
            schedule_to_start: st.s2s.summary(now),
            run_time: st.run_time.summary(now),
            workers_connected: st.workers.values().filter(|w| !w.local()).count() as u32,
            started_at: self.inner.started_at,
            last_seq: self.inner.hub.last_seq(),
        }
    }
}
