//! COMPLEX tasks on the embedded workflow engine, against the real server and
//! real workers from the Rust worker library: sequences and DAGs, failures
//! with compensation in reverse order, cancel, failing compensations,
//! signals, timers, the workflow timeout, a SIGKILL in the middle of a run,
//! definition errors and definition updates while runs are in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use switchyard::pb;
use switchyard::pb::watch_tasks_response::Item;
use switchyard::worker::convert::json_to_value;
use switchyard::worker::{HandlerError, TaskContext, Worker, WorkerBuilder};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::common::*;

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// One handler call, as the worker saw it.
#[derive(Clone, Debug)]
struct Call {
    name: String,
    task_id: String,
    key: String,
    step: String,
    attempt: u32,
    payload: Value,
    started: Instant,
    ended: Option<Instant>,
}

/// Every handler call of a test's workers, in start order.
#[derive(Clone, Default)]
struct Calls {
    inner: Arc<Mutex<Vec<Call>>>,
    changed: Arc<Notify>,
}

impl Calls {
    fn start(&self, ctx: &TaskContext) -> usize {
        let mut v = self.inner.lock();
        v.push(Call {
            name: ctx.name().to_string(),
            task_id: ctx.task_id().to_string(),
            key: ctx.idempotency_key().to_string(),
            step: ctx
                .labels()
                .get("workflow_step")
                .cloned()
                .unwrap_or_default(),
            attempt: ctx.attempt(),
            payload: ctx.payload().clone(),
            started: Instant::now(),
            ended: None,
        });
        self.changed.notify_waiters();
        v.len() - 1
    }

    fn end(&self, i: usize) {
        if let Some(c) = self.inner.lock().get_mut(i) {
            c.ended = Some(Instant::now());
        }
    }

    fn all(&self) -> Vec<Call> {
        self.inner.lock().clone()
    }

    fn named(&self, name: &str) -> Vec<Call> {
        self.all().into_iter().filter(|c| c.name == name).collect()
    }

    fn names(&self) -> Vec<String> {
        self.all().into_iter().map(|c| c.name).collect()
    }

    async fn wait_named(&self, name: &str, n: usize) -> Vec<Call> {
        wait_for(&format!("{n} call(s) of {name}"), LONG, || async {
            let v = self.named(name);
            (v.len() >= n).then_some(v)
        })
        .await
    }
}

/// Adds handlers that record the call and complete with
/// `{"done": <name>, "input": <payload>}`.
fn ok_handlers(mut b: WorkerBuilder, calls: &Calls, names: &[&str]) -> WorkerBuilder {
    for name in names {
        let calls = calls.clone();
        b = b.handler(*name, move |ctx: TaskContext| {
            let calls = calls.clone();
            async move {
                let i = calls.start(&ctx);
                calls.end(i);
                Ok(json!({ "done": ctx.name(), "input": ctx.payload().clone() }))
            }
        });
    }
    b
}

/// Adds a handler that records the call and fails for good with `message`.
fn failing_handler(
    b: WorkerBuilder,
    calls: &Calls,
    name: &str,
    message: &'static str,
) -> WorkerBuilder {
    let calls = calls.clone();
    b.handler(name, move |ctx: TaskContext| {
        let calls = calls.clone();
        async move {
            let i = calls.start(&ctx);
            calls.end(i);
            Err(HandlerError::fatal(message).with_kind("BusinessError"))
        }
    })
}

/// Adds a handler that records the call and runs until it is cancelled.
fn blocking_handler(b: WorkerBuilder, calls: &Calls, name: &str) -> WorkerBuilder {
    let calls = calls.clone();
    b.handler(name, move |ctx: TaskContext| {
        let calls = calls.clone();
        async move {
            let i = calls.start(&ctx);
            ctx.cancelled().await;
            calls.end(i);
            Err(HandlerError::retryable("stopped"))
        }
    })
}

pub(crate) async fn register(client: &mut Client, toml: &str) -> (String, u32, bool) {
    let r = client
        .register_workflow(pb::RegisterWorkflowRequest {
            definition: toml.to_string(),
            format: "toml".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RegisterWorkflow: {e:?}\n{toml}"))
        .into_inner();
    (r.name, r.version, r.created)
}

/// A COMPLEX task request.
pub(crate) fn workflow(
    workflow_type: &str,
    args: Vec<Value>,
    workflow_id: &str,
) -> pb::ScheduleTaskRequest {
    pb::ScheduleTaskRequest {
        name: workflow_type.to_string(),
        payload: Some(payload(json!({ "requested_by": "tests" }))),
        task_type: pb::TaskType::Complex as i32,
        options: Some(pb::TaskOptions::default()),
        target: Some(pb::schedule_task_request::Target::Complex(
            pb::ComplexTarget {
                workflow_type: workflow_type.to_string(),
                workflow_args: Some(prost_types::ListValue {
                    values: args.iter().map(json_to_value).collect(),
                }),
                task_queue: String::new(),
                tracking_queue: String::new(),
                workflow_id: workflow_id.to_string(),
            },
        )),
    }
}

fn step<'a>(s: &'a pb::TaskStatus, id: &str) -> &'a pb::StepStatus {
    s.steps
        .iter()
        .find(|st| st.id == id)
        .unwrap_or_else(|| panic!("no step {id} in {s:#?}"))
}

fn sstate(st: &pb::StepStatus) -> pb::StepState {
    pb::StepState::try_from(st.state).unwrap_or(pb::StepState::Unspecified)
}

fn step_states(s: &pb::TaskStatus) -> Vec<(String, pb::StepState)> {
    s.steps
        .iter()
        .map(|st| (st.id.clone(), sstate(st)))
        .collect()
}

