//! `Push::Assign`: taking a workflow on. A new run pins the latest
//! definition and starts; a resumed one (a restart, a lost lease) picks up
//! where its last committed state left it.
//!
//! It must not guess at state the run does not record: what was in flight is
//! read back from the core.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::transitions::{start_run, EngineState};
use super::{Engine, Flow, Wake};
use crate::core::{Assignment, CoreError, Report};
use crate::domain::*;
use crate::executor::workflow::definition::StepKind;

impl Engine {
    pub(super) async fn on_assign(&mut self, a: Assignment) -> Result<(), CoreError> {
        let traceparent = a.traceparent().map(str::to_string);
        let task = a.task;
        let id = task.id;
        let attempt = task.rt.attempt;
        let fail = |message: String, kind: FailureKind| Report::End {
            state: TaskState::Failed,
            result: None,
            error: Some(TaskError::of(kind, message.clone())),
            message,
        };
        let Target::Complex {
            workflow_type,
            workflow_args,
            task_queue,
            workflow_id,
            ..
        } = &task.spec.target
        else {
            return self.core.report(
                &self.wid,
                id,
                attempt,
                fail(
                    "not a workflow (COMPLEX) task".into(),
                    FailureKind::InvalidTask,
                ),
            );
        };
        let run = WorkflowRun::from_detail(task.rt.detail.as_deref());
        let resumed = run.version != 0;
        let wf = if resumed {
            self.registry.get(workflow_type, run.version)
        } else {
            self.registry.latest(workflow_type)
        };
        let Some(wf) = wf else {
            let msg = if resumed {
                format!(
                    "version {} of workflow {workflow_type:?} is not registered",
                    run.version
                )
            } else {
                format!("no workflow definition named {workflow_type:?} is registered")
            };
            return self.core.report(
                &self.wid,
                id,
                attempt,
                fail(msg, FailureKind::UnknownWorkflow),
            );
        };
        let payload = self.core.load_payload(id, a.payload).await?;
        let payload: Value = serde_json::from_str(&payload).unwrap_or_else(|_| json!({}));
        let key = workflow_id.clone().unwrap_or_else(|| id.to_string());
        let flow = Flow {
            attempt,
            task_run: task.rt.run.into(),
            meta: json!({
                "id": key,
                "task_id": id.to_string(),
                "type": wf.name,
                "version": wf.version,
            }),
            wf: wf.clone(),
            es: EngineState::of(&run),
            run,
            spec: task.spec.clone(),
            args: Value::Array(workflow_args.clone()),
            payload,
            key,
            queue: task_queue.clone(),
            compensating: task.rt.state == TaskState::Compensating,
            traceparent,
            step_spans: HashMap::new(),
        };
        self.flows.insert(id, flow);
        if resumed {
            self.resume(id).await?;
        } else {
            let now = now_micros();
            self.update(id, |run, wf| ((), vec![start_run(run, wf, now)]))?;
        }
        if let Some(flow) = self.flows.get(&id) {
            if let Some(deadline) = flow.es.deadline {
                self.timers.insert((deadline, id, Wake::Deadline));
            }
        }
        self.advance(id).await
    }

    /// Picks a run up where its last committed state left it: re-arms
    /// timers, checks the step tasks that were in flight, consumes signals
    /// that arrived meanwhile.
    pub(super) async fn resume(&mut self, id: TaskId) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let aborting = flow.es.abort.is_some();
        let mut children = Vec::new();
        let mut signals = Vec::new();
        let (mut done, mut in_flight) = (Vec::new(), Vec::new());
        for (i, s) in flow.run.steps.iter().enumerate() {
            match s.state {
                StepState::Completed => done.push(s.id.clone()),
                StepState::Running => {
                    in_flight.push(s.id.clone());
                    if let Some(t) = s.task_id {
                        children.push((t, false));
                    }
                    if let Some(w) = s.wake_at {
                        self.timers.insert((w, id, Wake::Step(i)));
                    }
                    if let StepKind::Signal { name } = &flow.wf.steps[i].kind {
                        signals.push(name.clone());
                    }
                }
                StepState::Compensating => {
                    in_flight.push(format!("compensation of {}", s.id));
                    if let Some(t) = s.compensation_task_id {
                        children.push((t, true));
                    }
                }
                _ => {}
            }
        }
        let attempt = flow.attempt;
        self.update(id, |_, wf| {
            let mut line = format!(
                "workflow {} v{} resumed on attempt {attempt}",
                wf.name, wf.version
            );
            if !done.is_empty() {
                line.push_str(&format!("; completed: {}", done.join(", ")));
            }
            if !in_flight.is_empty() {
                line.push_str(&format!("; in flight: {}", in_flight.join(", ")));
            }
            ((), vec![line])
        })?;
        for (child, compensation) in children {
            let t = self.core.status(child).await?;
            if t.rt.state.is_final() {
                self.on_child_done(id, t).await?;
            } else if aborting && !compensation {
                let _ = self
                    .core
                    .cancel(child, "its workflow is stopping", false)
                    .await;
            }
        }
        for name in signals {
            self.take_signals(id, &name)?;
        }
        Ok(())
    }
}
