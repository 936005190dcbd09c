//! Per-key priority queues and timers: where a pending task waits.
//!
//! Owns: putting a pending task in its queue or on a timer and taking it
//! out again.
//! Must not: change a task's state or write anything.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::Arc;

use crate::domain::*;

use super::state::{lane, Active, QKey, SlotKind, State};
use super::EngineKind;

#[derive(Default)]
pub(super) struct Queue {
    pub(super) ready: BTreeSet<QKey>,
    pub(super) scheduled: u64,
    pub(super) running: u64,
    pub(super) workers: Vec<u64>,
}

impl State {
    pub(super) fn queue(&mut self, key: &Arc<str>) -> &mut Queue {
        self.queues.entry(key.clone()).or_default()
    }

    /// Adds a pending task to memory: on a timer or in its queue.
    pub(super) fn add_pending(&mut self, task: Task, payload: Option<Arc<str>>) {
        let (k, _) = self.cfg.routes.route(&task.spec);
        let key: Arc<str> = match self.queues.get_key_value(k) {
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
                ready_since: run_at,
            }),
        );
        self.place(id, self.now);
    }

    /// Puts a pending task where it belongs: a timer if not due, else its queue.
    pub(super) fn place(&mut self, id: TaskId, now: Micros) {
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        let key = a.key.clone();
        // A delay is the engine's job once a backend holds the task; backoff
        // after an unreachable engine stays on the core's timer (the outbox).
        let engine_delays = EngineKind::of_key(&key).is_backend()
            && !a.task.rt.forwarded
            && a.task.rt.waiting_reason == Some(WaitingReason::Delayed);
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
            a.queued = Some(qk);
            a.ready_since = a.task.rt.run_at.max(a.task.created_at);
            if !engine_delays
                && matches!(
                    a.task.rt.waiting_reason,
                    Some(WaitingReason::Delayed) | Some(WaitingReason::BackingOff)
                )
            {
                a.task.rt.waiting_reason = Some(WaitingReason::Queued);
            }
            self.queue(&key).ready.insert(qk);
            self.dirty_keys.push(key);
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
        let q = self.queue(&key);
        if let Some(qk) = queued {
            q.ready.remove(&qk);
        }
        if let Some(t) = timer {
            q.scheduled = q.scheduled.saturating_sub(1);
            self.timers.remove(&(t, id));
        }
    }
}
