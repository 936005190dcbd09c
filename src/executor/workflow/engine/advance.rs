//! Going forward and winding down: starting the steps whose dependencies
//! are done, completing the workflow, and in a stopped run waiting for
//! running steps and then compensating, latest completed first.
//!
//! It owns the order in which steps start and compensations run; it must
//! not decide why a run stopped (the handlers do) nor touch a run except
//! through the engine's core calls.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::transitions::{
    anything_running, consume_signal, next_compensation, ready_steps, Abort, Cause,
};
use super::{Engine, Wake};
use crate::core::{CoreError, Report};
use crate::domain::*;
use crate::executor::workflow::definition::StepKind;
use crate::executor::workflow::template;

impl Engine {
    /// Starts every step whose dependencies are done; completes the workflow
    /// when every step is; in an aborted run, winds down and compensates.
    pub(super) async fn advance(&mut self, id: TaskId) -> Result<(), CoreError> {
        loop {
            let Some(flow) = self.flows.get(&id) else {
                return Ok(());
            };
            if flow.es.abort.is_some() {
                return self.advance_abort(id).await;
            }
            let ready = ready_steps(&flow.run, &flow.wf);
            if ready.is_empty() {
                if flow
                    .run
                    .steps
                    .iter()
                    .all(|s| s.state == StepState::Completed)
                {
                    return self.complete(id);
                }
                return Ok(());
            }
            let mut again = false;
            for i in ready {
                if !self.flows.contains_key(&id) {
                    return Ok(());
                }
                again |= self.start_step(id, i)?;
            }
            if !again {
                return Ok(());
            }
        }
    }

    /// Starts step `i`. Returns true if it completed at once (a signal that
    /// had already arrived).
    pub(super) fn start_step(&mut self, id: TaskId, i: usize) -> Result<bool, CoreError> {
        let Some(flow) = self.flows.get_mut(&id) else {
            return Ok(false);
        };
        let step_traceparent = flow.start_step_span(i);
        let step = &flow.wf.steps[i];
        let step_id = step.id.clone();
        let now = now_micros();
        match step.kind.clone() {
            StepKind::Task { .. } | StepKind::Webhook { .. } => {
                self.start_task_step(id, i, step_traceparent, now)?;
                Ok(false)
            }
            StepKind::Timer(d) => {
                let wake = add_micros(now, d);
                self.update(id, |run, _| {
                    if let Some(s) = run.steps.get_mut(i) {
                        s.state = StepState::Running;
                        s.started_at = Some(now);
                        s.wake_at = Some(wake);
                    }
                    (
                        (),
                        vec![format!(
                            "step {step_id} started: timer of {}",
                            crate::domain::text::duration(d)
                        )],
                    )
                })?;
                self.timers.insert((wake, id, Wake::Step(i)));
                Ok(false)
            }
            StepKind::Signal { name } => {
                let timeout = step.timeout;
                self.start_signal_step(id, i, step_id, &name, timeout, now)
            }
        }
    }

    /// Starts task or webhook step `i`: schedules its child task, in the
    /// step's trace (`step_traceparent`) while tracing is on.
    fn start_task_step(
        &mut self,
        id: TaskId,
        i: usize,
        step_traceparent: Option<String>,
        now: Micros,
    ) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let Some(mut new) = flow.step_task(i) else {
            return Ok(());
        };
        if step_traceparent.is_some() {
            new.spec.traceparent = step_traceparent.map(String::into_boxed_str);
        }
        let step = &flow.wf.steps[i];
        let step_id = step.id.clone();
        let what = match &step.kind {
            StepKind::Task { name } => format!("task {name}"),
            _ => format!("webhook {}", new.spec.target.describe()),
        };
        self.start_child(id, new, |run, child| {
            if let Some(s) = run.steps.get_mut(i) {
                s.state = StepState::Running;
                s.task_id = Some(child);
                s.started_at = Some(now);
                s.attempt = 0;
                s.error = None;
            }
            vec![format!("step {step_id} started: {what} as task {child}")]
        })?;
        Ok(())
    }

    /// Starts signal step `i`, waiting for signal `name` (at most
    /// `timeout`). Returns true if a signal that had already arrived
    /// completed it.
    fn start_signal_step(
        &mut self,
        id: TaskId,
        i: usize,
        step_id: String,
        name: &str,
        timeout: Option<Duration>,
        now: Micros,
    ) -> Result<bool, CoreError> {
        let wake = timeout.map(|t| add_micros(now, t));
        let consumed = self.update(id, |run, _| {
            if let Some(s) = run.steps.get_mut(i) {
                s.state = StepState::Running;
                s.started_at = Some(now);
                s.wake_at = wake;
            }
            if consume_signal(run, i, name, now) {
                return (
                    true,
                    vec![format!(
                        "step {step_id} completed: signal {name:?} had already arrived"
                    )],
                );
            }
            let line = match timeout {
                Some(t) => format!(
                    "step {step_id} started: waiting for signal {name:?} (timeout {})",
                    crate::domain::text::duration(t)
                ),
                None => format!("step {step_id} started: waiting for signal {name:?}"),
            };
            (false, vec![line])
        })?;
        if let (false, Some(w)) = (consumed, wake) {
            self.timers.insert((w, id, Wake::Step(i)));
        }
        Ok(consumed)
    }

    pub(super) fn complete(&mut self, id: TaskId) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let result = match &flow.wf.output {
            Some(t) => template::render(t, &flow.scope()),
            None => {
                let outputs: Map<String, Value> = flow
                    .run
                    .steps
                    .iter()
                    .map(|s| (s.id.clone(), s.output.clone().unwrap_or(Value::Null)))
                    .collect();
                json!({ "steps": outputs })
            }
        };
        let n = flow.run.steps.len();
        self.end(
            id,
            TaskState::Completed,
            Some(result),
            None,
            format!("workflow completed: {n} steps done"),
        )
    }

    /// In an aborted run: waits for running steps to stop, then runs the
    /// compensations of completed steps, latest completed first, one at a
    /// time; then ends the workflow.
    pub(super) async fn advance_abort(&mut self, id: TaskId) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        if anything_running(&flow.run) {
            return Ok(());
        }
        let next = next_compensation(&flow.run, &flow.wf);
        if let Some(i) = next {
            if !flow.compensating {
                self.core
                    .report(&self.wid, id, flow.attempt, Report::Compensating)?;
            }
            let Some(flow) = self.flows.get_mut(&id) else {
                return Ok(());
            };
            flow.compensating = true;
            let Some(new) = flow.compensation_task(i) else {
                return Ok(());
            };
            let step_id = flow.wf.steps[i].id.clone();
            let task = new.spec.name.clone();
            self.start_child(id, new, |run, child| {
                if let Some(s) = run.steps.get_mut(i) {
                    s.state = StepState::Compensating;
                    s.compensation_task_id = Some(child);
                }
                vec![format!(
                    "compensating step {step_id}: task {task} as task {child}"
                )]
            })?;
            return Ok(());
        }
        let abort = flow.es.abort.clone().unwrap_or(Abort {
            cause: Cause::Cancelled,
            step: None,
            error: None,
            reason: "stopped".into(),
        });
        let (state, message) = abort.ending(&flow.run);
        self.end(id, state, None, abort.error, message)
    }
}
