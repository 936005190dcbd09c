//! Retention: ended tasks are removed once their time has come (the
//! server's policy, a rule, or the task's own option), a count cap keeps
//! the newest of a name, their logs and counts go with them, and the space
//! they took is reused.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use switchyard::config::RetentionRuleConfig;
use switchyard::pb;
use switchyard::worker::{TaskContext, Worker};
use tonic::Code;

use crate::common::*;

async fn list_ids(client: &mut Client, name: &str) -> Vec<String> {
    all_named(client, name)
        .await
        .into_iter()
        .map(|t| t.id)
        .collect()
}

async fn completed_of(client: &mut Client, name: &str) -> u64 {
    let m = client
        .get_metrics(pb::GetMetricsRequest {})
        .await
        .expect("GetMetrics")
        .into_inner();
    m.by_name.get(name).map_or(0, |c| c.completed)
}

fn echo_worker(url: &str, names: &[&str]) -> Worker {
    let mut b = Worker::builder(url)
        .name("retention-worker")
        .concurrency(64);
    for n in names {
        b = b.handler(*n, |ctx: TaskContext| async move {
            ctx.log("info", "working");
            Ok(json!({ "n": ctx.payload()["n"].clone() }))
        });
    }
    b.build()
}

async fn run_wave(client: &Client, name: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = futures::stream::iter(0..n)
        .map(|i| {
            let mut c = client.clone();
            let name = name.to_string();
            async move {
                schedule(
                    &mut c,
                    simple(&name, json!({ "n": i, "pad": "x".repeat(200) })),
                )
                .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    ids
}

fn db_size(server: &TestServer) -> u64 {
    std::fs::metadata(server.data_dir().join("switchyard.db"))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Completed tasks kept 1 s: 10,000 complete, and within a few sweeps they
/// are gone (status NOT_FOUND, logs too, counts down to zero); a second
/// wave of 10,000 reuses the space the first one freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_tasks_go_after_their_retention_and_their_space_is_reused() {
    let server = TestServer::start_with(|c| {
        c.retention.completed = Some(Duration::from_secs(1));
        c.retention.sweep_every = Duration::from_millis(200);
    })
    .await;
    let mut client = server.client().await;
    let (worker, _) = spawn_worker(echo_worker(&server.url, &["ret-wave"])).await;
    let sqlite = postgres_store(server.data_dir()).is_none();
    let mut sizes = Vec::new();
    for wave in 0..2 {
        let ids = run_wave(&client, "ret-wave", 10_000).await;
        let first = ids[0].clone();
        wait_until(
            "every task of the wave to be removed",
            Duration::from_secs(120),
            || {
                let mut c = client.clone();
                async move { list_ids(&mut c, "ret-wave").await.is_empty() }
            },
        )
        .await;
        let e = client
            .get_task_status(pb::GetTaskStatusRequest {
                task_id: first.clone(),
            })
            .await
            .expect_err("a removed task is not found");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(
            e.message().contains("removed by retention"),
            "{}",
            e.message()
        );
        let logs = client
            .get_task_logs(pb::GetTaskLogsRequest {
                task_id: first,
                after_line: 0,
                limit: 10,
            })
            .await;
        match logs {
            Err(e) => assert_eq!(e.code(), Code::NotFound, "{e:?}"),
            Ok(r) => assert!(r.into_inner().lines.is_empty(), "the logs go with the task"),
        }
        wait_until("the counts to drop", SHORT, || {
            let mut c = client.clone();
            async move { completed_of(&mut c, "ret-wave").await == 0 }
        })
        .await;
        if sqlite {
            // Let the checkpointer copy the last frames back.
            tokio::time::sleep(Duration::from_millis(500)).await;
            sizes.push(db_size(&server));
        }
        eprintln!("wave {wave}: file sizes so far {sizes:?}");
    }
    if sqlite {
        // Without retention two waves would need about twice the first.
        assert!(
            sizes[1] <= sizes[0] + sizes[0] / 4 + (1 << 20),
            "the second wave reused the first one's space: {sizes:?}"
        );
    }
    worker.shutdown();
    server.stop().await;
}

/// A task's own retention beats the policy, and a count cap keeps exactly
/// the newest tasks of its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_own_retention_beats_the_policy_and_a_cap_keeps_the_newest() {
    let server = TestServer::start_with(|c| {
        c.retention.completed = Some(Duration::from_secs(3600));
        c.retention.sweep_every = Duration::from_millis(100);
        c.retention.rules = vec![RetentionRuleConfig {
            pattern: "ret-cap*".into(),
            max_completed: Some(5),
            ..Default::default()
        }];
    })
    .await;
    let mut client = server.client().await;
    let (worker, _) = spawn_worker(echo_worker(&server.url, &["ret-own", "ret-capped"])).await;

    let own = schedule(
        &mut client,
        simple_with(
            "ret-own",
            json!({ "n": 1 }),
            pb::TaskOptions {
                retention: Some(pb::Retention {
                    completed: Some(dur(Duration::ZERO)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    )
    .await;
    let kept = schedule(&mut client, simple("ret-own", json!({ "n": 2 }))).await;
    wait_state(&mut client, &kept, pb::TaskState::Completed, SHORT).await;
    wait_until("the task kept 0 s to be removed", SHORT, || {
        let mut c = client.clone();
        let own = own.clone();
        async move {
            c.get_task_status(pb::GetTaskStatusRequest { task_id: own })
                .await
                .is_err_and(|e| e.code() == Code::NotFound)
        }
    })
    .await;

    // One at a time, so the order they end in is the order they were made.
    let mut capped = Vec::new();
    for n in 0..20 {
        let id = schedule(&mut client, simple("ret-capped", json!({ "n": n }))).await;
        wait_state(&mut client, &id, pb::TaskState::Completed, SHORT).await;
        capped.push(id);
    }
    let mut newest: Vec<String> = capped[15..].to_vec();
    newest.reverse();
    wait_until("the cap to keep the newest 5", SHORT, || {
        let mut c = client.clone();
        let newest = newest.clone();
        async move { list_ids(&mut c, "ret-capped").await == newest }
    })
    .await;
    assert_eq!(completed_of(&mut client, "ret-capped").await, 5);
    // The policy's hour still holds for the task without an option of its
    // own: it ended before every capped task, so the sweeps that removed
    // them ran after it ended (no sleep needed to let one pass).
    assert_eq!(
        state(&status(&mut client, &kept).await),
        pb::TaskState::Completed
    );
    assert_eq!(list_ids(&mut client, "ret-capped").await.len(), 5);
    worker.shutdown();
    server.stop().await;
}

/// The disk a kept task takes, for the README's sizing (run by hand:
/// `cargo test --release --test it retention::disk_per_task -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn disk_per_task() {
    let n: usize = std::env::var("TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let server = TestServer::start_with(|c| c.retention.completed = None).await;
    let mut client = server.client().await;
    let (worker, _) = spawn_worker(echo_worker(&server.url, &["size-job"])).await;
    let ids: Vec<String> = futures::stream::iter(0..n)
        .map(|i| {
            let mut c = client.clone();
            async move {
                schedule(
                    &mut c,
                    simple("size-job", json!({ "n": i, "to": "user@example.com" })),
                )
                .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(ids.len(), n);
    wait_until("every task to complete", Duration::from_secs(600), || {
        let mut c = client.clone();
        async move { completed_of(&mut c, "size-job").await == n as u64 }
    })
    .await;
    worker.shutdown();
    // Let the checkpointer copy the WAL back into the file.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let db = db_size(&server);
    let _ = &mut client;
    server.stop().await;
    eprintln!(
        "{n} completed tasks: {:.1} MB, {} bytes per task",
        db as f64 / 1e6,
        db / n as u64
    );
}
