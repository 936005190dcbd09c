//! The workflow engine: one Tokio task that holds every running workflow as
//! a local worker of the core and drives its steps.
//!
//! Everything the engine decides goes through the core first
//! ([`Core::update_workflow`], [`Core::start_child`], [`Core::report`]), each
//! call one atomic write queued in sequence order; the engine's own memory is
//! only a copy of what it handed the core, so a restart loses nothing but
//! timers, which it re-arms from the `wake_at` the steps recorded.
//!
//! It must not touch the store or the worker protocol: child tasks are plain
//! tasks for the core, run by whoever serves their names.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::definition::{StepKind, Workflow};
use super::registry::Registry;
use super::template::{self, Scope};
use crate::core::{Assignment, Core, CoreError, Push, Report};
use crate::domain::Payload;
use crate::domain::*;

/// The timer slot of a workflow's own deadline.
const DEADLINE: usize = usize::MAX;

/// The engine's part of a run (`WorkflowRun::engine`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
struct EngineState {
    /// When the whole workflow times out.
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline: Option<Micros>,
    /// Set once the workflow stops going forward (a step failed, a cancel,
    /// the timeout): from then on it only winds down and compensates.
    #[serde(skip_serializing_if = "Option::is_none")]
    abort: Option<Abort>,
}

/// Why a workflow stopped going forward.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Abort {
    cause: Cause,
    /// The step that failed, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<String>,
    /// The error to report at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<TaskError>,
    /// Human text: `step "x" failed: …`, `cancelled`, `timed out after 1h`.
    reason: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Cause {
    StepFailed,
    Cancelled,
    TimedOut,
}

fn engine_state(run: &WorkflowRun) -> EngineState {
    EngineState::deserialize(&run.engine).unwrap_or_default()
}

fn put_engine_state(run: &mut WorkflowRun, es: &EngineState) {
    run.engine = serde_json::to_value(es).unwrap_or(Value::Null);
}

fn next_order(run: &WorkflowRun) -> u32 {
    run.steps
        .iter()
        .filter_map(|s| s.completed_order)
        .max()
        .map_or(1, |m| m + 1)
}

fn step_error(message: String, kind: &str) -> TaskError {
    TaskError {
        message,
        kind: kind.to_string(),
        details: String::new(),
        retryable: false,
        attempt: 0,
    }
}

/// One workflow the engine holds.
struct Flow {
    /// The attempt the core assigned (reports must name it).
    attempt: u32,
    /// The pinned definition version.
    wf: Arc<Workflow>,
    /// A copy of the run as last handed to the core.
    run: WorkflowRun,
    /// The workflow task's spec.
    spec: Arc<TaskSpec>,
    /// `workflow_args`, as a JSON list.
    args: Value,
    /// The workflow task's payload.
    payload: Value,
    /// `{id, task_id, type, version}` for templates.
    meta: Value,
    /// The workflow id (`ComplexTarget.workflow_id`, default the task id).
    key: String,
    /// `ComplexTarget.task_queue`, recorded on step tasks.
    queue: Option<String>,
    /// Whether the task is in COMPENSATING already.
    compensating: bool,
    /// The trace context of this attempt ([`Assignment::traceparent`]); the
    /// steps' tasks continue it.
    traceparent: Option<String>,
    /// The `workflow.step` span of each running step, while tracing is on.
    step_spans: HashMap<usize, tracing::Span>,
}

impl Flow {
    /// Starts the `workflow.step` span of step `i` (in the trace of this
    /// attempt) and returns its traceparent, while tracing is on.
    fn start_step_span(&mut self, i: usize) -> Option<String> {
        if !crate::telemetry::enabled() {
            return None;
        }
        let step = &self.wf.steps[i];
        let span = tracing::info_span!(
            parent: None,
            "workflow.step",
            workflow.id = %self.key,
            workflow.type = %self.wf.name,
            workflow.step = %step.id,
            workflow.step_kind = step.kind.as_str(),
            workflow.step_state = tracing::field::Empty,
        );
        let tp = crate::telemetry::adopt(&span, self.traceparent.as_deref());
        self.step_spans.insert(i, span);
        tp
    }

