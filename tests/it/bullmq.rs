//! SIMPLE tasks on real BullMQ: Switchyard in-process with the BullMQ backend,
//! the real Redis (`REDIS_URL`, default 127.0.0.1:6379) on a key prefix of
//! each test's own, and a real Node BullMQ 5 worker (`tests/bullmq/worker.mjs`,
//! installed by `make test-bullmq-deps`). Tasks go in through the gRPC API.
//!
//! Without Redis or the Node worker these tests skip with a message, except
//! when `CI=true`: there they fail.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;

use crate::common::*;
use switchyard::pb;

mod flow;

const LONG_WAIT: Duration = Duration::from_secs(30);

fn redis_url() -> String {
    std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into())
}

fn worker_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/bullmq")
}

/// Whether the test can run; panics under CI when it cannot.
async fn prerequisites(url: &str) -> bool {
    let mut missing = Vec::new();
    let redis_ok = match redis::Client::open(url) {
        Ok(c) => {
            match tokio::time::timeout(Duration::from_secs(2), c.get_multiplexed_async_connection())
                .await
            {
                Ok(Ok(mut conn)) => redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok(),
                _ => false,
            }
        }
        Err(_) => false,
    };
    if !redis_ok {
        missing.push(format!("Redis at {url}"));
    }
    if !worker_dir().join("node_modules/bullmq").exists() {
        missing.push("tests/bullmq/node_modules (run `make test-bullmq-deps`)".into());
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("BullMQ tests need {}", missing.join(" and "));
    }
    eprintln!("skipping: BullMQ tests need {}", missing.join(" and "));
    false
}

/// A test's own key prefix, deleted at the end.
struct Prefix {
    url: String,
    name: String,
}

impl Prefix {
    fn new(url: &str) -> Prefix {
        Prefix {
            url: url.to_string(),
            name: format!("sytest-{}", uuid::Uuid::now_v7().simple()),
        }
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("a Redis connection")
    }

    fn key(&self, queue: &str, rest: &str) -> String {
        format!("{}:{queue}:{rest}", self.name)
    }

    async fn hget(&self, queue: &str, id: &str, field: &str) -> Option<String> {
        let mut c = self.conn().await;
        redis::cmd("HGET")
            .arg(self.key(queue, id))
            .arg(field)
            .query_async(&mut c)
            .await
            .expect("HGET")
    }

    async fn exists(&self, queue: &str, id: &str) -> bool {
        let mut c = self.conn().await;
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.key(queue, id))
            .query_async(&mut c)
            .await
            .expect("EXISTS");
        n == 1
    }

    async fn clean(&self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut c) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.name))
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query_async(&mut c).await;
        }
    }
}

/// Starts Switchyard with the BullMQ backend on `url`, `prefix`, `queues`.
async fn server(url: &str, prefix: &str, queues: &[&str]) -> TestServer {
    server_with(url, prefix, queues, |_| {}).await
}

/// [`server`], with `f` changing the configuration further.
async fn server_with(
    url: &str,
    prefix: &str,
    queues: &[&str],
    f: impl FnOnce(&mut switchyard::Config),
) -> TestServer {
    let (url, prefix) = (url.to_string(), prefix.to_string());
    let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
    TestServer::start_with(move |cfg| {
        cfg.store.memory = true;
        cfg.bullmq.enabled = true;
        cfg.bullmq.url = url;
        cfg.bullmq.prefix = prefix;
        cfg.bullmq.queues = queues;
        f(cfg);
    })
    .await
}

/// A Node BullMQ worker process and what it said.
struct NodeWorker {
    child: Child,
    said: Arc<Mutex<Vec<Value>>>,
}

