//! Running an ended task again: `RetryTask` and `ReplayWorkflow`.
//!
//! A re-run keeps the task: the same id, spec, payload, idempotency key,
//! log and events. It goes back to PENDING under a new run number
//! (`TaskRuntime::run`) with a new attempt budget (`attempt` starts again
//! from 0), its end time and removal time cleared, and a log line that says
//! who asked. The transition is committed before the caller is answered.
//! A retried COMPLEX task starts its workflow afresh (the latest
//! definition, no step outputs); a replay keeps the steps before the named
//! one, as the workflow engine's [`ReplayHook`] rewrites the run.
//!
//! Owns: the re-run transition, its checks (which states, which engines),
//! and the hook through which the workflow engine rewrites a run.
//! Must not: know a workflow's definition (that is the hook's), nor how an
//! external engine would take a task again (those are refused).

use std::sync::Arc;

use crate::domain::*;

use super::state::State;
use super::{Core, CoreError, EngineKind};

/// Rewrites a workflow run for a replay from the step named `from_step` at
/// `now`: given the ended COMPLEX task, returns its new `detail` (the run)
/// and the log line that says what is kept and what runs again. An unknown
/// step is `InvalidArgument` naming `from_step`; a run that cannot be
/// replayed from there (an earlier step did not complete) is
/// `FailedPrecondition`.
pub type ReplayHook = Arc<
    dyn Fn(&Task, &str, Micros) -> Result<(serde_json::Value, String), CoreError> + Send + Sync,
>;

/// What a re-run does to the task's executor state.
enum Rerun {
    /// `RetryTask`: a fresh run (a workflow's run state is dropped).
    Retry,
    /// `ReplayWorkflow`: the workflow's run as the engine rewrote it, and
    /// the line that says so.
    Replay(serde_json::Value, String),
}

impl Core {
    /// Sets how the workflow engine rewrites a run for `ReplayWorkflow`.
    pub fn on_replay(&self, hook: ReplayHook) {
        *self.inner.replay_hook.write() = Some(hook);
    }

    /// Runs a FAILED, CANCELLED or COMPENSATED task again under the same
    /// id: back to PENDING, with a new run number and a new attempt budget.
    /// Durable before it returns. `reason` (the caller's words) goes to the
    /// task's log.
    pub async fn retry(&self, id: TaskId, reason: &str) -> Result<Task, CoreError> {
        self.inner.store.writable()?;
        let t = self.status(id).await?;
        self.check_rerun(&t, "retried", false)?;
        self.rerun(t, Rerun::Retry, reason).await
    }

    /// Runs an ended workflow (COMPLEX, embedded engine) again from the
    /// step `from_step`: the steps before it keep their outputs; it, the
    /// steps after it and any compensation run again under a new run
    /// number. Durable before it returns.
    pub async fn replay(
        &self,
        id: TaskId,
        from_step: &str,
        reason: &str,
    ) -> Result<Task, CoreError> {
        self.inner.store.writable()?;
        let t = self.status(id).await?;
        if t.spec.task_type != TaskType::Complex {
            return Err(CoreError::FailedPrecondition(format!(
                "task {id} is a {} task, not a workflow (COMPLEX): use RetryTask",
                t.spec.task_type.as_str()
            )));
        }
        self.check_rerun(&t, "replayed", true)?;
        let hook = self.inner.replay_hook.read().clone().ok_or_else(|| {
            CoreError::FailedPrecondition(
                "the workflow engine is not running on this server".into(),
            )
        })?;
        let (detail, line) = hook(&t, from_step, now_micros())?;
        self.rerun(t, Rerun::Replay(detail, line), reason).await
    }