/// Waits until step `id` of workflow `wf` is in `want`.
async fn wait_step(client: &mut Client, wf: &str, id: &str, want: pb::StepState) -> pb::TaskStatus {
    let c = client.clone();
    wait_for(&format!("step {id} of {wf} to be {want:?}"), LONG, || {
        let mut c = c.clone();
        async move {
            let s = status(&mut c, wf).await;
            let st = s.steps.iter().find(|x| x.id == id).map(sstate);
            if is_final(state(&s)) && st != Some(want) {
                panic!(
                    "workflow ended {:?} with step {id} {st:?}: {s:#?}",
                    state(&s)
                );
            }
            (st == Some(want)).then_some(s)
        }
    })
    .await
}

/// Opens a live watch on the COMPLEX tasks named `name`.
async fn live_watch(client: &mut Client, name: &str) -> tonic::Streaming<pb::WatchTasksResponse> {
    let mut w = client
        .watch_tasks(pb::WatchTasksRequest {
            filter: Some(pb::TaskFilter {
                names: vec![name.to_string()],
                task_types: vec![pb::TaskType::Complex as i32],
                ..Default::default()
            }),
            after_sequence: 0,
            include_snapshot: false,
        })
        .await
        .expect("WatchTasks")
        .into_inner();
    match within("the live marker", SHORT, w.next()).await {
        Some(Ok(pb::WatchTasksResponse {
            item: Some(Item::Live(_)),
        })) => w,
        other => panic!("expected the live marker, got {other:?}"),
    }
}

/// Reads events of task `id` until it is final.
async fn events_until_final(
    w: &mut tonic::Streaming<pb::WatchTasksResponse>,
    id: &str,
) -> Vec<pb::TaskEvent> {
    let mut out = Vec::new();
    loop {
        let item = within("a workflow event", LONG, w.next())
            .await
            .expect("the watch ended")
            .expect("a watch error");
        if let Some(Item::Event(e)) = item.item {
            let status = e.status.clone().expect("a status");
            if status.id != id {
                continue;
            }
            out.push(e);
            if is_final(state(&status)) {
                return out;
            }
        }
    }
}