impl NodeWorker {
    async fn start(url: &str, prefix: &str, queue: &str, concurrency: u32) -> NodeWorker {
        let mut child = Command::new("node")
            .arg(worker_dir().join("worker.mjs"))
            .current_dir(worker_dir())
            .env("REDIS_URL", url)
            .env("PREFIX", prefix)
            .env("QUEUE", queue)
            .env("CONCURRENCY", concurrency.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let said = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let s = said.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    s.lock().push(v);
                }
            }
        });
        let w = NodeWorker { child, said };
        w.wait_said("the Node worker to be ready", |v| v["event"] == "ready")
            .await;
        w
    }

    fn said(&self, event: &str) -> Vec<Value> {
        self.said
            .lock()
            .iter()
            .filter(|v| v["event"] == event)
            .cloned()
            .collect()
    }

    async fn wait_said(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let said = self.said.clone();
        wait_for(what, LONG_WAIT, || {
            let found = said.lock().iter().find(|v| f(v)).cloned();
            async move { found }
        })
        .await
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Every event of BullMQ tasks on a server, in order.
struct Watch {
    events: Arc<Mutex<Vec<pb::TaskEvent>>>,
}

impl Watch {
    async fn start(client: &mut Client) -> Watch {
        let mut stream = client
            .watch_tasks(pb::WatchTasksRequest {
                filter: Some(pb::TaskFilter {
                    sources: vec![pb::TaskSource::Bullmq as i32],
                    ..Default::default()
                }),
                after_sequence: 0,
                include_snapshot: false,
            })
            .await
            .expect("WatchTasks")
            .into_inner();
        let events = Arc::new(Mutex::new(Vec::new()));
        let e = events.clone();
        tokio::spawn(async move {
            while let Some(Ok(item)) = stream.next().await {
                if let Some(pb::watch_tasks_response::Item::Event(ev)) = item.item {
                    e.lock().push(ev);
                }
            }
        });
        Watch { events }
    }

    /// (kind, state, waiting reason) of a task's events.
    fn of(&self, id: &str) -> Vec<(pb::TaskEventKind, pb::TaskState, pb::WaitingReason)> {
        self.events
            .lock()
            .iter()
            .filter_map(|e| {
                let s = e.status.as_ref()?;
                (s.id == id).then(|| {
                    (
                        pb::TaskEventKind::try_from(e.kind).unwrap_or_default(),
                        state(s),
                        pb::WaitingReason::try_from(s.waiting_reason).unwrap_or_default(),
                    )
                })
            })
            .collect()
    }

    async fn wait_kind(&self, id: &str, kind: pb::TaskEventKind) {
        wait_until(&format!("a {kind:?} event of {id}"), LONG_WAIT, || {
            let found = self.of(id).iter().any(|e| e.0 == kind);
            async move { found }
        })
        .await;
    }
}

/// Waits until the task's job is in Redis (its status names the job).
async fn wait_added(c: &Client, id: &str) {
    wait_for("the job to be added", LONG_WAIT, || {
        let mut c = c.clone();
        let id = id.to_string();
        async move { (!status(&mut c, &id).await.external_id.is_empty()).then_some(()) }
    })
    .await;
}

fn task(queue: &str, data: Value, options: pb::TaskOptions) -> pb::ScheduleTaskRequest {
    simple_with(queue, data, options)
}

#[tokio::test]
async fn a_job_completes_with_its_result_logs_and_events() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    let p = Prefix::new(&url);
    let s = server(&url, &p.name, &["email"]).await;
    let mut c = s.client().await;
    let watch = Watch::start(&mut c).await;
    let worker = NodeWorker::start(&url, &p.name, "email", 1).await;

    let id = schedule(
        &mut c,
        task(
            "email",
            json!({"mode": "ok", "to": "a@b.c"}),
            Default::default(),
        ),
    )
    .await;
    let st = wait_state(&mut c, &id, pb::TaskState::Completed, LONG_WAIT).await;
    assert_eq!(st.source, pb::TaskSource::Bullmq as i32);
    assert_eq!(st.external_id, id, "the job id is the task id");
    let result = to_json(st.result.as_ref().expect("a result"));
    assert_eq!(result["by"], "node");
    assert_eq!(result["echo"]["to"], "a@b.c");
    assert_eq!(st.attempt, 1);

    // BullMQ's job.log lines are in the task's log, before the end.
    let lines = logs(&mut c, &id).await;
    let text = log_text(&lines);
    let hello = find_line(&lines, 0, &["hello from node"])
        .unwrap_or_else(|| panic!("no job.log line:\n{text}"));
    let second = find_line(&lines, hello, &["second line"])
        .unwrap_or_else(|| panic!("no second line:\n{text}"));
    // They come from the engine, not from a Switchyard worker.
    assert_eq!(
        lines[hello].source,
        pb::LogSource::Engine as i32,
        "job.log lines are the engine's:\n{text}"
    );
    assert!(
        find_line(&lines, second, &["completed"]).is_some(),
        "log order:\n{text}"
    );
    // The queue's first job is added once, though it came before the
    // follower had read the queue's stream.
    assert!(
        find_line(&lines, 0, &["not found in Redis"]).is_none(),
        "added once:\n{text}"
    );

    // The job as Node sees it: name, data, the id.
    assert_eq!(p.hget("email", &id, "name").await.as_deref(), Some("email"));
    let data: Value =
        serde_json::from_str(&p.hget("email", &id, "data").await.expect("data")).expect("JSON");
    assert_eq!(data["to"], "a@b.c");
    assert_eq!(worker.said("processed").len(), 1);

    watch.wait_kind(&id, pb::TaskEventKind::Completed).await;
    let ev = watch.of(&id);
    use pb::TaskEventKind as K;
    use pb::TaskState as S;
    assert_eq!(ev.first().map(|e| e.0), Some(K::Scheduled), "{ev:?}");
    assert!(
        ev.iter().any(|e| e.0 == K::Updated && e.1 == S::Pending),
        "mirrored waiting: {ev:?}"
    );
    let running = ev
        .iter()
        .rposition(|e| e.0 == K::Started && e.1 == S::Running)
        .expect("active");
    let progress = ev
        .iter()
        .position(|e| e.0 == K::Progress)
        .unwrap_or_else(|| panic!("progress: {ev:?}"));
    assert!(running < progress, "{ev:?}");
    assert_eq!(
        ev.last().map(|e| (e.0, e.1)),
        Some((K::Completed, S::Completed)),
        "{ev:?}"
    );

    worker.stop().await;
    s.stop().await;
    p.clean().await;
}

