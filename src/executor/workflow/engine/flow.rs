//! A workflow the engine holds ([`Flow`]), and the child tasks it builds
//! from its definition: a step's task, a compensation's task, their inputs
//! (rendered templates or the default payloads), and the `workflow.step`
//! spans that the step tasks' traces continue.
//!
//! It must not call the core or change the run: it only reads the run the
//! engine last handed the core and builds what the engine asks for.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::transitions::EngineState;
use crate::domain::Payload;
use crate::domain::*;
use crate::executor::workflow::definition::{StepKind, Workflow};
use crate::executor::workflow::template::{self, Scope};

/// One workflow the engine holds.
pub(super) struct Flow {
    /// The attempt the core assigned (reports must name it).
    pub(super) attempt: u32,
    /// The workflow task's run (`TaskRuntime::run`): more than 0 after a
    /// retry or replay, and then part of its step tasks' `workflow_step`
    /// label, so their workers' idempotency keys differ from the earlier
    /// runs'.
    pub(super) task_run: u32,
    /// The pinned definition version.
    pub(super) wf: Arc<Workflow>,
    /// A copy of the run as last handed to the core; change it with
    /// [`Flow::set_run`].
    pub(super) run: WorkflowRun,
    /// The engine's part of `run`, parsed (it changes when the run starts
    /// and when it stops going forward, nowhere else).
    pub(super) es: EngineState,
    /// The workflow task's spec.
    pub(super) spec: Arc<TaskSpec>,
    /// `workflow_args`, as a JSON list.
    pub(super) args: Value,
    /// The workflow task's payload.
    pub(super) payload: Value,
    /// `{id, task_id, type, version}` for templates.
    pub(super) meta: Value,
    /// The workflow id (`ComplexTarget.workflow_id`, default the task id).
    pub(super) key: String,
    /// `ComplexTarget.task_queue`, recorded on step tasks.
    pub(super) queue: Option<String>,
    /// Whether the task is in COMPENSATING already.
    pub(super) compensating: bool,
    /// The trace context of this attempt ([`Assignment::traceparent`]); the
    /// steps' tasks continue it.
    pub(super) traceparent: Option<String>,
    /// The `workflow.step` span of each running step, while tracing is on.
    pub(super) step_spans: HashMap<usize, tracing::Span>,
}

impl Flow {
    /// Keeps `run`, as last handed to the core: parses the engine's part
    /// again only if it changed, and ends the spans of steps that stopped.
    pub(super) fn set_run(&mut self, run: WorkflowRun) {
        if run.engine != self.run.engine {
            self.es = EngineState::of(&run);
        }
        self.run = run;
        self.end_step_spans();
    }

    /// Starts the `workflow.step` span of step `i` (in the trace of this
    /// attempt) and returns its traceparent, while tracing is on.
    pub(super) fn start_step_span(&mut self, i: usize) -> Option<String> {
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

    pub(super) fn scope(&self) -> Scope<'_> {
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
    pub(super) fn step_input(&self, i: usize) -> Value {
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
    pub(super) fn compensation_input(&self, i: usize) -> Value {
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
    pub(super) fn child(
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
        let label = if self.task_run > 0 {
            format!("{label}:run{}", self.task_run)
        } else {
            label
        };
        labels.insert("workflow_step".to_string(), label);
        // A step belongs to its workflow's namespace (its workers too).
        if let Some(ns) = self.spec.namespace_column() {
            labels.insert(crate::domain::namespace::LABEL.into(), ns.into());
        }
        NewTask {
            spec: TaskSpec {
                priority: self.spec.priority,
                max_attempts: attempts,
                backoff,
                execution_timeout: timeout,
                labels,
                traceparent: self.traceparent.as_deref().map(Box::from),
                ..TaskSpec::new(name, task_type, target)
            },
            payload: Payload::Json(Arc::from(input.to_string())),
            delay: Duration::ZERO,
        }
    }

    /// The task that runs step `i` (a task or webhook step).
    pub(super) fn step_task(&self, i: usize) -> Option<NewTask> {
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
    pub(super) fn compensation_task(&self, i: usize) -> Option<NewTask> {
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
            priority: 7,
            user_id: Some("u".into()),
            session_id: Some("s".into()),
            ..TaskSpec::new(
                "order",
                TaskType::Complex,
                Target::Complex {
                    workflow_type: "order".into(),
                    workflow_args: vec![json!({"sku": "A-1"})],
                    task_queue: Some("orders".into()),
                    tracking_queue: None,
                    workflow_id: Some("wf-1".into()),
                },
            )
        };
        Flow {
            attempt: 1,
            task_run: 0,
            wf: Arc::new(wf),
            run,
            es: EngineState::default(),
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
}