fn assert_log_order(lines: &[pb::LogLine], needles: &[&[&str]]) {
    let text = log_text(lines);
    let mut from = 0;
    for n in needles {
        match find_line(lines, from, n) {
            Some(i) => from = i + 1,
            None => panic!("no log line with {n:?} after line index {from}:\n{text}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Happy paths.
// ---------------------------------------------------------------------------

const ORDER: &str = r#"
name = "order"
[[steps]]
id = "reserve"
task = "seq-reserve"
input = { sku = "{{args.0.sku}}", order = "{{args.0}}", wf = "{{workflow.id}}" }
[[steps]]
id = "charge"
task = "seq-charge"
input = { amount = "{{args.0.amount}}", reservation = "{{steps.reserve.output.input.sku}}", note = "order {{args.0.sku}} by {{payload.requested_by}}" }
retry = { attempts = 3, base = "100ms" }
timeout = "30s"
[[steps]]
id = "ship"
task = "seq-ship"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_workflow_runs_each_step_once_in_order_and_shows_every_transition() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let calls = Calls::default();
    let (_worker, _) = spawn_worker(
        ok_handlers(
            Worker::builder(&server.url),
            &calls,
            &["seq-reserve", "seq-charge", "seq-ship"],
        )
        .build(),
    )
    .await;
    assert_eq!(
        register(&mut client, ORDER).await,
        ("order".into(), 1, true)
    );

    let mut watch = live_watch(&mut client, "order").await;
    let order = json!({ "sku": "A-1", "amount": 42 });
    let id = schedule(
        &mut client,
        workflow("order", vec![order.clone()], "order-42"),
    )
    .await;
    let events = events_until_final(&mut watch, &id).await;
    let s = wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;

    // Steps ran in order, once each, with rendered inputs and the step's
    // idempotency key.
    assert_eq!(calls.names(), ["seq-reserve", "seq-charge", "seq-ship"]);
    let all = calls.all();
    assert_eq!(
        all[0].payload,
        json!({ "sku": "A-1", "order": order, "wf": "order-42" })
    );
    assert_eq!(
        all[1].payload,
        json!({ "amount": 42, "reservation": "A-1", "note": "order A-1 by tests" })
    );
    assert_eq!(
        all[2].payload["steps"]["charge"]["done"],
        json!("seq-charge"),
        "by default a step gets its dependencies' outputs: {:?}",
        all[2].payload
    );
    for (c, stepid) in all.iter().zip(["reserve", "charge", "ship"]) {
        assert_eq!(c.key, format!("order-42:{stepid}:1"));
        assert_eq!(c.attempt, 1);
        assert_eq!(c.step, format!("order-42:{stepid}"));
    }

    // The status: every step, its task, attempt, output, timings; the result.
    assert_eq!(s.workflow_version, 1);
    assert_eq!(
        step_states(&s),
        [
            ("reserve".to_string(), pb::StepState::Completed),
            ("charge".to_string(), pb::StepState::Completed),
            ("ship".to_string(), pb::StepState::Completed),
        ]
    );
    for (st, c) in s.steps.iter().zip(&all) {
        assert_eq!(st.task_id, c.task_id, "{st:?}");
        assert_eq!(st.attempt, 1);
        assert_eq!(st.kind, "task");
        assert!(micros(&st.started_at) <= micros(&st.finished_at), "{st:?}");
    }
    assert_eq!(step(&s, "charge").depends_on, vec!["reserve".to_string()]);
    let result = to_json(s.result.as_ref().expect("a result"));
    assert_eq!(result["steps"]["reserve"]["done"], json!("seq-reserve"));
    assert_eq!(result["steps"]["ship"]["done"], json!("seq-ship"));

    // A step task knows its workflow.
    let child = status(&mut client, &s.steps[0].task_id).await;
    assert_eq!(child.parent_id, id);
    assert_eq!(
        child.labels.get("workflow_step").map(String::as_str),
        Some("order-42:reserve")
    );
    assert_eq!(
        (
            child.max_attempts,
            status(&mut client, &s.steps[1].task_id).await.max_attempts
        ),
        (1, 3)
    );

    // One event per step transition: consecutive events never move two
    // steps at once, and every step was seen running, then completed.
    let mut seen: Vec<(String, pb::StepState)> = Vec::new();
    let mut prev: Option<Vec<(String, pb::StepState)>> = None;
    for e in &events {
        let cur = step_states(e.status.as_ref().expect("a status"));
        if let Some(p) = &prev {
            if p.len() == cur.len() {
                let moved = p.iter().zip(&cur).filter(|(a, b)| a.1 != b.1).count();
                assert!(
                    moved <= 1,
                    "one event moved {moved} steps: {p:?} -> {cur:?}"
                );
            }
        }
        for st in &cur {
            if !seen.contains(st) {
                seen.push(st.clone());
            }
        }
        prev = Some(cur);
    }
    for id in ["reserve", "charge", "ship"] {
        let running = seen
            .iter()
            .position(|s| *s == (id.to_string(), pb::StepState::Running));
        let done = seen
            .iter()
            .position(|s| *s == (id.to_string(), pb::StepState::Completed));
        assert!(
            matches!((running, done), (Some(r), Some(d)) if r < d),
            "step {id}: running then completed, in events: {seen:?}"
        );
    }
    assert!(
        events
            .iter()
            .filter(|e| e.kind == pb::TaskEventKind::Updated as i32)
            .count()
            >= 7,
        "init + 3 starts + 3 completions are UPDATED events"
    );

    // The log tells the story in order.
    let lines = logs(&mut client, &id).await;
    assert_log_order(
        &lines,
        &[
            &["scheduled"],
            &["workflow order v1 started", "3 steps"],
            &["step reserve started", &s.steps[0].task_id],
            &["step reserve completed"],
            &["step charge started"],
            &["step charge completed"],
            &["step ship started"],
            &["step ship completed"],
            &["workflow completed"],
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dag_workflow_runs_independent_branches_in_parallel() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let calls = Calls::default();
    // The two branches each wait until both have started: they complete
    // only if they really overlap.
    let started = Arc::new(AtomicUsize::new(0));
    let both = Arc::new(Notify::new());
    let mut b = ok_handlers(
        Worker::builder(&server.url).concurrency(8),
        &calls,
        &["dag-a", "dag-d"],
    );
    for name in ["dag-b", "dag-c"] {
        let (calls, started, both) = (calls.clone(), started.clone(), both.clone());
        b = b.handler(name, move |ctx: TaskContext| {
            let (calls, started, both) = (calls.clone(), started.clone(), both.clone());
            async move {
                let i = calls.start(&ctx);
                started.fetch_add(1, Ordering::SeqCst);
                both.notify_waiters();
                let deadline = Instant::now() + LONG;
                while started.load(Ordering::SeqCst) < 2 {
                    let notified = both.notified();
                    if started.load(Ordering::SeqCst) >= 2 {
                        break;
                    }
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(HandlerError::fatal("the other branch never started"));
                    }
                }
                calls.end(i);
                Ok(json!({ "branch": ctx.name() }))
            }
        });
    }
    let (_worker, _) = spawn_worker(b.build()).await;
    register(
        &mut client,
        r#"
name = "fan"
[[steps]]
id = "a"
task = "dag-a"
[[steps]]
id = "b"
task = "dag-b"
depends_on = ["a"]
[[steps]]
id = "c"
task = "dag-c"
depends_on = ["a"]
[[steps]]
id = "d"
task = "dag-d"
depends_on = ["b", "c"]
input = { left = "{{steps.b.output.branch}}", right = "{{steps.c.output.branch}}", root = "{{steps.a.output.done}}" }
"#,
    )
    .await;
    let id = schedule(&mut client, workflow("fan", vec![], "")).await;
    let s = wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;

    let (bcall, ccall) = (&calls.named("dag-b")[0], &calls.named("dag-c")[0]);
    let (b_end, c_end) = (bcall.ended.expect("b ended"), ccall.ended.expect("c ended"));
    assert!(
        bcall.started < c_end && ccall.started < b_end,
        "branches b and c overlap: {bcall:?} {ccall:?}"
    );
    let a_end = calls.named("dag-a")[0].ended.expect("a ended");
    let d = &calls.named("dag-d")[0];
    assert!(
        a_end <= bcall.started && a_end <= ccall.started,
        "b and c wait for a"
    );
    assert!(
        d.started >= b_end && d.started >= c_end,
        "d waits for b and c"
    );
    assert_eq!(
        d.payload,
        json!({ "left": "dag-b", "right": "dag-c", "root": "dag-a" })
    );
    // The default workflow id is the task id.
    assert_eq!(d.key, format!("{id}:d:1"));
    assert_eq!(
        step(&s, "d").depends_on,
        vec!["b".to_string(), "c".to_string()]
    );
}

// ---------------------------------------------------------------------------
// Failure, cancel and compensation.
// ---------------------------------------------------------------------------

const SAGA: &str = r#"
name = "saga"
[[steps]]
id = "s1"
task = "saga-1"
compensate = { task = "undo-1", input = { undo = "{{steps.s1.output.done}}" } }
[[steps]]
id = "s2"
task = "saga-2"
[[steps]]
id = "s3"
task = "saga-3"
compensate = { task = "undo-3" }
[[steps]]
id = "s4"
task = "saga-4"
[[steps]]
id = "s5"
task = "saga-5"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_compensates_the_completed_steps_in_reverse_order() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let calls = Calls::default();
    let b = ok_handlers(
        Worker::builder(&server.url),
        &calls,
        &["saga-1", "saga-2", "saga-3", "saga-5", "undo-1", "undo-3"],
    );
    let b = failing_handler(b, &calls, "saga-4", "card declined");
    let (_worker, _) = spawn_worker(b.build()).await;
    register(&mut client, SAGA).await;

    let mut watch = live_watch(&mut client, "saga").await;
    let id = schedule(
        &mut client,
        workflow("saga", vec![json!({ "n": 1 })], "saga-1"),
    )
    .await;
    let events = events_until_final(&mut watch, &id).await;
    let s = wait_state(&mut client, &id, pb::TaskState::Compensated, LONG).await;

    // Compensations ran after the failure, latest completed step first; s2
    // has none, s5 never ran.
    assert_eq!(
        calls.names(),
        ["saga-1", "saga-2", "saga-3", "saga-4", "undo-3", "undo-1"]
    );
    assert_eq!(
        calls.named("undo-1")[0].payload,
        json!({ "undo": "saga-1" })
    );
    assert_eq!(
        calls.named("undo-3")[0].payload["output"]["done"],
        json!("saga-3")
    );
    assert_eq!(calls.named("undo-3")[0].key, "saga-1:s3:compensate:1");
    assert_eq!(
        step_states(&s),
        [
            ("s1".to_string(), pb::StepState::Compensated),
            ("s2".to_string(), pb::StepState::Completed),
            ("s3".to_string(), pb::StepState::Compensated),
            ("s4".to_string(), pb::StepState::Failed),
            ("s5".to_string(), pb::StepState::Skipped),
        ]
    );
    assert!(!step(&s, "s3").compensation_task_id.is_empty());
    let s4 = step(&s, "s4");
    assert_eq!(
        s4.error.as_ref().map(|e| e.message.as_str()),
        Some("card declined")
    );
    let err = s.last_error.as_ref().expect("the failing step's error");
    assert_eq!(
        (err.message.as_str(), err.kind.as_str()),
        ("card declined", "BusinessError")
    );

    // The task went through COMPENSATING.
    assert!(
        events.iter().any(|e| e
            .status
            .as_ref()
            .is_some_and(|st| state(st) == pb::TaskState::Compensating)),
        "a COMPENSATING event"
    );
    let lines = logs(&mut client, &id).await;
    assert_log_order(
        &lines,
        &[
            &["step s3 completed"],
            &["step s4 failed", "card declined"],
            &["steps skipped: s5"],
            &["compensating"],
            &["compensating step s3", "undo-3"],
            &["step s3 compensated"],
            &["compensating step s1", "undo-1"],
            &["step s1 compensated"],
            &["workflow compensated", "s4 failed", "undone s3, s1"],
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_run_stops_the_running_step_and_compensates() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let calls = Calls::default();
    let b = ok_handlers(
        Worker::builder(&server.url),
        &calls,
        &["cx-1", "cx-undo", "cx-3"],
    );
    let b = blocking_handler(b, &calls, "cx-2");
    let (_worker, _) = spawn_worker(b.build()).await;
    register(
        &mut client,
        r#"
name = "cx"
[[steps]]
id = "one"
task = "cx-1"
compensate = { task = "cx-undo" }
[[steps]]
id = "two"
task = "cx-2"
compensate = { task = "cx-undo" }
[[steps]]
id = "three"
task = "cx-3"
"#,
    )
    .await;

    // CancelTask.
    let id = schedule(&mut client, workflow("cx", vec![], "")).await;
    calls.wait_named("cx-2", 1).await;
    let r = client
        .cancel_task(pb::CancelTaskRequest {
            task_id: id.clone(),
            reason: "customer changed their mind".into(),
            force: false,
        })
        .await
        .expect("CancelTask")
        .into_inner();
    assert_eq!(r.outcome, pb::CancelOutcome::CancelRequested as i32);
    let s = wait_state(&mut client, &id, pb::TaskState::Compensated, LONG).await;
    assert_eq!(
        step_states(&s),
        [
            ("one".to_string(), pb::StepState::Compensated),
            ("two".to_string(), pb::StepState::Cancelled),
            ("three".to_string(), pb::StepState::Skipped),
        ]
    );
    // The running step's worker was told to stop; only the completed step
    // was undone.
    assert!(
        calls.named("cx-2")[0].ended.is_some(),
        "cx-2 saw its cancel"
    );
    assert_eq!(calls.named("cx-undo").len(), 1);
    assert_eq!(
        calls.named("cx-undo")[0].step,
        format!("{id}:one:compensate")
    );
    let step_two = status(&mut client, &step(&s, "two").task_id).await;
    assert_eq!(state(&step_two), pb::TaskState::Cancelled);
    let lines = logs(&mut client, &id).await;
    assert_log_order(
        &lines,
        &[
            &["cancelled", "customer changed their mind"],
            &["stopping running steps: two"],
            &["step two cancelled"],
            &["step one compensated"],
            &["workflow compensated", "cancelled"],
        ],
    );

    // Disconnect of the workflow's owner does the same.
    let mut req = workflow("cx", vec![], "");
    req.options = Some(pb::TaskOptions {
        user_id: "user-7".into(),
        ..Default::default()
    });
    let id2 = schedule(&mut client, req).await;
    calls.wait_named("cx-2", 2).await;
    let r = client
        .disconnect(pb::DisconnectRequest {
            user_id: "user-7".into(),
            session_id: String::new(),
            reason: "logout".into(),
        })
        .await
        .expect("Disconnect")
        .into_inner();
    assert_eq!(
        r.receipts.len(),
        1,
        "only the workflow belongs to the user: {r:?}"
    );
    let s2 = wait_state(&mut client, &id2, pb::TaskState::Compensated, LONG).await;
    assert_eq!(sstate(step(&s2, "one")), pb::StepState::Compensated);
    assert_eq!(sstate(step(&s2, "two")), pb::StepState::Cancelled);

    // Nothing completed yet: a cancel ends the workflow CANCELLED.
    register(
        &mut client,
        "name = \"cx-early\"\n[[steps]]\nid = \"only\"\ntask = \"cx-2\"\ncompensate = { task = \"cx-undo\" }\n",
    )
    .await;
    let id3 = schedule(&mut client, workflow("cx-early", vec![], "")).await;
    calls.wait_named("cx-2", 3).await;
    client
        .cancel_task(pb::CancelTaskRequest {
            task_id: id3.clone(),
            reason: String::new(),
            force: false,
        })
        .await
        .expect("CancelTask");
    let s3 = wait_state(&mut client, &id3, pb::TaskState::Cancelled, LONG).await;
    assert_eq!(sstate(step(&s3, "only")), pb::StepState::Cancelled);
    assert_eq!(calls.named("cx-undo").len(), 2, "nothing more to undo");

    // A forced cancel ends the workflow at once and stops its running step;
    // nothing is compensated.
    let id4 = schedule(&mut client, workflow("cx", vec![], "")).await;
    calls.wait_named("cx-2", 4).await;
    let s4 = wait_step(&mut client, &id4, "two", pb::StepState::Running).await;
    let r = client
        .cancel_task(pb::CancelTaskRequest {
            task_id: id4.clone(),
            reason: "terminate".into(),
            force: true,
        })
        .await
        .expect("CancelTask")
        .into_inner();
    assert_eq!(r.outcome, pb::CancelOutcome::Cancelled as i32);
    // The final status shows no step still running: the one in flight is
    // stopped, the completed one stays completed.
    let after = r.status.expect("status");
    assert_eq!(sstate(step(&after, "two")), pb::StepState::Cancelled);
    assert_eq!(sstate(step(&after, "one")), pb::StepState::Completed);
    let two = step(&s4, "two").task_id.clone();
    wait_state(&mut client, &two, pb::TaskState::Cancelled, LONG).await;
    let later = wait_state(&mut client, &id4, pb::TaskState::Cancelled, LONG).await;
    assert_eq!(sstate(step(&later, "two")), pb::StepState::Cancelled);
    assert_eq!(
        calls.named("cx-undo").len(),
        2,
        "a forced cancel compensates nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_that_fails_fails_the_workflow_and_names_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let calls = Calls::default();
    let b = ok_handlers(
        Worker::builder(&server.url),
        &calls,
        &["cf-1", "cf-2", "cf-undo-1"],
    );
    let b = failing_handler(b, &calls, "cf-3", "out of stock");
    let b = failing_handler(b, &calls, "cf-undo-2", "refund service down");
    let (_worker, _) = spawn_worker(b.build()).await;
    register(
        &mut client,
        r#"
name = "cf"
[[steps]]
id = "book"
task = "cf-1"
compensate = { task = "cf-undo-1" }
[[steps]]
id = "pay"
task = "cf-2"
compensate = { task = "cf-undo-2", retry = { attempts = 2, backoff = "fixed", base = "50ms" } }
[[steps]]
id = "ship"
task = "cf-3"
"#,
    )
    .await;
    let id = schedule(&mut client, workflow("cf", vec![], "")).await;
    let s = wait_state(&mut client, &id, pb::TaskState::Failed, LONG).await;
    let err = s.last_error.as_ref().expect("an error");
    assert!(
        err.message
            .contains("compensation of step pay (task cf-undo-2) failed")
            && err.message.contains("refund service down"),
        "{err:?}"
    );
    assert_eq!(err.kind, "compensation_failed");
    assert_eq!(
        step_states(&s),
        [
            ("book".to_string(), pb::StepState::Completed),
            ("pay".to_string(), pb::StepState::CompensationFailed),
            ("ship".to_string(), pb::StepState::Failed),
        ]
    );
    // Fatal errors are not retried; the later compensation never ran.
    assert_eq!(calls.named("cf-undo-2").len(), 1);
    assert!(calls.named("cf-undo-1").is_empty());
}

// ---------------------------------------------------------------------------
// Signals, timers, the workflow timeout.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_step_completes_with_the_signal_or_fails_on_its_timeout() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let calls = Calls::default();
    let gate = Gate::default();
    let mut b = ok_handlers(
        Worker::builder(&server.url),
        &calls,
        &["sg-finish", "sg-undo"],
    );
    {
        let (calls, gate) = (calls.clone(), gate.clone());
        b = b.handler("sg-prepare", move |ctx: TaskContext| {
            let (calls, gate) = (calls.clone(), gate.clone());
            async move {
                let i = calls.start(&ctx);
                if ctx.payload()["wait"] == json!(true) {
                    gate.wait().await;
                }
                calls.end(i);
                Ok(json!({ "prepared": true }))
            }
        });
    }
    let (_worker, _) = spawn_worker(b.build()).await;
    register(
        &mut client,
        r#"
name = "approval"
[[steps]]
id = "prepare"
task = "sg-prepare"
input = { wait = "{{args.0.wait}}" }
compensate = { task = "sg-undo" }
[[steps]]
id = "approve"
signal = "approval"
timeout = "1h"
[[steps]]
id = "finish"
task = "sg-finish"
input = { approved_by = "{{steps.approve.output.by}}" }
"#,
    )
    .await;

    // Answered while waiting.
    let id = schedule(
        &mut client,
        workflow("approval", vec![json!({ "wait": false })], ""),
    )
    .await;
    wait_step(&mut client, &id, "approve", pb::StepState::Running).await;
    let r = client
        .signal_task(pb::SignalTaskRequest {
            task_id: id.clone(),
            signal: "approval".into(),
            payload: Some(payload(json!({ "by": "alice" }))),
        })
        .await
        .expect("SignalTask")
        .into_inner();
    assert_eq!(r.status.map(|s| s.id), Some(id.clone()));
    let s = wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;
    assert_eq!(
        step(&s, "approve").output.as_ref().map(to_json),
        Some(json!({ "by": "alice" }))
    );
    assert_eq!(step(&s, "approve").kind, "signal");
    assert_eq!(
        calls.named("sg-finish")[0].payload,
        json!({ "approved_by": "alice" })
    );
    assert_log_order(
        &logs(&mut client, &id).await,
        &[
            &["step approve started", "waiting for signal \"approval\""],
            &["signal \"approval\" received"],
            &["step approve completed"],
            &["step finish started"],
        ],
    );

    // Sent before the step starts: kept until the step takes it.
    let id = schedule(
        &mut client,
        workflow("approval", vec![json!({ "wait": true })], ""),
    )
    .await;
    calls.wait_named("sg-prepare", 2).await;
    client
        .signal_task(pb::SignalTaskRequest {
            task_id: id.clone(),
            signal: "approval".into(),
            payload: Some(payload(json!({ "by": "bob" }))),
        })
        .await
        .expect("SignalTask");
    gate.open();
    let s = wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;
    assert_eq!(
        step(&s, "approve").output.as_ref().map(to_json),
        Some(json!({ "by": "bob" }))
    );
    assert!(find_line(&logs(&mut client, &id).await, 0, &["had already arrived"]).is_some());

    // Not answered in time: the step fails and the workflow compensates.
    register(
        &mut client,
        r#"
name = "approval-short"
[[steps]]
id = "prepare"
task = "sg-prepare"
compensate = { task = "sg-undo" }
[[steps]]
id = "approve"
signal = "approval"
timeout = "300ms"
[[steps]]
id = "finish"
task = "sg-finish"
"#,
    )
    .await;
    let id = schedule(&mut client, workflow("approval-short", vec![], "")).await;
    let s = wait_state(&mut client, &id, pb::TaskState::Compensated, LONG).await;
    let approve = step(&s, "approve");
    assert_eq!(sstate(approve), pb::StepState::Failed);
    assert_eq!(
        approve.error.as_ref().map(|e| e.kind.as_str()),
        Some("signal_timeout")
    );
    assert!(
        micros(&approve.finished_at) - micros(&approve.started_at) >= 300_000,
        "{approve:?}"
    );
    assert_eq!(sstate(step(&s, "prepare")), pb::StepState::Compensated);
    assert_eq!(sstate(step(&s, "finish")), pb::StepState::Skipped);
    assert_eq!(
        s.last_error.as_ref().map(|e| e.kind.as_str()),
        Some("signal_timeout")
    );

    // on_timeout = "continue": the workflow goes on without it.
    register(
        &mut client,
        "name = \"approval-optional\"\n[[steps]]\nid = \"approve\"\nsignal = \"approval\"\ntimeout = \"200ms\"\non_timeout = \"continue\"\n[[steps]]\nid = \"finish\"\ntask = \"sg-finish\"\n",
    )
    .await;
    let id = schedule(&mut client, workflow("approval-optional", vec![], "")).await;
    let s = wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;
    assert_eq!(sstate(step(&s, "approve")), pb::StepState::Completed);
    assert!(
        step(&s, "approve").output.is_none()
            || step(&s, "approve").output.as_ref().map(to_json) == Some(Value::Null)
    );

    // Signals go only to workflows.
    let plain = schedule(&mut client, simple("sg-finish", json!({}))).await;
    let err = client
        .signal_task(pb::SignalTaskRequest {
            task_id: plain,
            signal: "approval".into(),
            payload: None,
        })
        .await
        .expect_err("not a workflow");
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_step_waits_its_duration_and_a_workflow_timeout_compensates() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let calls = Calls::default();
    let b = ok_handlers(
        Worker::builder(&server.url),
        &calls,
        &["tm-a", "tm-b", "tm-undo"],
    );
    let b = blocking_handler(b, &calls, "tm-slow");
    let (_worker, _) = spawn_worker(b.build()).await;
    register(
        &mut client,
        "name = \"timer\"\n[[steps]]\nid = \"a\"\ntask = \"tm-a\"\n[[steps]]\nid = \"pause\"\ntimer = \"400ms\"\n[[steps]]\nid = \"b\"\ntask = \"tm-b\"\n",
    )
    .await;
    let id = schedule(&mut client, workflow("timer", vec![], "")).await;
    let s = wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;
    let pause = step(&s, "pause");
    assert_eq!(pause.kind, "timer");
    assert!(
        micros(&pause.finished_at) - micros(&pause.started_at) >= 400_000,
        "{pause:?}"
    );
    let (a_end, b_start) = (
        calls.named("tm-a")[0].ended.expect("a ended"),
        calls.named("tm-b")[0].started,
    );
    assert!(
        b_start - a_end >= Duration::from_millis(400),
        "b waited for the timer"
    );
    assert_log_order(
        &logs(&mut client, &id).await,
        &[
            &["step pause started", "timer of 400ms"],
            &["step pause completed", "timer fired"],
            &["step b started"],
        ],
    );

    // The whole workflow's timeout.
    register(
        &mut client,
        "name = \"deadline\"\ntimeout = \"500ms\"\n[[steps]]\nid = \"a\"\ntask = \"tm-a\"\ncompensate = { task = \"tm-undo\" }\n[[steps]]\nid = \"slow\"\ntask = \"tm-slow\"\n",
    )
    .await;
    let id = schedule(&mut client, workflow("deadline", vec![], "")).await;
    let s = wait_state(&mut client, &id, pb::TaskState::Compensated, LONG).await;
    assert_eq!(
        s.last_error.as_ref().map(|e| e.kind.as_str()),
        Some("workflow_timeout")
    );
    assert_eq!(sstate(step(&s, "a")), pb::StepState::Compensated);
    assert_eq!(sstate(step(&s, "slow")), pb::StepState::Cancelled);
    assert!(find_line(&logs(&mut client, &id).await, 0, &["timed out after 500ms"]).is_some());
}

// ---------------------------------------------------------------------------
// Durability.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_survives_a_sigkill_and_no_completed_step_runs_again() {
    init_tracing();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&server.url).await;
    register(
        &mut client,
        r#"
name = "five"
[[steps]]
id = "s1"
task = "k-1"
[[steps]]
id = "s2"
task = "k-2"
[[steps]]
id = "s3"
task = "k-3"
[[steps]]
id = "s4"
task = "k-4"
[[steps]]
id = "s5"
task = "k-5"
"#,
    )
    .await;

    // The worker records (step, idempotency key) of every call; the first
    // call of step 3 hangs until its connection breaks.
    let calls = Calls::default();
    let mut b = ok_handlers(
        Worker::builder(&server.url).name("kill9"),
        &calls,
        &["k-1", "k-2", "k-4", "k-5"],
    );
    {
        let calls = calls.clone();
        b = b.handler("k-3", move |ctx: TaskContext| {
            let calls = calls.clone();
            async move {
                let i = calls.start(&ctx);
                if i == calls
                    .all()
                    .iter()
                    .position(|c| c.name == "k-3")
                    .unwrap_or(i)
                {
                    ctx.cancelled().await;
                    return Err(HandlerError::retryable("connection lost"));
                }
                calls.end(i);
                Ok(json!({ "done": "k-3" }))
            }
        });
    }
    let worker = b.build().spawn();
    within("the worker to register", LONG, worker.wait_registered()).await;

    let id = schedule(
        &mut client,
        workflow("five", vec![json!({ "n": 5 })], "five-1"),
    )
    .await;
    calls.wait_named("k-3", 1).await;
    wait_step(&mut client, &id, "s3", pb::StepState::Running).await;
    // What is promised: a step whose completion is durable never runs
    // again. A worker's report is answered at once and committed in the
    // next group commit; ListTasks waits until everything before it is
    // durable (on PostgreSQL under load, a commit can take tens of ms).
    client
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .expect("ListTasks");
    server.kill9().await;

    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&server.url).await;
    let s = wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;

    let mut runs: HashMap<String, Vec<String>> = HashMap::new();
    for c in calls.all() {
        runs.entry(c.step.clone()).or_default().push(c.key.clone());
    }
    for n in [1, 2, 4, 5] {
        let keys = &runs[&format!("five-1:s{n}")];
        assert_eq!(
            keys,
            &vec![format!("five-1:s{n}:1")],
            "step s{n} ran exactly once"
        );
    }
    let s3 = &runs["five-1:s3"];
    assert!(
        (1..=2).contains(&s3.len()) && s3.iter().all(|k| k == "five-1:s3:1"),
        "the step in flight may run twice, with the same key: {s3:?}"
    );
    assert!(
        s.steps
            .iter()
            .all(|st| sstate(st) == pb::StepState::Completed),
        "{s:#?}"
    );
    let lines = logs(&mut client, &id).await;
    assert_log_order(
        &lines,
        &[
            &["step s2 completed"],
            &["step s3 started"],
            &["server restarted"],
            &["resumed", "completed: s1, s2", "in flight: s3"],
            &["step s3 completed"],
            &["step s5 completed"],
            &["workflow completed"],
        ],
    );
    worker.shutdown();
    let _ = within("the worker to stop", LONG, worker.join()).await;
}

// ---------------------------------------------------------------------------
// Definitions.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_are_invalid_arguments_that_name_the_step() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let cases = [
        (
            "cycle",
            "name = \"w\"\n[[steps]]\nid = \"a\"\ntask = \"t\"\ndepends_on = [\"b\"]\n[[steps]]\nid = \"b\"\ntask = \"t\"\ndepends_on = [\"a\"]\n",
            "dependency cycle",
        ),
        (
            "unknown dependency",
            "name = \"w\"\n[[steps]]\nid = \"a\"\ntask = \"t\"\ndepends_on = [\"ghost\"]\n",
            "step \"a\": depends on unknown step \"ghost\"",
        ),
        (
            "duplicate id",
            "name = \"w\"\n[[steps]]\nid = \"a\"\ntask = \"t\"\n[[steps]]\nid = \"a\"\ntask = \"u\"\n",
            "step \"a\": duplicate step id",
        ),
        (
            "bad duration",
            "name = \"w\"\n[[steps]]\nid = \"wait\"\ntimer = \"soon\"\n",
            "step \"wait\": timer: \"soon\" is not a duration",
        ),
        (
            "two kinds",
            "name = \"w\"\n[[steps]]\nid = \"x\"\ntask = \"t\"\nsignal = \"s\"\n",
            "step \"x\": needs exactly one of",
        ),
        (
            "unknown field",
            "name = \"w\"\n[[steps]]\nid = \"x\"\ntsak = \"t\"\n",
            "step \"x\": unknown field `tsak`",
        ),
        ("not TOML", "name = ", "not valid TOML"),
    ];
    for (case, text, want) in cases {
        let r = client
            .register_workflow(pb::RegisterWorkflowRequest {
                definition: text.into(),
                format: "toml".into(),
            })
            .await;
        let msg = r
            .as_ref()
            .err()
            .map(|s| s.message().to_string())
            .unwrap_or_default();
        assert_invalid(case, r, "definition");
        assert!(msg.contains(want), "{case}: wanted {want:?} in {msg:?}");
    }
    // JSON works too, and is the default format.
    let r = client
        .register_workflow(pb::RegisterWorkflowRequest {
            definition: r#"{"name":"j","steps":[{"id":"a","task":"t","timeout":"5x"}]}"#.into(),
            format: String::new(),
        })
        .await;
    assert_invalid("json", r, "definition");

    // An unknown workflow type is refused at schedule, naming the field,
    // and nothing is stored.
    let before = client
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .expect("ListTasks")
        .into_inner()
        .tasks
        .len();
    let r = client
        .schedule_task(workflow("nobody-registered-this", vec![], ""))
        .await;
    let msg = r
        .as_ref()
        .err()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert_invalid("unknown workflow type", r, "complex.workflow_type");
    assert!(msg.contains("nobody-registered-this"), "{msg}");
    let after = client
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .expect("ListTasks")
        .into_inner()
        .tasks
        .len();
    assert_eq!(before, after, "a refused task must not be stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definition_files_load_at_start_and_a_bad_one_stops_the_server() {
    // A good directory: its definitions are registered.
    let good = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        good.path().join("order.toml"),
        "name = \"from-file\"\n[[steps]]\nid = \"a\"\ntask = \"t\"\n",
    )
    .expect("write");
    std::fs::write(
        good.path().join("other.json"),
        r#"{"name":"from-json","steps":[{"id":"a","timer":"1s"}]}"#,
    )
    .expect("write");
    let dir_path = good.path().to_path_buf();
    let server = TestServer::start_with(move |c| c.workflows.dir = Some(dir_path)).await;
    let mut client = server.client().await;
    let list = client
        .list_workflows(pb::ListWorkflowsRequest {})
        .await
        .expect("ListWorkflows")
        .into_inner();
    let names: Vec<(&str, u32)> = list
        .workflows
        .iter()
        .map(|w| (w.name.as_str(), w.version))
        .collect();
    assert_eq!(names, [("from-file", 1), ("from-json", 1)]);
    let def: Value = serde_json::from_str(&list.workflows[0].definition_json).expect("JSON");
    assert_eq!(def["steps"][0]["task"], json!("t"));
    server.stop().await;

    // A bad file: run() refuses to start and names the file and the step.
    let bad = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        bad.path().join("broken.toml"),
        "name = \"broken\"\n[[steps]]\nid = \"ship\"\ntask = \"t\"\ndepends_on = [\"pack\"]\n",
    )
    .expect("write");
    let data = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(data.path());
    cfg.workflows.dir = Some(bad.path().to_path_buf());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let r = within(
        "run() to refuse to start",
        SHORT,
        switchyard::run(listener, cfg, std::future::pending()),
    )
    .await;
    let err = r
        .expect_err("a bad definition file stops the server")
        .to_string();
    assert!(
        err.contains("broken.toml") && err.contains("step \"ship\""),
        "{err}"
    );

    // And so does the binary, with a failure exit status.
    let out = within(
        "switchyard serve to exit",
        LONG,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--data-dir")
            .arg(data.path())
            .env("SWITCHYARD_WORKFLOWS__DIR", bad.path())
            .env("SWITCHYARD_LOG__FORMAT", "pretty")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run the binary");
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("broken.toml"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updated_definition_applies_to_new_runs_while_old_runs_finish_on_theirs() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let calls = Calls::default();
    let gate = Gate::default();
    let mut b = ok_handlers(Worker::builder(&server.url), &calls, &["up-a", "up-c"]);
    {
        let (calls, gate) = (calls.clone(), gate.clone());
        b = b.handler("up-b", move |ctx: TaskContext| {
            let (calls, gate) = (calls.clone(), gate.clone());
            async move {
                let i = calls.start(&ctx);
                gate.wait().await;
                calls.end(i);
                Ok(json!({}))
            }
        });
    }
    let (_worker, _) = spawn_worker(b.build()).await;
    let v1 = "name = \"evolving\"\n[[steps]]\nid = \"a\"\ntask = \"up-a\"\n[[steps]]\nid = \"b\"\ntask = \"up-b\"\n";
    let v2 = format!("{v1}[[steps]]\nid = \"c\"\ntask = \"up-c\"\n");
    assert_eq!(
        register(&mut client, v1).await,
        ("evolving".into(), 1, true)
    );
    let old = schedule(&mut client, workflow("evolving", vec![], "")).await;
    calls.wait_named("up-b", 1).await;

    assert_eq!(
        register(&mut client, &v2).await,
        ("evolving".into(), 2, true)
    );
    assert_eq!(
        register(&mut client, &v2).await,
        ("evolving".into(), 2, false),
        "an identical definition makes no new version"
    );
    let new = schedule(&mut client, workflow("evolving", vec![], "")).await;
    calls.wait_named("up-b", 2).await;
    gate.open();

    let s_old = wait_state(&mut client, &old, pb::TaskState::Completed, LONG).await;
    let s_new = wait_state(&mut client, &new, pb::TaskState::Completed, LONG).await;
    assert_eq!((s_old.workflow_version, s_old.steps.len()), (1, 2));
    assert_eq!((s_new.workflow_version, s_new.steps.len()), (2, 3));
    assert_eq!(calls.named("up-c").len(), 1, "only the new run has step c");
    let list = client
        .list_workflows(pb::ListWorkflowsRequest {})
        .await
        .expect("ListWorkflows")
        .into_inner();
    let w = list
        .workflows
        .iter()
        .find(|w| w.name == "evolving")
        .expect("listed");
    assert_eq!(w.version, 2);
}

// ---------------------------------------------------------------------------
// Webhook steps, through the INTEGRATION executor.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_step_calls_its_url_through_the_integration_executor() {
    // A receiver on loopback that records each POST and answers JSON.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = {
        let received = received.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let received = received.clone();
                async move {
                    received.lock().push(body);
                    axum::Json(json!({ "accepted": true, "ticket": "T-9" }))
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!("http://{}/hook", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let server = TestServer::start_with(|c| {
        c.webhook.allow_hosts = vec!["127.0.0.1".into()];
        c.webhook.local_address = Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    })
    .await;
    let mut client = server.client().await;
    let calls = Calls::default();
    let (_worker, _) =
        spawn_worker(ok_handlers(Worker::builder(&server.url), &calls, &["wh-after"]).build())
            .await;
    register(
        &mut client,
        &format!(
            r#"
name = "hooked"
[[steps]]
id = "notify"
webhook = {{ url = "{hook}", source = "github" }}
input = {{ order = "{{{{args.0}}}}" }}
[[steps]]
id = "after"
task = "wh-after"
input = {{ ticket = "{{{{steps.notify.output.body.ticket}}}}" }}
"#
        ),
    )
    .await;
    let id = schedule(
        &mut client,
        workflow("hooked", vec![json!({ "sku": "B-2" })], "hooked-1"),
    )
    .await;
    let s = wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;

    let got = received.lock().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["payload"], json!({ "order": { "sku": "B-2" } }));
    assert_eq!(
        got[0]["switchyard"]["labels"]["workflow_step"],
        json!("hooked-1:notify")
    );
    let notify = step(&s, "notify");
    assert_eq!(notify.kind, "webhook");
    let out = notify.output.as_ref().map(to_json).expect("an output");
    assert_eq!(
        (out["status"].clone(), out["body"]["ticket"].clone()),
        (json!(200), json!("T-9"))
    );
    let child = status(&mut client, &notify.task_id).await;
    assert_eq!(child.task_type, pb::TaskType::Integration as i32);
    assert_eq!(child.parent_id, id);
    assert_eq!(
        calls.named("wh-after")[0].payload,
        json!({ "ticket": "T-9" })
    );
}
