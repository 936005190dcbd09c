//! `RetryTask` and `ReplayWorkflow` against the real server and real
//! workers: a failed task retried after its worker is fixed, selected by its
//! error's kind, durable across a restart; a five-step workflow replayed
//! from its third step runs steps 3 to 5 again and only those (each worker
//! records its calls); the refusals (state, unknown id, unknown step).
//! Runs on SQLite, and on PostgreSQL with `SWITCHYARD_TEST_STORE=postgres`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::json;
use switchyard::pb;
use switchyard::worker::{HandlerError, TaskContext, Worker};
use tonic::Code;

use crate::common::*;

async fn retry(
    client: &mut Client,
    id: &str,
    reason: &str,
) -> Result<pb::TaskStatus, tonic::Status> {
    client
        .retry_task(pb::RetryTaskRequest {
            task_id: id.to_string(),
            reason: reason.to_string(),
        })
        .await
        .map(|r| r.into_inner().status.expect("a status"))
}

async fn replay(
    client: &mut Client,
    id: &str,
    from: &str,
) -> Result<pb::TaskStatus, tonic::Status> {
    client
        .replay_workflow(pb::ReplayWorkflowRequest {
            task_id: id.to_string(),
            from_step: from.to_string(),
            reason: String::new(),
        })
        .await
        .map(|r| r.into_inner().status.expect("a status"))
}

