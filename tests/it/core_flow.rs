//! The life of a task on the embedded engine, driven over the network: the
//! happy path and its log, priority order, the immediate lane, retries with
//! backoff, failures, execution timeouts and cleanup tasks.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use switchyard::pb;
use switchyard::worker::{HandlerError, TaskContext, Worker};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_task_completes_with_its_result_and_its_log_tells_the_story() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (worker, worker_id) = spawn_worker(
        Worker::builder(&server.url)
            .name("happy")
            .concurrency(2)
            .handler("greet", |ctx: TaskContext| async move {
                ctx.log("info", "greeting in progress");
                ctx.progress(50.0, "half way");
                Ok(json!({ "hello": ctx.payload()["who"].clone() }))
            })
            .build(),
    )
    .await;

    let resp = client
        .schedule_task(simple("greet", json!({ "who": "world" })))
        .await
        .expect("ScheduleTask")
        .into_inner();
    assert!(!resp.existing);
    let id = resp.task_id.clone();
    uuid_v7(&id);
    let first = resp.status.expect("a status in the reply");
    assert_eq!(first.id, id);
    assert_eq!(first.name, "greet");
    assert_eq!(first.task_type, pb::TaskType::Simple as i32);

    let s = wait_state(&mut client, &id, pb::TaskState::Completed, SHORT).await;
    assert_eq!(
        s.result.as_ref().map(to_json),
        Some(json!({ "hello": "world" }))
    );
    assert_eq!(s.attempt, 1);
    assert_eq!(s.max_attempts, 1);
    assert_eq!(s.progress, 100.0);
    assert!(s.last_error.is_none(), "{s:?}");
    assert!(
        s.worker_id.is_empty(),
        "a finished task holds no worker: {s:?}"
    );
    assert_eq!(s.source, pb::TaskSource::Embedded as i32);
    let (created, started, finished) = (
        micros(&s.created_at),
        micros(&s.started_at),
        micros(&s.finished_at),
    );
    assert!(created <= started && started <= finished, "{s:?}");

    // The payload comes back as scheduled.
    let full = client
        .get_task_status(pb::GetTaskStatusRequest {
            task_id: id.clone(),
        })
        .await
        .expect("GetTaskStatus")
        .into_inner();
    assert_eq!(
        full.payload.as_ref().map(struct_json),
        Some(json!({ "who": "world" }))
    );

    // The log: scheduled, attempt 1 started (on this worker), the worker's
    // own line, completed; in this order, with increasing line numbers.
    let lines = logs(&mut client, &id).await;
    let text = log_text(&lines);
    let scheduled = find_line(&lines, 0, &["scheduled"]).unwrap_or_else(|| panic!("{text}"));
    let started = find_line(&lines, scheduled + 1, &["attempt 1 started", &worker_id])
        .unwrap_or_else(|| panic!("no start line naming {worker_id} after scheduled:\n{text}"));
    let own = find_line(&lines, started + 1, &["greeting in progress"])
        .unwrap_or_else(|| panic!("no worker line after the start:\n{text}"));
    let done = find_line(&lines, own + 1, &["attempt 1 completed"])
        .unwrap_or_else(|| panic!("no completion after the worker line:\n{text}"));
    assert_eq!(lines[scheduled].source, pb::LogSource::System as i32);
    assert_eq!(lines[own].source, pb::LogSource::Worker as i32);
    assert_eq!(lines[started].attempt, 1);
    assert_eq!(lines[done].attempt, 1);
    assert!(
        lines.windows(2).all(|w| w[0].line < w[1].line),
        "line numbers must increase:\n{text}"
    );
    assert!(
        lines
            .windows(2)
            .all(|w| micros(&w[0].time) <= micros(&w[1].time)),
        "times must not go backwards:\n{text}"
    );

    worker.shutdown();
    within("the worker to stop", LONG, worker.join())
        .await
        .expect("a clean worker stop");
    server.stop().await;
}