/// `ScheduleTasks` routed to BullMQ: a bulk of 1,000 with 3 bad items
/// becomes 997 jobs (job id = task id) that a Node BullMQ worker consumes,
/// each task COMPLETED with the worker's result.
#[tokio::test]
async fn a_bulk_of_1000_with_3_bad_items_becomes_997_jobs_a_node_worker_consumes() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    let p = Prefix::new(&url);
    let s = server(&url, &p.name, &["bulkq"]).await;
    let mut c = s.client().await;
    let worker = NodeWorker::start(&url, &p.name, "bulkq", 50).await;

    let results = crate::bulk::bulk(&mut c, crate::bulk::thousand("bulkq")).await;
    let (ids, errors) = crate::bulk::split(&results, 1000);
    assert_eq!(ids.len(), 997);
    crate::bulk::assert_bad_items(&errors);

    let said = worker.said.clone();
    wait_until("the Node worker to process 997 jobs", LONG_WAIT * 2, || {
        let n = said
            .lock()
            .iter()
            .filter(|v| v["event"] == "processed")
            .count();
        async move { n >= 997 }
    })
    .await;
    let processed: std::collections::HashSet<String> = worker
        .said("processed")
        .iter()
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect();
    let wanted: std::collections::HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(processed, wanted, "each job is one of the bulk's tasks");
    assert_eq!(worker.said("processed").len(), 997, "each once");
    wait_until("the 997 tasks to be COMPLETED", LONG_WAIT, || {
        let mut c = c.clone();
        async move {
            let m = c
                .get_metrics(pb::GetMetricsRequest {})
                .await
                .expect("GetMetrics")
                .into_inner();
            m.by_name.get("bulkq").map(|n| n.completed) == Some(997)
        }
    })
    .await;
    let st = status(&mut c, &ids[500]).await;
    assert_eq!(st.source, pb::TaskSource::Bullmq as i32);
    assert_eq!(st.external_id, ids[500]);
    assert_eq!(to_json(st.result.as_ref().expect("a result"))["by"], "node");

    worker.stop().await;
    s.stop().await;
    p.clean().await;
}

