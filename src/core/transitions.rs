//! Transitions shared by several commands: finishing a task, releasing its
//! slot, deadlines, going back to PENDING, requeueing after a lost worker.
//!
//! Owns: the moves of a task between states and the bookkeeping that goes
//! with them (counts, slots, spans).
//! Must not: know who asked (a report, a timer, a cancel): callers pick the
//! log line and the event.

use std::time::Duration;

use crate::domain::*;

use super::state::{DeadlineKind, SlotKind, State};
use super::Push;

impl State {
    pub(super) fn set_deadline(&mut self, id: TaskId, d: Option<(Micros, DeadlineKind)>) {
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        if let Some((t, _)) = a.deadline.take() {
            self.deadlines.remove(&(t, id));
        }
        if let Some((t, k)) = d {
            a.deadline = Some((t, k));
            self.deadlines.insert((t, id));
        }
    }

    /// Ends the `task.run` span of a task's attempt, if it has one.
    pub(super) fn end_run(&mut self, id: TaskId, outcome: &str) {
        if self.runs.is_empty() {
            return;
        }
        if let Some(span) = self.runs.remove(&id) {
            span.record("task.outcome", outcome);
        }
    }

    /// Frees the worker slot a running task holds.
    pub(super) fn release_slot(&mut self, id: TaskId) -> Option<u64> {
        self.end_run(id, "released");
        let a = self.tasks.get_mut(&id)?;
        let wid = a.worker.take()?;
        let slot = a.slot;
        let key = a.key.clone();
        let ckey = a.task.spec.concurrency_key().map(Box::<str>::from);
        let q = self.queue(&key);
        q.running = q.running.saturating_sub(1);
        if let Some(ckey) = ckey {
            self.key_released(&ckey);
        }
        if let Some(w) = self.workers.get_mut(&wid) {
            w.running.remove(&id);
            match slot {
                SlotKind::Normal => w.used = w.used.saturating_sub(1),
                SlotKind::Immediate => w.used_imm = w.used_imm.saturating_sub(1),
            }
            for k in w.keys.clone() {
                self.dirty_keys.push(k);
            }
        }
        Some(wid)
    }

    /// Moves a task to a final state and out of the active set.
    pub(super) fn finish(
        &mut self,
        id: TaskId,
        state: TaskState,
        kind: EventKind,
        log: Vec<LogEntry>,
    ) {
        self.end_run(id, state.as_str());
        self.unplace(id);
        self.unreserve(id);
        self.set_deadline(id, None);
        self.release_slot(id);
        let now = self.now;
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        let from = a.task.rt.state;
        a.task.rt.state = state;
        a.task.rt.finished_at = Some(now);
        if state == TaskState::Completed {
            // An earlier attempt's error is not this task's outcome; the
            // log keeps every attempt's.
            a.task.rt.last_error = None;
        }
        a.task.rt.cancel_requested = false;
        a.task.rt.worker_id = None;
        let (t, name) = (a.task.spec.task_type, a.task.spec.name.clone());
        if let Some(started) = a.task.rt.started_at {
            if from == TaskState::Running {
                self.run_time.record(now, now - started);
            }
        }
        self.counts.moved(t, &name, from, state);
        self.throughput.tick(now);
        self.emit(id, kind, log);
        if let Some(a) = self.tasks.remove(&id) {
            if let Some(p) = &a.payload {
                self.cached_bytes = self.cached_bytes.saturating_sub(p.len());
            }
            self.unindex_owner(&a.task);
            if let Some(parent) = a.task.spec.parent_id {
                let holder = self.tasks.get(&parent).and_then(|p| p.worker);
                if let Some(w) = holder {
                    self.push_to(
                        w,
                        Push::ChildDone {
                            parent,
                            child: a.task.clone(),
                        },
                    );
                }
            }
            self.finishing.insert(id, a.task);
        }
    }

    /// Takes a task off its worker and puts it back to PENDING, runnable
    /// again after `delay` (a backoff, or an unreachable engine).
    pub(super) fn back_to_pending(&mut self, id: TaskId, delay: Duration, reason: WaitingReason) {
        self.end_run(
            id,
            match reason {
                WaitingReason::EngineUnreachable => "engine_unreachable",
                _ => "retry",
            },
        );
        self.set_deadline(id, None);
        self.release_slot(id);
        self.set_state(id, TaskState::Pending);
        if let Some(a) = self.tasks.get_mut(&id) {
            a.task.rt.run_at = add_micros(self.now, delay);
            a.task.rt.worker_id = None;
            a.task.rt.waiting_reason = Some(reason);
        }
        self.place(id, self.now);
    }

    /// Puts a task its engine did not run (unreachable, or busy) back to
    /// PENDING without using its attempt, offered again after `retry_after`,
    /// and logs why.
    pub(super) fn offer_again(
        &mut self,
        id: TaskId,
        attempt: u32,
        retry_after: Duration,
        reason: WaitingReason,
        log: LogEntry,
    ) {
        self.back_to_pending(id, retry_after, reason);
        if let Some(a) = self.tasks.get_mut(&id) {
            a.task.rt.attempt = attempt;
            a.task.rt.repeat = attempt > 0;
            a.again = true;
        }
        self.emit(id, EventKind::Updated, vec![log]);
    }

