//! `Push::ChildDone`: a step task or a compensation task ended, and what
//! that does to the run (a step completes, fails and stops the workflow, or
//! a compensation is done or fails the workflow).
//!
//! It must not start the next steps: `advance.rs` does.

use super::transitions::{apply_abort, child_error, complete_step, step_stopped, Abort, Cause};
use super::Engine;
use crate::core::CoreError;
use crate::domain::*;

impl Engine {
    pub(super) async fn on_child_done(&mut self, id: TaskId, child: Task) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let Some(i) =
            flow.run.steps.iter().position(|s| {
                s.task_id == Some(child.id) || s.compensation_task_id == Some(child.id)
            })
        else {
            return Ok(());
        };
        let s = &flow.run.steps[i];
        if s.task_id == Some(child.id) && s.state == StepState::Running {
            self.step_task_done(id, i, &child)?;
        } else if s.compensation_task_id == Some(child.id) && s.state == StepState::Compensating {
            self.compensation_done(id, i, &child)?;
        } else {
            // Already accounted for (seen on resume, then pushed).
            return Ok(());
        }
        self.advance(id).await
    }

    pub(super) fn step_task_done(
        &mut self,
        id: TaskId,
        i: usize,
        child: &Task,
    ) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let es = flow.es.clone();
        let step_id = flow.wf.steps[i].id.clone();
        let now = now_micros();
        let attempt = child.rt.attempt;
        let child_id = child.id;
        match child.rt.state {
            TaskState::Completed => {
                let output = child.rt.result.as_deref().cloned();
                self.update(id, |run, _| {
                    complete_step(run, i, output, now);
                    if let Some(s) = run.steps.get_mut(i) {
                        s.attempt = attempt;
                    }
                    (
                        (),
                        vec![format!(
                            "step {step_id} completed (task {child_id}, attempt {attempt})"
                        )],
                    )
                })
            }
            state => {
                let error = child_error(child_id, state, child.rt.last_error.as_deref());
                if es.abort.is_some() {
                    let cancelled = state == TaskState::Cancelled;
                    self.update(id, |run, _| {
                        ((), step_stopped(run, i, cancelled, attempt, &error, now))
                    })
                } else {
                    let abort = Abort {
                        cause: Cause::StepFailed,
                        step: Some(step_id.clone()),
                        reason: format!("step {step_id} failed: {}", error.message),
                        error: Some(error.clone()),
                    };
                    self.update(id, |run, wf| {
                        if let Some(s) = run.steps.get_mut(i) {
                            s.attempt = attempt;
                        }
                        apply_abort(run, &es, wf, &abort, Some((i, &error)), now)
                    })
                    .map(|cancel| self.cancel_children(cancel, "a step of its workflow failed"))
                }
            }
        }
    }

    pub(super) fn compensation_done(
        &mut self,
        id: TaskId,
        i: usize,
        child: &Task,
    ) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let step_id = flow.wf.steps[i].id.clone();
        let task = flow.wf.steps[i]
            .compensate
            .as_ref()
            .map(|c| c.task.clone())
            .unwrap_or_default();
        let attempt = child.rt.attempt;
        let child_id = child.id;
        if child.rt.state == TaskState::Completed {
            return self.update(id, |run, _| {
                if let Some(s) = run.steps.get_mut(i) {
                    s.state = StepState::Compensated;
                }
                (
                    (),
                    vec![format!(
                        "step {step_id} compensated (task {task} as {child_id}, attempt {attempt})"
                    )],
                )
            });
        }
        let cause = match (&child.rt.last_error, child.rt.state) {
            (Some(e), TaskState::Failed) => e.message.clone(),
            (_, state) => format!("its task ended {}", state.as_str()),
        };
        let message = format!("compensation of step {step_id} (task {task}) failed: {cause}");
        let mut error = TaskError::of(FailureKind::CompensationFailed, message.clone());
        error.attempt = attempt;
        if let Some(e) = &child.rt.last_error {
            error.details = e.details.clone();
        }
        let step_err = error.clone();
        self.update(id, |run, _| {
            if let Some(s) = run.steps.get_mut(i) {
                s.state = StepState::CompensationFailed;
                s.error = Some(step_err);
            }
            ((), Vec::new())
        })?;
        self.end(id, TaskState::Failed, None, Some(error), message)
    }
}