/// Retention removes a task that ran on BullMQ, and its job goes from
/// Redis with it (the hash and its place in the completed set): the job
/// was Switchyard's.
#[tokio::test]
async fn retention_removes_the_bullmq_job_with_its_task() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    let p = Prefix::new(&url);
    let s = server_with(&url, &p.name, &["email"], |c| {
        c.retention.sweep_every = Duration::from_millis(100);
    })
    .await;
    let mut c = s.client().await;
    let worker = NodeWorker::start(&url, &p.name, "email", 1).await;
    let keep = |completed: Duration| pb::TaskOptions {
        retention: Some(pb::Retention {
            completed: Some(dur(completed)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let gone = schedule(
        &mut c,
        task("email", json!({"mode": "ok"}), keep(Duration::ZERO)),
    )
    .await;
    let kept = schedule(
        &mut c,
        task(
            "email",
            json!({"mode": "ok"}),
            keep(Duration::from_secs(3600)),
        ),
    )
    .await;
    wait_state(&mut c, &kept, pb::TaskState::Completed, LONG_WAIT).await;
    wait_until(
        "the task kept 0 s and its job to be removed",
        LONG_WAIT,
        || {
            let mut c = c.clone();
            let (gone, p) = (gone.clone(), &p);
            async move {
                let removed = c
                    .get_task_status(pb::GetTaskStatusRequest {
                        task_id: gone.clone(),
                    })
                    .await
                    .is_err_and(|e| e.code() == tonic::Code::NotFound);
                removed && !p.exists("email", &gone).await
            }
        },
    )
    .await;
    let mut r = p.conn().await;
    let completed: Vec<String> = redis::cmd("ZRANGE")
        .arg(p.key("email", "completed"))
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .expect("ZRANGE");
    assert!(!completed.contains(&gone), "{completed:?}");
    assert!(completed.contains(&kept), "{completed:?}");
    assert!(
        p.exists("email", &kept).await,
        "the job of a kept task stays"
    );
    worker.stop().await;
    s.stop().await;
    p.clean().await;
}

#[tokio::test]
async fn failures_are_retried_by_bullmq_and_end_failed() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    let p = Prefix::new(&url);
    let s = server(&url, &p.name, &["flaky"]).await;
    let mut c = s.client().await;
    let watch = Watch::start(&mut c).await;
    let worker = NodeWorker::start(&url, &p.name, "flaky", 2).await;

    let backoff = |kind: pb::backoff::Kind| pb::TaskOptions {
        attempts: 3,
        backoff: Some(pb::Backoff {
            kind: kind as i32,
            base: Some(dur(Duration::from_millis(200))),
            max: Some(dur(Duration::from_secs(5))),
        }),
        ..Default::default()
    };
    let failing = schedule(
        &mut c,
        task(
            "flaky",
            json!({"mode": "fail"}),
            backoff(pb::backoff::Kind::Fixed),
        ),
    )
    .await;
    let healing = schedule(
        &mut c,
        task(
            "flaky",
            json!({"mode": "fail_until", "ok_at": 3}),
            backoff(pb::backoff::Kind::Exponential),
        ),
    )
    .await;

    let st = wait_state(&mut c, &failing, pb::TaskState::Failed, LONG_WAIT).await;
    let err = st.last_error.expect("an error");
    assert!(err.message.contains("boom on attempt 3"), "{err:?}");
    assert_eq!(err.kind, "TypeError", "{err:?}");
    assert!(
        err.details.contains("TypeError"),
        "the stack trace: {err:?}"
    );
    assert_eq!(st.attempt, 3);
    let starts = worker.said("start");
    assert_eq!(
        starts
            .iter()
            .filter(|v| v["id"] == failing.as_str())
            .count(),
        3
    );

    let ok = wait_state(&mut c, &healing, pb::TaskState::Completed, LONG_WAIT).await;
    assert_eq!(ok.attempt, 3);
    // Node reads the backoff as it writes it.
    let opts: Value = serde_json::from_str(&p.hget("flaky", &healing, "opts").await.expect("opts"))
        .expect("JSON");
    assert_eq!(
        opts["backoff"],
        json!({"type": "exponential", "delay": 200}),
        "{opts}"
    );
    assert_eq!(opts["attempts"], 3);

    let lines = logs(&mut c, &failing).await;
    assert!(
        find_line(
            &lines,
            0,
            &["attempt 1 failed", "boom on attempt 1", "BullMQ retries"]
        )
        .is_some(),
        "{}",
        log_text(&lines)
    );

    use pb::TaskEventKind as K;
    let ev = watch.of(&failing);
    assert!(
        ev.iter()
            .any(|e| e.1 == pb::TaskState::Pending && e.2 == pb::WaitingReason::BackingOff),
        "backing off between attempts: {ev:?}"
    );
    assert!(
        ev.iter()
            .filter(|e| e.0 == K::Started && e.1 == pb::TaskState::Running)
            .count()
            >= 3,
        "{ev:?}"
    );
    assert_eq!(ev.last().map(|e| e.0), Some(K::Failed), "{ev:?}");

    worker.stop().await;
    s.stop().await;
    p.clean().await;
}

#[tokio::test]
async fn priority_order_holds_across_the_mapping() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    let p = Prefix::new(&url);
    let s = server(&url, &p.name, &["prio"]).await;
    let mut c = s.client().await;
    let watch = Watch::start(&mut c).await;

    // Added while no worker runs, in an order that is not the run order.
    let plan: &[(i32, bool, &str)] = &[
        (-1000, false, "lowest"),
        (0, false, "default"),
        (1000, false, "highest"),
        (500, false, "high"),
        (0, false, "default-later"),
        (-1000, true, "immediate"),
    ];
    let mut ids = HashMap::new();
    for (priority, immediate, label) in plan {
        let opts = pb::TaskOptions {
            priority: *priority,
            immediate: *immediate,
            ..Default::default()
        };
        let id = schedule(
            &mut c,
            task("prio", json!({"mode": "ok", "label": label}), opts),
        )
        .await;
        ids.insert(id, *label);
    }
    for id in ids.keys() {
        wait_added(&c, id).await;
    }
    let label_of = |want: &str| {
        ids.iter()
            .find(|(_, l)| **l == want)
            .map(|(id, _)| id.clone())
            .expect("an id")
    };
    // BullMQ's priorities: 1001 - priority; immediate has none (the wait list).
    for (label, want) in [
        ("highest", "1"),
        ("default", "1001"),
        ("lowest", "2001"),
        ("immediate", "0"),
    ] {
        assert_eq!(
            p.hget("prio", &label_of(label), "priority")
                .await
                .as_deref(),
            Some(want),
            "{label}"
        );
    }
    let st = status(&mut c, &label_of("default")).await;
    assert_eq!(state(&st), pb::TaskState::Pending);
    assert_eq!(st.waiting_reason, pb::WaitingReason::Queued as i32);

    let worker = NodeWorker::start(&url, &p.name, "prio", 1).await;
    for id in ids.keys() {
        wait_state(&mut c, id, pb::TaskState::Completed, LONG_WAIT).await;
    }
    let order: Vec<&str> = worker
        .said("start")
        .iter()
        .filter_map(|v| v["id"].as_str().and_then(|id| ids.get(id)).copied())
        .collect();
    assert_eq!(
        order,
        [
            "immediate",
            "highest",
            "high",
            "default",
            "default-later",
            "lowest"
        ]
    );
    for id in ids.keys() {
        watch.wait_kind(id, pb::TaskEventKind::Completed).await;
    }

    worker.stop().await;
    s.stop().await;
    p.clean().await;
}

#[tokio::test]
async fn a_delayed_job_waits_then_runs() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    let p = Prefix::new(&url);
    let s = server(&url, &p.name, &["*"]).await;
    let mut c = s.client().await;
    let watch = Watch::start(&mut c).await;
    let worker = NodeWorker::start(&url, &p.name, "later", 1).await;

    let delay = Duration::from_millis(1500);
    let opts = pb::TaskOptions {
        delay: Some(dur(delay)),
        ..Default::default()
    };
    let started = tokio::time::Instant::now();
    let id = schedule(&mut c, task("later", json!({"mode": "ok"}), opts)).await;
    let st = status(&mut c, &id).await;
    assert_eq!(state(&st), pb::TaskState::Pending);
    assert_eq!(st.waiting_reason, pb::WaitingReason::Delayed as i32);
    // The core keeps the delay on its timer and offers the task when due, so
    // the job is added with the remaining delay (none, or what is left if
    // the task is offered early): never before it may run.
    if let Some(ms) = p.hget("later", &id, "delay").await {
        let ms: u64 = ms.parse().expect("ms");
        assert!(ms <= 1500, "{ms}");
        let added_at: u64 = p
            .hget("later", &id, "timestamp")
            .await
            .expect("timestamp")
            .parse()
            .expect("ms");
        let created = micros(&st.created_at) as u64 / 1000;
        assert!(
            added_at + ms + 2 >= created + 1500,
            "runs no earlier than run_at"
        );
    }
    wait_state(&mut c, &id, pb::TaskState::Completed, LONG_WAIT).await;
    assert!(
        started.elapsed() >= delay,
        "ran after {:?}",
        started.elapsed()
    );
    let ev = watch.of(&id);
    assert!(
        ev.iter()
            .any(|e| e.1 == pb::TaskState::Pending && e.2 == pb::WaitingReason::Delayed),
        "{ev:?}"
    );
    watch.wait_kind(&id, pb::TaskEventKind::Completed).await;

    worker.stop().await;
    s.stop().await;
    p.clean().await;
}

