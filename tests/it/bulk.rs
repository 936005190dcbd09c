//! `ScheduleTasks` against a real server on an ephemeral port: a bulk of
//! 1,000 with bad items at known indexes (each item judged on its own, one
//! result per item, in order), the good ones committed in one group commit
//! and completed by a worker; the 1,001-item refusal; idempotency keys
//! repeated inside one bulk and across bulks; items refused by admission;
//! and a bulk acknowledged just before a `kill -9` is all there after the
//! restart. The BullMQ case is in `bullmq.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;
use switchyard::pb;
use switchyard::pb::schedule_tasks_result::Outcome;
use switchyard::worker::{TaskContext, Worker};
use tonic::Code;

use crate::common::*;

/// The indexes of the bad items in [`thousand`], and the field each names.
pub(crate) const BAD: [(usize, &str); 3] =
    [(17, "name"), (500, "options.attempts"), (999, "task_type")];

/// 1,000 SIMPLE tasks named `name`, payload `{"n": i}`, with the three
/// [`BAD`] items: a name with a space, 101 attempts, no task type.
pub(crate) fn thousand(name: &str) -> Vec<pb::ScheduleTaskRequest> {
    (0..1000)
        .map(|i| {
            let mut t = simple(name, json!({ "n": i }));
            match i {
                17 => t.name = "not a name".into(),
                500 => {
                    t.options = Some(pb::TaskOptions {
                        attempts: 101,
                        ..Default::default()
                    })
                }
                999 => t.task_type = pb::TaskType::Unspecified as i32,
                _ => {}
            }
            t
        })
        .collect()
}

/// Schedules `tasks` in one call; panics unless the call itself is OK.
pub(crate) async fn bulk(
    client: &mut Client,
    tasks: Vec<pb::ScheduleTaskRequest>,
) -> Vec<pb::ScheduleTasksResult> {
    client
        .schedule_tasks(pb::ScheduleTasksRequest { tasks })
        .await
        .expect("ScheduleTasks")
        .into_inner()
        .results
}

/// The ids of the scheduled items and the (index, error) of the refused
/// ones; checks there is one result per item, in order.
pub(crate) fn split(
    results: &[pb::ScheduleTasksResult],
    items: usize,
) -> (Vec<String>, Vec<(usize, pb::ScheduleTaskError)>) {
    assert_eq!(results.len(), items, "one result per item");
    let (mut ids, mut errors) = (Vec::new(), Vec::new());
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.index as usize, i, "results in order");
        match r.outcome.clone() {
            Some(Outcome::Scheduled(s)) => ids.push(s.task_id),
            Some(Outcome::Error(e)) => errors.push((i, e)),
            None => panic!("item {i} has no outcome"),
        }
    }
    (ids, errors)
}

/// Checks that the refused items are exactly [`BAD`], each an
/// INVALID_ARGUMENT naming its field.
pub(crate) fn assert_bad_items(errors: &[(usize, pb::ScheduleTaskError)]) {
    let got: Vec<(usize, &str)> = errors.iter().map(|(i, e)| (*i, e.field.as_str())).collect();
    assert_eq!(got, BAD.to_vec(), "{errors:?}");
    for (i, e) in errors {
        assert_eq!(e.code, Code::InvalidArgument as i32, "item {i}: {e:?}");
        assert_eq!(
            e.violations.first().map(|v| v.field.as_str()),
            Some(e.field.as_str())
        );
        assert!(e.message.contains(&e.field), "item {i}: {}", e.message);
    }
}

async fn total_tasks(client: &mut Client) -> u64 {
    let m = client
        .get_metrics(pb::GetMetricsRequest {})
        .await
        .expect("GetMetrics")
        .into_inner();
    let t = m.total.unwrap_or_default();
    t.pending + t.running + t.completed + t.failed + t.cancelled
}

async fn completed_of(client: &mut Client, name: &str) -> u64 {
    let m = client
        .get_metrics(pb::GetMetricsRequest {})
        .await
        .expect("GetMetrics")
        .into_inner();
    m.by_name.get(name).map(|c| c.completed).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_of_1000_with_3_bad_items_schedules_997_that_a_worker_completes() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let (_worker, _) = spawn_worker(
        Worker::builder(&server.url)
            .name("bulk-worker")
            .concurrency(64)
            .handler("bulk-job", move |ctx: TaskContext| {
                let d = d.clone();
                async move {
                    d.fetch_add(1, Ordering::Relaxed);
                    Ok(json!({ "n": ctx.payload()["n"].clone() }))
                }
            })
            .build(),
    )
    .await;

    let results = bulk(&mut client, thousand("bulk-job")).await;
    let (ids, errors) = split(&results, 1000);
    assert_eq!(ids.len(), 997);
    assert_bad_items(&errors);
    for r in &results {
        if let Some(Outcome::Scheduled(s)) = &r.outcome {
            assert!(!s.existing, "{s:?}");
        }
    }

    wait_until("the worker to complete the 997", LONG, || {
        let mut c = client.clone();
        async move { completed_of(&mut c, "bulk-job").await == 997 }
    })
    .await;
    assert_eq!(done.load(Ordering::Relaxed), 997, "each ran once");
    assert_eq!(
        total_tasks(&mut client).await,
        997,
        "nothing of the bad items"
    );
    // Each id is its own item's task: item i carries {"n": i}.
    for (i, r) in results.iter().enumerate().step_by(97) {
        let Some(Outcome::Scheduled(s)) = &r.outcome else {
            continue;
        };
        let st = status(&mut client, &s.task_id).await;
        assert_eq!(st.state, pb::TaskState::Completed as i32, "{st:?}");
        assert_eq!(st.result.as_ref().map(to_json), Some(json!({ "n": i })));
    }
    server.stop().await;
}

