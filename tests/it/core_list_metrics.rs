//! Idempotent scheduling, `ListTasks` pagination and filters, log paging,
//! delayed tasks, and `GetMetrics` counts.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use switchyard::pb;
use switchyard::worker::{HandlerError, TaskContext, Worker};

use crate::common::*;

async fn list(
    client: &mut Client,
    filter: pb::TaskFilter,
    page_size: u32,
    token: &str,
) -> pb::ListTasksResponse {
    client
        .list_tasks(pb::ListTasksRequest {
            filter: Some(filter),
            page_size,
            page_token: token.to_string(),
        })
        .await
        .expect("ListTasks")
        .into_inner()
}

fn ids(tasks: &[pb::TaskStatus]) -> Vec<String> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_idempotency_key_returns_the_same_task_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let req = |p: serde_json::Value, key: &str| {
        simple_with(
            "charge-card",
            p,
            pb::TaskOptions {
                idempotency_key: key.into(),
                ..Default::default()
            },
        )
    };
    let first = client
        .schedule_task(req(json!({ "amount": 10 }), "order-17"))
        .await
        .expect("first")
        .into_inner();
    assert!(!first.existing);
    let second = client
        .schedule_task(req(json!({ "amount": 99 }), "order-17"))
        .await
        .expect("second")
        .into_inner();
    assert!(second.existing, "the second call finds the first task");
    assert_eq!(second.task_id, first.task_id);
    assert_eq!(
        second.status.as_ref().map(|s| s.idempotency_key.as_str()),
        Some("order-17")
    );
    let other = client
        .schedule_task(req(json!({ "amount": 10 }), "order-18"))
        .await
        .expect("other key")
        .into_inner();
    assert!(!other.existing);
    assert_ne!(other.task_id, first.task_id);

    let listed = list(
        &mut client,
        pb::TaskFilter {
            names: vec!["charge-card".into()],
            ..Default::default()
        },
        100,
        "",
    )
    .await
    .tasks;
    assert_eq!(listed.len(), 2, "one task per key: {listed:?}");
    assert_eq!(listed.iter().filter(|t| t.id == first.task_id).count(), 1);
    // The first payload is kept; the duplicate's is not applied.
    let full = client
        .get_task_status(pb::GetTaskStatusRequest {
            task_id: first.task_id.clone(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        full.payload.as_ref().map(struct_json),
        Some(json!({ "amount": 10 }))
    );

    // Still the same task once it has finished.
    client
        .cancel_task(pb::CancelTaskRequest {
            task_id: first.task_id.clone(),
            ..Default::default()
        })
        .await
        .expect("cancel");
    let third = client
        .schedule_task(req(json!({}), "order-17"))
        .await
        .expect("third")
        .into_inner();
    assert!(third.existing);
    assert_eq!(third.task_id, first.task_id);
    assert_eq!(
        third.status.map(|s| s.state),
        Some(pb::TaskState::Cancelled as i32)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_schedules_with_one_idempotency_key_make_one_task() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let calls = (0..16).map(|_| {
        let mut c = client.clone();
        async move {
            c.schedule_task(simple_with(
                "once",
                json!({}),
                pb::TaskOptions {
                    idempotency_key: "race".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("ScheduleTask")
            .into_inner()
        }
    });
    let answers = futures::future::join_all(calls).await;
    let distinct: BTreeSet<&str> = answers.iter().map(|a| a.task_id.as_str()).collect();
    assert_eq!(distinct.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|a| !a.existing).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_tasks_pages_newest_first_and_filters() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (_w, _) = spawn_worker(
        Worker::builder(&server.url)
            .handler(
                "listed-done",
                |_ctx: TaskContext| async move { Ok(json!(1)) },
            )
            .build(),
    )
    .await;
    let mut pending = Vec::new();
    for n in 0..7 {
        pending.push(
            schedule(
                &mut client,
                simple_with(
                    "listed",
                    json!({ "n": n }),
                    pb::TaskOptions {
                        user_id: if n % 2 == 0 {
                            "even".into()
                        } else {
                            "odd".into()
                        },
                        ..Default::default()
                    },
                ),
            )
            .await,
        );
    }
    let mut done = Vec::new();
    for _ in 0..2 {
        let id = schedule(&mut client, simple("listed-done", json!({}))).await;
        wait_state(&mut client, &id, pb::TaskState::Completed, SHORT).await;
        done.push(id);
    }

    // Pages of 3 over the 7 "listed" tasks: 3, 3, 1, newest first.
    let by_name = pb::TaskFilter {
        names: vec!["listed".into()],
        ..Default::default()
    };
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(&mut client, by_name.clone(), 3, &token).await;
        assert!(page.tasks.len() <= 3);
        pages.push(ids(&page.tasks));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages.len() < 10, "pagination does not end");
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [3, 3, 1]);
    let all: Vec<String> = pages.concat();
    let mut newest_first = pending.clone();
    newest_first.reverse();
    assert_eq!(all, newest_first, "every task once, newest first");

    // Filters.
    let even = list(
        &mut client,
        pb::TaskFilter {
            user_id: "even".into(),
            ..Default::default()
        },
        100,
        "",
    )
    .await;
    assert_eq!(even.tasks.len(), 4);
    assert!(even.tasks.iter().all(|t| t.user_id == "even"));
    assert!(even.next_page_token.is_empty());

    let completed = list(
        &mut client,
        pb::TaskFilter {
            states: vec![pb::TaskState::Completed as i32],
            ..Default::default()
        },
        100,
        "",
    )
    .await;
    let mut got = ids(&completed.tasks);
    got.sort();
    let mut want = done.clone();
    want.sort();
    assert_eq!(got, want);

    let picked = list(
        &mut client,
        pb::TaskFilter {
            task_ids: vec![pending[1].clone(), done[0].clone()],
            ..Default::default()
        },
        100,
        "",
    )
    .await;
    assert_eq!(
        ids(&picked.tasks).into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([pending[1].clone(), done[0].clone()])
    );
    let pending_odd = list(
        &mut client,
        pb::TaskFilter {
            user_id: "odd".into(),
            states: vec![pb::TaskState::Pending as i32],
            task_types: vec![pb::TaskType::Simple as i32],
            ..Default::default()
        },
        100,
        "",
    )
    .await;
    assert_eq!(pending_odd.tasks.len(), 3);
    let nothing = list(
        &mut client,
        pb::TaskFilter {
            task_types: vec![pb::TaskType::Complex as i32],
            ..Default::default()
        },
        100,
        "",
    )
    .await;
    assert!(nothing.tasks.is_empty());
    // Default page size is 50; a full listing here fits.
    let everything = list(&mut client, pb::TaskFilter::default(), 0, "").await;
    assert_eq!(everything.tasks.len(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_logs_page_with_after_line_and_limit() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (_w, _) = spawn_worker(
        Worker::builder(&server.url)
            .handler("chatty", |ctx: TaskContext| async move {
                for i in 0..20 {
                    ctx.log("debug", format!("line {i}"));
                }
                Ok(json!(null))
            })
            .build(),
    )
    .await;
    let id = schedule(&mut client, simple("chatty", json!({}))).await;
    wait_state(&mut client, &id, pb::TaskState::Completed, SHORT).await;
    let all = logs(&mut client, &id).await;
    let worker_lines: Vec<&str> = all
        .iter()
        .filter(|l| l.source == pb::LogSource::Worker as i32)
        .map(|l| l.message.as_str())
        .collect();
    let want: Vec<String> = (0..20).map(|i| format!("line {i}")).collect();
    assert_eq!(worker_lines, want, "every worker line, in order");
    assert!(all
        .iter()
        .filter(|l| l.source == pb::LogSource::Worker as i32)
        .all(|l| l.level == "debug"));

    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let r = client
            .get_task_logs(pb::GetTaskLogsRequest {
                task_id: id.clone(),
                after_line: after,
                limit: 4,
            })
            .await
            .expect("GetTaskLogs")
            .into_inner();
        assert!(r.lines.len() <= 4);
        if let Some(l) = r.lines.last() {
            after = l.line;
        }
        paged.extend(r.lines.into_iter().map(|l| l.line));
        if !r.has_more {
            break;
        }
    }
    assert_eq!(paged, all.iter().map(|l| l.line).collect::<Vec<_>>());
    let last = all.last().map(|l| l.line).unwrap_or(0);
    let tail = client
        .get_task_logs(pb::GetTaskLogsRequest {
            task_id: id.clone(),
            after_line: last,
            limit: 0,
        })
        .await
        .expect("GetTaskLogs")
        .into_inner();
    assert!(tail.lines.is_empty() && !tail.has_more, "{tail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_logs_after_a_line_beyond_any_are_empty() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = schedule(&mut client, simple("quiet-log", json!({}))).await;
    assert!(!logs(&mut client, &id).await.is_empty());
    for after_line in [1_000_000, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
        let r = client
            .get_task_logs(pb::GetTaskLogsRequest {
                task_id: id.clone(),
                after_line,
                limit: 0,
            })
            .await
            .expect("GetTaskLogs")
            .into_inner();
        assert!(
            r.lines.is_empty() && !r.has_more,
            "after_line {after_line} must return nothing, got lines {:?}",
            r.lines.iter().map(|l| l.line).collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_task_waits_for_its_delay() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let journal = Journal::default();
    let j = journal.clone();
    let (_w, _) = spawn_worker(
        Worker::builder(&server.url)
            .handler("later", move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    j.record(&ctx);
                    Ok(json!(null))
                }
            })
            .build(),
    )
    .await;
    let delay = Duration::from_millis(400);
    let id = schedule(
        &mut client,
        simple_with(
            "later",
            json!({}),
            pb::TaskOptions {
                delay: Some(dur(delay)),
                ..Default::default()
            },
        ),
    )
    .await;
    let s = status(&mut client, &id).await;
    assert_eq!(s.state, pb::TaskState::Pending as i32);
    assert_eq!(s.waiting_reason, pb::WaitingReason::Delayed as i32, "{s:?}");
    assert!(micros(&s.run_at) - micros(&s.created_at) >= delay.as_micros() as i64);
    let done = wait_state(&mut client, &id, pb::TaskState::Completed, SHORT).await;
    assert!(
        micros(&done.started_at) >= micros(&s.run_at),
        "started before its run_at: {done:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_tasks_by_state_type_and_name_and_show_queues() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (_w, _) = spawn_worker(
        Worker::builder(&server.url)
            .concurrency(3)
            .handler("m-ok", |_ctx: TaskContext| async move { Ok(json!(null)) })
            .handler("m-bad", |_ctx: TaskContext| async move {
                Err::<serde_json::Value, _>(HandlerError::fatal("no"))
            })
            .build(),
    )
    .await;
    let mut finished = Vec::new();
    for _ in 0..3 {
        finished.push((
            schedule(&mut client, simple("m-ok", json!({}))).await,
            pb::TaskState::Completed,
        ));
    }
    for _ in 0..2 {
        finished.push((
            schedule(&mut client, simple("m-bad", json!({}))).await,
            pb::TaskState::Failed,
        ));
    }
    for (id, want) in &finished {
        wait_state(&mut client, id, *want, SHORT).await;
    }
    let mut waiting = Vec::new();
    for _ in 0..4 {
        waiting.push(schedule(&mut client, simple("m-waiting", json!({}))).await);
    }
    client
        .cancel_task(pb::CancelTaskRequest {
            task_id: waiting[0].clone(),
            ..Default::default()
        })
        .await
        .expect("cancel");

    let m = client
        .get_metrics(pb::GetMetricsRequest {})
        .await
        .expect("GetMetrics")
        .into_inner();
    let total = m.total.expect("total");
    assert_eq!(
        (
            total.pending,
            total.running,
            total.completed,
            total.failed,
            total.cancelled
        ),
        (3, 0, 3, 2, 1),
        "{total:?}"
    );
    let simple_counts = m
        .by_type
        .get("SIMPLE")
        .or_else(|| m.by_type.get("simple"))
        .unwrap_or_else(|| {
            panic!(
                "no SIMPLE entry in by_type: {:?}",
                m.by_type.keys().collect::<Vec<_>>()
            )
        });
    assert_eq!(simple_counts.completed, 3);
    assert_eq!(simple_counts.pending, 3);
    let ok = &m.by_name["m-ok"];
    assert_eq!((ok.completed, ok.failed), (3, 0));
    let bad = &m.by_name["m-bad"];
    assert_eq!((bad.completed, bad.failed), (0, 2));
    let waiting_counts = &m.by_name["m-waiting"];
    assert_eq!((waiting_counts.pending, waiting_counts.cancelled), (3, 1));

    let q = m
        .queues
        .iter()
        .find(|q| q.name == "m-waiting")
        .expect("a queue for the waiting tasks");
    assert_eq!((q.ready, q.running, q.workers), (3, 0, 0));
    let q = m
        .queues
        .iter()
        .find(|q| q.name == "m-ok")
        .expect("a queue for m-ok");
    assert_eq!(q.workers, 1);
    assert_eq!(q.free_slots, 3 + 1, "3 normal + 1 immediate (the default)");
    assert_eq!(m.workers_connected, 1);
    assert!(m.run_time.expect("run_time").count >= 5);
    assert!(m.schedule_to_start.expect("schedule_to_start").count >= 5);
    assert!(m.last_sequence > 0);
    assert!(m.started_at.is_some());
    // Throughput counts whole seconds: it shows once the current one is over.
    wait_until("throughput to count the finished tasks", SHORT, || {
        let mut c = client.clone();
        async move {
            c.get_metrics(pb::GetMetricsRequest {})
                .await
                .is_ok_and(|m| m.into_inner().throughput_per_sec > 0.0)
        }
    })
    .await;
}
