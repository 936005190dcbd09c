//! Cancellation: `CancelTask` and `Disconnect`.
//!
//! Owns: the cancel transition of one task and its wait for an in-process
//! backend to settle.
//! Must not: parse reasons back from strings.

use std::time::Duration;

use crate::domain::*;

use super::state::{DeadlineKind, State};
use super::{CancelReason, Core, CoreError, Push};

/// How long `CancelTask` waits for an in-process backend to settle a cancel
/// (a queued BullMQ job is taken out at once), counted from the request.
pub(super) const CANCEL_SETTLE: Duration = Duration::from_secs(2);

impl Core {
    /// Cancels a task.
    pub async fn cancel(
        &self,
        id: TaskId,
        reason: &str,
        force: bool,
    ) -> Result<(CancelOutcome, Task), CoreError> {
        // Subscribe first so the outcome of a quick backend cancel is not missed.
        let mut rx = self.inner.hub.subscribe(0).rx;
        // The wait for a backend to settle counts from the request, so that
        // a slow commit does not lengthen it (nor let a job that took the
        // window's length to wind down answer CANCELLED).
        let settle_by = tokio::time::Instant::now() + CANCEL_SETTLE;
        let local_holder = {
            let st = self.inner.state.lock();
            st.tasks
                .get(&id)
                .and_then(|a| a.worker)
                .and_then(|w| st.workers.get(&w))
                .is_some_and(|w| w.local())
        };
        // A cancel is a write: refused, and nothing changed, while the
        // store cannot commit (as ScheduleTask is).
        self.inner.store.writable()?;
        let r = self.with_state(|st| st.cancel_locked(id, CancelReason::Cancelled, reason, force));
        if r.is_some() {
            // The cancel is durable before the reply, like a schedule.
            self.inner.store.flush().await.map_err(CoreError::Store)?;
        }
        match r {
            Some((CancelOutcome::CancelRequested, t)) if local_holder => {
                // An in-process backend (a queued BullMQ job, a webhook call)
                // usually settles at once: answer with the truth if it does.
                let settled = tokio::time::timeout_at(settle_by, async {
                    loop {
                        match rx.recv().await {
                            Ok(e) if e.task.id == id && e.task.rt.state.is_final() => {
                                return Some(e.task.clone())
                            }
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(_) => return None,
                        }
                    }
                })
                .await
                .ok()
                .flatten();
                Ok(match settled {
                    Some(t) if t.rt.state == TaskState::Cancelled => (CancelOutcome::Cancelled, t),
                    Some(t) => (CancelOutcome::CancelRequested, t),
                    None => (CancelOutcome::CancelRequested, t),
                })
            }
            Some(out) => Ok(out),
            None => {
                let t = self.status(id).await?;
                if t.rt.state.is_final() {
                    Ok((CancelOutcome::AlreadyFinished, t))
                } else {
                    Err(CoreError::FailedPrecondition(format!(
                        "task {id} is {} but not active on this server",
                        t.rt.state.as_str()
                    )))
                }
            }
        }
    }

    /// Cancels every active task of a user or session; durable before it
    /// returns.
    pub async fn disconnect(
        &self,
        namespace: &str,
        user_id: Option<&str>,
        session_id: Option<&str>,
        reason: &str,
    ) -> Result<Vec<(TaskId, String, CancelOutcome)>, CoreError> {
        self.inner.store.writable()?;
        let receipts = self.with_state(|st| {
            let mut ids: Vec<TaskId> = Vec::new();
            if let Some(u) = user_id {
                ids.extend(st.by_user.get(u).into_iter().flatten().copied());
            }
            if let Some(s) = session_id {
                ids.extend(st.by_session.get(s).into_iter().flatten().copied());
            }
            ids.sort();
            ids.dedup();
            let mut out = Vec::with_capacity(ids.len());
            // Tasks of one namespace only: another's user and session ids
            // are its own.
            ids.retain(|id| {
                st.tasks
                    .get(id)
                    .is_some_and(|a| a.task.spec.namespace() == namespace)
            });
            for id in ids {
                if let Some((o, t)) =
                    st.cancel_locked(id, CancelReason::Disconnected, reason, false)
                {
                    out.push((id, t.spec.name.clone(), o));
                }
            }
            out
        });
        self.inner.store.flush().await.map_err(CoreError::Store)?;
        Ok(receipts)
    }
}