    /// Ends the spans of steps that are no longer running.
    fn end_step_spans(&mut self) {
        if self.step_spans.is_empty() {
            return;
        }
        let steps = &self.run.steps;
        self.step_spans
            .retain(|i, span| match steps.get(*i).map(|s| s.state) {
                Some(StepState::Running) => true,
                state => {
                    span.record("workflow.step_state", tracing::field::debug(state));
                    false
                }
            });
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            args: &self.args,
            payload: &self.payload,
            workflow: &self.meta,
            steps: &self.run.steps,
        }
    }

    /// The payload of a step's task: its rendered input (an object; any other
    /// value is wrapped as `{"input": value}`), or by default the args and
    /// the outputs of the steps it depends on.
    fn step_input(&self, i: usize) -> Value {
        let step = &self.wf.steps[i];
        match &step.input {
            Some(t) => as_object(template::render(t, &self.scope())),
            None => {
                let mut m = Map::new();
                m.insert("args".into(), self.args.clone());
                if !step.deps.is_empty() {
                    let outputs: Map<String, Value> = step
                        .deps
                        .iter()
                        .filter_map(|&d| self.run.steps.get(d))
                        .map(|s| (s.id.clone(), s.output.clone().unwrap_or(Value::Null)))
                        .collect();
                    m.insert("steps".into(), Value::Object(outputs));
                }
                Value::Object(m)
            }
        }
    }

    /// The payload of a step's compensation task.
    fn compensation_input(&self, i: usize) -> Value {
        let step = &self.wf.steps[i];
        match step.compensate.as_ref().and_then(|c| c.input.as_ref()) {
            Some(t) => as_object(template::render(t, &self.scope())),
            None => json!({
                "step": step.id,
                "args": self.args,
                "output": self.run.steps.get(i).and_then(|s| s.output.clone()),
            }),
        }
    }

    /// A child task of this workflow.
    #[allow(clippy::too_many_arguments)]
    fn child(
        &self,
        name: String,
        task_type: TaskType,
        target: Target,
        label: String,
        attempts: u32,
        backoff: Backoff,
        timeout: Option<Duration>,
        input: &Value,
    ) -> NewTask {
        let mut labels = BTreeMap::new();
        labels.insert("workflow_step".to_string(), label);
        NewTask {
            spec: TaskSpec {
                name,
                task_type,
                priority: self.spec.priority,
                max_attempts: attempts,
                backoff,
                execution_timeout: timeout,
                user_id: None,
                session_id: None,
                immediate: false,
                idempotency_key: None,
                labels,
                cleanup: None,
                target,
                traceparent: self.traceparent.as_deref().map(Box::from),
                parent_id: None,
                retention: None,
            },
            payload: Payload::Json(Arc::from(input.to_string())),
            delay: Duration::ZERO,
        }
    }

    /// The task that runs step `i` (a task or webhook step).
    fn step_task(&self, i: usize) -> Option<NewTask> {
        let step = &self.wf.steps[i];
        let label = format!("{}:{}", self.key, step.id);
        let input = self.step_input(i);
        let (name, task_type, target) = match &step.kind {
            StepKind::Task { name } => (
                name.clone(),
                TaskType::Simple,
                Target::Simple {
                    queue: self.queue.clone(),
                },
            ),
            StepKind::Webhook {
                url,
                workflow_id,
                source,
            } => (
                format!("{}.{}", self.wf.name, step.id),
                TaskType::Integration,
                Target::Integration {
                    workflow_id: workflow_id.clone(),
                    webhook_url: url.clone(),
                    integration_source: source.clone(),
                },
            ),
            StepKind::Timer(_) | StepKind::Signal { .. } => return None,
        };
        Some(self.child(
            name,
            task_type,
            target,
            label,
            step.attempts,
            step.backoff,
            step.timeout,
            &input,
        ))
    }

    /// The task that compensates step `i`.
    fn compensation_task(&self, i: usize) -> Option<NewTask> {
        let step = &self.wf.steps[i];
        let c = step.compensate.as_ref()?;
        let input = self.compensation_input(i);
        Some(self.child(
            c.task.clone(),
            TaskType::Simple,
            Target::Simple {
                queue: self.queue.clone(),
            },
            format!("{}:{}:compensate", self.key, step.id),
            c.attempts,
            c.backoff,
            c.timeout,
            &input,
        ))
    }
}

fn as_object(v: Value) -> Value {
    match v {
        Value::Object(_) => v,
        other => json!({ "input": other }),
    }
}