fn uuid_v7(id: &str) {
    let u = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id:?} is not a UUID: {e}"));
    assert_eq!(u.get_version_num(), 7, "{id} is not a UUIDv7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_runs_first_then_older_first() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // No worker yet: everything queues.
    let order = [
        ("low", -5),
        ("zero-old", 0),
        ("top-old", 10),
        ("three-old", 3),
        ("zero-new", 0),
        ("three-new", 3),
        ("top-new", 10),
        ("bottom", -1000),
        ("ceiling", 1000),
    ];
    let mut ids = Vec::new();
    for (label, priority) in order {
        let id = schedule(
            &mut client,
            simple_with(
                "prio",
                json!({ "label": label }),
                pb::TaskOptions {
                    priority,
                    ..Default::default()
                },
            ),
        )
        .await;
        ids.push(id);
    }
    let waiting = status(&mut client, &ids[0]).await;
    assert_eq!(waiting.state, pb::TaskState::Pending as i32);
    assert_eq!(
        waiting.waiting_reason,
        pb::WaitingReason::NoWorker as i32,
        "{waiting:?}"
    );
    assert_eq!(waiting.priority, -5);

    let journal = Journal::default();
    let j = journal.clone();
    let (_worker, _) = spawn_worker(
        Worker::builder(&server.url)
            .concurrency(1)
            .immediate_slots(0)
            .handler("prio", move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    j.record(&ctx);
                    Ok(json!(null))
                }
            })
            .build(),
    )
    .await;
    for id in &ids {
        wait_state(&mut client, id, pb::TaskState::Completed, SHORT).await;
    }
    let handled: Vec<String> = journal
        .entries()
        .iter()
        .map(|e| e.payload["label"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        handled,
        [
            "ceiling",
            "top-old",
            "top-new",
            "three-old",
            "three-new",
            "zero-old",
            "zero-new",
            "low",
            "bottom"
        ]
    );
}