#[tokio::test]
async fn cancel_removes_a_waiting_job() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    let p = Prefix::new(&url);
    let s = server(&url, &p.name, &["idle"]).await;
    let mut c = s.client().await;
    let watch = Watch::start(&mut c).await;

    let id = schedule(
        &mut c,
        task("idle", json!({"mode": "ok"}), Default::default()),
    )
    .await;
    wait_added(&c, &id).await;
    assert!(p.exists("idle", &id).await);

    let r = cancel(&mut c, &id, "not needed").await;
    assert_eq!(
        r.outcome,
        pb::CancelOutcome::Cancelled as i32,
        "removed at once"
    );
    wait_state(&mut c, &id, pb::TaskState::Cancelled, LONG_WAIT).await;
    assert!(!p.exists("idle", &id).await, "the job is gone from Redis");
    let mut conn = p.conn().await;
    let waiting: i64 = redis::cmd("ZCARD")
        .arg(p.key("idle", "prioritized"))
        .query_async(&mut conn)
        .await
        .expect("ZCARD");
    assert_eq!(waiting, 0);

    // A worker that starts now finds nothing to run.
    let worker = NodeWorker::start(&url, &p.name, "idle", 1).await;
    let after = schedule(
        &mut c,
        task("idle", json!({"mode": "ok"}), Default::default()),
    )
    .await;
    wait_state(&mut c, &after, pb::TaskState::Completed, LONG_WAIT).await;
    assert!(worker.said("start").iter().all(|v| v["id"] != id.as_str()));

    watch.wait_kind(&id, pb::TaskEventKind::Cancelled).await;
    let ev = watch.of(&id);
    assert_eq!(
        ev.last().map(|e| e.1),
        Some(pb::TaskState::Cancelled),
        "{ev:?}"
    );

    worker.stop().await;
    s.stop().await;
    p.clean().await;
}

/// RetryTask of a task routed to BullMQ is refused, naming why: BullMQ
/// keeps the ended job under the task's id, so a new add would be ignored.
/// A cancel of a job that is gone from Redis (lost with Redis's data, or
/// removed by someone else) ends the task CANCELLED once the follower has
/// read the events stream up to where it was when the cancel looked: here
/// the stream is 20,000 entries ahead of the follower, so the cancel waits
/// for it to catch up, while the backlog of other jobs stays followed.
#[tokio::test]
async fn a_cancel_of_a_job_gone_from_redis_ends_once_the_stream_is_read_up_to_it() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    let p = Prefix::new(&url);
    let s = server(&url, &p.name, &["idle"]).await;
    let mut c = s.client().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            schedule(
                &mut c,
                task("idle", json!({"mode": "ok"}), Default::default()),
            )
            .await,
        );
    }
    for id in &ids {
        wait_added(&c, id).await;
    }
    let lost = &ids[0];
    let mut conn = p.conn().await;
    let _: i64 = redis::cmd("DEL")
        .arg(p.key("idle", lost))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let mut pipe = redis::pipe();
    for i in 0..20_000 {
        pipe.cmd("XADD")
            .arg(p.key("idle", "events"))
            .arg("*")
            .arg("event")
            .arg("noise")
            .arg("n")
            .arg(i)
            .ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.expect("XADD");

    cancel(&mut c, lost, "not needed").await;
    wait_state(&mut c, lost, pb::TaskState::Cancelled, LONG_WAIT).await;
    let lines: Vec<String> = logs(&mut c, lost)
        .await
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("BullMQ job {lost} is not in Redis")),
        "{lines:?}"
    );
    // The others are still followed and waiting in Redis.
    for id in &ids[1..] {
        assert_eq!(
            status(&mut c, id).await.state,
            pb::TaskState::Pending as i32
        );
        assert!(p.exists("idle", id).await);
    }
    let r = cancel(&mut c, &ids[1], "not needed").await;
    assert_eq!(r.outcome, pb::CancelOutcome::Cancelled as i32);
    wait_state(&mut c, &ids[1], pb::TaskState::Cancelled, LONG_WAIT).await;

    s.stop().await;
    p.clean().await;
}

