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

impl EngineState {
    /// The engine's part of `run`, parsed from its JSON (empty if absent or
    /// unreadable).
    pub(super) fn of(run: &WorkflowRun) -> EngineState {
        EngineState::deserialize(&run.engine).unwrap_or_default()
    }

    /// Writes this state into `run`.
    fn put(&self, run: &mut WorkflowRun) {
        run.engine = serde_json::to_value(self).unwrap_or(Value::Null);
    }
}

impl Abort {
    /// How a stopped run ends once nothing runs and nothing is left to
    /// compensate: the task's final state and its message.
    pub(super) fn ending(&self, run: &WorkflowRun) -> (TaskState, String) {
        // In the order they were undone: latest completed first.
        let mut undone: Vec<&StepRun> = run
            .steps
            .iter()
            .filter(|s| s.state == StepState::Compensated)
            .collect();
        undone.sort_by_key(|s| std::cmp::Reverse(s.completed_order));
        let compensated: Vec<&str> = undone.iter().map(|s| s.id.as_str()).collect();
        if compensated.is_empty() {
            return match self.cause {
                Cause::Cancelled => (
                    TaskState::Cancelled,
                    format!("workflow {}; nothing to compensate", self.reason),
                ),
                _ => (
                    TaskState::Failed,
                    format!("workflow failed: {}; nothing to compensate", self.reason),
                ),
            };
        }
        let message = format!(
            "workflow compensated after {}; undone {}",
            match self.cause {
                Cause::StepFailed => self.reason.clone(),
                Cause::Cancelled => format!("it was {}", self.reason),
                Cause::TimedOut => format!("it {}", self.reason),
            },
            compensated.join(", ")
        );
        (TaskState::Compensated, message)
    }
}

/// Sets up a new run of `wf` started at `now`: its steps, all pending, and
/// its deadline. Returns the log line.
pub(super) fn start_run(run: &mut WorkflowRun, wf: &Workflow, now: Micros) -> String {
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
    es.put(run);
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
    line
}

/// The completion order the next completed step gets (1 for the first).
fn next_order(run: &WorkflowRun) -> u32 {
    run.steps
        .iter()
        .filter_map(|s| s.completed_order)
        .max()
        .map_or(1, |m| m + 1)
}

/// Completes step `i` at `now` with `output`, next in completion order (the
/// order compensations undo). A step has no output before it completes, so
/// `None` leaves it without one.
pub(super) fn complete_step(run: &mut WorkflowRun, i: usize, output: Option<Value>, now: Micros) {
    let order = next_order(run);
    if let Some(s) = run.steps.get_mut(i) {
        s.state = StepState::Completed;
        s.output = output;
        s.finished_at = Some(now);
        s.wake_at = None;
        s.completed_order = Some(order);
    }
}

/// The pending steps whose dependencies are all completed, in definition
/// order.
pub(super) fn ready_steps(run: &WorkflowRun, wf: &Workflow) -> Vec<usize> {
    let steps = &run.steps;
    wf.steps
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
        .collect()
}

/// In a stopped run with nothing running: the completed step to compensate
/// next, the latest completed first.
pub(super) fn next_compensation(run: &WorkflowRun, wf: &Workflow) -> Option<usize> {
    run.steps
        .iter()
        .enumerate()
        .filter(|(i, s)| s.state == StepState::Completed && wf.steps[*i].compensate.is_some())
        .max_by_key(|(_, s)| s.completed_order.unwrap_or(0))
        .map(|(i, _)| i)
}

/// Whether a step or a compensation task is still running.
pub(super) fn anything_running(run: &WorkflowRun) -> bool {
    run.steps
        .iter()
        .any(|s| matches!(s.state, StepState::Running | StepState::Compensating))
}

/// The step and compensation tasks that are running.
pub(super) fn running_children(run: &WorkflowRun) -> Vec<TaskId> {
    run.steps
        .iter()
        .filter_map(|s| match s.state {
            StepState::Running => s.task_id,
            StepState::Compensating => s.compensation_task_id,
            _ => None,
        })
        .collect()
}

/// The error of a step whose task ended without completing: the task's own
/// error if it failed, else one saying how it ended.
pub(super) fn child_error(
    child_id: TaskId,
    state: TaskState,
    last_error: Option<&TaskError>,
) -> TaskError {
    match (last_error, state) {
        (Some(e), TaskState::Failed) => e.clone(),
        (_, TaskState::Cancelled) => TaskError::of(
            FailureKind::StepCancelled,
            format!("step task {child_id} was cancelled"),
        ),
        (_, state) => TaskError::of(
            FailureKind::StepEnded,
            format!("step task {child_id} ended {}", state.as_str()),
        ),
    }
}

/// In a stopped run, step `i`'s task ended at `now` without completing
/// (`cancelled`, or failed with `error`). Returns the log lines.
pub(super) fn step_stopped(
    run: &mut WorkflowRun,
    i: usize,
    cancelled: bool,
    attempt: u32,
    error: &TaskError,
    now: Micros,
) -> Vec<String> {
    let Some(s) = run.steps.get_mut(i) else {
        return Vec::new();
    };
    s.attempt = attempt;
    s.finished_at = Some(now);
    if cancelled {
        s.state = StepState::Cancelled;
        return vec![format!("step {} cancelled", s.id)];
    }
    s.state = StepState::Failed;
    s.error = Some(error.clone());
    vec![format!(
        "step {} failed while the workflow was stopping: {}",
        s.id, error.message
    )]
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
    complete_step(run, i, Some(payload), now);
    true
}

