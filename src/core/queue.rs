//! Per-key priority queues and timers: where a pending task waits.
//!
//! Owns: putting a pending task in its queue or on a timer and taking it
//! out again.
//! Must not: change a task's state or write anything.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::Arc;

use crate::domain::*;

use super::flow::{Fair, LKey};
use super::state::{lane, Active, QKey, SlotKind, State};
use super::EngineKind;

#[derive(Default)]
pub(super) struct Queue {
    /// Ready tasks without a concurrency key.
    pub(super) ready: BTreeSet<QKey>,
    /// Ready tasks with a key, in their keys' lines (see `core::flow`);
    /// none until the queue's first keyed task.
    pub(super) fair: Option<Box<Fair>>,
    pub(super) scheduled: u64,
    pub(super) running: u64,
    pub(super) workers: Vec<u64>,
}

impl State {
    pub(super) fn queue(&mut self, key: &Arc<str>) -> &mut Queue {
        self.queues.entry(key.clone()).or_default()
    }

    /// Adds a pending task to memory: on a timer or in its queue. Returns
    /// the tasks of its debounce key it superseded (see `debounce.rs`).
    pub(super) fn add_pending(&mut self, task: Task, payload: Option<Arc<str>>) -> Vec<TaskId> {
        let (k, _) = self.cfg.routes.route(&task.spec);
        let key: Arc<str> = match self.queues.get_key_value(&*k) {
            Some((k, _)) => k.clone(),
            None => Arc::from(k),
        };
        let payload =
            payload.filter(|p| self.cached_bytes + p.len() <= self.cfg.payload_cache_bytes);
        if let Some(p) = &payload {
            self.cached_bytes += p.len();
        }
        self.index_owner(&task);
        let id = task.id;
        let run_at = task.rt.run_at;
        let dedup = task.spec.dedup.is_some();
        self.tasks.insert(
            id,
            Box::new(Active {
                task,
                key: key.clone(),
                payload,
                worker: None,
                slot: SlotKind::Normal,
                again: false,
                deadline: None,
                queued: None,
                timer: None,
                held: false,
                reserved: false,
                ready_since: run_at,
            }),
        );
        self.place(id, self.now);
        if dedup {
            // A task of a debounce key supersedes the key's older one.
            self.debounce_arrived(id)
        } else {
            Vec::new()
        }
    }

    /// Puts a pending task where it belongs: a timer if not due, else its queue.
    pub(super) fn place(&mut self, id: TaskId, now: Micros) {
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        let key = a.key.clone();
        // A delay is the engine's job once a backend holds the task; backoff
        // after an unreachable engine stays on the core's timer (the outbox),
        // and so does a debounce key's quiet period (a newer task of the key
        // must find this one here to supersede it).
        let engine_delays = EngineKind::of_key(&key).is_backend()
            && !a.task.rt.forwarded
            && a.task.rt.waiting_reason == Some(WaitingReason::Delayed)
            && a.task.spec.debounce_key().is_none();
        if a.task.rt.run_at > now && !engine_delays {
            a.timer = Some(a.task.rt.run_at);
            self.timers.insert((a.task.rt.run_at, id));
            self.queue(&key).scheduled += 1;
        } else {
            let qk = QKey {
                lane: lane(&a.task),
                prio: Reverse(a.task.spec.priority),
                created: a.task.created_at,
                id,
            };
            a.ready_since = a.task.rt.run_at.max(a.task.created_at);
            if !engine_delays
                && matches!(
                    a.task.rt.waiting_reason,
                    Some(WaitingReason::Delayed) | Some(WaitingReason::BackingOff)
                )
            {
                a.task.rt.waiting_reason = Some(WaitingReason::Queued);
            }
            // A paused name or queue holds it here (`core::flow`).
            if self.flow.rules.paused_by(&a.task.spec).is_some() {
                a.held = true;
                self.flow.held.insert(id);
                return;
            }
            a.queued = Some(qk);
            match a.task.spec.concurrency_key() {
                None => {
                    self.queue(&key).ready.insert(qk);
                    self.dirty_keys.push(key);
                }
                Some(ckey) => {
                    let ckey: Arc<str> = Arc::from(ckey);
                    let lk = LKey {
                        fresh: !a.reserved,
                        qk,
                    };
                    self.enter_line(&key, &ckey, lk);
                }
            }
        }
    }

    /// Takes a pending task out of its queue or timer.
    pub(super) fn unplace(&mut self, id: TaskId) {
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        let key = a.key.clone();
        let queued = a.queued.take();
        let timer = a.timer.take();
        if std::mem::take(&mut a.held) {
            self.flow.held.remove(&id);
        }
        if let Some(qk) = queued {
            match a.task.spec.concurrency_key().map(Box::<str>::from) {
                None => {
                    self.queue(&key).ready.remove(&qk);
                }
                Some(ckey) => {
                    let lk = LKey {
                        fresh: !a.reserved,
                        qk,
                    };
                    self.leave_line(&key, &ckey, &lk)
                }
            }
        }
        let q = self.queue(&key);
        if let Some(t) = timer {
            q.scheduled = q.scheduled.saturating_sub(1);
            self.timers.remove(&(t, id));
            if !self.flow.rate_held.is_empty() {
                self.flow.rate_held.remove(&id);
            }
        }
    }
}
