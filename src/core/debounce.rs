//! Debounce: at most one pending, never started task per debounce key
//! (`TaskOptions.debounce`, mode DEBOUNCE).
//!
//! Owns the index of the newest pending task of each debounce key and the
//! supersede transition: when a task of a key is placed (accepted, or read
//! back at start-up), the older pending one ends CANCELLED with the failure
//! kind `superseded`, in the same critical section, so its write rides with
//! the placement's. The newer task waits its quiet period as a delay.
//! THROTTLE is not here: it is an idempotency key with a window, kept by
//! the store (see `domain::debounce`).
//! Must not: decide a task's delay (the edge turns the quiet period into
//! one) or read the store.

use crate::domain::debounce::supersedes;
use crate::domain::*;

use super::state::State;

impl State {
    /// A task was just placed: if it is a pending, never started task of a
    /// debounce key, the older of it and the key's current pending task is
    /// superseded. Returns the tasks it superseded (none, or one).
    pub(super) fn debounce_arrived(&mut self, id: TaskId) -> Vec<TaskId> {
        let Some(a) = self.tasks.get(&id) else {
            return Vec::new();
        };
        let Some(key) = a.task.spec.debounce_key() else {
            return Vec::new();
        };
        if !self.supersedable(id) {
            return Vec::new();
        }
        let seq = a.task.rt.seq;
        let key: Box<str> = key.into();
        match self.debounce.get(&key).copied() {
            Some(other) if other != id && self.supersedable(other) => {
                let other_seq = self.tasks.get(&other).map_or(0, |o| o.task.rt.seq);
                if supersedes(seq, other_seq) {
                    self.supersede(other, id);
                    self.debounce.insert(key, id);
                    vec![other]
                } else {
                    // A newer task of the key was placed first (its commit
                    // settled before this one's): this one is the older.
                    self.supersede(id, other);
                    Vec::new()
                }
            }
            _ => {
                self.debounce.insert(key, id);
                Vec::new()
            }
        }
    }

    /// A task leaves memory: its key no longer points at it.
    pub(super) fn debounce_forget(&mut self, t: &Task) {
        if let Some(key) = t.spec.debounce_key() {
            if self.debounce.get(key) == Some(&t.id) {
                self.debounce.remove(key);
            }
        }
    }

    /// Whether a task may be superseded (or supersede): PENDING, never
    /// started (no attempt, no worker, its first run: a task run again by
    /// `RetryTask` is left alone), not being cancelled.
    fn supersedable(&self, id: TaskId) -> bool {
        self.tasks.get(&id).is_some_and(|a| {
            a.task.rt.state == TaskState::Pending
                && a.task.rt.attempt == 0
                && a.task.rt.run == 0
                && a.worker.is_none()
                && !a.task.rt.cancel_requested
        })
    }

    /// Ends `old` CANCELLED, superseded by `by`.
    fn supersede(&mut self, old: TaskId, by: TaskId) {
        let Some(a) = self.tasks.get_mut(&old) else {
            return;
        };
        let attempt = a.task.rt.attempt;
        a.task.rt.last_error = Some(Box::new(TaskError::of(
            FailureKind::Superseded,
            format!("superseded by task {by}"),
        )));
        self.conclude(
            old,
            TaskState::Cancelled,
            LogEntry::system(
                old,
                attempt,
                format!("cancelled: superseded by task {by}, a newer task of its debounce key"),
            ),
        );
    }
}
