//! Cancellation: of a pending task (at once), of a running one (pushed to its
//! worker, final on the acknowledgement), of a finished or unknown one; and
//! `Disconnect`, which cancels every active task of an owner with a receipt
//! per task.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::json;
use switchyard::pb;
use switchyard::worker::{HandlerError, TaskContext, Worker};

use crate::common::*;

type Reasons = Arc<Mutex<HashMap<String, String>>>;

/// A worker whose `name` handler runs until cancelled and records the
/// cancellation reason per task id; `quick` tasks complete at once.
fn cancellable_worker(url: &str, names: &[&str], reasons: &Reasons, journal: &Journal) -> Worker {
    let mut b = Worker::builder(url).concurrency(8);
    for name in names {
        let (r, j) = (reasons.clone(), journal.clone());
        b = b.handler(*name, move |ctx: TaskContext| {
            let (r, j) = (r.clone(), j.clone());
            async move {
                j.record(&ctx);
                if ctx.payload()["quick"] == json!(true) {
                    return Ok(json!("quick"));
                }
                ctx.cancelled().await;
                r.lock().insert(
                    ctx.task_id().to_string(),
                    ctx.cancel_reason().unwrap_or_default(),
                );
                Err(HandlerError::retryable("stopped on request"))
            }
        });
    }
    b.build()
}

