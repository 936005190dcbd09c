//! Leases and the worker protocol: a task whose worker dies, disconnects or
//! goes silent is requeued (at-least-once) and its log says so; a worker
//! cannot report on a task it does not hold.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use switchyard::pb;
use switchyard::pb::server_message::Msg as Out;
use switchyard::pb::worker_message::Msg as In;
use switchyard::worker::{HandlerError, TaskContext, Worker};
use tokio_stream::StreamExt;

use crate::common::*;

/// A worker whose handler for `name` never finishes unless cancelled.
fn stuck_worker(url: &str, name: &str, journal: &Journal) -> Worker {
    let j = journal.clone();
    Worker::builder(url)
        .name("stuck")
        .concurrency(1)
        .handler(name, move |ctx: TaskContext| {
            let j = j.clone();
            async move {
                j.record(&ctx);
                ctx.cancelled().await;
                Err(HandlerError::retryable("cancelled"))
            }
        })
        .build()
}

/// A worker that completes `name` tasks at once.
fn finishing_worker(url: &str, name: &str, journal: &Journal) -> Worker {
    let j = journal.clone();
    Worker::builder(url)
        .name("finisher")
        .handler(name, move |ctx: TaskContext| {
            let j = j.clone();
            async move {
                j.record(&ctx);
                Ok(json!({ "finished_by": "second" }))
            }
        })
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_of_a_killed_worker_is_requeued_and_completed_by_another_worker() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (first_calls, second_calls) = (Journal::default(), Journal::default());
    let (first, first_id) = spawn_worker(stuck_worker(&server.url, "job", &first_calls)).await;

    let id = schedule(&mut client, simple("job", json!({ "n": 1 }))).await;
    let running = wait_state(&mut client, &id, pb::TaskState::Running, SHORT).await;
    assert_eq!(running.worker_id, first_id);
    wait_until("the first worker to start the task", SHORT, || {
        let n = first_calls.len();
        async move { n == 1 }
    })
    .await;

    // Killed like a process: the connection drops without a goodbye.
    first.abort();
    let requeued = wait_for("the task to be requeued", LONG, || {
        let mut c = client.clone();
        let id = id.clone();
        async move {
            let s = status(&mut c, &id).await;
            (s.state == pb::TaskState::Pending as i32).then_some(s)
        }
    })
    .await;
    assert!(requeued.worker_id.is_empty(), "{requeued:?}");

    let (_second, second_id) =
        spawn_worker(finishing_worker(&server.url, "job", &second_calls)).await;
    assert_ne!(first_id, second_id);
    let done = wait_state(&mut client, &id, pb::TaskState::Completed, SHORT).await;
    assert_eq!(
        done.result.as_ref().map(to_json),
        Some(json!({ "finished_by": "second" }))
    );
    assert_eq!(second_calls.for_task(&id).len(), 1);
    assert_eq!(second_calls.entries()[0].payload, json!({ "n": 1 }));

    let lines = logs(&mut client, &id).await;
    let text = log_text(&lines);
    let lost = find_line(&lines, 0, &[&first_id, "lost", "requeued"])
        .unwrap_or_else(|| panic!("the log must name the lost worker {first_id}:\n{text}"));
    assert_eq!(lines[lost].level, "warn");
    find_line(&lines, lost + 1, &["started", &second_id])
        .unwrap_or_else(|| panic!("no restart on {second_id} after the loss:\n{text}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_of_a_killed_example_worker_process_is_requeued_and_completed_elsewhere() {
    let Some(example) = example_worker_path() else {
        let msg = "examples/worker is not built (run `cargo build --examples` or `make test`)";
        if in_ci() {
            panic!("{msg}");
        }
        eprintln!("\n*** SKIPPED task_of_a_killed_example_worker_process...: {msg} ***\n");
        return;
    };
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut child = tokio::process::Command::new(&example)
        .env("SWITCHYARD_SERVER", &server.url)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the example worker");

    // Long enough to be running when the process is killed.
    let id = schedule(&mut client, simple("sleep", json!({ "ms": 60_000 }))).await;
    let running = wait_state(&mut client, &id, pb::TaskState::Running, LONG).await;
    let lost_worker = running.worker_id.clone();
    child.start_kill().expect("SIGKILL the example worker");
    within("the example worker to exit", SHORT, child.wait())
        .await
        .expect("reap the example worker");

    wait_until("the task to be requeued", LONG, || {
        let mut c = client.clone();
        let id = id.clone();
        async move { status(&mut c, &id).await.state == pb::TaskState::Pending as i32 }
    })
    .await;
    let second = Journal::default();
    let (_w, second_id) = spawn_worker(finishing_worker(&server.url, "sleep", &second)).await;
    wait_state(&mut client, &id, pb::TaskState::Completed, SHORT).await;
    assert_eq!(second.for_task(&id).len(), 1);
    let lines = logs(&mut client, &id).await;
    let text = log_text(&lines);
    let lost = find_line(&lines, 0, &[&lost_worker, "lost"])
        .unwrap_or_else(|| panic!("the log must name the killed worker {lost_worker}:\n{text}"));
    find_line(&lines, lost + 1, &["started", &second_id]).unwrap_or_else(|| panic!("{text}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_is_requeued_when_its_worker_stops_heartbeating_on_an_open_stream() {
    let lease = Duration::from_millis(800);
    let server = TestServer::start_with(|c| {
        c.scheduler.lease_ttl = lease;
        c.scheduler.heartbeat_interval = Duration::from_millis(200);
    })
    .await;
    let mut client = server.client().await;
    let mut silent = RawWorker::register(&server.url, &["quiet"], 1).await;
    let id = schedule(&mut client, simple("quiet", json!({}))).await;
    let a = silent.assignment().await;
    assert_eq!(a.task_id, id);
    assert_eq!(a.attempt, 1);
    wait_state(&mut client, &id, pb::TaskState::Running, SHORT).await;
    // One last heartbeat renews the lease; from then on the stream stays
    // open but silent, and the lease must expire.
    let silent_since = tokio::time::Instant::now();
    silent.send(In::Heartbeat(pb::Heartbeat {})).await;

    let requeued = wait_for(
        "the lease to expire and the task to be requeued",
        LONG,
        || {
            let mut c = client.clone();
            let id = id.clone();
            async move {
                let s = status(&mut c, &id).await;
                (s.state == pb::TaskState::Pending as i32).then_some(s)
            }
        },
    )
    .await;
    assert!(
        silent_since.elapsed() >= lease,
        "requeued {:?} after the last heartbeat, before the lease of {lease:?} ran out",
        silent_since.elapsed()
    );
    assert!(requeued.worker_id.is_empty());
    let lines = logs(&mut client, &id).await;
    let text = log_text(&lines);
    find_line(&lines, 0, &["lease expired", &silent.worker_id, "requeued"])
        .unwrap_or_else(|| panic!("the log must say the lease expired:\n{text}"));

    // The server gives up on the silent stream.
    let end = within("the server to close the silent stream", SHORT, async {
        loop {
            match silent.rx.next().await {
                None => return None,
                Some(Err(status)) => return Some(status),
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    if let Some(status) = end {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }

    // A live worker gets the task again.
    let second = Journal::default();
    let (_w, _) = spawn_worker(finishing_worker(&server.url, "quiet", &second)).await;
    wait_state(&mut client, &id, pb::TaskState::Completed, SHORT).await;
    drop(silent.tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_task_on_its_worker_past_the_lease() {
    let lease = Duration::from_millis(600);
    let server = TestServer::start_with(|c| {
        c.scheduler.lease_ttl = lease;
        c.scheduler.heartbeat_interval = Duration::from_millis(150);
    })
    .await;
    let mut client = server.client().await;
    let journal = Journal::default();
    let j = journal.clone();
    let (_w, worker_id) = spawn_worker(
        Worker::builder(&server.url)
            .handler("long", move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    j.record(&ctx);
                    // Simulated work, three leases long.
                    tokio::time::sleep(Duration::from_millis(1800)).await;
                    Ok(json!("done"))
                }
            })
            .build(),
    )
    .await;
    let id = schedule(&mut client, simple("long", json!({}))).await;
    let s = wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;
    assert_eq!(s.attempt, 1);
    assert_eq!(journal.len(), 1, "never requeued, never run twice");
    let lines = logs(&mut client, &id).await;
    assert!(
        find_line(&lines, 0, &["lost"]).is_none(),
        "{}",
        log_text(&lines)
    );
    find_line(&lines, 0, &["started", &worker_id])
        .unwrap_or_else(|| panic!("{}", log_text(&lines)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reporting_on_a_task_it_does_not_hold_is_rejected_and_keeps_its_stream() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut holder = RawWorker::register(&server.url, &["held"], 1).await;
    let mut intruder = RawWorker::register(&server.url, &["other"], 1).await;

    let id = schedule(&mut client, simple("held", json!({}))).await;
    let a = holder.assignment().await;
    assert_eq!(a.task_id, id);
    assert_eq!(a.idempotency_key, format!("{id}:1"));

    // Another worker completes it: refused, task untouched.
    intruder
        .send(In::Complete(pb::Complete {
            task_id: id.clone(),
            attempt: 1,
            result: Some(switchyard::worker::convert::json_to_value(&json!("stolen"))),
        }))
        .await;
    match intruder.next("a rejection").await {
        Out::Rejected(r) => {
            assert_eq!(r.task_id, id);
            assert_eq!(r.code, "FAILED_PRECONDITION");
            assert!(!r.message.is_empty());
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // A task that does not exist, and a malformed id.
    let unknown = uuid::Uuid::now_v7().to_string();
    intruder
        .send(In::Fail(pb::Fail {
            task_id: unknown.clone(),
            attempt: 1,
            message: "x".into(),
            ..Default::default()
        }))
        .await;
    match intruder.next("a rejection").await {
        Out::Rejected(r) => assert_eq!(
            (r.task_id.as_str(), r.code.as_str()),
            (unknown.as_str(), "FAILED_PRECONDITION")
        ),
        other => panic!("expected Rejected, got {other:?}"),
    }
    intruder
        .send(In::Complete(pb::Complete {
            task_id: "not-a-uuid".into(),
            attempt: 1,
            result: None,
        }))
        .await;
    match intruder.next("a rejection").await {
        Out::Rejected(r) => assert_eq!(
            (r.task_id.as_str(), r.code.as_str()),
            ("not-a-uuid", "INVALID_ARGUMENT")
        ),
        other => panic!("expected Rejected, got {other:?}"),
    }
    // The holder itself, with a wrong attempt.
    holder
        .send(In::Complete(pb::Complete {
            task_id: id.clone(),
            attempt: 2,
            result: None,
        }))
        .await;
    match holder.next("a rejection").await {
        Out::Rejected(r) => assert_eq!(r.code, "FAILED_PRECONDITION"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    let s = status(&mut client, &id).await;
    assert_eq!(s.state, pb::TaskState::Running as i32);
    assert_eq!(s.worker_id, holder.worker_id);

    // Both streams are still open: the intruder still gets work...
    let other = schedule(&mut client, simple("other", json!({}))).await;
    let b = intruder.assignment().await;
    assert_eq!(b.task_id, other);
    // ...and the holder's real completion is accepted.
    holder
        .send(In::Complete(pb::Complete {
            task_id: id.clone(),
            attempt: 1,
            result: Some(switchyard::worker::convert::json_to_value(&json!("mine"))),
        }))
        .await;
    let done = wait_state(&mut client, &id, pb::TaskState::Completed, SHORT).await;
    assert_eq!(done.result.as_ref().map(to_json), Some(json!("mine")));

    // Completing it again, now that it is finished, is refused too.
    holder
        .send(In::Complete(pb::Complete {
            task_id: id.clone(),
            attempt: 1,
            result: None,
        }))
        .await;
    match holder.next("a rejection").await {
        Out::Rejected(r) => assert_eq!(r.code, "FAILED_PRECONDITION"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(
        status(&mut client, &id).await.result.as_ref().map(to_json),
        Some(json!("mine"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_registration_is_validated() {
    let server = TestServer::start().await;
    let mut wc = server.worker_client().await;
    let cases: Vec<(&str, pb::Register, &str)> = vec![
        (
            "no task names",
            pb::Register {
                task_names: vec![],
                slots: 1,
                ..Default::default()
            },
            "register.task_names",
        ),
        (
            "zero slots",
            pb::Register {
                task_names: vec!["x".into()],
                slots: 0,
                ..Default::default()
            },
            "register.slots",
        ),
        (
            "a bad task name",
            pb::Register {
                task_names: vec!["bad name".into()],
                slots: 1,
                ..Default::default()
            },
            "register.task_names[0]",
        ),
    ];
    for (case, reg, field) in cases {
        let outbound =
            tokio_stream::iter(vec![wmsg(In::Register(reg))]).chain(tokio_stream::pending());
        let r = within(case, SHORT, wc.work(outbound)).await;
        assert_invalid(case, r.map(|_| ()), field);
    }
    // A first message that is not Register.
    let outbound = tokio_stream::iter(vec![wmsg(In::Heartbeat(pb::Heartbeat {}))])
        .chain(tokio_stream::pending());
    let r = within("heartbeat first", SHORT, wc.work(outbound)).await;
    assert_eq!(
        r.map(|_| ()).expect_err("refused").code(),
        tonic::Code::FailedPrecondition
    );
    // The server still serves.
    let mut client = server.client().await;
    client
        .get_metrics(pb::GetMetricsRequest {})
        .await
        .expect("still serving");
}
