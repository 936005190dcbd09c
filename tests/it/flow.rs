//! Flow control over the network (issue 21): concurrency keys with a limit
//! checked from the worker's own log of start and end times, fairness
//! between keys, pause and resume, what holds a task (status, `task why`,
//! Prometheus), and the limit and the rules across a kill -9.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use switchyard::pb;
use switchyard::pb::flow_service_client::FlowServiceClient;
use switchyard::pb::schedule_tasks_result::Outcome;
use switchyard::worker::{HandlerError, TaskContext, Worker};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::common::*;

type Flow = FlowServiceClient<Channel>;

async fn flow_client(url: &str) -> Flow {
    FlowServiceClient::new(channel(url).await)
}

async fn set_policy(flow: &mut Flow, pattern: &str, limit: i32) {
    flow.set_concurrency_policy(pb::SetConcurrencyPolicyRequest {
        policy: Some(pb::ConcurrencyPolicy {
            pattern: pattern.into(),
            limit,
            ..Default::default()
        }),
    })
    .await
    .expect("SetConcurrencyPolicy");
}

fn keyed(name: &str, key: &str, n: usize) -> pb::ScheduleTaskRequest {
    simple_with(
        name,
        json!({ "n": n }),
        pb::TaskOptions {
            concurrency_key: key.into(),
            ..Default::default()
        },
    )
}

/// Schedules `reqs` through ScheduleTasks, 1,000 a call; the ids in order.
async fn schedule_all(client: &mut Client, reqs: Vec<pb::ScheduleTaskRequest>) -> Vec<String> {
    let mut ids = Vec::with_capacity(reqs.len());
    let mut reqs = reqs.into_iter().peekable();
    while reqs.peek().is_some() {
        let tasks: Vec<_> = reqs.by_ref().take(1000).collect();
        let results = client
            .schedule_tasks(pb::ScheduleTasksRequest { tasks })
            .await
            .expect("ScheduleTasks")
            .into_inner()
            .results;
        for r in results {
            match r.outcome {
                Some(Outcome::Scheduled(s)) => ids.push(s.task_id),
                other => panic!("an item was refused: {other:?}"),
            }
        }
    }
    ids
}

/// One handler call: task id, key, start, end.
type Span = (String, String, Instant, Option<Instant>);

/// The worker's own log: per task, when its handler started and ended.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Span>>>);

impl Spans {
    fn start(&self, ctx: &TaskContext, key: &str) -> usize {
        let mut v = self.0.lock();
        v.push((
            ctx.task_id().to_string(),
            key.to_string(),
            Instant::now(),
            None,
        ));
        v.len() - 1
    }

    fn end(&self, i: usize) {
        self.0.lock()[i].3 = Some(Instant::now());
    }

    fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// The most handlers of `key` that ran at once (a span without an end
    /// runs until now).
    fn max_overlap(&self, key: &str) -> usize {
        let now = Instant::now();
        let mut edges: Vec<(Instant, i32)> = Vec::new();
        for (_, k, s, e) in self.0.lock().iter() {
            if k == key {
                edges.push((*s, 1));
                edges.push((e.unwrap_or(now), -1));
            }
        }
        // At the same instant an end comes before a start.
        edges.sort();
        let (mut cur, mut max) = (0i32, 0i32);
        for (_, d) in edges {
            cur += d;
            max = max.max(cur);
        }
        max as usize
    }

    /// The task ids in the order their handlers started.
    fn order(&self) -> Vec<String> {
        self.0.lock().iter().map(|(id, ..)| id.clone()).collect()
    }
}

/// A worker for `name` with `slots` slots whose handlers log their span
/// (key from the payload's `k`, else the label-free "-") and take `work`,
/// or end early when cancelled.
fn logging_worker(url: &str, name: &str, slots: u32, work: Duration, spans: &Spans) -> Worker {
    let spans = spans.clone();
    Worker::builder(url)
        .name("flow-worker")
        .concurrency(slots)
        .immediate_slots(0)
        .handler(name, move |ctx: TaskContext| {
            let spans = spans.clone();
            async move {
                let key = ctx.payload()["k"].as_str().unwrap_or("-").to_string();
                let i = spans.start(&ctx, &key);
                let cancelled = tokio::select! {
                    _ = ctx.cancelled() => true,
                    _ = tokio::time::sleep(work) => false,
                };
                spans.end(i);
                if cancelled {
                    Err(HandlerError::retryable("cancelled"))
                } else {
                    Ok(json!({}))
                }
            }
        })
        .build()
}