#[tokio::test]
async fn a_retry_of_a_bullmq_task_is_refused_naming_the_backend() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    let p = Prefix::new(&url);
    let s = server(&url, &p.name, &["idle"]).await;
    let mut c = s.client().await;
    let id = schedule(
        &mut c,
        task("idle", json!({"mode": "ok"}), Default::default()),
    )
    .await;
    cancel(&mut c, &id, "not needed").await;
    wait_state(&mut c, &id, pb::TaskState::Cancelled, LONG_WAIT).await;
    let e = c
        .retry_task(pb::RetryTaskRequest {
            task_id: id.clone(),
            reason: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("bullmq backend"), "{e:?}");
    let after = status(&mut c, &id).await;
    assert_eq!((state(&after), after.run), (pb::TaskState::Cancelled, 0));
    s.stop().await;
    p.clean().await;
}

#[tokio::test]
async fn cancel_of_an_active_job_is_requested_then_honoured_by_the_helper() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    let p = Prefix::new(&url);
    let s = server(&url, &p.name, &["long"]).await;
    let mut c = s.client().await;
    let watch = Watch::start(&mut c).await;
    let worker = NodeWorker::start(&url, &p.name, "long", 1).await;

    // The job takes 3 s to wind down after the cancel: longer than
    // CancelTask waits for a backend to settle.
    let (id, _) = run_slow(
        &mut c,
        &worker,
        "long",
        json!({"mode": "slow", "ms": 60000, "stop_ms": 3000}),
    )
    .await;

    let r = cancel(&mut c, &id, "user left").await;
    assert_eq!(
        r.outcome,
        pb::CancelOutcome::CancelRequested as i32,
        "answered honestly"
    );
    let st = r.status.expect("a status");
    assert_eq!(state(&st), pb::TaskState::Running);
    assert!(st.cancel_requested);

    worker
        .wait_said("the helper to abort", |v| {
            v["event"] == "aborted" && v["id"] == id.as_str()
        })
        .await;
    wait_state(&mut c, &id, pb::TaskState::Cancelled, LONG_WAIT).await;
    assert!(worker
        .said("processed")
        .iter()
        .all(|v| v["id"] != id.as_str()));
    let lines = logs(&mut c, &id).await;
    assert!(
        find_line(&lines, 0, &["asked its worker to stop"]).is_some(),
        "{}",
        log_text(&lines)
    );
    assert!(
        find_line(&lines, 0, &["AbortError"]).is_some(),
        "{}",
        log_text(&lines)
    );

    watch.wait_kind(&id, pb::TaskEventKind::Cancelled).await;
    let ev = watch.of(&id);
    let requested = ev
        .iter()
        .position(|e| e.0 == pb::TaskEventKind::CancelRequested)
        .expect("CANCEL_REQUESTED");
    let cancelled = ev
        .iter()
        .position(|e| e.0 == pb::TaskEventKind::Cancelled)
        .expect("CANCELLED");
    assert!(requested < cancelled, "{ev:?}");

    worker.stop().await;
    s.stop().await;
    p.clean().await;
}

/// A redis-server of the test's own, a server whose Redis commands time
/// out after 300 ms, and one Node worker on `queue`.
struct Impatient {
    _redis: OwnRedis,
    url: String,
    server: TestServer,
    worker: NodeWorker,
}

impl Impatient {
    async fn start(queue: &str) -> Option<Impatient> {
        let (redis, url) = OwnRedis::for_test().await?;
        let p = Prefix::new(&url);
        let server = server_with(&url, &p.name, &[queue], |cfg| {
            cfg.bullmq.command_timeout = Duration::from_millis(300);
        })
        .await;
        let worker = NodeWorker::start(&url, &p.name, queue, 1).await;
        Some(Impatient {
            _redis: redis,
            url,
            server,
            worker,
        })
    }

    async fn stop(self) {
        self.worker.stop().await;
        self.server.stop().await;
    }
}