/// Consumes the oldest unconsumed signal `name` for step `i` and completes
/// the step with its payload. Returns whether there was one.
fn consume_signal(run: &mut WorkflowRun, i: usize, name: &str, now: Micros) -> bool {
    let Some(step_id) = run.steps.get(i).map(|s| s.id.clone()) else {
        return false;
    };
    let Some(sig) = run
        .signals
        .iter_mut()
        .find(|g| g.name == name && g.consumed_by.is_none())
    else {
        return false;
    };
    sig.consumed_by = Some(step_id);
    let payload = sig.payload.clone();
    let order = next_order(run);
    if let Some(s) = run.steps.get_mut(i) {
        s.state = StepState::Completed;
        s.output = Some(payload);
        s.finished_at = Some(now);
        s.wake_at = None;
        s.completed_order = Some(order);
    }
    true
}

/// Stops a run going forward: the failing step (if any) fails, steps not
/// started are skipped, timers and signal waits are cancelled. Returns the
/// running step tasks to cancel, and the log lines.
fn apply_abort(
    run: &mut WorkflowRun,
    wf: &Workflow,
    abort: &Abort,
    failing: Option<(usize, &TaskError)>,
) -> (Vec<TaskId>, Vec<String>) {
    let now = now_micros();
    let mut logs = Vec::new();
    if let Some((i, err)) = failing {
        if let Some(s) = run.steps.get_mut(i) {
            s.state = StepState::Failed;
            s.error = Some(err.clone());
            s.finished_at = Some(now);
            s.wake_at = None;
            logs.push(format!("step {} failed: {}", s.id, err.message));
        }
    }
    let mut es = engine_state(run);
    es.abort = Some(abort.clone());
    put_engine_state(run, &es);
    let (mut skipped, mut stopped, mut cancel) = (Vec::new(), Vec::new(), Vec::new());
    for (i, s) in run.steps.iter_mut().enumerate() {
        match s.state {
            StepState::Pending => {
                s.state = StepState::Skipped;
                skipped.push(s.id.clone());
            }
            StepState::Running => match (&wf.steps[i].kind, s.task_id) {
                (StepKind::Task { .. } | StepKind::Webhook { .. }, Some(t)) => {
                    cancel.push(t);
                    stopped.push(s.id.clone());
                }
                _ => {
                    s.state = StepState::Cancelled;
                    s.finished_at = Some(now);
                    s.wake_at = None;
                    stopped.push(s.id.clone());
                }
            },
            _ => {}
        }
    }
    logs.push(format!("workflow stopping: {}", abort.reason));
    if !stopped.is_empty() {
        logs.push(format!("stopping running steps: {}", stopped.join(", ")));
    }
    if !skipped.is_empty() {
        logs.push(format!("steps skipped: {}", skipped.join(", ")));
    }
    (cancel, logs)
}

/// The engine. See the module docs.
pub struct Engine {
    core: Core,
    /// Its worker id with the core.
    wid: String,
    registry: Registry,
    flows: HashMap<TaskId, Flow>,
    /// (when, workflow, step index or [`DEADLINE`]); stale entries are
    /// skipped when they fire.
    timers: BTreeSet<(Micros, TaskId, usize)>,
}

impl Engine {
    /// An engine registered with the core as worker `worker_id`.
    pub fn new(core: Core, worker_id: String, registry: Registry) -> Engine {
        Engine {
            core,
            wid: worker_id,
            registry,
            flows: HashMap::new(),
            timers: BTreeSet::new(),
        }
    }