    /// Requeues a running task whose worker is gone, or ends it.
    pub(super) fn requeue_lost(&mut self, id: TaskId, why: &str, counts_as_loss: bool) {
        let Some(a) = self.tasks.get(&id) else {
            return;
        };
        let attempt = a.task.rt.attempt;
        if a.task.rt.cancel_requested {
            self.conclude(
                id,
                TaskState::Cancelled,
                LogEntry::system(
                    id,
                    attempt,
                    format!("{why}; the requested cancel is complete"),
                ),
            );
            return;
        }
        let losses = a.task.rt.lease_losses + u32::from(counts_as_loss);
        let (max_attempts, backoff) = (a.task.spec.max_attempts, a.task.spec.backoff);
        if losses > self.cfg.max_lease_losses && attempt < max_attempts {
            // Lost too often, this attempt fails; the next one starts afresh
            // (lease losses count per attempt, so every attempt is used).
            let err = TaskError {
                message: format!("{why}; the worker was lost {losses} times in this attempt"),
                kind: FailureKind::WorkerLost.into(),
                details: String::new(),
                retryable: true,
                attempt,
            };
            if let Some(a) = self.tasks.get_mut(&id) {
                a.task.rt.last_error = Some(Box::new(err.clone()));
                a.task.rt.lease_losses = 0;
            }
            let delay = backoff.delay(attempt);
            self.retry_after_failure(id, attempt, max_attempts, &err.message, delay);
            return;
        }
        if losses > self.cfg.max_lease_losses {
            let err = TaskError {
                message: format!("{why}; the worker was lost {losses} times in its last attempt"),
                kind: FailureKind::WorkerLost.into(),
                details: String::new(),
                retryable: false,
                attempt,
            };
            if let Some(a) = self.tasks.get_mut(&id) {
                a.task.rt.last_error = Some(Box::new(err.clone()));
                a.task.rt.lease_losses = losses;
            }
            self.conclude(
                id,
                TaskState::Failed,
                LogEntry::system(id, attempt, err.message).level("error"),
            );
            return;
        }
        self.end_run(id, "requeued");
        self.set_deadline(id, None);
        self.release_slot(id);
        self.set_state(id, TaskState::Pending);
        if let Some(a) = self.tasks.get_mut(&id) {
            a.task.rt.lease_losses = losses;
            // The attempt did not finish: the next delivery repeats it.
            a.task.rt.repeat = attempt > 0;
            a.task.rt.worker_id = None;
            a.task.rt.waiting_reason = Some(WaitingReason::Queued);
            a.again = true;
        }
        self.place(id, self.now);
        self.emit(
            id,
            EventKind::Requeued,
            vec![
                LogEntry::system(id, attempt, format!("{why}; attempt {attempt} requeued"))
                    .level("warn"),
            ],
        );
    }

    /// Puts a task whose attempt failed back to PENDING for another attempt
    /// after `delay`, and logs why.
    pub(super) fn retry_after_failure(
        &mut self,
        id: TaskId,
        attempt: u32,
        max_attempts: u32,
        message: &str,
        delay: Duration,
    ) {
        self.back_to_pending(id, delay, WaitingReason::BackingOff);
        let line = format!(
            "attempt {attempt} of {max_attempts} failed: {message}; retrying in {}",
            crate::domain::text::duration(delay)
        );
        let log = LogEntry::system(id, attempt, line).level("warn");
        self.emit(id, EventKind::Retrying, vec![log]);
    }

    /// Ends a task in the final `state` with its event, logging `log`, and
    /// schedules its cleanup task if it did not complete (FAILED, CANCELLED,
    /// COMPENSATED). The one way a task ends: a report, a cancel, a
    /// deadline, a lost worker and recovery all come here, so none of them
    /// can forget the cleanup.
    pub(super) fn conclude(&mut self, id: TaskId, state: TaskState, log: LogEntry) {
        let kind = match state {
            TaskState::Completed => EventKind::Completed,
            TaskState::Cancelled => EventKind::Cancelled,
            TaskState::Failed => EventKind::Failed,
            _ => EventKind::Updated,
        };
        self.finish(id, state, kind, vec![log]);
        match state {
            TaskState::Failed => self.schedule_cleanup(id, CleanupReason::Failed),
            TaskState::Cancelled | TaskState::Compensated => {
                self.schedule_cleanup(id, CleanupReason::Cancelled)
            }
            _ => {}
        }
    }
}

/// Why a cleanup task was scheduled (its `cleanup_reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CleanupReason {
    /// The task failed for good.
    Failed,
    /// The task was cancelled (or compensated).
    Cancelled,
}

impl CleanupReason {
    /// The label's value.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            CleanupReason::Failed => "failed",
            CleanupReason::Cancelled => "cancelled",
        }
    }
}