async fn wait_running_on_handler(client: &mut Client, journal: &Journal, id: &str) {
    wait_state(client, id, pb::TaskState::Running, SHORT).await;
    wait_until("the handler to start", SHORT, || {
        let n = journal.for_task(id).len();
        async move { n > 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_pending_task_cancels_it_at_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = schedule(&mut client, simple("nobody-handles-this", json!({}))).await;
    let r = cancel(&mut client, &id, "not needed").await;
    assert_eq!(r.outcome, pb::CancelOutcome::Cancelled as i32);
    let s = r.status.expect("status");
    assert_eq!(s.state, pb::TaskState::Cancelled as i32);
    assert!(s.finished_at.is_some());
    let s = status(&mut client, &id).await;
    assert_eq!(s.state, pb::TaskState::Cancelled as i32);
    let lines = logs(&mut client, &id).await;
    find_line(&lines, 0, &["cancelled", "not needed"])
        .unwrap_or_else(|| panic!("{}", log_text(&lines)));

    // A worker that connects later never sees it.
    let (reasons, journal) = (Reasons::default(), Journal::default());
    let (_w, _) = spawn_worker(cancellable_worker(
        &server.url,
        &["nobody-handles-this"],
        &reasons,
        &journal,
    ))
    .await;
    let probe = schedule(
        &mut client,
        simple("nobody-handles-this", json!({ "quick": true })),
    )
    .await;
    wait_state(&mut client, &probe, pb::TaskState::Completed, SHORT).await;
    assert!(journal.for_task(&id).is_empty(), "a cancelled task ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_task_asks_its_worker_and_completes_on_the_ack() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (reasons, journal) = (Reasons::default(), Journal::default());
    let (_w, _) = spawn_worker(cancellable_worker(
        &server.url,
        &["work"],
        &reasons,
        &journal,
    ))
    .await;
    let id = schedule(&mut client, simple("work", json!({}))).await;
    wait_running_on_handler(&mut client, &journal, &id).await;

    let r = cancel(&mut client, &id, "").await;
    assert_eq!(r.outcome, pb::CancelOutcome::CancelRequested as i32);
    let s = r.status.expect("status");
    assert_eq!(s.state, pb::TaskState::Running as i32, "{s:?}");
    assert!(s.cancel_requested, "{s:?}");

    let done = wait_state(&mut client, &id, pb::TaskState::Cancelled, SHORT).await;
    assert!(!done.cancel_requested);
    let reason = reasons.lock().get(&id).cloned();
    assert_eq!(
        reason.as_deref(),
        Some("cancelled"),
        "the handler saw the cancel"
    );
    let lines = logs(&mut client, &id).await;
    let text = log_text(&lines);
    let asked =
        find_line(&lines, 0, &["asked the worker to stop"]).unwrap_or_else(|| panic!("{text}"));
    find_line(&lines, asked + 1, &["stopped", "cancelled"]).unwrap_or_else(|| panic!("{text}"));

    // Cancelling again is answered, not an error.
    let again = cancel(&mut client, &id, "").await;
    assert_eq!(again.outcome, pb::CancelOutcome::AlreadyFinished as i32);
}

/// The proto says `CancelAssignment.reason` is one of `cancelled`,
/// `disconnected`, `timeout` or `shutdown` (workers branch on it); the free
/// text of a `CancelTask` or `Disconnect` request belongs in the task's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reason_pushed_to_the_worker_is_one_of_the_documented_words() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (reasons, journal) = (Reasons::default(), Journal::default());
    let (_w, _) = spawn_worker(cancellable_worker(
        &server.url,
        &["work"],
        &reasons,
        &journal,
    ))
    .await;
    let cancelled = schedule(&mut client, simple("work", json!({}))).await;
    let disconnected = schedule(
        &mut client,
        simple_with(
            "work",
            json!({}),
            pb::TaskOptions {
                user_id: "dave".into(),
                ..Default::default()
            },
        ),
    )
    .await;
    wait_running_on_handler(&mut client, &journal, &cancelled).await;
    wait_running_on_handler(&mut client, &journal, &disconnected).await;

    let r = cancel(&mut client, &cancelled, "user pressed stop").await;
    assert_eq!(r.outcome, pb::CancelOutcome::CancelRequested as i32);
    client
        .disconnect(pb::DisconnectRequest {
            user_id: "dave".into(),
            session_id: String::new(),
            reason: "logout".into(),
        })
        .await
        .expect("Disconnect");
    wait_state(&mut client, &cancelled, pb::TaskState::Cancelled, SHORT).await;
    wait_state(&mut client, &disconnected, pb::TaskState::Cancelled, SHORT).await;
    let lines = logs(&mut client, &cancelled).await;
    find_line(&lines, 0, &["user pressed stop"]).unwrap_or_else(|| panic!("{}", log_text(&lines)));
    let lines = logs(&mut client, &disconnected).await;
    find_line(&lines, 0, &["logout"]).unwrap_or_else(|| panic!("{}", log_text(&lines)));
    let seen = reasons.lock().clone();
    assert_eq!(
        (
            seen.get(&cancelled).map(String::as_str),
            seen.get(&disconnected).map(String::as_str)
        ),
        (Some("cancelled"), Some("disconnected")),
        "CancelAssignment.reason must be a documented word, not the request's text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_cancel_of_a_running_task_is_final_at_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (reasons, journal) = (Reasons::default(), Journal::default());
    let (_w, _) = spawn_worker(cancellable_worker(
        &server.url,
        &["work"],
        &reasons,
        &journal,
    ))
    .await;
    let id = schedule(&mut client, simple("work", json!({}))).await;
    wait_running_on_handler(&mut client, &journal, &id).await;
    let r = client
        .cancel_task(pb::CancelTaskRequest {
            task_id: id.clone(),
            reason: String::new(),
            force: true,
        })
        .await
        .expect("CancelTask")
        .into_inner();
    assert_eq!(r.outcome, pb::CancelOutcome::Cancelled as i32);
    assert_eq!(
        status(&mut client, &id).await.state,
        pb::TaskState::Cancelled as i32
    );
    // The worker is still told to stop.
    wait_until("the handler to be cancelled", SHORT, || {
        let seen = reasons.lock().contains_key(&id);
        async move { seen }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_finished_task_says_already_finished_and_an_unknown_one_not_found() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (reasons, journal) = (Reasons::default(), Journal::default());
    let (_w, _) = spawn_worker(cancellable_worker(
        &server.url,
        &["work"],
        &reasons,
        &journal,
    ))
    .await;
    let id = schedule(&mut client, simple("work", json!({ "quick": true }))).await;
    wait_state(&mut client, &id, pb::TaskState::Completed, SHORT).await;
    let r = cancel(&mut client, &id, "too late").await;
    assert_eq!(r.outcome, pb::CancelOutcome::AlreadyFinished as i32);
    let s = r.status.expect("status");
    assert_eq!(s.state, pb::TaskState::Completed as i32, "unchanged: {s:?}");
    assert_eq!(
        status(&mut client, &id).await.state,
        pb::TaskState::Completed as i32
    );

    let unknown = uuid::Uuid::now_v7().to_string();
    let e = client
        .cancel_task(pb::CancelTaskRequest {
            task_id: unknown,
            reason: String::new(),
            force: false,
        })
        .await
        .expect_err("unknown id");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_cancels_every_active_task_of_the_user_with_a_receipt_each() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (reasons, journal) = (Reasons::default(), Journal::default());
    let (_w, _) = spawn_worker(cancellable_worker(
        &server.url,
        &["run-a", "run-b"],
        &reasons,
        &journal,
    ))
    .await;
    let owned = |user: &str, session: &str| pb::TaskOptions {
        user_id: user.into(),
        session_id: session.into(),
        ..Default::default()
    };
    // User A: finished, running, and two pending (no worker for "wait-a").
    let a_done = schedule(
        &mut client,
        simple_with("run-a", json!({ "quick": true }), owned("alice", "s1")),
    )
    .await;
    wait_state(&mut client, &a_done, pb::TaskState::Completed, SHORT).await;
    let a_running = schedule(
        &mut client,
        simple_with("run-a", json!({}), owned("alice", "s1")),
    )
    .await;
    let a_pending = schedule(
        &mut client,
        simple_with("wait-a", json!({}), owned("alice", "s2")),
    )
    .await;
    let a_pending2 = schedule(
        &mut client,
        simple_with("wait-a", json!({}), owned("alice", "")),
    )
    .await;
    // User B: running and pending.
    let b_running = schedule(
        &mut client,
        simple_with("run-b", json!({}), owned("bob", "s3")),
    )
    .await;
    let b_pending = schedule(
        &mut client,
        simple_with("wait-b", json!({}), owned("bob", "s3")),
    )
    .await;
    wait_running_on_handler(&mut client, &journal, &a_running).await;
    wait_running_on_handler(&mut client, &journal, &b_running).await;

    let receipts = client
        .disconnect(pb::DisconnectRequest {
            user_id: "alice".into(),
            session_id: String::new(),
            reason: "logout".into(),
        })
        .await
        .expect("Disconnect")
        .into_inner()
        .receipts;
    let by_id: HashMap<String, (String, i32)> = receipts
        .iter()
        .map(|r| (r.task_id.clone(), (r.name.clone(), r.outcome)))
        .collect();
    assert_eq!(
        by_id.len(),
        receipts.len(),
        "one receipt per task: {receipts:?}"
    );
    let expected: HashMap<String, (String, i32)> = [
        (
            a_running.clone(),
            (
                "run-a".to_string(),
                pb::CancelOutcome::CancelRequested as i32,
            ),
        ),
        (
            a_pending.clone(),
            ("wait-a".to_string(), pb::CancelOutcome::Cancelled as i32),
        ),
        (
            a_pending2.clone(),
            ("wait-a".to_string(), pb::CancelOutcome::Cancelled as i32),
        ),
    ]
    .into();
    assert_eq!(
        by_id, expected,
        "receipts for alice's active tasks only (not her finished one, nothing of bob's)"
    );

    for id in [&a_pending, &a_pending2] {
        assert_eq!(
            status(&mut client, id).await.state,
            pb::TaskState::Cancelled as i32
        );
    }
    wait_state(&mut client, &a_running, pb::TaskState::Cancelled, SHORT).await;
    // The exact word is checked by
    // `cancel_reason_pushed_to_the_worker_is_one_of_the_documented_words`.
    let why = reasons.lock().get(&a_running).cloned().unwrap_or_default();
    assert!(
        why.starts_with("disconnected"),
        "the worker is told why (CancelAssignment.reason): {why:?}"
    );
    assert_eq!(
        status(&mut client, &a_done).await.state,
        pb::TaskState::Completed as i32
    );
    // Bob is untouched.
    let b = status(&mut client, &b_running).await;
    assert_eq!(b.state, pb::TaskState::Running as i32);
    assert!(!b.cancel_requested);
    assert_eq!(
        status(&mut client, &b_pending).await.state,
        pb::TaskState::Pending as i32
    );
    assert!(!reasons.lock().contains_key(&b_running));
    let lines = logs(&mut client, &a_pending).await;
    find_line(&lines, 0, &["logout"]).unwrap_or_else(|| panic!("{}", log_text(&lines)));

    // Again: nothing active is left for alice.
    let again = client
        .disconnect(pb::DisconnectRequest {
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("Disconnect")
        .into_inner();
    assert!(again.receipts.is_empty(), "{:?}", again.receipts);

    // By session: only bob's session s3.
    let r = client
        .disconnect(pb::DisconnectRequest {
            session_id: "s3".into(),
            ..Default::default()
        })
        .await
        .expect("Disconnect")
        .into_inner();
    let mut got: Vec<(String, i32)> = r
        .receipts
        .iter()
        .map(|r| (r.task_id.clone(), r.outcome))
        .collect();
    got.sort();
    let mut want = vec![
        (b_running.clone(), pb::CancelOutcome::CancelRequested as i32),
        (b_pending.clone(), pb::CancelOutcome::Cancelled as i32),
    ];
    want.sort();
    assert_eq!(got, want);
    wait_state(&mut client, &b_running, pb::TaskState::Cancelled, SHORT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_needs_exactly_one_of_user_and_session() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = schedule(
        &mut client,
        simple_with(
            "idle",
            json!({}),
            pb::TaskOptions {
                user_id: "carol".into(),
                session_id: "s9".into(),
                ..Default::default()
            },
        ),
    )
    .await;
    let both = client
        .disconnect(pb::DisconnectRequest {
            user_id: "carol".into(),
            session_id: "s9".into(),
            reason: String::new(),
        })
        .await;
    let e = both.expect_err("both is refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let fields = violations(&e);
    assert!(
        fields.iter().any(|f| f == "user_id" || f == "session_id"),
        "{fields:?}"
    );
    let neither = client.disconnect(pb::DisconnectRequest::default()).await;
    let e = neither.expect_err("neither is refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(!violations(&e).is_empty(), "BadRequest details: {e:?}");
    // Nothing was cancelled by the refused calls.
    assert_eq!(
        status(&mut client, &id).await.state,
        pb::TaskState::Pending as i32
    );
}