    /// Runs until the core closes the engine's channel (`Push::Close` on
    /// shutdown): the core requeues the workflows it held, durably.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Push>) {
        loop {
            self.fire_timers().await;
            let push = match self.timers.first().map(|t| t.0) {
                None => rx.recv().await,
                Some(at) => {
                    let wait = Duration::from_micros((at - now_micros()).max(0) as u64);
                    tokio::select! {
                        p = rx.recv() => p,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            match push {
                None => break,
                Some(Push::Close(why)) => {
                    tracing::info!(
                        why,
                        workflows = self.flows.len(),
                        "workflow engine stopping"
                    );
                    break;
                }
                Some(p) => self.handle(p).await,
            }
        }
    }

    async fn handle(&mut self, push: Push) {
        let (id, r) = match push {
            Push::Assign(a) => {
                let id = a.task.id;
                (id, self.on_assign(a).await)
            }
            Push::ChildDone { parent, child } => (parent, self.on_child_done(parent, child).await),
            Push::Signal { task_id, name } => (task_id, self.on_signal(task_id, &name).await),
            Push::Cancel {
                task_id, reason, ..
            } => (task_id, self.on_cancel(task_id, &reason.to_string()).await),
            Push::Rejected {
                task_id,
                code,
                message,
            } => {
                tracing::warn!(
                    task_id,
                    code,
                    message,
                    "the core refused a workflow engine report"
                );
                return;
            }
            Push::Close(_) => return,
        };
        if let Err(e) = r {
            self.lost(id, e).await;
        }
    }

    async fn fire_timers(&mut self) {
        let now = now_micros();
        while let Some(&(at, id, i)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Err(e) = self.on_timer(id, i, at).await {
                self.lost(id, e).await;
            }
        }
    }

    /// A core call about a workflow failed: the engine no longer holds it.
    /// If it ended (a forced cancel), its running steps are stopped; else the
    /// core requeued it and will assign it again.
    async fn lost(&mut self, id: TaskId, err: CoreError) {
        let Some(flow) = self.flows.remove(&id) else {
            return;
        };
        match self.core.status(id).await {
            Ok(t) if t.rt.state.is_final() => {
                let running: Vec<TaskId> = flow
                    .run
                    .steps
                    .iter()
                    .filter_map(|s| match s.state {
                        StepState::Running => s.task_id,
                        StepState::Compensating => s.compensation_task_id,
                        _ => None,
                    })
                    .collect();
                tracing::info!(
                    task_id = %id,
                    state = t.rt.state.as_str(),
                    steps = running.len(),
                    "workflow ended outside the engine; stopping its running steps"
                );
                for c in running {
                    let _ = self.core.cancel(c, "its workflow ended", true).await;
                }
            }
            _ => {
                tracing::warn!(task_id = %id, cause = %err, "workflow engine lost hold of a workflow")
            }
        }
    }

    /// Records a change to a run with the core, and keeps the copy.
    fn update<R>(
        &mut self,
        id: TaskId,
        f: impl FnOnce(&mut WorkflowRun, &Workflow) -> (R, Vec<String>),
    ) -> Result<R, CoreError> {
        let flow = self
            .flows
            .get_mut(&id)
            .ok_or_else(|| CoreError::NotFound(id.to_string()))?;
        let wf = flow.wf.clone();
        let (r, run) = self.core.update_workflow(&self.wid, id, |run| {
            let (r, logs) = f(run, &wf);
            ((r, run.clone()), logs)
        })?;
        flow.run = run;
        flow.end_step_spans();
        Ok(r)
    }

    /// Schedules a child task and records it in the run, atomically.
    fn start_child(
        &mut self,
        id: TaskId,
        new: NewTask,
        f: impl FnOnce(&mut WorkflowRun, TaskId) -> Vec<String>,
    ) -> Result<TaskId, CoreError> {
        let flow = self
            .flows
            .get_mut(&id)
            .ok_or_else(|| CoreError::NotFound(id.to_string()))?;
        let mut copy = None;
        let child = self.core.start_child(&self.wid, id, new, |run, child| {
            let logs = f(run, child);
            copy = Some(run.clone());
            logs
        })?;
        if let Some(run) = copy {
            flow.run = run;
        }
        flow.end_step_spans();
        Ok(child)
    }

    /// Ends a workflow in a final state and forgets it.
    fn end(
        &mut self,
        id: TaskId,
        state: TaskState,
        result: Option<Value>,
        error: Option<TaskError>,
        message: String,
    ) -> Result<(), CoreError> {
        let Some(flow) = self.flows.remove(&id) else {
            return Ok(());
        };
        self.core.report(
            &self.wid,
            id,
            flow.attempt,
            Report::End {
                state,
                result,
                error,
                message,
            },
        )
    }

    async fn on_assign(&mut self, a: Assignment) -> Result<(), CoreError> {
        let traceparent = a.traceparent().map(str::to_string);
        let task = a.task;
        let id = task.id;
        let attempt = task.rt.attempt;
        let fail = |message: String, kind: &str| Report::End {
            state: TaskState::Failed,
            result: None,
            error: Some(step_error(message.clone(), kind)),
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
                fail("not a workflow (COMPLEX) task".into(), "invalid_task"),
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
            return self
                .core
                .report(&self.wid, id, attempt, fail(msg, "unknown_workflow"));
        };
        let payload = self.core.load_payload(id, a.payload).await?;
        let payload: Value = serde_json::from_str(&payload).unwrap_or_else(|_| json!({}));
        let key = workflow_id.clone().unwrap_or_else(|| id.to_string());
        let flow = Flow {
            attempt,
            meta: json!({
                "id": key,
                "task_id": id.to_string(),
                "type": wf.name,
                "version": wf.version,
            }),
            wf: wf.clone(),
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
            self.update(id, |run, wf| {
                run.version = wf.version;
                run.steps = wf
                    .steps
                    .iter()
                    .map(|s| StepRun {
                        id: s.id.clone(),
                        kind: s.kind.as_str().to_string(),
                        depends_on: s.depends_on.clone(),
                        ..Default::default()
                    })
                    .collect();
                let es = EngineState {
                    deadline: wf.timeout.map(|t| add_micros(now, t)),
                    abort: None,
                };
                put_engine_state(run, &es);
                let ids: Vec<&str> = wf.steps.iter().map(|s| s.id.as_str()).collect();
                let mut line = format!(
                    "workflow {} v{} started: {} steps ({})",
                    wf.name,
                    wf.version,
                    ids.len(),
                    ids.join(", ")
                );
                if let Some(t) = wf.timeout {
                    line.push_str(&format!(
                        "; times out in {}",
                        crate::domain::text::duration(t)
                    ));
                }
                ((), vec![line])
            })?;
        }
        if let Some(flow) = self.flows.get(&id) {
            if let Some(deadline) = engine_state(&flow.run).deadline {
                self.timers.insert((deadline, id, DEADLINE));
            }
        }
        self.advance(id).await
    }

    /// Picks a run up where its last committed state left it: re-arms
    /// timers, checks the step tasks that were in flight, consumes signals
    /// that arrived meanwhile.
    async fn resume(&mut self, id: TaskId) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let aborting = engine_state(&flow.run).abort.is_some();
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
                        self.timers.insert((w, id, i));
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

    /// Starts every step whose dependencies are done; completes the workflow
    /// when every step is; in an aborted run, winds down and compensates.
    async fn advance(&mut self, id: TaskId) -> Result<(), CoreError> {
        loop {
            let Some(flow) = self.flows.get(&id) else {
                return Ok(());
            };
            if engine_state(&flow.run).abort.is_some() {
                return self.advance_abort(id).await;
            }
            let steps = &flow.run.steps;
            let ready: Vec<usize> = flow
                .wf
                .steps
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    steps.get(*i).is_some_and(|r| r.state == StepState::Pending)
                        && s.deps.iter().all(|&d| {
                            steps
                                .get(d)
                                .is_some_and(|r| r.state == StepState::Completed)
                        })
                })
                .map(|(i, _)| i)
                .collect();
            if ready.is_empty() {
                if steps.iter().all(|s| s.state == StepState::Completed) {
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
    fn start_step(&mut self, id: TaskId, i: usize) -> Result<bool, CoreError> {
        let Some(flow) = self.flows.get_mut(&id) else {
            return Ok(false);
        };
        let step_traceparent = flow.start_step_span(i);
        let step = &flow.wf.steps[i];
        let step_id = step.id.clone();
        let now = now_micros();
        match step.kind.clone() {
            StepKind::Task { .. } | StepKind::Webhook { .. } => {
                let Some(mut new) = flow.step_task(i) else {
                    return Ok(false);
                };
                if step_traceparent.is_some() {
                    new.spec.traceparent = step_traceparent.map(String::into_boxed_str);
                }
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
                self.timers.insert((wake, id, i));
                Ok(false)
            }
            StepKind::Signal { name } => {
                let timeout = step.timeout;
                let wake = timeout.map(|t| add_micros(now, t));
                let consumed = self.update(id, |run, _| {
                    if let Some(s) = run.steps.get_mut(i) {
                        s.state = StepState::Running;
                        s.started_at = Some(now);
                        s.wake_at = wake;
                    }
                    if consume_signal(run, i, &name, now) {
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
                    self.timers.insert((w, id, i));
                }
                Ok(consumed)
            }
        }
    }

    fn complete(&mut self, id: TaskId) -> Result<(), CoreError> {
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

    async fn on_child_done(&mut self, id: TaskId, child: Task) -> Result<(), CoreError> {
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

    fn step_task_done(&mut self, id: TaskId, i: usize, child: &Task) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let aborting = engine_state(&flow.run).abort.is_some();
        let step_id = flow.wf.steps[i].id.clone();
        let now = now_micros();
        let attempt = child.rt.attempt;
        let child_id = child.id;
        match child.rt.state {
            TaskState::Completed => {
                let output = child.rt.result.as_deref().cloned();
                self.update(id, |run, _| {
                    let order = next_order(run);
                    if let Some(s) = run.steps.get_mut(i) {
                        s.state = StepState::Completed;
                        s.output = output;
                        s.attempt = attempt;
                        s.finished_at = Some(now);
                        s.completed_order = Some(order);
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
                let error = match (&child.rt.last_error, state) {
                    (Some(e), TaskState::Failed) => (**e).clone(),
                    (_, TaskState::Cancelled) => {
                        step_error(format!("step task {child_id} was cancelled"), "cancelled")
                    }
                    _ => step_error(
                        format!("step task {child_id} ended {}", state.as_str()),
                        "failed",
                    ),
                };
                if aborting {
                    let new_state = if state == TaskState::Cancelled {
                        StepState::Cancelled
                    } else {
                        StepState::Failed
                    };
                    self.update(id, |run, _| {
                        if let Some(s) = run.steps.get_mut(i) {
                            s.state = new_state;
                            s.attempt = attempt;
                            s.finished_at = Some(now);
                            if new_state == StepState::Failed {
                                s.error = Some(error.clone());
                            }
                        }
                        let line = if new_state == StepState::Cancelled {
                            format!("step {step_id} cancelled")
                        } else {
                            format!(
                                "step {step_id} failed while the workflow was stopping: {}",
                                error.message
                            )
                        };
                        ((), vec![line])
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
                        apply_abort(run, wf, &abort, Some((i, &error)))
                    })
                    .map(|cancel| self.cancel_children(cancel, "a step of its workflow failed"))
                }
            }
        }
    }

    /// Asks running step tasks to stop (their end arrives as `ChildDone`).
    fn cancel_children(&self, children: Vec<TaskId>, why: &str) {
        if children.is_empty() {
            return;
        }
        let core = self.core.clone();
        let why = why.to_string();
        // `cancel` only awaits for tasks that are no longer active; the
        // request itself is made before the spawned task first yields.
        tokio::spawn(async move {
            for c in children {
                if let Err(e) = core.cancel(c, &why, false).await {
                    tracing::debug!(task_id = %c, cause = %e, "cancel of a step task");
                }
            }
        });
    }

    fn compensation_done(&mut self, id: TaskId, i: usize, child: &Task) -> Result<(), CoreError> {
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
        let mut error = step_error(message.clone(), "compensation_failed");
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

    /// In an aborted run: waits for running steps to stop, then runs the
    /// compensations of completed steps, latest completed first, one at a
    /// time; then ends the workflow.
    async fn advance_abort(&mut self, id: TaskId) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let steps = &flow.run.steps;
        if steps
            .iter()
            .any(|s| matches!(s.state, StepState::Running | StepState::Compensating))
        {
            return Ok(());
        }
        let next = steps
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                s.state == StepState::Completed && flow.wf.steps[*i].compensate.is_some()
            })
            .max_by_key(|(_, s)| s.completed_order.unwrap_or(0))
            .map(|(i, _)| i);
        let abort = engine_state(&flow.run).abort.unwrap_or(Abort {
            cause: Cause::Cancelled,
            step: None,
            error: None,
            reason: "stopped".into(),
        });
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
        // In the order they were undone: latest completed first.
        let mut undone: Vec<&StepRun> = steps
            .iter()
            .filter(|s| s.state == StepState::Compensated)
            .collect();
        undone.sort_by_key(|s| std::cmp::Reverse(s.completed_order));
        let compensated: Vec<String> = undone.iter().map(|s| s.id.clone()).collect();
        if compensated.is_empty() {
            let (state, message) = match abort.cause {
                Cause::Cancelled => (
                    TaskState::Cancelled,
                    format!("workflow {}; nothing to compensate", abort.reason),
                ),
                _ => (
                    TaskState::Failed,
                    format!("workflow failed: {}; nothing to compensate", abort.reason),
                ),
            };
            return self.end(id, state, None, abort.error, message);
        }
        let message = format!(
            "workflow compensated after {}; undone {}",
            match abort.cause {
                Cause::StepFailed => abort.reason.clone(),
                Cause::Cancelled => format!("it was {}", abort.reason),
                Cause::TimedOut => format!("it {}", abort.reason),
            },
            compensated.join(", ")
        );
        self.end(id, TaskState::Compensated, None, abort.error, message)
    }

    async fn on_signal(&mut self, id: TaskId, name: &str) -> Result<(), CoreError> {
        if self.take_signals(id, name)? {
            self.advance(id).await
        } else {
            Ok(())
        }
    }

    /// Hands pending signals `name` to the steps waiting for them, in
    /// definition order. Returns whether a step completed.
    fn take_signals(&mut self, id: TaskId, name: &str) -> Result<bool, CoreError> {
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

    async fn on_cancel(&mut self, id: TaskId, reason: &str) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let why = if reason.is_empty() || reason == "cancelled" {
            "cancelled".to_string()
        } else if reason == "disconnected" {
            "cancelled (disconnected)".to_string()
        } else {
            format!("cancelled ({reason})")
        };
        if let Some(a) = engine_state(&flow.run).abort {
            // Compensation is under way: it must finish to leave a
            // consistent state.
            return self.update(id, |_, _| {
                (
                    (),
                    vec![format!(
                        "{why} while stopping ({}); the workflow winds down and compensates as planned",
                        a.reason
                    )],
                )
            });
        }
        let abort = Abort {
            cause: Cause::Cancelled,
            step: None,
            error: None,
            reason: why,
        };
        let cancel = self.update(id, |run, wf| apply_abort(run, wf, &abort, None))?;
        self.cancel_children(cancel, "its workflow was cancelled");
        self.advance(id).await
    }

    async fn on_timer(&mut self, id: TaskId, i: usize, at: Micros) -> Result<(), CoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::workflow::definition::compile_text;

    fn flow_for(text: &str) -> Flow {
        let mut wf = compile_text(text, "toml").expect("valid");
        wf.version = 1;
        let run = WorkflowRun {
            version: 1,
            steps: wf
                .steps
                .iter()
                .map(|s| StepRun {
                    id: s.id.clone(),
                    kind: s.kind.as_str().into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let spec = TaskSpec {
            name: "order".into(),
            task_type: TaskType::Complex,
            priority: 7,
            max_attempts: 1,
            backoff: Backoff::default(),
            execution_timeout: None,
            user_id: Some("u".into()),
            session_id: Some("s".into()),
            immediate: false,
            idempotency_key: None,
            labels: BTreeMap::new(),
            cleanup: None,
            target: Target::Complex {
                workflow_type: "order".into(),
                workflow_args: vec![json!({"sku": "A-1"})],
                task_queue: Some("orders".into()),
                tracking_queue: None,
                workflow_id: Some("wf-1".into()),
            },
            traceparent: None,
            parent_id: None,
            retention: None,
        };
        Flow {
            attempt: 1,
            wf: Arc::new(wf),
            run,
            spec: Arc::new(spec),
            args: json!([{"sku": "A-1"}]),
            payload: json!({}),
            meta: json!({"id": "wf-1"}),
            key: "wf-1".into(),
            queue: Some("orders".into()),
            compensating: false,
            traceparent: None,
            step_spans: HashMap::new(),
        }
    }

    #[test]
    fn a_task_step_becomes_a_simple_child_with_its_policy() {
        let flow = flow_for(
            r#"
name = "order"
[[steps]]
id = "reserve"
task = "reserve-stock"
input = { sku = "{{args.0.sku}}" }
retry = { attempts = 4, backoff = "fixed", base = "2s" }
timeout = "30s"
compensate = { task = "release-stock" }
"#,
        );
        let t = flow.step_task(0).expect("a task");
        assert_eq!(t.spec.name, "reserve-stock");
        assert_eq!(t.spec.task_type, TaskType::Simple);
        assert_eq!(t.spec.max_attempts, 4);
        assert_eq!(t.spec.backoff.kind, BackoffKind::Fixed);
        assert_eq!(t.spec.backoff.base, Duration::from_secs(2));
        assert_eq!(t.spec.execution_timeout, Some(Duration::from_secs(30)));
        assert_eq!(t.spec.priority, 7);
        assert_eq!(
            (t.spec.user_id.as_deref(), t.spec.session_id.as_deref()),
            (None, None)
        );
        assert_eq!(
            t.spec.labels.get("workflow_step").map(String::as_str),
            Some("wf-1:reserve")
        );
        assert_eq!(
            t.spec.target,
            Target::Simple {
                queue: Some("orders".into())
            }
        );
        let Payload::Json(p) = &t.payload else {
            panic!("a JSON payload")
        };
        assert_eq!(
            serde_json::from_str::<Value>(p).ok(),
            Some(json!({"sku": "A-1"}))
        );

        let c = flow.compensation_task(0).expect("a compensation");
        assert_eq!(c.spec.name, "release-stock");
        assert_eq!(c.spec.max_attempts, 3);
        assert_eq!(
            c.spec.labels.get("workflow_step").map(String::as_str),
            Some("wf-1:reserve:compensate")
        );
    }

    #[test]
    fn a_webhook_step_becomes_an_integration_child() {
        let flow = flow_for(
            r#"
name = "order"
[[steps]]
id = "notify"
webhook = { url = "https://hooks.example.com/orders", source = "github" }
input = { order = "{{args.0}}", note = "order {{args.0.sku}}" }
timeout = "10s"
"#,
        );
        let t = flow.step_task(0).expect("a task");
        assert_eq!(t.spec.task_type, TaskType::Integration);
        assert_eq!(t.spec.name, "order.notify");
        assert_eq!(t.spec.max_attempts, 5);
        assert_eq!(t.spec.execution_timeout, Some(Duration::from_secs(10)));
        assert_eq!(
            t.spec.target,
            Target::Integration {
                workflow_id: None,
                webhook_url: Some("https://hooks.example.com/orders".into()),
                integration_source: Some("github".into()),
            }
        );
        let Payload::Json(p) = &t.payload else {
            panic!("a JSON payload")
        };
        assert_eq!(
            serde_json::from_str::<Value>(p).ok(),
            Some(json!({"order": {"sku": "A-1"}, "note": "order A-1"}))
        );
    }

    #[test]
    fn default_input_carries_args_and_dependency_outputs() {
        let mut flow = flow_for(
            r#"
name = "order"
[[steps]]
id = "a"
task = "t"
[[steps]]
id = "b"
task = "t"
"#,
        );
        flow.run.steps[0].output = Some(json!({"n": 1}));
        assert_eq!(flow.step_input(0), json!({"args": [{"sku": "A-1"}]}));
        assert_eq!(
            flow.step_input(1),
            json!({"args": [{"sku": "A-1"}], "steps": {"a": {"n": 1}}})
        );
    }

    #[test]
    fn abort_skips_pending_steps_and_lists_running_tasks() {
        let flow = flow_for(
            r#"
name = "order"
[[steps]]
id = "a"
task = "t"
[[steps]]
id = "b"
task = "t"
depends_on = []
[[steps]]
id = "w"
signal = "go"
depends_on = []
[[steps]]
id = "c"
task = "t"
depends_on = ["a", "b"]
"#,
        );
        let mut run = flow.run.clone();
        let child = TaskId::now_v7();
        run.steps[0].state = StepState::Completed;
        run.steps[1].state = StepState::Running;
        run.steps[1].task_id = Some(child);
        run.steps[2].state = StepState::Running;
        let abort = Abort {
            cause: Cause::Cancelled,
            step: None,
            error: None,
            reason: "cancelled".into(),
        };
        let (cancel, logs) = apply_abort(&mut run, &flow.wf, &abort, None);
        assert_eq!(cancel, vec![child]);
        let states: Vec<StepState> = run.steps.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            [
                StepState::Completed,
                StepState::Running,
                StepState::Cancelled,
                StepState::Skipped
            ]
        );
        assert_eq!(engine_state(&run).abort, Some(abort));
        assert!(
            logs.iter().any(|l| l.contains("steps skipped: c")),
            "{logs:?}"
        );
    }

    #[test]
    fn signals_are_consumed_once_in_arrival_order() {
        let flow = flow_for("name = \"o\"\n[[steps]]\nid = \"w\"\nsignal = \"go\"\n");
        let mut run = flow.run.clone();
        for n in [1, 2] {
            run.signals.push(SignalRecord {
                name: "go".into(),
                payload: json!({ "n": n }),
                received_at: n,
                consumed_by: None,
            });
        }
        run.steps[0].state = StepState::Running;
        assert!(consume_signal(&mut run, 0, "go", 10));
        assert_eq!(run.steps[0].output, Some(json!({ "n": 1 })));
        assert_eq!(run.signals[0].consumed_by.as_deref(), Some("w"));
        assert_eq!(run.signals[1].consumed_by, None);
        assert!(!consume_signal(&mut run, 0, "stop", 10));
    }
}
