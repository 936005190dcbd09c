//! A timer fired: the workflow's deadline, a timer step, or a signal
//! step's timeout.
//!
//! It must not arm timers: whoever starts the step or the run does.

use super::transitions::{
    apply_abort, consume_signal, engine_state, next_order, step_error, Abort, Cause,
};
use super::{Engine, DEADLINE};
use crate::core::CoreError;
use crate::domain::*;
use crate::executor::workflow::definition::StepKind;

impl Engine {
    pub(super) async fn on_timer(
        &mut self,
        id: TaskId,
        i: usize,
        at: Micros,
    ) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let es = engine_state(&flow.run);
        if i == DEADLINE {
            if es.abort.is_some() || es.deadline != Some(at) {
                return Ok(());
            }
            let t = crate::domain::text::duration(flow.wf.timeout.unwrap_or_default());
            let abort = Abort {
                cause: Cause::TimedOut,
                step: None,
                error: Some(step_error(
                    format!("the workflow timed out after {t}"),
                    "workflow_timeout",
                )),
                reason: format!("timed out after {t}"),
            };
            let cancel = self.update(id, |run, wf| apply_abort(run, wf, &abort, None))?;
            self.cancel_children(cancel, "its workflow timed out");
            return self.advance(id).await;
        }
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
                    let order = next_order(run);
                    if let Some(s) = run.steps.get_mut(i) {
                        s.state = StepState::Completed;
                        s.finished_at = Some(now);
                        s.wake_at = None;
                        s.completed_order = Some(order);
                    }
                    ((), vec![format!("step {order_id} completed: timer fired")])
                })?;
            }
            StepKind::Signal { name } => {
                let waited = crate::domain::text::duration(step.timeout.unwrap_or_default());
                let error = step_error(
                    format!("no signal {name:?} within {waited}"),
                    "signal_timeout",
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
                        let order = next_order(run);
                        if let Some(s) = run.steps.get_mut(i) {
                            s.state = StepState::Completed;
                            s.finished_at = Some(now);
                            s.wake_at = None;
                            s.completed_order = Some(order);
                        }
                        return (
                            Vec::new(),
                            vec![format!(
                                "step {} completed without a signal: no {name:?} within {waited} (on_timeout = continue)",
                                step.id
                            )],
                        );
                    }
                    apply_abort(run, wf, &abort, Some((i, &error)))
                })?;
                self.cancel_children(cancel, "a step of its workflow failed");
            }
            _ => return Ok(()),
        }
        self.advance(id).await
    }
}