fn keyed_k(name: &str, key: &str, n: usize) -> pb::ScheduleTaskRequest {
    simple_with(
        name,
        json!({ "n": n, "k": key }),
        pb::TaskOptions {
            concurrency_key: key.into(),
            ..Default::default()
        },
    )
}

async fn completed(client: &mut Client, name: &str) -> usize {
    let mut n = 0;
    let mut token = String::new();
    loop {
        let r = client
            .list_tasks(pb::ListTasksRequest {
                filter: Some(pb::TaskFilter {
                    names: vec![name.into()],
                    states: vec![pb::TaskState::Completed as i32],
                    ..Default::default()
                }),
                page_size: 1000,
                page_token: token,
            })
            .await
            .map(|r| r.into_inner());
        let Ok(r) = r else { return n };
        n += r.tasks.len();
        if r.next_page_token.is_empty() {
            return n;
        }
        token = r.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_limit_2_never_runs_more_than_2_on_a_worker_with_10_slots() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut flow = flow_client(&server.url).await;
    set_policy(&mut flow, "lim-*", 2).await;

    // 500 tasks of key A, and 100 of key B that run beside them.
    let mut reqs: Vec<_> = (0..500).map(|n| keyed_k("lim-job", "A", n)).collect();
    reqs.extend((0..100).map(|n| keyed_k("lim-job", "B", n)));
    schedule_all(&mut client, reqs).await;

    let spans = Spans::default();
    let (worker, _) = spawn_worker(logging_worker(
        &server.url,
        "lim-job",
        10,
        Duration::from_millis(3),
        &spans,
    ))
    .await;
    wait_until("all 600 tasks to complete", Duration::from_secs(60), || {
        let mut c = client.clone();
        async move { completed(&mut c, "lim-job").await == 600 }
    })
    .await;
    assert_eq!(spans.len(), 600, "each task ran once");
    let (a, b) = (spans.max_overlap("A"), spans.max_overlap("B"));
    assert_eq!(a, 2, "key A ran at most (and at times exactly) 2 at once");
    assert_eq!(b, 2, "key B too, beside A");
    worker.shutdown();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_task_says_which_rule_holds_it_in_status_cli_and_prometheus() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut flow = flow_client(&server.url).await;
    set_policy(&mut flow, "why-job", 1).await;
    let gate = Gate::default();
    let journal = Journal::default();
    let (g, j) = (gate.clone(), journal.clone());
    let (worker, _) = spawn_worker(
        Worker::builder(&server.url)
            .name("why-worker")
            .concurrency(4)
            .handler("why-job", move |ctx: TaskContext| {
                let (g, j) = (g.clone(), j.clone());
                async move {
                    j.record(&ctx);
                    g.wait().await;
                    Ok(json!({}))
                }
            })
            .build(),
    )
    .await;
    let ids = schedule_all(
        &mut client,
        (0..3).map(|n| keyed("why-job", "tenant-7", n)).collect(),
    )
    .await;
    wait_until("the first task to start", SHORT, || {
        let n = journal.len();
        async move { n == 1 }
    })
    .await;
    let s = status(&mut client, &ids[2]).await;
    assert_eq!(s.state, pb::TaskState::Pending as i32);
    assert_eq!(
        s.waiting_reason,
        pb::WaitingReason::ConcurrencyLimit as i32,
        "{s:?}"
    );
    assert_eq!(s.concurrency_key, "tenant-7");
    let h = s.hold.expect("a hold");
    assert_eq!(
        (
            h.rule.as_str(),
            h.concurrency_key.as_str(),
            h.limit,
            h.running
        ),
        ("why-job", "tenant-7", 1, 1)
    );
    assert_eq!(h.ahead, Some(1), "one task of the key waits before it");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--server", &server.url, "task", "why", &ids[2]])
        .output()
        .await
        .expect("the CLI runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("concurrency policy why-job") && text.contains("\"tenant-7\""),
        "{text}"
    );

    let scrape = reqwest::get(format!("{}/metrics", server.admin_url()))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("a body");
    let held = scrape
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_tasks_held{rule=\"concurrency_limit\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(held, Some(2.0), "{scrape}");

    // Raising the limit at run time releases them at once.
    set_policy(&mut flow, "why-job", 3).await;
    wait_until("all three to run", SHORT, || {
        let n = journal.len();
        async move { n == 3 }
    })
    .await;
    gate.open();
    for id in &ids {
        wait_state(&mut client, id, pb::TaskState::Completed, SHORT).await;
    }
    worker.shutdown();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_b_s_10_tasks_start_before_key_a_s_200th_of_10_000() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // No limit: fairness alone (keys take turns in their queue).
    let a = schedule_all(
        &mut client,
        (0..10_000).map(|n| keyed_k("fair-job", "A", n)).collect(),
    )
    .await;
    let b = schedule_all(
        &mut client,
        (0..10).map(|n| keyed_k("fair-job", "B", n)).collect(),
    )
    .await;
    let spans = Spans::default();
    // One slot: the order handlers start in is the order of dispatch.
    let (worker, _) = spawn_worker(logging_worker(
        &server.url,
        "fair-job",
        1,
        Duration::ZERO,
        &spans,
    ))
    .await;
    wait_until("A's 200th task to start", LONG, || {
        let n = spans.len();
        async move { n >= 210 }
    })
    .await;
    let order = spans.order();
    let a200 = order
        .iter()
        .position(|id| *id == a[199])
        .unwrap_or(usize::MAX);
    for id in &b {
        let at = order.iter().position(|x| x == id);
        assert!(
            at.is_some_and(|p| p < a200),
            "B's task {id} started at {at:?}, A's 200th at {a200}"
        );
    }
    // And A's own order holds (first come within a key).
    let a_seen: Vec<&String> = order.iter().filter(|id| a.contains(*id)).take(50).collect();
    assert_eq!(a_seen, a.iter().take(50).collect::<Vec<_>>());
    worker.shutdown();
    server.stop().await;
}

/// Weighted fairness: key A of weight 3, key B of weight 1 (the default),
/// one slot: A is served 3 times for B's once (A B A A, then B A A A in
/// each round), and ListFlowRules gives the weight back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_weight_3_is_served_3_times_for_another_key_s_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut flow = flow_client(&server.url).await;
    flow.set_concurrency_policy(pb::SetConcurrencyPolicyRequest {
        policy: Some(pb::ConcurrencyPolicy {
            pattern: "wfair".into(),
            limit: 1000,
            weights: [("A".to_string(), 3)].into(),
            ..Default::default()
        }),
    })
    .await
    .expect("SetConcurrencyPolicy");
    let a = schedule_all(
        &mut client,
        (0..100).map(|n| keyed_k("wfair", "A", n)).collect(),
    )
    .await;
    let b = schedule_all(
        &mut client,
        (0..100).map(|n| keyed_k("wfair", "B", n)).collect(),
    )
    .await;
    let spans = Spans::default();
    // One slot: the order handlers start in is the order of dispatch.
    let (worker, _) = spawn_worker(logging_worker(
        &server.url,
        "wfair",
        1,
        Duration::ZERO,
        &spans,
    ))
    .await;
    wait_until("80 tasks to start", LONG, || {
        let n = spans.len();
        async move { n >= 80 }
    })
    .await;
    let keys: String = spans
        .order()
        .iter()
        .take(80)
        .map(|id| {
            if a.contains(id) {
                'A'
            } else if b.contains(id) {
                'B'
            } else {
                '?'
            }
        })
        .collect();
    let na = keys.chars().filter(|c| *c == 'A').count();
    // Equal weights would give 40 each.
    assert!(
        (58..=62).contains(&na),
        "{na} of A's tasks in the first 80 starts: {keys}"
    );
    assert!(
        !keys.contains("BB"),
        "B never has two turns in a row: {keys}"
    );
    assert!(
        !keys.contains("AAAA"),
        "A never has more than 3 turns in a row: {keys}"
    );
    let r = flow
        .list_flow_rules(pb::ListFlowRulesRequest {})
        .await
        .expect("ListFlowRules")
        .into_inner();
    let p = r
        .policies
        .iter()
        .find(|p| p.pattern == "wfair")
        .expect("the policy");
    assert_eq!(p.weights.get("A"), Some(&3), "{p:?}");
    worker.shutdown();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_starts_while_paused_and_everything_runs_after_resume() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut flow = flow_client(&server.url).await;
    let r = flow
        .pause_queue(pb::PauseQueueRequest {
            name: "paused-job".into(),
        })
        .await
        .expect("PauseQueue")
        .into_inner();
    assert!(!r.already);
    let journal = Journal::default();
    let j = journal.clone();
    let (worker, _) = spawn_worker(
        Worker::builder(&server.url)
            .name("pause-worker")
            .concurrency(4)
            .handler("paused-job", {
                let j = j.clone();
                move |ctx: TaskContext| {
                    let j = j.clone();
                    async move {
                        j.record(&ctx);
                        Ok(json!({}))
                    }
                }
            })
            .handler("other-job", move |ctx: TaskContext| {
                let j = j.clone();
                async move {
                    j.record(&ctx);
                    Ok(json!({}))
                }
            })
            .build(),
    )
    .await;
    let ids = schedule_all(
        &mut client,
        (0..20)
            .map(|n| simple("paused-job", json!({ "n": n })))
            .collect(),
    )
    .await;
    for id in &ids {
        let s = status(&mut client, id).await;
        assert_eq!(s.state, pb::TaskState::Pending as i32);
        assert_eq!(s.waiting_reason, pb::WaitingReason::QueuePaused as i32);
        assert_eq!(s.hold.map(|h| h.rule), Some("paused-job".to_string()));
    }
    // The worker takes other work meanwhile: the pause held only its name.
    let other = schedule(&mut client, simple("other-job", json!({}))).await;
    wait_state(&mut client, &other, pb::TaskState::Completed, SHORT).await;
    assert_eq!(journal.len(), 1, "only the other task ran while paused");
    let rules = flow
        .list_flow_rules(pb::ListFlowRulesRequest {})
        .await
        .expect("ListFlowRules")
        .into_inner();
    assert_eq!(rules.paused, vec!["paused-job".to_string()]);

    let r = flow
        .resume_queue(pb::ResumeQueueRequest {
            name: "paused-job".into(),
        })
        .await
        .expect("ResumeQueue")
        .into_inner();
    assert!(r.was_paused);
    for id in &ids {
        wait_state(&mut client, id, pb::TaskState::Completed, SHORT).await;
    }
    assert_eq!(journal.len(), 21);
    worker.shutdown();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_the_limit_holds_and_the_rules_are_still_there() {
    init_tracing();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let url = server.url.clone();
    let mut client = connect(&url).await;
    let mut flow = flow_client(&url).await;
    flow.set_concurrency_policy(pb::SetConcurrencyPolicyRequest {
        policy: Some(pb::ConcurrencyPolicy {
            pattern: "crash-lim".into(),
            limit: 2,
            weights: [("K".to_string(), 2)].into(),
            ..Default::default()
        }),
    })
    .await
    .expect("SetConcurrencyPolicy");
    flow.pause_queue(pb::PauseQueueRequest {
        name: "crash-paused".into(),
    })
    .await
    .expect("PauseQueue");
    let paused = schedule(&mut client, simple("crash-paused", json!({}))).await;

    let ids = schedule_all(
        &mut client,
        (0..30).map(|n| keyed_k("crash-lim", "K", n)).collect(),
    )
    .await;
    let spans = Spans::default();
    let (worker, _) = spawn_worker(logging_worker(
        &url,
        "crash-lim",
        10,
        Duration::from_millis(150),
        &spans,
    ))
    .await;
    wait_until("a few tasks to have started", LONG, || {
        let n = spans.len();
        async move { n >= 4 }
    })
    .await;
    server.kill9().await;

    let mut server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&url).await;
    let mut flow = flow_client(&url).await;
    let rules = flow
        .list_flow_rules(pb::ListFlowRulesRequest {})
        .await
        .expect("ListFlowRules")
        .into_inner();
    assert_eq!(
        rules
            .policies
            .iter()
            .map(|p| (p.pattern.as_str(), p.limit, p.weights.get("K").copied()))
            .collect::<Vec<_>>(),
        [("crash-lim", 2, Some(2))],
        "the policy and its weights are kept"
    );
    assert_eq!(rules.paused, vec!["crash-paused".to_string()]);
    for id in &ids {
        wait_state(&mut client, id, pb::TaskState::Completed, LONG).await;
    }
    assert_eq!(
        spans.max_overlap("K"),
        2,
        "never more than 2 of key K, across the kill"
    );
    let s = status(&mut client, &paused).await;
    assert_eq!(s.waiting_reason, pb::WaitingReason::QueuePaused as i32);
    worker.shutdown();
    server.wait_serving().await;
    assert!(server.terminate().await);
}

