//! Reports: what a worker or engine says about a task it holds.
//!
//! Owns: [`Core::report`] and the transition each [`Report`] causes.
//! Must not: talk to workers except through `Push`.

use std::time::Duration;

use crate::domain::*;

use super::schedule::schedule_cleanup;
use super::state::{whole_millis, State};
use super::{is_backend_key, Core, CoreConfig, CoreError, Report};

impl Core {
    /// A worker reports on a task it holds. Refused (with the reason) if it
    /// does not hold that attempt.
    pub fn report(
        &self,
        worker_id: &str,
        id: TaskId,
        attempt: u32,
        report: Report,
    ) -> Result<(), CoreError> {
        self.with_state(|st, cfg| {
            let n = st.worker_ids.get(worker_id).copied();
            let holds = match (n, st.tasks.get(&id)) {
                (Some(n), Some(a)) => {
                    a.worker == Some(n)
                        && a.task.rt.attempt == attempt
                        && matches!(
                            a.task.rt.state,
                            TaskState::Running | TaskState::Compensating | TaskState::Pending
                        )
                }
                _ => false,
            };
            if !holds {
                return Err(CoreError::FailedPrecondition(format!(
                    "worker {worker_id} does not hold attempt {attempt} of task {id}"
                )));
            }
            let mut report = report;
            if let Some(n) = n {
                if let Some(w) = st.workers.get_mut(&n) {
                    w.last_seen = now_micros();
                    // A backend's log lines come from its engine (BullMQ's job
                    // log, Temporal's history); an embedded executor's are
                    // Switchyard's own; a remote worker's are the worker's.
                    if let Report::Log { source, .. } = &mut report {
                        if w.local {
                            *source = if w.keys.iter().any(|k| is_backend_key(k)) {
                                LogSource::Engine
                            } else {
                                LogSource::System
                            };
                        }
                    }
                }
            }
            apply_report(st, cfg, id, attempt, report);
            Ok(())
        })
    }
}

