//! The timer loop: delays and backoffs that run out, execution and cancel
//! deadlines, and lease expiry.
//!
//! Owns: the `core-timers` task and what a passed deadline does.
//! Must not: sleep on a period (it wakes when the earliest timer is due).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::domain::*;

use super::state::{DeadlineKind, State};
use super::{CancelReason, Core, Push, Report};

impl Core {
    pub(super) async fn timer_loop(&self) {
        // Leases are checked when the earliest one can run out (a worker's
        // last message plus `lease_ttl`), not on a period, so a lost worker
        // is found on time.
        let mut next_lease_check = now_micros();
        loop {
            if self.inner.closed.load(Ordering::Acquire) {
                return;
            }
            let now = now_micros();
            let run_lease_check = now >= next_lease_check;
            let next = self.with_state(|st| {
                st.timers_due(now);
                while let Some(&(t, id)) = st.deadlines.first() {
                    if t > now {
                        break;
                    }
                    st.deadlines.pop_first();
                    st.deadline_passed(id);
                }
                if run_lease_check {
                    let ttl = add_micros(0, st.cfg.lease_ttl);
                    let lost: Vec<String> = st
                        .workers
                        .values()
                        .filter(|w| !w.local() && now - w.last_seen >= ttl)
                        .map(|w| w.id.to_string())
                        .collect();
                    for w in lost {
                        st.remove_worker(&w, "lease expired: no heartbeat from its worker", true);
                    }
                    next_lease_check = st
                        .workers
                        .values()
                        .filter(|w| !w.local())
                        .map(|w| w.last_seen.saturating_add(ttl))
                        .min()
                        .unwrap_or(now + ttl)
                        .max(now + 1_000);
                }
                let until = [
                    st.timers.first().map(|t| t.0),
                    st.deadlines.first().map(|t| t.0),
                ]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_lease_check)
                .min(next_lease_check);
                st.timer_wake = until;
                until
            });
            let until = next;
            let wait = Duration::from_micros((until - now_micros()).max(0) as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.wake.notified() => {}
            }
        }
    }
}

impl State {
    /// Places the tasks whose timer (a delay, a backoff, a rate limit's
    /// token) is due at `now`.
    pub(super) fn timers_due(&mut self, now: Micros) {
        while let Some(&(t, id)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            if !self.flow.rate_held.is_empty() {
                self.flow.rate_held.remove(&id);
            }
            if let Some(a) = self.tasks.get_mut(&id) {
                a.timer = None;
                let key = a.key.clone();
                let q = self.queue(&key);
                q.scheduled = q.scheduled.saturating_sub(1);
                self.place(id, now);
            }
        }
    }

    pub(super) fn deadline_passed(&mut self, id: TaskId) {
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        let Some((_, kind)) = a.deadline.take() else {
            return;
        };
        let attempt = a.task.rt.attempt;
        let holder = a.worker;
        let timeout = a
            .task
            .spec
            .execution_timeout
            .or(self.cfg.default_execution_timeout)
            .unwrap_or_default();
        match kind {
            DeadlineKind::Cancel => {
                self.conclude(
                    id,
                    TaskState::Cancelled,
                    LogEntry::system(
                        id,
                        attempt,
                        "the worker did not acknowledge the cancel within the lease; cancelled",
                    )
                    .level("warn"),
                );
            }
            DeadlineKind::Execution => {
                if let Some(w) = holder {
                    self.push_to(
                        w,
                        Push::Cancel {
                            task_id: id,
                            attempt,
                            reason: CancelReason::Timeout,
                            force: false,
                        },
                    );
                }
                self.apply_report(
                    id,
                    attempt,
                    Report::Fail {
                        error: TaskError {
                            message: format!(
                                "execution timed out after {}",
                                humantime::format_duration(timeout)
                            ),
                            kind: FailureKind::Timeout.into(),
                            details: String::new(),
                            retryable: true,
                            attempt,
                        },
                        retry_after: None,
                    },
                );
            }
        }
    }
}
