//! A timer fired: the workflow's deadline, a timer step, or a signal
//! step's timeout.
//!
//! It must not arm timers: whoever starts the step or the run does.

use super::transitions::{apply_abort, complete_step, consume_signal, Abort, Cause};
use super::Engine;
use crate::core::CoreError;
use crate::domain::*;
use crate::executor::workflow::definition::StepKind;

impl Engine {
    /// The workflow's deadline `at` came: unless it already stopped (or the
    /// deadline is stale), it stops going forward and compensates.
    pub(super) async fn on_deadline(&mut self, id: TaskId, at: Micros) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let es = flow.es.clone();
        if es.abort.is_some() || es.deadline != Some(at) {
            return Ok(());
        }
        let t = crate::domain::text::duration(flow.wf.timeout.unwrap_or_default());
        let abort = Abort {
            cause: Cause::TimedOut,
            step: None,
            error: Some(TaskError::of(
                FailureKind::WorkflowTimeout,
                format!("the workflow timed out after {t}"),
            )),
            reason: format!("timed out after {t}"),
        };
        let now = now_micros();
        let cancel = self.update(id, |run, wf| apply_abort(run, &es, wf, &abort, None, now))?;
        self.cancel_children(cancel, "its workflow timed out");
        self.advance(id).await
    }

    /// Step `i`'s wake-up `at` came: a timer step completes; a signal step
    /// that got no signal fails (or completes, with `on_timeout =
    /// continue`). A stale wake-up does nothing.
    pub(super) async fn on_step_timer(
        &mut self,
        id: TaskId,
        i: usize,
        at: Micros,
    ) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let es = flow.es.clone();
        let Some(s) = flow.run.steps.get(i) else {
            return Ok(());
        };
        if s.state != StepState::Running || s.wake_at != Some(at) {
            return Ok(());
        }
        let step = flow.wf.steps[i].clone();
        let now = now_micros();
        match &step.kind {
            StepKind::Timer(_) => {
                let order_id = step.id.clone();
                self.update(id, |run, _| {
                    complete_step(run, i, None, now);
                    ((), vec![format!("step {order_id} completed: timer fired")])
                })?;
            }
            StepKind::Signal { name } => {
                let waited = crate::domain::text::duration(step.timeout.unwrap_or_default());
                let error = TaskError::of(
                    FailureKind::SignalTimeout,
                    format!("no signal {name:?} within {waited}"),
                );
                let abort = Abort {
                    cause: Cause::StepFailed,
                    step: Some(step.id.clone()),
                    reason: format!("step {} failed: {}", step.id, error.message),
                    error: Some(error.clone()),
                };
                let cancel = self.update(id, |run, wf| {
                    // A signal recorded just now wins over the timeout.
                    if consume_signal(run, i, name, now) {
                        return (Vec::new(), vec![format!("step {} completed: signal {name:?} received", step.id)]);
                    }
                    if step.continue_on_timeout {
                        complete_step(run, i, None, now);
                        return (
                            Vec::new(),
                            vec![format!(
                                "step {} completed without a signal: no {name:?} within {waited} (on_timeout = continue)",
                                step.id
                            )],
                        );
                    }
                    apply_abort(run, &es, wf, &abort, Some((i, &error)), now)
                })?;
                self.cancel_children(cancel, "a step of its workflow failed");
            }
            _ => return Ok(()),
        }
        self.advance(id).await
    }
}
