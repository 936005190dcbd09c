//! Reports: what a worker or engine says about a task it holds.
//!
//! Owns: [`Core::report`] and the transition each [`Report`] causes.
//! Must not: talk to workers except through `Push`.

use std::time::Duration;

use crate::domain::*;

use super::state::State;
use super::{Core, CoreError, Report};

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
        self.with_state(|st| st.worker_report(worker_id, id, attempt, report))
    }

    /// Several reports of one worker, applied in order in one critical
    /// section (so their writes go to the store together); one answer
    /// each, as [`Core::report`]'s.
    pub fn report_all(
        &self,
        worker_id: &str,
        reports: Vec<(TaskId, u32, Report)>,
    ) -> Vec<Result<(), CoreError>> {
        self.with_state(|st| {
            reports
                .into_iter()
                .map(|(id, attempt, r)| st.worker_report(worker_id, id, attempt, r))
                .collect()
        })
    }
}

impl State {
    /// A worker's report, checked: refused (with the reason) if the worker
    /// does not hold that attempt.
    fn worker_report(
        &mut self,
        worker_id: &str,
        id: TaskId,
        attempt: u32,
        report: Report,
    ) -> Result<(), CoreError> {
        let n = self.worker_ids.get(worker_id).copied();
        let holds = match (n, self.tasks.get(&id)) {
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
            if let Some(w) = self.workers.get_mut(&n) {
                w.last_seen = self.now;
                // A backend's log lines come from its engine (BullMQ's job
                // log, Temporal's history); an embedded executor's are
                // Switchyard's own; a remote worker's are the worker's.
                if let Report::Log { source, .. } = &mut report {
                    if let Some(engine) = w.engine {
                        *source = if engine.is_backend() {
                            LogSource::Engine
                        } else {
                            LogSource::System
                        };
                    }
                }
            }
        }
        self.apply_report(id, attempt, report);
        Ok(())
    }

    /// Applies a report of a worker that holds `attempt` of task `id`.
    pub(super) fn apply_report(&mut self, id: TaskId, attempt: u32, report: Report) {
        match report {
            Report::Progress { percent, message } => self.on_progress(id, percent, message),
            Report::Log {
                level,
                message,
                source,
            } => {
                let mut l = LogEntry::system(id, attempt, message);
                l.source = source;
                l.level = level;
                self.log(l);
            }
            Report::Complete(result) => self.on_complete(id, attempt, result),
            Report::ExternalId(x) => {
                if let Some(a) = self.tasks.get_mut(&id) {
                    a.task.rt.external_id = Some(x.into_boxed_str());
                }
                self.emit(id, EventKind::Updated, Vec::new());
            }
            Report::Forwarded {
                external_id,
                waiting_reason,
            } => self.on_forwarded(id, external_id, waiting_reason),
            Report::Mirror {
                state,
                waiting_reason,
                progress,
                attempt: engine_attempt,
                message,
            } => self.on_mirror(
                id,
                attempt,
                state,
                waiting_reason,
                progress,
                engine_attempt,
                message,
            ),
            Report::Unreachable {
                retry_after,
                message,
            } => {
                let line = format!(
                    "engine unreachable: {message}; kept and offered again in {}",
                    crate::domain::text::duration(retry_after)
                );
                let log = LogEntry::system(id, attempt, line).level("warn");
                // The engine never ran it: this attempt does not count.
                self.offer_again(
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
                    crate::domain::text::duration(retry_after)
                );
                let log = LogEntry::system(id, attempt, line);
                // Nothing was sent: this attempt does not count.
                self.offer_again(id, attempt, retry_after, WaitingReason::CapacityFull, log);
            }
            Report::Compensating => {
                self.set_state(id, TaskState::Compensating);
                let line = "compensating: undoing completed steps in reverse order";
                self.emit(
                    id,
                    EventKind::Updated,
                    vec![LogEntry::system(id, attempt, line)],
                );
            }
            Report::End {
                state,
                result,
                error,
                message,
            } => self.on_end(id, attempt, state, result, error, message),
            Report::CancelAck => {
                let line = "the worker stopped the task; cancelled";
                self.conclude(
                    id,
                    TaskState::Cancelled,
                    LogEntry::system(id, attempt, line),
                );
            }
            Report::Fail { error, retry_after } => self.on_fail(id, attempt, error, retry_after),
        }
    }