/// The figure of the Prometheus sample that starts with `prefix` (the name
/// and labels), if any.
fn sample(scrape: &str, prefix: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

/// GetMetrics, its JSON on the admin API and Prometheus show, per queue,
/// the keys with the most ready tasks (top 5, most first) and the tasks
/// each rule holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_each_queues_top_keys_and_what_each_rule_holds() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut flow = flow_client(&server.url).await;
    set_policy(&mut flow, "top-job", 1).await;
    // Six keys, 5 to 1 tasks each (f: one); one of each key starts.
    let mut reqs = Vec::new();
    for (key, n) in [("a", 5), ("b", 4), ("c", 3), ("d", 2), ("e", 2), ("f", 1)] {
        reqs.extend((0..n).map(|i| keyed("top-job", key, i)));
    }
    schedule_all(&mut client, reqs).await;
    let mut worker = RawWorker::register(&server.url, &["top-job"], 10).await;
    let mut started = Vec::new();
    for _ in 0..6 {
        started.push(worker.assignment().await);
    }
    // A paused name's tasks, held by the pause.
    flow.pause_queue(pb::PauseQueueRequest {
        name: "top-paused".into(),
    })
    .await
    .expect("PauseQueue");
    schedule_all(
        &mut client,
        (0..3)
            .map(|n| simple("top-paused", json!({ "n": n })))
            .collect(),
    )
    .await;

    let m = client
        .get_metrics(pb::GetMetricsRequest {})
        .await
        .expect("GetMetrics")
        .into_inner();
    assert_eq!(m.held.get("concurrency_limit"), Some(&11), "{:?}", m.held);
    assert_eq!(m.held.get("queue_paused"), Some(&3), "{:?}", m.held);
    let names: Vec<&str> = m.queue_flow.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["top-job", "top-paused"], "by name");
    let q = &m.queue_flow[0];
    assert_eq!(
        q.top_keys
            .iter()
            .map(|k| (k.key.as_str(), k.pending, k.running))
            .collect::<Vec<_>>(),
        [
            ("a", 4, 1),
            ("b", 3, 1),
            ("c", 2, 1),
            ("d", 1, 1),
            ("e", 1, 1)
        ],
        "the 5 keys with the most ready tasks, most first, ties by key"
    );
    assert_eq!((q.held_concurrency_limit, q.held_queue_paused), (11, 0));
    let p = &m.queue_flow[1];
    assert_eq!((p.held_concurrency_limit, p.held_queue_paused), (0, 3));
    assert!(p.top_keys.is_empty());

    // The admin API's JSON says the same (the dashboard reads it).
    let json: serde_json::Value = reqwest::get(format!(
        "{}/internal/execution-manager/metrics",
        server.admin_url()
    ))
    .await
    .expect("GET …/metrics")
    .json()
    .await
    .expect("JSON");
    assert_eq!(json["held"]["concurrency_limit"], 11, "{json}");
    assert_eq!(
        json["queueFlow"][0]["topKeys"][0],
        json!({"key": "a", "pending": 4, "running": 1}),
        "{json}"
    );
    assert_eq!(json["queueFlow"][1]["heldQueuePaused"], 3, "{json}");

    let scrape = reqwest::get(format!("{}/metrics", server.admin_url()))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("a body");
    for (prefix, want) in [
        (
            "switchyard_queue_tasks_held{queue=\"top-job\",rule=\"concurrency_limit\"} ",
            11.0,
        ),
        (
            "switchyard_queue_tasks_held{queue=\"top-paused\",rule=\"queue_paused\"} ",
            3.0,
        ),
        (
            "switchyard_queue_key_pending{queue=\"top-job\",key=\"a\"} ",
            4.0,
        ),
        (
            "switchyard_queue_key_pending{queue=\"top-job\",key=\"e\"} ",
            1.0,
        ),
    ] {
        assert_eq!(sample(&scrape, prefix), Some(want), "{prefix}\n{scrape}");
    }
    assert_eq!(
        sample(
            &scrape,
            "switchyard_queue_key_pending{queue=\"top-job\",key=\"f\"} "
        ),
        None,
        "f has nothing waiting"
    );

    // The running task of key a ends: the next of a starts, a's count
    // goes down.
    let mut a = None;
    for t in &started {
        if status(&mut client, &t.task_id).await.concurrency_key == "a" {
            a = Some(t.clone());
        }
    }
    let a = a.expect("a task of key a started");
    worker
        .send(pb::worker_message::Msg::Complete(pb::Complete {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            result: None,
        }))
        .await;
    worker.assignment().await;
    wait_until("a's ready tasks to go down to 3", SHORT, || {
        let mut c = client.clone();
        async move {
            let m = c
                .get_metrics(pb::GetMetricsRequest {})
                .await
                .expect("GetMetrics")
                .into_inner();
            m.queue_flow
                .first()
                .and_then(|q| q.top_keys.first())
                .is_some_and(|k| k.key == "a" && k.pending == 3)
                && m.held.get("concurrency_limit") == Some(&10)
        }
    })
    .await;
    server.stop().await;
}