/// The writes of the store's commits so far: (commits, writes), from the
/// Prometheus metrics (`switchyard_store_commit_batch_size`).
async fn commits(server: &TestServer) -> (f64, f64) {
    let text = reqwest::get(format!("{}/metrics", server.admin_url()))
        .await
        .expect("a scrape")
        .text()
        .await
        .expect("a body");
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("switchyard_store_commit_batch_size_count"),
        value("switchyard_store_commit_batch_size_sum"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_good_items_of_a_bulk_are_one_group_commit() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // Nothing else writes meanwhile: no worker, nothing due.
    let (c0, w0) = commits(&server).await;
    let (ids, errors) = split(&bulk(&mut client, thousand("one-commit")).await, 1000);
    assert_eq!(ids.len(), 997);
    assert_bad_items(&errors);
    let (c1, w1) = commits(&server).await;
    assert_eq!(c1 - c0, 1.0, "one commit for the bulk ({c0} → {c1})");
    assert_eq!(w1 - w0, 997.0, "its 997 inserts ({w0} → {w1})");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_1000_items_are_refused_naming_tasks_and_nothing_is_scheduled() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let tasks: Vec<_> = (0..1001)
        .map(|i| simple("too-many", json!({ "n": i })))
        .collect();
    let r = client
        .schedule_tasks(pb::ScheduleTasksRequest { tasks })
        .await;
    assert_invalid("1,001 items", r, "tasks");
    assert_eq!(total_tasks(&mut client).await, 0);
    // None is an empty answer.
    assert!(bulk(&mut client, Vec::new()).await.is_empty());
    server.stop().await;
}

fn keyed(name: &str, key: &str, n: u32) -> pb::ScheduleTaskRequest {
    simple_with(
        name,
        json!({ "n": n }),
        pb::TaskOptions {
            idempotency_key: key.into(),
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_answers_the_first_items_task() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let first = bulk(
        &mut client,
        vec![
            keyed("keyed", "k-1", 0),
            keyed("keyed", "k-2", 1),
            keyed("keyed", "k-1", 2),
            simple("keyed", json!({ "n": 3 })),
        ],
    )
    .await;
    let s: Vec<pb::ScheduledTask> = first
        .iter()
        .map(|r| match &r.outcome {
            Some(Outcome::Scheduled(s)) => s.clone(),
            other => panic!("refused: {other:?}"),
        })
        .collect();
    assert!(!s[0].existing && !s[1].existing && !s[3].existing, "{s:?}");
    assert_eq!(s[2].task_id, s[0].task_id, "the second k-1 is the first's");
    assert!(s[2].existing, "{s:?}");
    assert_eq!(s[2].state, pb::TaskState::Pending as i32);
    assert_ne!(s[0].task_id, s[1].task_id);
    assert_eq!(total_tasks(&mut client).await, 3);

    // The same keys again, in another call: every one exists.
    let again = bulk(
        &mut client,
        vec![keyed("keyed", "k-2", 5), keyed("keyed", "k-1", 6)],
    )
    .await;
    let ids: Vec<(String, bool)> = again
        .iter()
        .map(|r| match &r.outcome {
            Some(Outcome::Scheduled(s)) => (s.task_id.clone(), s.existing),
            other => panic!("refused: {other:?}"),
        })
        .collect();
    assert_eq!(
        ids,
        vec![(s[1].task_id.clone(), true), (s[0].task_id.clone(), true)]
    );
    // ScheduleTask agrees.
    let one = client
        .schedule_task(keyed("keyed", "k-1", 7))
        .await
        .expect("ScheduleTask")
        .into_inner();
    assert!(one.existing);
    assert_eq!(one.task_id, s[0].task_id);
    assert_eq!(total_tasks(&mut client).await, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_admission_refuses_is_its_own_failed_precondition() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // Temporal settings on a workflow that stays on the embedded engine:
    // ScheduleTask answers FAILED_PRECONDITION naming the setting.
    let refused = crate::schedule_refusals::complex("wf-bulk", "a-task-queue", "");
    let alone = client
        .schedule_task(refused.clone())
        .await
        .expect_err("refused alone");
    let results = bulk(
        &mut client,
        vec![simple("adm", json!({})), refused, simple("adm", json!({}))],
    )
    .await;
    let (ids, errors) = split(&results, 3);
    assert_eq!(ids.len(), 2);
    assert_eq!(errors.len(), 1);
    let (i, e) = &errors[0];
    assert_eq!(*i, 1);
    assert_eq!(e.code, alone.code() as i32, "{e:?}");
    // The message ScheduleTask gives, cut at 200 bytes.
    assert!(
        alone.message().starts_with(e.message.trim_end_matches('…')),
        "{} / {}",
        e.message,
        alone.message()
    );
    assert_eq!(total_tasks(&mut client).await, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_acknowledged_before_a_kill_9_is_all_there_after_the_restart() {
    init_tracing();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&server.url).await;
    let (ids, errors) = split(&bulk(&mut client, thousand("bulk-crash")).await, 1000);
    assert_eq!((ids.len(), errors.len()), (997, 3));
    server.kill9().await;

    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&server.url).await;
    for id in &ids {
        let s = status(&mut client, id).await;
        assert_eq!(s.state, pb::TaskState::Pending as i32, "{id}: {s:?}");
    }
    assert_eq!(total_tasks(&mut client).await, 997);
    server.terminate().await;
}
