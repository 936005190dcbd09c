//! Dispatch: handing ready tasks to workers with free slots.
//!
//! Owns: picking the worker for a queue's head and the RUNNING (or
//! handed-to-a-backend) transition of an assignment.
//! Must not: block or allocate beyond the assignment (it is the hot path).

use std::sync::Arc;

use crate::domain::*;

use super::flow::Pick;
use super::state::{DeadlineKind, SlotKind, State};
use super::{Assignment, EngineKind, Push};

impl State {
    /// Starts a task on a worker: takes a slot, moves the task to RUNNING
    /// (or hands it to a backend) and pushes the assignment.
    pub(super) fn assign(&mut self, id: TaskId, wid: u64) {
        let now = self.now;
        let Some((worker_name, key, attempt)) = self.occupy(id, wid, now) else {
            return;
        };
        let engine = EngineKind::of_key(&key);
        if engine.is_backend() {
            self.hand_to_backend(id, attempt, engine);
        } else {
            self.start_running(id, attempt, now, &worker_name);
        }
        let run_traceparent = self.open_run_span(id, &worker_name);
        let Some(a) = self.tasks.get(&id) else {
            return;
        };
        let deadline = a
            .deadline
            .filter(|(_, k)| *k == DeadlineKind::Execution)
            .map(|(t, _)| t);
        let push = Push::Assign(Assignment {
            task: a.task.clone(),
            payload: a.payload.clone(),
            deadline,
            again: a.again,
            run_traceparent,
        });
        self.push_to(wid, push);
    }

    /// Takes a slot of worker `wid` for the task and starts its attempt (a
    /// repeated one keeps its number); returns the worker's id, the task's
    /// queue key and the attempt.
    fn occupy(&mut self, id: TaskId, wid: u64, now: Micros) -> Option<(Arc<str>, Arc<str>, u32)> {
        let w = self.workers.get_mut(&wid)?;
        let a = self.tasks.get_mut(&id)?;
        let slot = if a.task.spec.immediate && w.free_imm() > 0 {
            w.used_imm += 1;
            SlotKind::Immediate
        } else {
            w.used += 1;
            SlotKind::Normal
        };
        w.running.insert(id);
        let worker_name = w.id.clone();
        a.worker = Some(wid);
        a.slot = slot;
        a.queued = None;
        if a.task.rt.repeat {
            a.task.rt.repeat = false;
        } else {
            a.task.rt.attempt += 1;
        }
        a.task.rt.started_at = Some(now);
        a.task.rt.worker_id = Some(Box::from(&*worker_name));
        a.task.rt.progress = 0.0;
        a.task.rt.progress_message = None;
        let attempt = a.task.rt.attempt;
        let key = a.key.clone();
        // A reserved task's slot of its key is counted already.
        let reserved = std::mem::take(&mut a.reserved);
        if let Some(ckey) = a.task.spec.concurrency_key().filter(|_| !reserved) {
            match self.flow.running.get_mut(ckey) {
                Some(n) => *n += 1,
                None => {
                    self.flow.running.insert(Arc::from(ckey), 1);
                }
            }
        }
        self.queue(&key).running += 1;
        Some((worker_name, key, attempt))
    }

    /// Handed to an external engine: the task is not running yet. The
    /// backend mirrors the engine's own states (and timeouts).
    fn hand_to_backend(&mut self, id: TaskId, attempt: u32, engine: EngineKind) {
        if let Some(a) = self.tasks.get_mut(&id) {
            a.task.rt.started_at = None;
            // The engine now owns a delay; anything else is queued there.
            if a.task.rt.waiting_reason != Some(WaitingReason::Delayed) {
                a.task.rt.waiting_reason = Some(WaitingReason::Queued);
            }
        }
        let line = format!("handed to the {} backend", engine.name());
        // Only a log line: the row and its watchers learn of the hand-off
        // from the backend's next report (the engine took it, or could not
        // be reached), which carries these fields. Rebuilt after a crash
        // (the task is offered to the backend again): it rides on the next
        // commit.
        self.lazily(|st| st.log(LogEntry::system(id, attempt, line)));
    }