/// A cancel that cannot reach Redis (its commands time out) is tried again
/// until it does: an active job sends no event that would retry it, and
/// Redis never looked down to the stream's reader.
#[tokio::test]
async fn a_cancel_that_cannot_reach_redis_is_tried_again_until_it_does() {
    let Some(t) = Impatient::start("stuck").await else {
        return;
    };
    let (own_url, s, worker) = (&t.url, &t.server, &t.worker);
    let mut c = s.client().await;
    let (id, _) = run_slow(
        &mut c,
        worker,
        "stuck",
        json!({"mode": "slow", "ms": 60000}),
    )
    .await;

    // For 2 s Redis holds writes, scripts and PUBLISH, but not reads: the
    // cancel's commands time out while the reader keeps reading.
    pause_redis(own_url, 2000, "WRITE").await;
    let r = cancel(&mut c, &id, "user left").await;
    assert_eq!(r.outcome, pb::CancelOutcome::CancelRequested as i32);

    // The job would run for a minute: it ends long before, cancelled.
    worker
        .wait_said("the helper to abort", |v| {
            v["event"] == "aborted" && v["id"] == id.as_str()
        })
        .await;
    wait_state(&mut c, &id, pb::TaskState::Cancelled, LONG_WAIT).await;
    let lines = logs(&mut c, &id).await;
    assert!(
        find_line(&lines, 0, &["asked its worker to stop"]).is_some(),
        "{}",
        log_text(&lines)
    );

    t.stop().await;
}

/// A redis-server of the test's own, on a fixed port it can restart on.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    /// A redis-server of the test's own on a free port, and its URL; `None`
    /// (the test skips) without the prerequisites, except under `CI=true`.
    async fn for_test() -> Option<(OwnRedis, String)> {
        if !prerequisites(&redis_url()).await {
            return None;
        }
        if which("redis-server").is_none() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("redis-server is not installed");
            }
            eprintln!("skipping: redis-server is not installed");
            return None;
        }
        let port = free_port();
        Some((
            OwnRedis::start(port).await,
            format!("redis://127.0.0.1:{port}"),
        ))
    }

    async fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs");
        let url = format!("redis://127.0.0.1:{port}");
        wait_until("the test's redis-server to answer", LONG_WAIT, || {
            let url = url.clone();
            async move {
                match redis::Client::open(url.as_str()) {
                    Ok(c) => match c.get_multiplexed_async_connection().await {
                        Ok(mut conn) => redis::cmd("PING")
                            .query_async::<String>(&mut conn)
                            .await
                            .is_ok(),
                        Err(_) => false,
                    },
                    Err(_) => false,
                }
            }
        })
        .await;
        OwnRedis {
            port,
            child: Some(child),
        }
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