    fn on_progress(&mut self, id: TaskId, percent: f64, message: String) {
        if let Some(a) = self.tasks.get_mut(&id) {
            a.task.rt.progress = crate::domain::progress_percent(percent);
            a.task.rt.progress_message = (!message.is_empty()).then(|| message.into_boxed_str());
        }
        self.emit(id, EventKind::Progress, Vec::new());
    }

    fn on_complete(&mut self, id: TaskId, attempt: u32, result: serde_json::Value) {
        if let Some(a) = self.tasks.get_mut(&id) {
            a.task.rt.result = Some(Box::new(result));
            a.task.rt.progress = 100.0;
        }
        let line = format!("attempt {attempt} completed");
        self.conclude(
            id,
            TaskState::Completed,
            LogEntry::system(id, attempt, line),
        );
    }

    fn on_forwarded(&mut self, id: TaskId, external_id: String, waiting_reason: WaitingReason) {
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        a.task.rt.external_id = Some(external_id.into_boxed_str());
        a.task.rt.forwarded = true;
        if a.task.rt.state == TaskState::Pending {
            a.task.rt.waiting_reason = Some(waiting_reason);
        }
        self.lazily(|st| st.emit(id, EventKind::Updated, Vec::new()));
    }

    #[allow(clippy::too_many_arguments)] // the fields of `Report::Mirror`
    fn on_mirror(
        &mut self,
        id: TaskId,
        attempt: u32,
        state: TaskState,
        waiting_reason: Option<WaitingReason>,
        progress: Option<f64>,
        engine_attempt: Option<u32>,
        message: Option<String>,
    ) {
        if !matches!(state, TaskState::Pending | TaskState::Running) {
            return;
        }
        self.set_state(id, state);
        if let Some(a) = self.tasks.get_mut(&id) {
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
                a.task.rt.started_at = Some(self.now);
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
        self.emit(id, kind, log);
    }

    fn on_end(
        &mut self,
        id: TaskId,
        attempt: u32,
        state: TaskState,
        result: Option<serde_json::Value>,
        error: Option<TaskError>,
        message: String,
    ) {
        if !state.is_final() {
            return;
        }
        if let Some(a) = self.tasks.get_mut(&id) {
            if result.is_some() {
                a.task.rt.result = result.map(Box::new);
            }
            if let Some(error) = error {
                a.task.rt.last_error = Some(Box::new(error));
            }
        }
        let level = if state == TaskState::Completed {
            "info"
        } else {
            "warn"
        };
        self.conclude(
            id,
            state,
            LogEntry::system(id, attempt, message).level(level),
        );
    }

    fn on_fail(
        &mut self,
        id: TaskId,
        attempt: u32,
        mut error: TaskError,
        retry_after: Option<Duration>,
    ) {
        error.attempt = attempt;
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        let cancel_requested = a.task.rt.cancel_requested;
        let max = a.task.spec.max_attempts;
        let backoff = a.task.spec.backoff;
        a.task.rt.last_error = Some(Box::new(error.clone()));
        if cancel_requested {
            let line = format!("the worker stopped the task ({}); cancelled", error.message);
            self.conclude(
                id,
                TaskState::Cancelled,
                LogEntry::system(id, attempt, line),
            );
        } else if error.retryable && attempt < max {
            let delay = retry_after.unwrap_or_else(|| backoff.delay(attempt));
            self.retry_after_failure(id, attempt, max, &error.message, delay);
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
            let log = LogEntry::system(id, attempt, why).level("error");
            self.conclude(id, TaskState::Failed, log);
        }
    }
}