    /// Refuses a re-run the task's state, place or engine does not allow.
    fn check_rerun(&self, t: &Task, verb: &str, any_end: bool) -> Result<(), CoreError> {
        let id = t.id;
        let state = t.rt.state;
        let allowed = if any_end {
            state.is_final()
        } else {
            matches!(
                state,
                TaskState::Failed | TaskState::Cancelled | TaskState::Compensated
            )
        };
        if !allowed {
            let which = if any_end {
                "an ended task"
            } else {
                "a FAILED, CANCELLED or COMPENSATED task"
            };
            return Err(CoreError::FailedPrecondition(format!(
                "task {id} is {}: only {which} can be {verb}",
                state.as_str()
            )));
        }
        if let Some(parent) = t.spec.parent_id {
            return Err(CoreError::FailedPrecondition(format!(
                "task {id} is a step of workflow {parent}: replay the workflow \
                 (ReplayWorkflow) from that step instead"
            )));
        }
        let (key, engine) = self.inner.cfg.routes.route(&t.spec);
        let ran_on = match t.rt.source {
            Source::Bullmq => Some(EngineKind::Bullmq),
            Source::Temporal => Some(EngineKind::Temporal),
            _ => None,
        };
        if let Some(backend) = ran_on.or(engine.is_backend().then_some(engine)) {
            let why = match backend {
                EngineKind::Bullmq => {
                    "BullMQ keeps the ended job under the task's id, so it would not take the \
                     task again"
                }
                _ => {
                    "a new Temporal run of the task's workflow id is not started by Switchyard yet"
                }
            };
            return Err(CoreError::FailedPrecondition(format!(
                "task {id} is run by the {} backend and cannot be {verb}: {why}; schedule a \
                 new task instead",
                backend.name()
            )));
        }
        if engine.in_process() && !self.has_consumer(&key) {
            return Err(CoreError::FailedPrecondition(format!(
                "no executor for {} tasks is running on this server (queue {key})",
                t.spec.task_type.as_str()
            )));
        }
        if let Some(finished) = t.rt.finished_at {
            let due = self
                .inner
                .cfg
                .retention
                .purge_at(&t.spec, t.rt.state, finished);
            if due.is_some_and(|d| d <= now_micros()) {
                return Err(CoreError::Removed(format!(
                    "task {id} not found: it is due for removal by retention ({})",
                    self.inner.cfg.retention.describe()
                )));
            }
        }
        Ok(())
    }

    /// Puts `t` back to PENDING and waits for the write to be durable.
    async fn rerun(&self, t: Task, how: Rerun, reason: &str) -> Result<Task, CoreError> {
        let out = self.with_state(|st| st.rerun_locked(t, how, reason))?;
        self.inner.store.flush().await.map_err(CoreError::Store)?;
        Ok(out)
    }
}

impl State {
    /// The re-run transition of an ended task `t` (as last read): back to
    /// PENDING under the next run number with a new attempt budget, queued,
    /// with its event and log line. Refused if the task is active again
    /// already (another retry or replay won the race).
    fn rerun_locked(&mut self, mut t: Task, how: Rerun, reason: &str) -> Result<Task, CoreError> {
        let id = t.id;
        if self.draining {
            return Err(CoreError::Unavailable("the server is shutting down".into()));
        }
        if self.tasks.contains_key(&id) {
            return Err(CoreError::FailedPrecondition(format!(
                "task {id} is active already (it was retried or replayed meanwhile)"
            )));
        }
        if t.rt.run == MAX_RUN {
            return Err(CoreError::FailedPrecondition(format!(
                "task {id} has run {MAX_RUN} times, the most a task may"
            )));
        }
        self.finishing.remove(&id);
        let from = t.rt.state;
        let now = self.now;
        let rt = &mut t.rt;
        rt.run += 1;
        let run = rt.run;
        rt.state = TaskState::Pending;
        rt.attempt = 0;
        rt.repeat = false;
        rt.lease_losses = 0;
        rt.run_at = now;
        rt.started_at = None;
        rt.finished_at = None;
        rt.progress = 0.0;
        rt.progress_message = None;
        rt.result = None;
        rt.cancel_requested = false;
        rt.worker_id = None;
        rt.external_id = None;
        rt.forwarded = false;
        rt.waiting_reason = Some(WaitingReason::Queued);
        let mut line = match how {
            Rerun::Retry => {
                // A workflow starts afresh: the engine starts a new run when
                // the task has none.
                rt.detail = None;
                format!("retried by request from {}: run {run}", from.as_str())
            }
            Rerun::Replay(detail, what) => {
                rt.detail = Some(Box::new(detail));
                format!(
                    "replayed by request from {}: run {run}; {what}",
                    from.as_str()
                )
            }
        };
        if !reason.is_empty() {
            line.push_str(&format!(" ({reason})"));
        }
        self.counts
            .moved(t.spec.task_type, &t.spec.name, from, TaskState::Pending);
        self.add_pending(t, None);
        self.emit(id, EventKind::Retrying, vec![LogEntry::system(id, 0, line)]);
        let a = self
            .tasks
            .get(&id)
            .ok_or_else(|| CoreError::Unavailable("the task left memory".into()))?;
        let mut snapshot = a.task.clone();
        snapshot.rt.waiting_reason = self.derived_reason(a);
        Ok(snapshot)
    }
}

#[cfg(test)]
pub(super) fn rerun_for_test(st: &mut State, t: Task, reason: &str) -> Result<Task, CoreError> {
    st.rerun_locked(t, Rerun::Retry, reason)
}