#[tokio::test]
async fn redis_down_and_back_while_scheduling_loses_and_doubles_nothing() {
    let Some((mut redis, own_url)) = OwnRedis::for_test().await else {
        return;
    };
    let p = Prefix::new(&own_url);
    let s = server(&own_url, &p.name, &["bulk"]).await;
    let mut c = s.client().await;
    let watch = Watch::start(&mut c).await;

    const N: usize = 200;
    let accepted: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let schedule_some = |from: usize, to: usize| {
        let c = c.clone();
        let accepted = accepted.clone();
        async move {
            for i in from..to {
                let mut c = c.clone();
                let id = schedule(
                    &mut c,
                    task("bulk", json!({"mode": "ok", "i": i}), Default::default()),
                )
                .await;
                accepted.lock().push(id);
            }
        }
    };
    // Before, during and after the outage, with the kill in the middle of a
    // burst.
    schedule_some(0, 50).await;
    let burst = tokio::spawn(schedule_some(50, 120));
    tokio::time::sleep(Duration::from_millis(20)).await;
    redis.kill().await;
    burst.await.expect("the burst");
    schedule_some(120, 160).await;

    // During the outage: PENDING, ENGINE_UNREACHABLE.
    let last = accepted.lock().last().cloned().expect("an id");
    let c2 = c.clone();
    wait_for("a task to show ENGINE_UNREACHABLE", LONG_WAIT, || {
        let mut c2 = c2.clone();
        let id = last.clone();
        async move {
            let s = status(&mut c2, &id).await;
            (state(&s) == pb::TaskState::Pending
                && s.waiting_reason == pb::WaitingReason::EngineUnreachable as i32)
                .then_some(())
        }
    })
    .await;

    let _redis = OwnRedis::start(redis.port).await;
    schedule_some(160, N).await;
    let ids = accepted.lock().clone();
    assert_eq!(ids.len(), N, "every request was accepted");

    // Every accepted task reaches Redis again (the restarted one lost its
    // data), then one worker processes each exactly once.
    let worker = NodeWorker::start(&own_url, &p.name, "bulk", 20).await;
    for id in &ids {
        wait_state(
            &mut c,
            id,
            pb::TaskState::Completed,
            Duration::from_secs(120),
        )
        .await;
    }
    let mut per_job: HashMap<String, usize> = HashMap::new();
    for v in worker.said("processed") {
        *per_job
            .entry(v["id"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    for id in &ids {
        assert_eq!(per_job.get(id).copied(), Some(1), "job {id} processed once");
    }
    assert_eq!(per_job.len(), N, "no job that was not accepted");
    let unreachable = ids
        .iter()
        .filter(|id| {
            watch
                .of(id)
                .iter()
                .any(|e| e.2 == pb::WaitingReason::EngineUnreachable)
        })
        .count();
    assert!(unreachable > 0, "watchers saw the outage");

    worker.stop().await;
    s.stop().await;
}

/// An add that times out may still land: Redis runs it once it answers
/// again, and a worker takes the job while Switchyard has put the task back
/// in its outbox. Offering the task again adds nothing (the job id is the
/// task id), and that job's events went by while no one followed it: the
/// backend must read the job's state, not wait for events that will not
/// come again.
#[tokio::test]
async fn an_add_that_timed_out_but_landed_is_followed_from_its_state() {
    let Some(t) = Impatient::start("late").await else {
        return;
    };
    let (own_url, s, worker) = (&t.url, &t.server, &t.worker);
    let mut c = s.client().await;

    // A first job, so that the queue's follower is reading its stream.
    let first = schedule(
        &mut c,
        task("late", json!({"mode": "ok"}), Default::default()),
    )
    .await;
    wait_state(&mut c, &first, pb::TaskState::Completed, LONG_WAIT).await;

    // Redis holds every command for 700 ms: the add times out after 300 ms
    // (the task goes back to the outbox for 500 ms), then Redis runs it and
    // the worker takes the job before the task is offered again.
    pause_redis(own_url, 700, "ALL").await;
    let (id, running) = run_slow(&mut c, worker, "late", json!({"mode": "slow", "ms": 3000})).await;
    assert_eq!(running.external_id, id);
    wait_state(&mut c, &id, pb::TaskState::Completed, LONG_WAIT).await;

    let lines = logs(&mut c, &id).await;
    assert!(
        find_line(&lines, 0, &["engine unreachable"]).is_some(),
        "the add timed out first: {}",
        log_text(&lines)
    );
    let runs = worker
        .said("processed")
        .iter()
        .filter(|v| v["id"] == id.as_str())
        .count();
    assert_eq!(runs, 1, "one job, processed once");

    t.stop().await;
}

/// Schedules a job that runs until it is cancelled (`data` says how long),
/// and waits for it to run on `worker` and show RUNNING; its id and status.
async fn run_slow(
    c: &mut Client,
    worker: &NodeWorker,
    queue: &str,
    data: Value,
) -> (String, pb::TaskStatus) {
    let id = schedule(c, task(queue, data, Default::default())).await;
    worker
        .wait_said("the job to run", |v| {
            v["event"] == "running" && v["id"] == id.as_str()
        })
        .await;
    let running = wait_state(c, &id, pb::TaskState::Running, LONG_WAIT).await;
    (id, running)
}

/// `CLIENT PAUSE ms mode` on the Redis at `url`.
async fn pause_redis(url: &str, ms: u64, mode: &str) {
    let mut admin = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: String = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg(mode)
        .query_async(&mut admin)
        .await
        .expect("CLIENT PAUSE");
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(bin))
        .find(|p| p.exists())
}

/// Flow control on BullMQ (issue 21): a key at its limit is held in
/// Switchyard (PENDING, `CONCURRENCY_LIMIT`) and never added to BullMQ, so
/// a Node worker with 10 slots runs at most 2 jobs of the key at once (from
/// its own log, in the order it wrote it). The policy comes from the
/// configuration (`[[flow.concurrency]]`).
#[tokio::test]
async fn a_key_with_limit_2_runs_at_most_2_jobs_at_once_on_a_node_worker_with_10_slots() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    let p = Prefix::new(&url);
    let s = server_with(&url, &p.name, &["fl-email"], |cfg| {
        cfg.flow.concurrency = vec![switchyard::config::FlowPolicyConfig {
            pattern: "fl-email".into(),
            limit: 2,
            ..Default::default()
        }];
    })
    .await;
    let mut c = s.client().await;
    let worker = NodeWorker::start(&url, &p.name, "fl-email", 10).await;
    let mut ids = Vec::new();
    for n in 0..500 {
        ids.push(
            schedule(
                &mut c,
                task(
                    "fl-email",
                    // 40 ms: 500 jobs two at a time take 10 s, so the
                    // last is still held when its status is read even when
                    // 500 sequential calls on PostgreSQL take a few
                    // seconds (with 10 ms, a slow machine's CI found it
                    // already queued for the worker).
                    json!({"mode": "slow", "ms": 40, "n": n}),
                    pb::TaskOptions {
                        concurrency_key: "tenant-1".into(),
                        ..Default::default()
                    },
                ),
            )
            .await,
        );
    }
    let last = status(&mut c, &ids[499]).await;
    assert_eq!(
        last.waiting_reason,
        pb::WaitingReason::ConcurrencyLimit as i32,
        "{last:?}"
    );
    assert!(
        !p.exists("fl-email", &ids[499]).await,
        "a held task is not in BullMQ"
    );
    for id in &ids {
        let st = wait_state(&mut c, id, pb::TaskState::Completed, LONG_WAIT).await;
        assert_eq!(st.source, pb::TaskSource::Bullmq as i32);
    }
    let (mut running, mut most) = (0i32, 0i32);
    for v in worker.said.lock().iter() {
        match v["event"].as_str() {
            Some("start") => {
                running += 1;
                most = most.max(running);
            }
            Some("processed") => running -= 1,
            _ => {}
        }
    }
    assert_eq!(
        most, 2,
        "at most (and at times exactly) 2 jobs of the key at once"
    );
    assert_eq!(worker.said("processed").len(), 500);
    worker.stop().await;
    p.clean().await;
}