/// The ids `ListTasks` answers for a filter (one page).
async fn listed(client: &mut Client, filter: pb::TaskFilter) -> Vec<String> {
    client
        .list_tasks(pb::ListTasksRequest {
            filter: Some(filter),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .expect("ListTasks")
        .into_inner()
        .tasks
        .into_iter()
        .map(|t| t.id)
        .collect()
}

/// A data directory that outlives one server, and the settings that put a
/// server's store there (on PostgreSQL: the schema named after it).
fn same_store(dir: &std::path::Path) -> impl Fn(&mut switchyard::Config) + Clone {
    let at: PathBuf = dir.to_path_buf();
    move |cfg: &mut switchyard::Config| {
        cfg.data_dir = at.clone();
        if let Some((url, schema)) = postgres_store(&at) {
            cfg.store.url = Some(url);
            cfg.store.schema = schema;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_retried_completes_on_a_fixed_worker() {
    let server = TestServer::start().await;
    let mut client = server.client().await;

    // The broken worker fails every attempt for good, with its own kind.
    let broken = Journal::default();
    let (handle, _) = spawn_worker(
        Worker::builder(&server.url)
            .handler("retry-job", {
                let broken = broken.clone();
                move |ctx: TaskContext| {
                    let broken = broken.clone();
                    async move {
                        broken.record(&ctx);
                        Err::<serde_json::Value, _>(
                            HandlerError::fatal("the dependency is down")
                                .with_kind("DependencyDown"),
                        )
                    }
                }
            })
            .build(),
    )
    .await;
    let id = schedule(
        &mut client,
        simple_with(
            "retry-job",
            json!({"n": 7}),
            pb::TaskOptions {
                attempts: 2,
                idempotency_key: "retry-job-7".into(),
                ..Default::default()
            },
        ),
    )
    .await;
    let failed = wait_state(&mut client, &id, pb::TaskState::Failed, LONG).await;
    assert_eq!(failed.run, 0);
    assert_eq!(
        failed.last_error.as_ref().map(|e| e.kind.as_str()),
        Some("DependencyDown")
    );
    handle.shutdown();
    within("the broken worker to stop", LONG, handle.join())
        .await
        .expect("a clean stop");

    // Bulk retry selects by the error's kind (and the state).
    let by_kind = pb::TaskFilter {
        error_kind: "DependencyDown".into(),
        states: vec![pb::TaskState::Failed as i32],
        ..Default::default()
    };
    assert_eq!(listed(&mut client, by_kind.clone()).await, vec![id.clone()]);
    assert!(listed(
        &mut client,
        pb::TaskFilter {
            error_kind: "SomethingElse".into(),
            ..Default::default()
        }
    )
    .await
    .is_empty());

    // The fixed worker records its calls and completes.
    let fixed = Journal::default();
    let (_fixed, _) = spawn_worker(
        Worker::builder(&server.url)
            .handler("retry-job", {
                let fixed = fixed.clone();
                move |ctx: TaskContext| {
                    let fixed = fixed.clone();
                    async move {
                        fixed.record(&ctx);
                        Ok(json!({"key": ctx.idempotency_key(), "n": ctx.payload()["n"].clone()}))
                    }
                }
            })
            .build(),
    )
    .await;
    let again = retry(&mut client, &id, "the dependency is back")
        .await
        .expect("RetryTask");
    assert_eq!((again.id.as_str(), again.run), (id.as_str(), 1));
    assert_eq!(again.idempotency_key, "retry-job-7", "the key is kept");
    assert_ne!(state(&again), pb::TaskState::Failed);
    let done = wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;
    assert_eq!((done.run, done.attempt), (1, 1), "a new attempt budget");
    assert!(done.last_error.is_none());
    let calls = fixed.for_task(&id);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].attempt, 1);
    assert_eq!(calls[0].payload, json!({"n": 7}), "the same payload");
    assert_eq!(
        done.result.as_ref().map(to_json),
        Some(json!({"key": format!("{id}:run1:1"), "n": 7})),
        "a new run's idempotency key differs from the first run's"
    );
    assert_eq!(
        broken.for_task(&id).len(),
        1,
        "the first run: one attempt, failed for good"
    );
    let lines = logs(&mut client, &id).await;
    assert!(
        find_line(
            &lines,
            0,
            &[
                "retried by request from failed: run 1",
                "(the dependency is back)"
            ]
        )
        .is_some(),
        "{}",
        log_text(&lines)
    );
    assert!(listed(&mut client, by_kind).await.is_empty());

    // Only an ended, unsuccessful task is retried; an unknown id is NOT_FOUND.
    let e = retry(&mut client, &id, "").await.expect_err("completed");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("completed"), "{e:?}");
    let e = retry(&mut client, &uuid::Uuid::now_v7().to_string(), "")
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_durable_before_its_answer_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let same = same_store(dir.path());
    let server = TestServer::start_with(same.clone()).await;
    let mut client = server.client().await;
    // No worker: cancelled while pending, then retried; it waits.
    let id = schedule(&mut client, simple("retry-later", json!({}))).await;
    let r = cancel(&mut client, &id, "not now").await;
    assert_eq!(r.outcome, pb::CancelOutcome::Cancelled as i32);
    let again = retry(&mut client, &id, "").await.expect("RetryTask");
    assert_eq!((state(&again), again.run), (pb::TaskState::Pending, 1));
    let e = retry(&mut client, &id, "").await.expect_err("pending");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    server.stop().await;

    let server = TestServer::start_with(same).await;
    let mut client = server.client().await;
    let s = status(&mut client, &id).await;
    assert_eq!((state(&s), s.run), (pb::TaskState::Pending, 1));
    assert!(s.finished_at.is_none(), "no longer ended");
    let seen = Journal::default();
    let (_worker, _) = spawn_worker(
        Worker::builder(&server.url)
            .handler("retry-later", {
                let seen = seen.clone();
                move |ctx: TaskContext| {
                    let seen = seen.clone();
                    async move {
                        seen.record(&ctx);
                        Ok(json!({}))
                    }
                }
            })
            .build(),
    )
    .await;
    wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;
    assert_eq!(seen.for_task(&id).len(), 1);
    server.stop().await;
}

const FIVE: &str = r#"
name = "replay-five"
[[steps]]
id = "s1"
task = "rp-1"
[[steps]]
id = "s2"
task = "rp-2"
[[steps]]
id = "s3"
task = "rp-3"
[[steps]]
id = "s4"
task = "rp-4"
[[steps]]
id = "s5"
task = "rp-5"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_step_three_runs_steps_three_to_five_only() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // Each worker records its calls: (task name, idempotency key). Step 3
    // fails until it is fixed.
    let calls: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let fixed = Arc::new(AtomicBool::new(false));
    let mut b = Worker::builder(&server.url);
    for name in ["rp-1", "rp-2", "rp-3", "rp-4", "rp-5"] {
        let calls = calls.clone();
        let fixed = fixed.clone();
        b = b.handler(name, move |ctx: TaskContext| {
            let calls = calls.clone();
            let fixed = fixed.clone();
            async move {
                calls
                    .lock()
                    .push((ctx.name().to_string(), ctx.idempotency_key().to_string()));
                if ctx.name() == "rp-3" && !fixed.load(Ordering::SeqCst) {
                    return Err(HandlerError::fatal("step 3 is broken").with_kind("Broken"));
                }
                Ok(json!({ "by": ctx.name() }))
            }
        });
    }
    let (_worker, _) = spawn_worker(b.build()).await;
    client
        .register_workflow(pb::RegisterWorkflowRequest {
            definition: FIVE.into(),
            format: "toml".into(),
        })
        .await
        .expect("RegisterWorkflow");
    let id = schedule(
        &mut client,
        crate::workflow::workflow("replay-five", vec![json!({"order": 1})], ""),
    )
    .await;
    let failed = wait_state(&mut client, &id, pb::TaskState::Failed, LONG).await;
    let states = |s: &pb::TaskStatus| -> Vec<pb::StepState> {
        s.steps
            .iter()
            .map(|st| pb::StepState::try_from(st.state).unwrap_or_default())
            .collect()
    };
    use pb::StepState as S;
    assert_eq!(
        states(&failed),
        [
            S::Completed,
            S::Completed,
            S::Failed,
            S::Skipped,
            S::Skipped
        ]
    );
    let first_outputs: Vec<_> = failed.steps[..2].iter().map(|s| s.output.clone()).collect();
    let names = |calls: &Mutex<Vec<(String, String)>>| -> Vec<String> {
        calls.lock().iter().map(|c| c.0.clone()).collect()
    };
    assert_eq!(names(&calls), ["rp-1", "rp-2", "rp-3"]);

    // Refusals first: an unknown step names `from_step`; a SIMPLE task is
    // not a workflow; a retry of a workflow step points at its workflow.
    assert_invalid(
        "unknown step",
        replay(&mut client, &id, "s9").await,
        "from_step",
    );
    let step3 = failed.steps[2].task_id.clone();
    let e = retry(&mut client, &step3, "").await.expect_err("a step");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("ReplayWorkflow"), "{e:?}");

    fixed.store(true, Ordering::SeqCst);
    let replayed = replay(&mut client, &id, "s3")
        .await
        .expect("ReplayWorkflow");
    assert_eq!(replayed.run, 1);
    assert_eq!(
        states(&replayed),
        [
            S::Completed,
            S::Completed,
            S::Pending,
            S::Pending,
            S::Pending
        ]
    );
    let done = wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;
    assert_eq!(states(&done), [S::Completed; 5]);
    // Steps 1 and 2 kept their outputs and did not run again; 3 to 5 ran
    // once more each (3: its failed call, then this one).
    assert_eq!(
        done.steps[..2]
            .iter()
            .map(|s| s.output.clone())
            .collect::<Vec<_>>(),
        first_outputs
    );
    assert_eq!(
        names(&calls),
        ["rp-1", "rp-2", "rp-3", "rp-3", "rp-4", "rp-5"]
    );
    let keys: Vec<String> = calls.lock()[3..].iter().map(|c| c.1.clone()).collect();
    for (k, step) in keys.iter().zip(["s3", "s4", "s5"]) {
        assert!(
            k.ends_with(&format!(":{step}:run1:1")),
            "a replayed step's key names the run: {k}"
        );
    }
    let lines = logs(&mut client, &id).await;
    assert!(
        find_line(
            &lines,
            0,
            &[
                "replayed by request from failed: run 1",
                "kept s1, s2; runs again s3, s4, s5"
            ]
        )
        .is_some(),
        "{}",
        log_text(&lines)
    );

    // A SIMPLE task is not a workflow: it cannot be replayed.
    let simple_id = schedule(&mut client, simple("rp-1", json!({}))).await;
    wait_state(&mut client, &simple_id, pb::TaskState::Completed, LONG).await;
    let e = replay(&mut client, &simple_id, "s1")
        .await
        .expect_err("simple");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}

