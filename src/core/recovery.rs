//! Recovery: putting the active tasks read at start-up back in place.
//!
//! Owns: what a task that was RUNNING or cancelling when the server stopped
//! becomes.
//! Must not: read the store itself (`Core::start` streams the tasks).

use crate::domain::*;

use super::{Core, EngineKind};

/// Active tasks per chunk read from the store at start-up. Up to five
/// chunks are in flight between the SQL thread, the decoder and this core
/// (raw rows, decoded tasks): at ~700 bytes of raw JSON per row, 2,048 keeps
/// that transient memory under 8 MiB (with 8,192 the RSS after a restart
/// with a million tasks was ~25 MiB higher; start-up took 2–3 s either way).
pub(super) const RECOVERY_CHUNK: usize = 2048;

impl Core {
    /// Puts tasks that were active when the server stopped back in place,
    /// and counts them; returns how many were requeued.
    pub(super) fn recover(&self, active: Vec<Task>) -> usize {
        let mut requeued = 0usize;
        self.with_state(|st| {
            for mut t in active {
                let id = t.id;
                st.counts.add(t.spec.task_type, &t.spec.name, t.rt.state, 1);
                match t.rt.state {
                    TaskState::Running if t.rt.cancel_requested => {
                        let attempt = t.rt.attempt;
                        st.add_pending(t, None);
                        st.unplace(id);
                        st.set_state(id, TaskState::Running);
                        st.conclude(
                            id,
                            TaskState::Cancelled,
                            LogEntry::system(
                                id,
                                attempt,
                                "server restarted while a cancel was pending; cancelled",
                            ),
                        );
                    }
                    TaskState::Running | TaskState::Compensating => {
                        let attempt = t.rt.attempt;
                        let was = t.rt.state;
                        t.rt.state = TaskState::Pending;
                        t.rt.repeat = attempt > 0;
                        t.rt.worker_id = None;
                        t.rt.waiting_reason = Some(WaitingReason::Queued);
                        st.counts
                            .moved(t.spec.task_type, &t.spec.name, was, TaskState::Pending);
                        st.add_pending(t, None);
                        if let Some(a) = st.tasks.get_mut(&id) {
                            a.again = true;
                        }
                        // It counts against its key's limit until it is
                        // handed out again.
                        st.reserve(id);
                        st.emit(
                            id,
                            EventKind::Requeued,
                            vec![LogEntry::system(
                                id,
                                attempt,
                                format!("server restarted while attempt {attempt} was running; requeued"),
                            )
                            .level("warn")],
                        );
                        requeued += 1;
                    }
                    _ => {
                        let maybe_handed = t.rt.state == TaskState::Pending && !t.rt.forwarded;
                        let forwarded = t.rt.state == TaskState::Pending && t.rt.forwarded;
                        st.add_pending(t, None);
                        // A backend has it: it counts against its key's
                        // limit until it is handed out again.
                        if forwarded
                            && st
                                .tasks
                                .get(&id)
                                .is_some_and(|a| EngineKind::of_key(&a.key).is_backend())
                        {
                            st.reserve(id);
                        }
                        // Its backend may have had it before the crash: the
                        // write that says so is lazy (`Report::Forwarded`).
                        if let Some(a) = st.tasks.get_mut(&id) {
                            if maybe_handed && EngineKind::of_key(&a.key).is_backend() {
                                a.again = true;
                            }
                        }
                    }
                }
            }
        });
        requeued
    }
}