/// A workflow ended by force outside its engine: the steps it shows as
/// running or compensating are stopped (the engine cancels their tasks when
/// it learns of the end), so the final status shows no step still running.
pub(super) fn stop_running_steps(rt: &mut TaskRuntime, now: Micros) {
    let Some(detail) = rt.detail.as_mut() else {
        return;
    };
    let Ok(mut run) = serde_json::from_value::<WorkflowRun>((**detail).clone()) else {
        return;
    };
    let mut changed = false;
    for step in &mut run.steps {
        if matches!(step.state, StepState::Running | StepState::Compensating) {
            step.state = StepState::Cancelled;
            step.finished_at = Some(now);
            step.wake_at = None;
            changed = true;
        }
    }
    if changed {
        if let Ok(v) = serde_json::to_value(&run) {
            **detail = v;
        }
    }
}

impl State {
    /// Cancels an active task. `word` is what the worker is told
    /// ([`CancelReason::Cancelled`] or [`CancelReason::Disconnected`]);
    /// `reason` (the caller's words) goes to the task's log.
    pub(super) fn cancel_locked(
        &mut self,
        id: TaskId,
        word: CancelReason,
        reason: &str,
        force: bool,
    ) -> Option<(CancelOutcome, Task)> {
        let a = self.tasks.get(&id)?;
        let attempt = a.task.rt.attempt;
        let why = if reason.is_empty() {
            "cancelled".to_string()
        } else {
            format!("cancelled: {reason}")
        };
        let held = a.worker.is_some();
        let (state, cancel_requested) = (a.task.rt.state, a.task.rt.cancel_requested);
        match state {
            TaskState::Pending if !held => {
                self.conclude(id, TaskState::Cancelled, LogEntry::system(id, attempt, why));
                let t = self.finishing.get(&id)?.clone();
                Some((CancelOutcome::Cancelled, t))
            }
            TaskState::Pending | TaskState::Running | TaskState::Compensating => {
                let wid = a.worker;
                if let Some(w) = wid {
                    self.push_to(
                        w,
                        Push::Cancel {
                            task_id: id,
                            attempt,
                            reason: word,
                            force,
                        },
                    );
                }
                if force || wid.is_none() {
                    if let Some(a) = self.tasks.get_mut(&id) {
                        stop_running_steps(&mut a.task.rt, self.now);
                    }
                    self.conclude(
                        id,
                        TaskState::Cancelled,
                        LogEntry::system(id, attempt, format!("{why} (forced)")),
                    );
                    let t = self.finishing.get(&id)?.clone();
                    return Some((CancelOutcome::Cancelled, t));
                }
                if !cancel_requested {
                    let local = wid
                        .and_then(|w| self.workers.get(&w))
                        .is_some_and(|w| w.local());
                    if let Some(a) = self.tasks.get_mut(&id) {
                        a.task.rt.cancel_requested = true;
                    }
                    // A remote worker must acknowledge within its lease; an
                    // in-process executor (a compensating workflow) is trusted to
                    // finish the cancel itself.
                    if !local {
                        let until = add_micros(self.now, self.cfg.lease_ttl);
                        self.set_deadline(id, Some((until, DeadlineKind::Cancel)));
                    }
                    self.emit(
                        id,
                        EventKind::CancelRequested,
                        vec![LogEntry::system(
                            id,
                            attempt,
                            format!("{why}; asked the worker to stop"),
                        )],
                    );
                }
                let t = self.tasks.get(&id)?.task.clone();
                Some((CancelOutcome::CancelRequested, t))
            }
            _ => None,
        }
    }
}
