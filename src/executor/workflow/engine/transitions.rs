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

/// Why a run cannot be replayed from the step asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplayRefusal {
    /// The definition has no step of that id.
    UnknownStep(String),
    /// A step the replay would keep did not complete.
    NotReplayable(String),
}

/// Rewrites an ended run of `wf` so that it runs again from step `from` at
/// `now`: the step `from`, every step after it in definition order and every
/// step that depends on one of those (directly or not) go back to PENDING
/// with nothing recorded; the steps before it keep their outputs and their
/// completion order, and a step whose compensation had undone it counts as
/// completed again (so its compensation runs again if the new run stops).
/// Signals consumed by a step that runs again are delivered again, as
/// signals that arrived after the replay point. The engine's state starts
/// over: no abort, a new deadline from `now`. Every kept step must have
/// completed. Returns the log line.
pub(crate) fn replay_from(
    run: &mut WorkflowRun,
    wf: &Workflow,
    from: &str,
    now: Micros,
) -> Result<String, ReplayRefusal> {
    let Some(start) = wf.steps.iter().position(|s| s.id == from) else {
        let ids: Vec<&str> = wf.steps.iter().map(|s| s.id.as_str()).collect();
        return Err(ReplayRefusal::UnknownStep(format!(
            "workflow {} v{} has no step {}; its steps are {}",
            wf.name,
            wf.version,
            crate::domain::text::quote(from),
            crate::domain::text::cut(&ids.join(", "), 512)
        )));
    };
    if run.steps.len() != wf.steps.len() {
        return Err(ReplayRefusal::NotReplayable(format!(
            "the run records {} steps, version {} of workflow {} has {}",
            run.steps.len(),
            wf.version,
            wf.name,
            wf.steps.len()
        )));
    }
    let mut again: Vec<bool> = (0..wf.steps.len()).map(|i| i >= start).collect();
    loop {
        let mut grew = false;
        for (i, s) in wf.steps.iter().enumerate() {
            if !again[i] && s.deps.iter().any(|&d| again.get(d) == Some(&true)) {
                again[i] = true;
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    for (i, s) in run.steps.iter().enumerate() {
        if !again[i]
            && !matches!(
                s.state,
                StepState::Completed | StepState::Compensated | StepState::CompensationFailed
            )
        {
            return Err(ReplayRefusal::NotReplayable(format!(
                "step {} (kept by a replay from {from}) did not complete (it is {}): replay from \
                 an earlier step",
                s.id,
                serde_json::to_value(s.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )));
        }
    }
    let (mut kept, mut rerun) = (Vec::new(), Vec::new());
    for (i, s) in run.steps.iter_mut().enumerate() {
        if again[i] {
            rerun.push(s.id.clone());
            *s = StepRun {
                id: s.id.clone(),
                kind: s.kind.clone(),
                depends_on: s.depends_on.clone(),
                ..Default::default()
            };
        } else {
            kept.push(s.id.clone());
            s.state = StepState::Completed;
            s.compensation_task_id = None;
            s.wake_at = None;
        }
    }
    for sig in &mut run.signals {
        if sig.consumed_by.as_ref().is_some_and(|c| rerun.contains(c)) {
            sig.consumed_by = None;
        }
    }
    let es = EngineState {
        deadline: wf.timeout.map(|t| add_micros(now, t)),
        abort: None,
    };
    es.put(run);
    Ok(format!(
        "workflow {} v{} from step {from}: kept {}; runs again {}",
        wf.name,
        wf.version,
        if kept.is_empty() {
            "none".to_string()
        } else {
            kept.join(", ")
        },
        rerun.join(", ")
    ))
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

    const FIVE: &str = r#"
name = "five"
timeout = "1m"
[[steps]]
id = "s1"
task = "t"
compensate = { task = "undo" }
[[steps]]
id = "s2"
task = "t"
compensate = { task = "undo" }
[[steps]]
id = "s3"
task = "t"
[[steps]]
id = "s4"
signal = "go"
[[steps]]
id = "s5"
task = "t"
"#;

    #[test]
    fn a_replay_keeps_the_earlier_outputs_and_resets_the_rest() {
        let (wf, mut run) = run_for(FIVE);
        complete_step(&mut run, 0, Some(json!({"n": 1})), 1);
        complete_step(&mut run, 1, Some(json!({"n": 2})), 2);
        complete_step(&mut run, 2, Some(json!({"n": 3})), 3);
        run.signals.push(SignalRecord {
            name: "go".into(),
            consumed_by: Some("s4".into()),
            ..Default::default()
        });
        run.steps[3].state = StepState::Failed;
        run.steps[4].state = StepState::Skipped;
        run.steps[0].state = StepState::Compensated;
        run.steps[0].compensation_task_id = Some(TaskId::now_v7());
        run.steps[1].state = StepState::Compensated;
        let mut es = EngineState::of(&run);
        es.abort = Some(Abort {
            cause: Cause::StepFailed,
            step: Some("s4".into()),
            error: None,
            reason: "x".into(),
        });
        es.put(&mut run);

        // An unknown step names itself; nothing changes.
        let before = run.clone();
        assert!(matches!(
            replay_from(&mut run, &wf, "nope", 10),
            Err(ReplayRefusal::UnknownStep(_))
        ));
        assert_eq!(run, before);

        let line = replay_from(&mut run, &wf, "s3", 10).expect("replayable");
        assert!(
            line.contains("kept s1, s2; runs again s3, s4, s5"),
            "{line}"
        );
        let states: Vec<StepState> = run.steps.iter().map(|s| s.state).collect();
        use StepState::*;
        assert_eq!(states, [Completed, Completed, Pending, Pending, Pending]);
        assert_eq!(run.steps[0].output, Some(json!({"n": 1})));
        assert_eq!(run.steps[0].compensation_task_id, None);
        assert_eq!(run.steps[1].completed_order, Some(2));
        assert_eq!(run.steps[2].output, None);
        assert_eq!(run.steps[2].completed_order, None);
        assert_eq!(
            run.signals[0].consumed_by, None,
            "s4's signal is delivered again"
        );
        assert_eq!(
            EngineState::of(&run),
            EngineState {
                deadline: Some(10 + 60_000_000),
                abort: None
            }
        );
        assert_eq!(ready_steps(&run, &wf), [2]);
    }

    #[test]
    fn a_replay_refuses_to_keep_a_step_that_did_not_complete() {
        let (wf, mut run) = run_for(FIVE);
        complete_step(&mut run, 0, None, 1);
        run.steps[1].state = StepState::Failed;
        let before = run.clone();
        assert!(matches!(
            replay_from(&mut run, &wf, "s3", 10),
            Err(ReplayRefusal::NotReplayable(m)) if m.contains("step s2")
        ));
        assert_eq!(run, before);
        // From the failed step itself it is fine.
        assert!(replay_from(&mut run, &wf, "s2", 10).is_ok());
    }

    #[test]
    fn a_replay_also_runs_again_what_depends_on_the_replayed_steps() {
        // c depends on a and b; a replay from b (index 1) also reruns c;
        // a (before b, independent) is kept.
        let (wf, mut run) = run_for(DAG);
        complete_step(&mut run, 0, Some(json!(1)), 1);
        complete_step(&mut run, 1, Some(json!(2)), 2);
        complete_step(&mut run, 2, Some(json!(3)), 3);
        let line = replay_from(&mut run, &wf, "b", 5).expect("replayable");
        assert!(line.contains("kept a; runs again b, c"), "{line}");
    }
}