pub(super) fn apply_report(
    st: &mut State,
    cfg: &CoreConfig,
    id: TaskId,
    attempt: u32,
    report: Report,
) {
    match report {
        Report::Progress { percent, message } => {
            if let Some(a) = st.tasks.get_mut(&id) {
                a.task.rt.progress = crate::domain::progress_percent(percent);
                a.task.rt.progress_message =
                    (!message.is_empty()).then(|| message.into_boxed_str());
            }
            st.emit(id, EventKind::Progress, Vec::new());
        }
        Report::Log {
            level,
            message,
            source,
        } => {
            let mut l = LogEntry::system(id, attempt, message);
            l.source = source;
            l.level = level;
            st.log(l);
        }
        Report::Complete(result) => {
            if let Some(a) = st.tasks.get_mut(&id) {
                a.task.rt.result = Some(Box::new(result));
                a.task.rt.progress = 100.0;
            }
            st.finish(
                id,
                TaskState::Completed,
                EventKind::Completed,
                vec![LogEntry::system(
                    id,
                    attempt,
                    format!("attempt {attempt} completed"),
                )],
            );
        }
        Report::ExternalId(x) => {
            if let Some(a) = st.tasks.get_mut(&id) {
                a.task.rt.external_id = Some(x);
            }
            st.emit(id, EventKind::Updated, Vec::new());
        }
        Report::Forwarded {
            external_id,
            waiting_reason,
        } => {
            let Some(a) = st.tasks.get_mut(&id) else {
                return;
            };
            a.task.rt.external_id = Some(external_id);
            a.task.rt.forwarded = true;
            if a.task.rt.state == TaskState::Pending {
                a.task.rt.waiting_reason = Some(waiting_reason);
            }
            st.lazily(|st| st.emit(id, EventKind::Updated, Vec::new()));
        }
        Report::Mirror {
            state,
            waiting_reason,
            progress,
            attempt: engine_attempt,
            message,
        } => {
            if !matches!(state, TaskState::Pending | TaskState::Running) {
                return;
            }
            st.set_state(id, state);
            if let Some(a) = st.tasks.get_mut(&id) {
                a.task.rt.forwarded = true;
                if state == TaskState::Pending {
                    a.task.rt.waiting_reason = waiting_reason.or(Some(WaitingReason::Queued));
                }
                if let Some(p) = progress {
                    a.task.rt.progress = crate::domain::progress_percent(p);
                }
                if let Some(n) = engine_attempt {
                    a.task.rt.attempt = n.max(1);
                }
                if state == TaskState::Running && a.task.rt.started_at.is_none() {
                    a.task.rt.started_at = Some(now_micros());
                }
            }
            let log = message
                .map(|m| {
                    let mut l = LogEntry::system(id, attempt, m);
                    l.source = LogSource::Engine;
                    vec![l]
                })
                .unwrap_or_default();
            let kind = if state == TaskState::Running {
                EventKind::Started
            } else {
                EventKind::Updated
            };
            st.emit(id, kind, log);
        }
        Report::Unreachable {
            retry_after,
            message,
        } => {
            let line = format!(
                "engine unreachable: {message}; kept and offered again in {}",
                humantime::format_duration(whole_millis(retry_after))
            );
            let log = LogEntry::system(id, attempt, line).level("warn");
            // The engine never ran it: this attempt does not count.
            st.offer_again(
                id,
                attempt,
                retry_after,
                WaitingReason::EngineUnreachable,
                log,
            );
        }
        Report::Busy {
            retry_after,
            message,
        } => {
            let line = format!(
                "{message}; not sent, kept and offered again in {}",
                humantime::format_duration(whole_millis(retry_after))
            );
            let log = LogEntry::system(id, attempt, line);
            // Nothing was sent: this attempt does not count.
            st.offer_again(id, attempt, retry_after, WaitingReason::CapacityFull, log);
        }
        Report::Compensating => {
            st.set_state(id, TaskState::Compensating);
            st.emit(
                id,
                EventKind::Updated,
                vec![LogEntry::system(
                    id,
                    attempt,
                    "compensating: undoing completed steps in reverse order",
                )],
            );
        }
        Report::End {
            state,
            result,
            error,
            message,
        } => {
            if !state.is_final() {
                return;
            }
            if let Some(a) = st.tasks.get_mut(&id) {
                if result.is_some() {
                    a.task.rt.result = result.map(Box::new);
                }
                if let Some(error) = error {
                    a.task.rt.last_error = Some(Box::new(error));
                }
            }
            let kind = match state {
                TaskState::Completed => EventKind::Completed,
                TaskState::Cancelled => EventKind::Cancelled,
                TaskState::Failed => EventKind::Failed,
                _ => EventKind::Updated,
            };
            let level = if state == TaskState::Completed {
                "info"
            } else {
                "warn"
            };
            st.finish(
                id,
                state,
                kind,
                vec![LogEntry::system(id, attempt, message).level(level)],
            );
            if matches!(
                state,
                TaskState::Failed | TaskState::Cancelled | TaskState::Compensated
            ) {
                schedule_cleanup(
                    st,
                    cfg,
                    id,
                    if state == TaskState::Failed {
                        "failed"
                    } else {
                        "cancelled"
                    },
                );
            }
        }
        Report::CancelAck => {
            st.finish(
                id,
                TaskState::Cancelled,
                EventKind::Cancelled,
                vec![LogEntry::system(
                    id,
                    attempt,
                    "the worker stopped the task; cancelled",
                )],
            );
            schedule_cleanup(st, cfg, id, "cancelled");
        }
        Report::Fail {
            mut error,
            retry_after,
        } => {
            error.attempt = attempt;
            let Some(a) = st.tasks.get_mut(&id) else {
                return;
            };
            let cancel_requested = a.task.rt.cancel_requested;
            let max = a.task.spec.max_attempts;
            let backoff = a.task.spec.backoff;
            a.task.rt.last_error = Some(Box::new(error.clone()));
            if cancel_requested {
                st.finish(
                    id,
                    TaskState::Cancelled,
                    EventKind::Cancelled,
                    vec![LogEntry::system(
                        id,
                        attempt,
                        format!("the worker stopped the task ({}); cancelled", error.message),
                    )],
                );
                schedule_cleanup(st, cfg, id, "cancelled");
            } else if error.retryable && attempt < max {
                let delay = retry_after.unwrap_or_else(|| backoff.delay(attempt));
                st.back_to_pending(id, delay, WaitingReason::BackingOff);
                st.emit(
                    id,
                    EventKind::Retrying,
                    vec![LogEntry::system(
                        id,
                        attempt,
                        format!(
                            "attempt {attempt} of {max} failed: {}; retrying in {}",
                            error.message,
                            humantime::format_duration(Duration::from_millis(
                                delay.as_millis() as u64
                            ))
                        ),
                    )
                    .level("warn")],
                );
            } else {
                let why = if error.retryable {
                    format!(
                        "attempt {attempt} of {max} failed: {}; no attempts left",
                        error.message
                    )
                } else {
                    format!(
                        "attempt {attempt} failed with a non-retryable error: {}",
                        error.message
                    )
                };
                st.finish(
                    id,
                    TaskState::Failed,
                    EventKind::Failed,
                    vec![LogEntry::system(id, attempt, why).level("error")],
                );
                schedule_cleanup(st, cfg, id, "failed");
            }
        }
    }
}
