//! The pure transitions of a workflow run: the engine's part of the run
//! (its deadline and why it stopped), and the functions that change a
//! [`WorkflowRun`] and return what the engine is to do (the step tasks to
//! cancel, the log lines).
//!
//! It must not be async, call the core or read the clock: the engine
//! passes the current time in and carries out what comes back, so these are
//! tested without a runtime.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::*;
use crate::executor::workflow::definition::{StepKind, Workflow};

/// The engine's part of a run (`WorkflowRun::engine`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub(super) struct EngineState {
    /// When the whole workflow times out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) deadline: Option<Micros>,
    /// Set once the workflow stops going forward (a step failed, a cancel,
    /// the timeout): from then on it only winds down and compensates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) abort: Option<Abort>,
}

/// Why a workflow stopped going forward.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct Abort {
    pub(super) cause: Cause,
    /// The step that failed, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) step: Option<String>,
    /// The error to report at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<TaskError>,
    /// Human text: `step "x" failed: …`, `cancelled`, `timed out after 1h`.
    pub(super) reason: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum Cause {
    StepFailed,
    Cancelled,
    TimedOut,
}

pub(super) fn engine_state(run: &WorkflowRun) -> EngineState {
    EngineState::deserialize(&run.engine).unwrap_or_default()
}

pub(super) fn put_engine_state(run: &mut WorkflowRun, es: &EngineState) {
    run.engine = serde_json::to_value(es).unwrap_or(Value::Null);
}

pub(super) fn next_order(run: &WorkflowRun) -> u32 {
    run.steps
        .iter()
        .filter_map(|s| s.completed_order)
        .max()
        .map_or(1, |m| m + 1)
}

pub(super) fn step_error(message: String, kind: &str) -> TaskError {
    TaskError {
        message,
        kind: kind.to_string(),
        details: String::new(),
        retryable: false,
        attempt: 0,
    }
}

/// Consumes the oldest unconsumed signal `name` for step `i` and completes
/// the step with its payload. Returns whether there was one.
pub(super) fn consume_signal(run: &mut WorkflowRun, i: usize, name: &str, now: Micros) -> bool {
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
pub(super) fn apply_abort(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::workflow::definition::compile_text;
    use serde_json::json;

    /// A definition and a run of it that has not started.
    fn run_for(text: &str) -> (Workflow, WorkflowRun) {
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
        (wf, run)
    }

    #[test]
    fn abort_skips_pending_steps_and_lists_running_tasks() {
        let (wf, mut run) = run_for(
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
        let (cancel, logs) = apply_abort(&mut run, &wf, &abort, None);
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
        let (_, mut run) = run_for("name = \"o\"\n[[steps]]\nid = \"w\"\nsignal = \"go\"\n");
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