/// A handler for the lane tests: `{"long": true}` tasks wait for the gate;
/// others return at once. Every call is recorded.
fn lane_worker(
    url: &str,
    slots: u32,
    immediate_slots: u32,
    journal: &Journal,
    gate: &Gate,
) -> Worker {
    let (j, g) = (journal.clone(), gate.clone());
    Worker::builder(url)
        .concurrency(slots)
        .immediate_slots(immediate_slots)
        .handler("lane", move |ctx: TaskContext| {
            let (j, g) = (j.clone(), g.clone());
            async move {
                j.record(&ctx);
                if ctx.payload()["long"] == json!(true) {
                    tokio::select! {
                        _ = g.wait() => {}
                        _ = ctx.cancelled() => return Err(HandlerError::retryable("cancelled")),
                    }
                }
                Ok(json!({ "immediate": ctx.immediate() }))
            }
        })
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_task_starts_at_once_while_every_normal_slot_is_busy() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (journal, gate) = (Journal::default(), Gate::default());
    let (_worker, _) = spawn_worker(lane_worker(&server.url, 1, 1, &journal, &gate)).await;

    let long = schedule(&mut client, simple("lane", json!({ "long": true, "n": 0 }))).await;
    wait_state(&mut client, &long, pb::TaskState::Running, SHORT).await;
    let mut queued = Vec::new();
    for n in 1..=2 {
        queued.push(schedule(&mut client, simple("lane", json!({ "n": n }))).await);
    }
    for id in &queued {
        let s = status(&mut client, id).await;
        assert_eq!(s.state, pb::TaskState::Pending as i32, "{s:?}");
        assert_eq!(
            s.waiting_reason,
            pb::WaitingReason::CapacityFull as i32,
            "a normal task behind a busy slot waits for capacity: {s:?}"
        );
    }

    let imm = schedule(
        &mut client,
        simple_with(
            "lane",
            json!({ "n": "imm" }),
            pb::TaskOptions {
                immediate: true,
                ..Default::default()
            },
        ),
    )
    .await;
    let done = wait_state(&mut client, &imm, pb::TaskState::Completed, SHORT).await;
    assert!(done.immediate);
    assert_eq!(
        done.result.as_ref().map(to_json),
        Some(json!({ "immediate": true }))
    );
    // It did not wait: the long task still holds the normal slot, and the
    // normal tasks queued before it are still waiting.
    assert_eq!(
        status(&mut client, &long).await.state,
        pb::TaskState::Running as i32
    );
    for id in &queued {
        assert_eq!(
            status(&mut client, id).await.state,
            pb::TaskState::Pending as i32
        );
    }

    gate.open();
    for id in queued.iter().chain([&long]) {
        wait_state(&mut client, id, pb::TaskState::Completed, SHORT).await;
    }
    let seen: Vec<String> = journal
        .entries()
        .iter()
        .map(|e| e.payload["n"].to_string())
        .collect();
    assert_eq!(seen, ["0", "\"imm\"", "1", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_task_goes_ahead_of_queued_normal_tasks_without_reserved_slots() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (journal, gate) = (Journal::default(), Gate::default());
    let (_worker, _) = spawn_worker(lane_worker(&server.url, 1, 0, &journal, &gate)).await;

    let long = schedule(&mut client, simple("lane", json!({ "long": true, "n": 0 }))).await;
    wait_state(&mut client, &long, pb::TaskState::Running, SHORT).await;
    let mut ids = vec![long];
    for n in 1..=2 {
        ids.push(
            schedule(
                &mut client,
                simple_with(
                    "lane",
                    json!({ "n": n }),
                    pb::TaskOptions {
                        // Even a high normal priority does not beat the lane.
                        priority: 1000,
                        ..Default::default()
                    },
                ),
            )
            .await,
        );
    }
    ids.push(
        schedule(
            &mut client,
            simple_with(
                "lane",
                json!({ "n": "imm" }),
                pb::TaskOptions {
                    immediate: true,
                    priority: -1000,
                    ..Default::default()
                },
            ),
        )
        .await,
    );
    gate.open();
    for id in &ids {
        wait_state(&mut client, id, pb::TaskState::Completed, SHORT).await;
    }
    let seen: Vec<String> = journal
        .entries()
        .iter()
        .map(|e| e.payload["n"].to_string())
        .collect();
    assert_eq!(seen, ["0", "\"imm\"", "1", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_after_the_backoff_until_success() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let journal = Journal::default();
    let j = journal.clone();
    let (_worker, _) = spawn_worker(
        Worker::builder(&server.url)
            .handler("flaky", move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    j.record(&ctx);
                    if ctx.attempt() < 3 {
                        return Err(HandlerError::retryable(format!(
                            "flaked on {}",
                            ctx.attempt()
                        ))
                        .with_kind("flake"));
                    }
                    Ok(json!({ "attempt": ctx.attempt() }))
                }
            })
            .build(),
    )
    .await;

    let backoff = Duration::from_millis(200);
    let id = schedule(
        &mut client,
        simple_with(
            "flaky",
            json!({}),
            pb::TaskOptions {
                attempts: 3,
                backoff: fixed_backoff(backoff),
                ..Default::default()
            },
        ),
    )
    .await;
    let s = wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;
    assert_eq!(s.attempt, 3);
    assert_eq!(s.max_attempts, 3);
    assert_eq!(
        s.result.as_ref().map(to_json),
        Some(json!({ "attempt": 3 }))
    );
    // Completed: the earlier attempts' errors are not its outcome; its log
    // keeps them.
    assert!(s.last_error.is_none(), "{:?}", s.last_error);
    let lines = log_messages(&mut client, &id).await;
    for attempt in [1, 2] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("attempt {attempt} of 3 failed"))),
            "{lines:?}"
        );
    }

    // The handler ran three times, attempts 1, 2, 3, each at least the
    // backoff after the previous one.
    let calls = journal.for_task(&id);
    assert_eq!(
        calls.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for w in calls.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(
            gap >= backoff,
            "attempt {} started {gap:?} after the previous one",
            w[1].attempt
        );
        assert!(
            gap < Duration::from_secs(5),
            "backoff far too long: {gap:?}"
        );
    }

    // The log says so, and the server's own timestamps respect the backoff.
    let lines = logs(&mut client, &id).await;
    let text = log_text(&lines);
    let mut from = 0;
    for attempt in 1..=2u32 {
        let failed = find_line(
            &lines,
            from,
            &[&format!("attempt {attempt} of 3 failed"), "retrying"],
        )
        .unwrap_or_else(|| panic!("no retrying line for attempt {attempt}:\n{text}"));
        assert_eq!(lines[failed].level, "warn");
        let next = attempt + 1;
        let started = find_line(&lines, failed + 1, &[&format!("attempt {next} started")])
            .unwrap_or_else(|| panic!("no start of attempt {next}:\n{text}"));
        let gap = micros(&lines[started].time) - micros(&lines[failed].time);
        // 1 ms of slack: the retry line is stamped a hair after the backoff
        // is computed.
        assert!(
            gap >= backoff.as_micros() as i64 - 1000,
            "attempt {next} started {gap} µs after the retry was logged:\n{text}"
        );
        from = started;
    }
    find_line(&lines, from, &["attempt 3 completed"]).unwrap_or_else(|| panic!("{text}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_failure_fails_the_task_at_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let journal = Journal::default();
    let j = journal.clone();
    let (_worker, _) = spawn_worker(
        Worker::builder(&server.url)
            .handler("strict", move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    j.record(&ctx);
                    Err::<serde_json::Value, _>(
                        HandlerError::fatal("the payload is unusable")
                            .with_kind("validation")
                            .with_details("field x"),
                    )
                }
            })
            .build(),
    )
    .await;
    let id = schedule(
        &mut client,
        simple_with(
            "strict",
            json!({}),
            pb::TaskOptions {
                attempts: 5,
                backoff: fixed_backoff(Duration::from_millis(10)),
                ..Default::default()
            },
        ),
    )
    .await;
    let s = wait_state(&mut client, &id, pb::TaskState::Failed, SHORT).await;
    assert_eq!(s.attempt, 1, "no retry after a non-retryable error: {s:?}");
    let err = s.last_error.expect("last_error");
    assert_eq!(err.message, "the payload is unusable");
    assert_eq!(err.kind, "validation");
    assert_eq!(err.details, "field x");
    assert!(!err.retryable);
    assert_eq!(err.attempt, 1);
    assert!(s.finished_at.is_some());
    assert_eq!(journal.for_task(&id).len(), 1);
    let lines = logs(&mut client, &id).await;
    let i =
        find_line(&lines, 0, &["non-retryable"]).unwrap_or_else(|| panic!("{}", log_text(&lines)));
    assert_eq!(lines[i].level, "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_fails_with_its_last_error_once_attempts_are_exhausted() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let journal = Journal::default();
    let j = journal.clone();
    let (_worker, _) = spawn_worker(
        Worker::builder(&server.url)
            .handler("doomed", move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    j.record(&ctx);
                    Err::<serde_json::Value, _>(HandlerError::retryable(format!(
                        "still broken on attempt {}",
                        ctx.attempt()
                    )))
                }
            })
            .build(),
    )
    .await;
    let id = schedule(
        &mut client,
        simple_with(
            "doomed",
            json!({}),
            pb::TaskOptions {
                attempts: 3,
                backoff: Some(pb::Backoff {
                    kind: pb::backoff::Kind::Exponential as i32,
                    base: Some(dur(Duration::from_millis(20))),
                    max: Some(dur(Duration::from_millis(40))),
                }),
                ..Default::default()
            },
        ),
    )
    .await;
    let s = wait_state(&mut client, &id, pb::TaskState::Failed, SHORT).await;
    assert_eq!((s.attempt, s.max_attempts), (3, 3));
    let err = s.last_error.expect("last_error");
    assert_eq!(err.message, "still broken on attempt 3");
    assert!(err.retryable);
    assert_eq!(err.attempt, 3);
    assert_eq!(
        journal
            .for_task(&id)
            .iter()
            .map(|e| e.attempt)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let lines = logs(&mut client, &id).await;
    find_line(&lines, 0, &["attempt 3 of 3 failed", "no attempts left"])
        .unwrap_or_else(|| panic!("{}", log_text(&lines)));
}