    /// Moves an assigned task to RUNNING, with its execution deadline.
    fn start_running(&mut self, id: TaskId, attempt: u32, now: Micros, worker_name: &str) {
        let Some(a) = self.tasks.get(&id) else {
            return;
        };
        let s2s = now - a.ready_since;
        // A workflow enforces its own timeout (and compensates); the core
        // times out attempts of every other type.
        let timeout = if a.task.spec.task_type == TaskType::Complex {
            None
        } else {
            a.task
                .spec
                .execution_timeout
                .or(self.cfg.default_execution_timeout)
        };
        let deadline = timeout.map(|d| add_micros(now, d));
        self.s2s.record(now, s2s.max(0));
        self.set_state(id, TaskState::Running);
        self.set_deadline(id, deadline.map(|d| (d, DeadlineKind::Execution)));
        let line = format!("attempt {attempt} started on worker {worker_name}");
        self.emit(
            id,
            EventKind::Started,
            vec![LogEntry::system(id, attempt, line)],
        );
    }

    /// Opens the attempt's `task.run` span while tracing is on; returns its
    /// traceparent.
    fn open_run_span(&mut self, id: TaskId, worker_name: &str) -> Option<String> {
        if !crate::telemetry::enabled() {
            return None;
        }
        let a = self.tasks.get(&id)?;
        let t = &a.task;
        let span = tracing::info_span!(
            parent: None,
            "task.run",
            task.id = %t.id,
            task.name = %t.spec.name,
            task.type = t.spec.task_type.as_str(),
            task.attempt = t.rt.attempt,
            task.queue = &*a.key,
            worker.id = %worker_name,
            task.outcome = tracing::field::Empty,
        );
        let tp = crate::telemetry::adopt(&span, t.spec.traceparent.as_deref());
        self.runs.insert(id, span);
        tp
    }

    /// Dispatches what can be dispatched on the dirty queues.
    pub(super) fn dispatch(&mut self) {
        if self.draining {
            self.dirty_keys.clear();
            return;
        }
        while let Some(key) = self.dirty_keys.pop() {
            while let Some(q) = self.queues.get(&key) {
                // Without keyed tasks the queue's own head; with them, the
                // keys' round-robin decides (`core::flow`).
                let pick = match &q.fair {
                    None => q.ready.first().copied().map(Pick::Plain),
                    Some(f) => f.pick(q.ready.first().copied()),
                };
                let Some(pick) = pick else {
                    break;
                };
                let lane = pick.lane();
                // The worker with the most free slots that can take the head.
                let best = q
                    .workers
                    .iter()
                    .filter_map(|wid| self.workers.get(wid).map(|w| (*wid, w)))
                    .filter(|(_, w)| w.can_take(lane))
                    .map(|(wid, w)| {
                        let imm = if lane == 0 { w.free_imm() } else { 0 };
                        (wid, w.free_normal().saturating_add(imm))
                    })
                    .max_by_key(|(_, free)| *free);
                let Some((wid, _)) = best else {
                    break;
                };
                match pick {
                    Pick::Plain(head) => {
                        if let Some(q) = self.queues.get_mut(&key) {
                            q.ready.remove(&head);
                            if let Some(f) = q.fair.as_mut() {
                                f.plain_dispatched();
                            }
                        }
                        // Its rate limit may hold it on a timer instead.
                        if !self.rate_blocked(head.id) {
                            self.assign(head.id, wid);
                        }
                    }
                    Pick::Keyed(head) => {
                        // `None`: its key ran out of room meanwhile (the
                        // line is parked); the next pick is another line.
                        if let Some(id) = self.take_head(&key, &head) {
                            if !self.rate_blocked(id) {
                                self.assign(id, wid);
                            }
                            self.refill_line(&key, &head.ckey);
                        }
                    }
                }
            }
        }
    }
}