/// Stops a run going forward: the failing step (if any) fails, steps not
/// started are skipped, timers and signal waits are cancelled, at `now`;
/// `es` is the run's engine state so far. Returns the running step tasks to
/// cancel, and the log lines.
pub(super) fn apply_abort(
    run: &mut WorkflowRun,
    es: &EngineState,
    wf: &Workflow,
    abort: &Abort,
    failing: Option<(usize, &TaskError)>,
    now: Micros,
) -> (Vec<TaskId>, Vec<String>) {
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
    let es = EngineState {
        abort: Some(abort.clone()),
        ..es.clone()
    };
    es.put(run);
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

    /// A definition and a run of it that has just started (at 0).
    fn run_for(text: &str) -> (Workflow, WorkflowRun) {
        let mut wf = compile_text(text, "toml").expect("valid");
        wf.version = 1;
        let mut run = WorkflowRun::default();
        start_run(&mut run, &wf, 0);
        (wf, run)
    }

    const DAG: &str = r#"
name = "order"
timeout = "1s"
[[steps]]
id = "a"
task = "t"
compensate = { task = "undo" }
[[steps]]
id = "b"
task = "t"
depends_on = []
compensate = { task = "undo" }
[[steps]]
id = "c"
task = "t"
depends_on = ["a", "b"]
"#;

    #[test]
    fn a_started_run_has_pending_steps_and_its_deadline() {
        let (wf, mut run) = run_for(DAG);
        let line = start_run(&mut run, &wf, 5);
        assert_eq!(run.version, 1);
        assert!(run.steps.iter().all(|s| s.state == StepState::Pending));
        assert_eq!(run.steps[2].depends_on, ["a", "b"]);
        assert_eq!(
            EngineState::of(&run),
            EngineState {
                deadline: Some(5 + 1_000_000),
                abort: None
            }
        );
        assert!(
            line.starts_with("workflow order v1 started: 3 steps (a, b, c)"),
            "{line}"
        );
    }

    #[test]
    fn steps_start_once_their_dependencies_completed() {
        let (wf, mut run) = run_for(DAG);
        assert_eq!(ready_steps(&run, &wf), [0, 1]);
        run.steps[0].state = StepState::Running;
        complete_step(&mut run, 0, None, 7);
        assert_eq!(ready_steps(&run, &wf), [1]);
        complete_step(&mut run, 1, Some(json!(1)), 8);
        assert_eq!(ready_steps(&run, &wf), [2]);
        assert_eq!(run.steps[1].output, Some(json!(1)));
        assert_eq!(run.steps[1].finished_at, Some(8));
    }

    #[test]
    fn compensations_undo_the_latest_completed_first() {
        let (wf, mut run) = run_for(DAG);
        run.steps[1].wake_at = Some(3);
        complete_step(&mut run, 1, None, 1);
        complete_step(&mut run, 0, None, 2);
        assert_eq!(
            (run.steps[1].completed_order, run.steps[0].completed_order),
            (Some(1), Some(2))
        );
        assert_eq!(run.steps[1].wake_at, None);
        assert_eq!(next_compensation(&run, &wf), Some(0));
        run.steps[0].state = StepState::Compensated;
        assert_eq!(next_compensation(&run, &wf), Some(1));
        run.steps[1].state = StepState::Compensated;
        assert_eq!(next_compensation(&run, &wf), None);
        let abort = Abort {
            cause: Cause::TimedOut,
            step: None,
            error: None,
            reason: "timed out after 1s".into(),
        };
        assert_eq!(
            abort.ending(&run),
            (
                TaskState::Compensated,
                "workflow compensated after it timed out after 1s; undone a, b".to_string()
            )
        );
    }

    #[test]
    fn a_stopped_run_with_nothing_to_undo_ends_by_its_cause() {
        let (_, run) = run_for(DAG);
        let mut abort = Abort {
            cause: Cause::Cancelled,
            step: None,
            error: None,
            reason: "cancelled".into(),
        };
        assert_eq!(
            abort.ending(&run),
            (
                TaskState::Cancelled,
                "workflow cancelled; nothing to compensate".to_string()
            )
        );
        abort.cause = Cause::StepFailed;
        assert_eq!(abort.ending(&run).0, TaskState::Failed);
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
        let es = EngineState {
            deadline: Some(99),
            abort: None,
        };
        let (cancel, logs) = apply_abort(&mut run, &es, &wf, &abort, None, 10);
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
        assert_eq!(EngineState::of(&run).abort, Some(abort));
        assert_eq!(EngineState::of(&run).deadline, Some(99));
        assert_eq!(run.steps[2].finished_at, Some(10));
        assert!(
            logs.iter().any(|l| l.contains("steps skipped: c")),
            "{logs:?}"
        );
    }

    #[test]
    fn a_step_task_that_ends_in_a_stopped_run_is_cancelled_or_failed() {
        let (_, mut run) = run_for(DAG);
        let child = TaskId::now_v7();
        let error = child_error(child, TaskState::Cancelled, None);
        assert_eq!(error.kind, "cancelled");
        let logs = step_stopped(&mut run, 0, true, 2, &error, 9);
        assert_eq!(logs, ["step a cancelled"]);
        assert_eq!(
            (
                run.steps[0].state,
                run.steps[0].attempt,
                run.steps[0].error.is_none()
            ),
            (StepState::Cancelled, 2, true)
        );
        let error = child_error(child, TaskState::Running, None);
        assert_eq!(error.kind, "failed");
        step_stopped(&mut run, 1, false, 1, &error, 9);
        assert_eq!(run.steps[1].state, StepState::Failed);
        assert_eq!(run.steps[1].error.as_ref(), Some(&error));
        let own = TaskError {
            message: "boom".into(),
            kind: "worker".into(),
            ..Default::default()
        };
        assert_eq!(child_error(child, TaskState::Failed, Some(&own)), own);
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