#[tokio::test]
async fn retry_and_replay_refuse_bad_input_naming_the_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_invalid("an empty id", retry(&mut client, "", "").await, "task_id");
    assert_invalid(
        "not an id",
        retry(&mut client, "not-a-uuid", "").await,
        "task_id",
    );
    let id = uuid::Uuid::now_v7().to_string();
    assert_invalid(
        "a long reason",
        retry(&mut client, &id, &"r".repeat(1025)).await,
        "reason",
    );
    assert_invalid("no step", replay(&mut client, &id, "").await, "from_step");
    assert_invalid(
        "a long step",
        replay(&mut client, &id, &"s".repeat(65)).await,
        "from_step",
    );
    assert_invalid(
        "a long error kind",
        client
            .list_tasks(pb::ListTasksRequest {
                filter: Some(pb::TaskFilter {
                    error_kind: "k".repeat(129),
                    ..Default::default()
                }),
                page_size: 10,
                page_token: String::new(),
            })
            .await,
        "filter.error_kind",
    );
    // The admin route refuses the same way.
    let http = reqwest::Client::new();
    let r = http
        .post(format!(
            "{}/internal/execution-manager/tasks/{id}/replay",
            server.admin_url()
        ))
        .send()
        .await
        .expect("POST replay");
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.expect("a JSON error");
    assert!(body.to_string().contains("fromStep"), "{body}");
    let r = http
        .post(format!(
            "{}/internal/execution-manager/tasks/{id}/retry",
            server.admin_url()
        ))
        .send()
        .await
        .expect("POST retry");
    assert_eq!(r.status(), 404);
}
