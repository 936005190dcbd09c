//! The server process killed with SIGKILL while tasks are queued and running,
//! restarted on the same store: every accepted task still completes
//! (at-least-once), none is lost.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use switchyard::pb;
use switchyard::worker::{TaskContext, Worker};

use crate::common::*;

const TASKS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_task_completes_after_the_server_is_killed_and_restarted() {
    init_tracing();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let url = server.url.clone();
    let mut client = connect(&url).await;

    // Accept 200 tasks (a few calls at a time).
    let ids: Vec<String> = futures::stream::iter(0..TASKS)
        .map(|n| {
            let mut c = client.clone();
            async move { schedule(&mut c, simple("crash-job", json!({ "n": n }))).await }
        })
        .buffered(16)
        .collect()
        .await;
    assert_eq!(ids.len(), TASKS);

    // A worker works through them, slowly enough to be mid-way at the kill.
    let journal = Journal::default();
    let j = journal.clone();
    let worker = Worker::builder(&url)
        .name("crash-worker")
        .concurrency(4)
        .immediate_slots(0)
        .handler("crash-job", move |ctx: TaskContext| {
            let j = j.clone();
            async move {
                j.record(&ctx);
                // Simulated work.
                tokio::time::sleep(Duration::from_millis(40)).await;
                Ok(json!({ "n": ctx.payload()["n"].clone() }))
            }
        })
        .build();
    let (worker, _) = spawn_worker(worker).await;
    wait_until("the worker to be part-way through", LONG, || {
        let n = journal.len();
        async move { n >= 40 }
    })
    .await;
    let running_before = client
        .list_tasks(pb::ListTasksRequest {
            filter: Some(pb::TaskFilter {
                names: vec!["crash-job".into()],
                states: vec![pb::TaskState::Running as i32],
                ..Default::default()
            }),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("ListTasks")
        .into_inner()
        .tasks
        .len();
    assert!(running_before > 0, "some tasks run at the kill");

    server.kill9().await;
    let handled_at_kill = journal.len();
    assert!(
        handled_at_kill < TASKS,
        "the kill came too late to test anything"
    );

    // Same port, same store; the worker reconnects by itself.
    let mut server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&url).await;
    wait_until(
        &format!("all {TASKS} tasks to complete after the restart"),
        LONG,
        || {
            let mut c = client.clone();
            async move {
                c.list_tasks(pb::ListTasksRequest {
                    filter: Some(pb::TaskFilter {
                        names: vec!["crash-job".into()],
                        states: vec![pb::TaskState::Completed as i32],
                        ..Default::default()
                    }),
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .map(|r| r.into_inner().tasks.len() == TASKS)
                .unwrap_or(false)
            }
        },
    )
    .await;

    // Every accepted id is known and COMPLETED with its own result.
    let mut restarted_logs = 0;
    for (n, id) in ids.iter().enumerate() {
        let s = status(&mut client, id).await;
        assert_eq!(s.state, pb::TaskState::Completed as i32, "{id}: {s:?}");
        assert_eq!(s.result.as_ref().map(to_json), Some(json!({ "n": n })));
        let lines = logs(&mut client, id).await;
        if find_line(&lines, 0, &["server restarted", "requeued"]).is_some() {
            restarted_logs += 1;
        }
    }
    // At least once each; more than once only for what the crash interrupted.
    let mut runs: HashMap<String, usize> = HashMap::new();
    for e in journal.entries() {
        *runs.entry(e.task_id).or_default() += 1;
    }
    for id in &ids {
        assert!(runs.get(id).copied().unwrap_or(0) >= 1, "{id} never ran");
    }
    assert_eq!(runs.len(), TASKS, "only accepted tasks ran");
    let repeated = runs.values().filter(|n| **n > 1).count();
    assert!(
        repeated <= handled_at_kill,
        "{repeated} tasks ran twice, more than were started before the kill"
    );
    assert!(
        restarted_logs > 0,
        "the tasks running at the kill were requeued and their logs say so"
    );

    // The restarted server still takes new work.
    let extra = schedule(&mut client, simple("crash-job", json!({ "n": "after" }))).await;
    wait_state(&mut client, &extra, pb::TaskState::Completed, SHORT).await;

    worker.shutdown();
    within("the worker to stop", LONG, worker.join())
        .await
        .expect("a clean worker stop");
    server.wait_serving().await;
}
