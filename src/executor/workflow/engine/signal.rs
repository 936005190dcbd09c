//! `Push::Signal`: a signal was recorded in the run; the steps waiting for
//! it consume it, oldest signal first.
//!
//! It must not record signals: the core does, before it pushes.

use super::transitions::consume_signal;
use super::Engine;
use crate::core::CoreError;
use crate::domain::*;
use crate::executor::workflow::definition::StepKind;

impl Engine {
    pub(super) async fn on_signal(&mut self, id: TaskId, name: &str) -> Result<(), CoreError> {
        if self.take_signals(id, name)? {
            self.advance(id).await
        } else {
            Ok(())
        }
    }

    /// Hands pending signals `name` to the steps waiting for them, in
    /// definition order. Returns whether a step completed.
    pub(super) fn take_signals(&mut self, id: TaskId, name: &str) -> Result<bool, CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(false);
        };
        let waiting: Vec<usize> = flow
            .run
            .steps
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                s.state == StepState::Running
                    && matches!(&flow.wf.steps[*i].kind, StepKind::Signal { name: n } if n == name)
            })
            .map(|(i, _)| i)
            .collect();
        let mut any = false;
        for i in waiting {
            let now = now_micros();
            let consumed = self.update(id, |run, wf| {
                let step_id = &wf.steps[i].id;
                if consume_signal(run, i, name, now) {
                    (
                        true,
                        vec![format!(
                            "step {step_id} completed: signal {name:?} received"
                        )],
                    )
                } else {
                    (false, Vec::new())
                }
            })?;
            if !consumed {
                break;
            }
            any = true;
        }
        Ok(any)
    }
}