/// A handler that takes far longer than its timeout unless cancelled; it
/// records why it was cancelled.
fn slow_worker(url: &str, reasons: &Arc<Mutex<Vec<(u32, String)>>>) -> Worker {
    let r = reasons.clone();
    Worker::builder(url)
        .handler("slow", move |ctx: TaskContext| {
            let r = r.clone();
            async move {
                if ctx.payload()["fast_on"] == json!(ctx.attempt()) {
                    return Ok(json!("fast"));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => Ok(json!("too late")),
                    _ = ctx.cancelled() => {
                        r.lock().push((ctx.attempt(), ctx.cancel_reason().unwrap_or_default()));
                        Err(HandlerError::retryable("stopped"))
                    }
                }
            }
        })
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_timeout_fails_the_attempt_and_cancels_the_handler_with_reason_timeout() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let (_worker, _) = spawn_worker(slow_worker(&server.url, &reasons)).await;
    let timeout = Duration::from_millis(300);
    let id = schedule(
        &mut client,
        simple_with(
            "slow",
            json!({}),
            pb::TaskOptions {
                attempts: 1,
                execution_timeout: Some(dur(timeout)),
                ..Default::default()
            },
        ),
    )
    .await;
    let s = wait_state(&mut client, &id, pb::TaskState::Failed, SHORT).await;
    let err = s.last_error.clone().expect("last_error");
    assert_eq!(err.kind, "timeout", "{err:?}");
    assert!(err.message.contains("timed out"), "{err:?}");
    assert_eq!(err.attempt, 1);
    let ran = micros(&s.finished_at) - micros(&s.started_at);
    assert!(
        ran >= timeout.as_micros() as i64,
        "failed after {ran} µs, before the timeout"
    );
    let seen = wait_for("the handler to see its cancellation", SHORT, || {
        let r = reasons.lock().clone();
        async move { (!r.is_empty()).then_some(r) }
    })
    .await;
    assert_eq!(seen, [(1, "timeout".to_string())]);
    // The late acknowledgement does not change the outcome.
    let after = status(&mut client, &id).await;
    assert_eq!(after.state, pb::TaskState::Failed as i32);
    assert_eq!(after.last_error.map(|e| e.kind), Some("timeout".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_attempt_is_retried_when_attempts_remain() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let (_worker, _) = spawn_worker(slow_worker(&server.url, &reasons)).await;
    let id = schedule(
        &mut client,
        simple_with(
            "slow",
            json!({ "fast_on": 2 }),
            pb::TaskOptions {
                attempts: 2,
                execution_timeout: Some(dur(Duration::from_millis(300))),
                backoff: fixed_backoff(Duration::from_millis(50)),
                ..Default::default()
            },
        ),
    )
    .await;
    let s = wait_state(&mut client, &id, pb::TaskState::Completed, SHORT).await;
    assert_eq!(s.attempt, 2);
    assert_eq!(s.result.as_ref().map(to_json), Some(json!("fast")));
    // Completed: the timed-out attempt is in the log, not the outcome.
    assert!(s.last_error.is_none(), "{:?}", s.last_error);
    let lines = log_messages(&mut client, &id).await;
    assert!(
        lines.iter().any(|l| l.starts_with("attempt 1 of 2 failed")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_that_fails_for_good_schedules_its_cleanup_with_the_original_payload() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let journal = Journal::default();
    let j = journal.clone();
    let (_worker, _) = spawn_worker(
        Worker::builder(&server.url)
            .handler("charge", |_ctx: TaskContext| async move {
                Err::<serde_json::Value, _>(HandlerError::fatal("card declined"))
            })
            .handler("undo", move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    j.record(&ctx);
                    Ok(json!("undone"))
                }
            })
            .build(),
    )
    .await;
    let original = json!({ "order": 42, "items": ["a", "b"], "nested": { "x": 1.5 } });
    let id = schedule(
        &mut client,
        simple_with(
            "charge",
            original.clone(),
            pb::TaskOptions {
                cleanup: Some(pb::CleanupTask {
                    name: "undo".into(),
                }),
                labels: [("tenant".to_string(), "t1".to_string())].into(),
                ..Default::default()
            },
        ),
    )
    .await;
    wait_state(&mut client, &id, pb::TaskState::Failed, SHORT).await;
    let call = wait_for("the cleanup task to run", SHORT, || {
        let e = journal.entries();
        async move { e.into_iter().next() }
    })
    .await;
    assert_eq!(call.name, "undo");
    assert_eq!(call.payload, original);
    assert_eq!(call.labels.get("cleanup_of"), Some(&id));
    assert_eq!(
        call.labels.get("cleanup_reason").map(String::as_str),
        Some("failed")
    );
    let cleanup = wait_state(&mut client, &call.task_id, pb::TaskState::Completed, SHORT).await;
    assert_eq!(cleanup.name, "undo");
    assert_eq!(cleanup.labels.get("cleanup_of"), Some(&id));
    let lines = logs(&mut client, &id).await;
    find_line(&lines, 0, &["cleanup", "undo", &call.task_id]).unwrap_or_else(|| {
        panic!(
            "the original's log names its cleanup:\n{}",
            log_text(&lines)
        )
    });
    assert_eq!(journal.len(), 1, "one cleanup, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_task_schedules_its_cleanup_with_reason_cancelled() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let journal = Journal::default();
    let j = journal.clone();
    let (_worker, _) = spawn_worker(
        Worker::builder(&server.url)
            .handler("undo", move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    j.record(&ctx);
                    Ok(json!(null))
                }
            })
            .build(),
    )
    .await;
    // Nobody handles "book": it stays pending until cancelled.
    let id = schedule(
        &mut client,
        simple_with(
            "book",
            json!({ "seat": "12A" }),
            pb::TaskOptions {
                cleanup: Some(pb::CleanupTask {
                    name: "undo".into(),
                }),
                ..Default::default()
            },
        ),
    )
    .await;
    let r = client
        .cancel_task(pb::CancelTaskRequest {
            task_id: id.clone(),
            reason: "changed my mind".into(),
            force: false,
        })
        .await
        .expect("CancelTask")
        .into_inner();
    assert_eq!(r.outcome, pb::CancelOutcome::Cancelled as i32);
    let call = wait_for("the cleanup task to run", SHORT, || {
        let e = journal.entries();
        async move { e.into_iter().next() }
    })
    .await;
    assert_eq!(call.payload, json!({ "seat": "12A" }));
    assert_eq!(call.labels.get("cleanup_of"), Some(&id));
    assert_eq!(
        call.labels.get("cleanup_reason").map(String::as_str),
        Some("cancelled")
    );
}
