//! Switchyard routing to the real engines, measured against the same
//! engines driven directly:
//!
//! - **g**: SIMPLE tasks through Switchyard's BullMQ backend on the same
//!   Redis as the Node peer's `Queue.add`. A task counts when its job is in
//!   Redis (read from the queue's `wait`, `prioritized` and `delayed` keys),
//!   not when `ScheduleTask` answers: Switchyard answers once the task is
//!   durable, and adds the job right after.
//! - **jb**: g with `ScheduleTasks` of 100 tasks a call (j's load) against
//!   Node's `Queue.addBulk` of 100 on the same Redis.
//! - **h**: COMPLEX tasks through Switchyard's Temporal backend on the same
//!   dev server as the Python peer's `start_workflow`. A workflow counts as
//!   started when Switchyard reports it RUNNING with its run id (the
//!   backend does that once StartWorkflowExecution has answered), seen on
//!   `WatchTasks`; completed when its COMPLETED event arrives.
//!
//! Each measurement runs on a fresh server with its own data directory, and
//! for g its own BullMQ key prefix, deleted afterwards.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use switchyard::pb;
use switchyard::pb::orchestrator_service_client::OrchestratorServiceClient;
use switchyard::pb::watch_tasks_response::Item;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::load::{check, payload_n, simple, BulkProducer, Counts, MakeRequest, Pool, Producer};
use crate::scenarios::{Ctx, BULK_INFLIGHT, BULK_PER_CALL};
use crate::server::cpu_secs;

/// The task name, and so the BullMQ queue, of g.
pub const G_QUEUE: &str = "bench.g";
/// The workflow type of h: the Python peer's `ThreeStep` (three activities).
pub const H_WORKFLOW: &str = "ThreeStep";

/// A connection to the Redis of g.
pub async fn redis_conn(url: &str) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(url).with_context(|| format!("Redis URL {url}"))?;
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| anyhow!("connecting to {url} timed out"))?
    .with_context(|| format!("connecting to {url}"))
}

/// Jobs of `queue` waiting in Redis (wait + prioritized + delayed): with no
/// worker, every job Switchyard added is in one of them.
async fn queued(c: &mut MultiplexedConnection, prefix: &str, queue: &str) -> Result<u64> {
    let k = |s: &str| format!("{prefix}:{queue}:{s}");
    let (w, p, d): (u64, u64, u64) = redis::pipe()
        .cmd("LLEN")
        .arg(k("wait"))
        .cmd("ZCARD")
        .arg(k("prioritized"))
        .cmd("ZCARD")
        .arg(k("delayed"))
        .query_async(c)
        .await
        .context("reading the queue's length")?;
    Ok(w + p + d)
}

/// CPU seconds Redis has used (`INFO cpu`).
async fn redis_cpu(c: &mut MultiplexedConnection) -> Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(c).await?;
    let get = |k: &str| {
        info.lines()
            .find_map(|l| {
                l.strip_prefix(k)?
                    .strip_prefix(':')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    Ok(get("used_cpu_sys") + get("used_cpu_user"))
}

/// Deletes every key under `prefix:`.
pub async fn unlink_prefix(c: &mut MultiplexedConnection, prefix: &str) -> Result<u64> {
    let mut cursor: u64 = 0;
    let mut n = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await?;
        if !keys.is_empty() {
            n += keys.len() as u64;
            let _: u64 = redis::cmd("UNLINK").arg(&keys).query_async(c).await?;
        }
        if next == 0 {
            return Ok(n);
        }
        cursor = next;
    }
}

/// The server's configuration for g: the BullMQ backend on `redis_url`
/// under `prefix`, routing the queue of g.
pub fn bullmq_env(redis_url: &str, prefix: &str) -> Vec<(String, String)> {
    vec![
        ("SWITCHYARD_BULLMQ__ENABLED".into(), "true".into()),
        ("SWITCHYARD_BULLMQ__URL".into(), redis_url.into()),
        ("SWITCHYARD_BULLMQ__PREFIX".into(), prefix.into()),
        (
            "SWITCHYARD_BULLMQ__QUEUES".into(),
            format!("[\"{G_QUEUE}\"]"),
        ),
    ]
}

/// The server's configuration for h: the Temporal backend on `url`,
/// routing the peer's workflow type.
pub fn temporal_env(url: &str) -> Vec<(String, String)> {
    vec![
        ("SWITCHYARD_TEMPORAL__ENABLED".into(), "true".into()),
        ("SWITCHYARD_TEMPORAL__ADDRESS".into(), url.into()),
        (
            "SWITCHYARD_TEMPORAL__WORKFLOW_TYPES".into(),
            format!("[\"{H_WORKFLOW}\"]"),
        ),
    ]
}

/// g at each concurrency of the plan: `g.c{c}` (jobs in Redis per second,
/// or the acknowledged rate if lower), `g.c{c}.accepted` (`ScheduleTask`
/// answers per second) and CPU per job of the server, Redis and the load
/// generator.
pub async fn via_bullmq(ctx: &Ctx, redis_url: &str) -> Result<Vec<(String, f64)>> {
    let mut admin = redis_conn(redis_url).await?;
    let mut out = Vec::new();
    for &c in &ctx.plan.inflight {
        let prefix = format!("swbench-sy-{}-{}", std::process::id(), ctx.next_id());
        let f = ctx.fresh_with("g", &bullmq_env(redis_url, &prefix)).await?;
        let r = bullmq_once(ctx, &f.server, &mut admin, &prefix, c).await;
        f.done().await;
        let cleaned = unlink_prefix(&mut admin, &prefix).await;
        let r = r.with_context(|| format!("g: {c} in flight"))?;
        cleaned.with_context(|| format!("g: deleting the keys under {prefix}"))?;
        push_bullmq_rate(&mut out, &format!("g.c{c}"), &r);
    }
    Ok(out)
}

/// jb at each number of calls in flight of j: `ScheduleTasks` of
/// [`BULK_PER_CALL`] SIMPLE tasks routed to BullMQ, `jb.bulk100.c{c}` (jobs
/// in Redis per second, or accepted items per second if fewer), with
/// `.accepted`, `.in_redis` and CPU per job as g's.
pub async fn bulk_via_bullmq(ctx: &Ctx, redis_url: &str) -> Result<Vec<(String, f64)>> {
    let mut admin = redis_conn(redis_url).await?;
    let mut out = Vec::new();
    for &c in &BULK_INFLIGHT {
        let prefix = format!("swbench-sy-{}-{}", std::process::id(), ctx.next_id());
        let f = ctx
            .fresh_with("jb", &bullmq_env(redis_url, &prefix))
            .await?;
        let r = async {
            let pool = Pool::new(&f.server.url, c).await?;
            let p = Load::Bulk(BulkProducer::spawn(&pool, c, BULK_PER_CALL, G_QUEUE));
            measure_via_bullmq(ctx, &f.server, &mut admin, &prefix, p).await
        }
        .await;
        f.done().await;
        let cleaned = unlink_prefix(&mut admin, &prefix).await;
        let r = r.with_context(|| format!("jb: {c} calls of {BULK_PER_CALL} in flight"))?;
        cleaned.with_context(|| format!("jb: deleting the keys under {prefix}"))?;
        push_bullmq_rate(&mut out, &format!("jb.bulk{BULK_PER_CALL}.c{c}"), &r);
    }
    Ok(out)
}

fn push_bullmq_rate(out: &mut Vec<(String, f64)>, id: &str, r: &BullmqRate) {
    out.push((id.to_string(), r.jobs_per_sec.min(r.accepted_per_sec)));
    out.push((format!("{id}.accepted"), r.accepted_per_sec));
    out.push((format!("{id}.in_redis"), r.jobs_per_sec));
    out.push((format!("{id}.server_cpu_us"), r.server_cpu_us));
    out.push((format!("{id}.redis_cpu_us"), r.redis_cpu_us));
    out.push((format!("{id}.bench_cpu_us"), r.bench_cpu_us));
    out.push((
        format!("{id}.total_cpu_us"),
        r.server_cpu_us + r.redis_cpu_us + r.bench_cpu_us,
    ));
}

/// The load of g (one task a call) or of jb (`ScheduleTasks`).
enum Load {
    One(Producer),
    Bulk(BulkProducer),
}

impl Load {
    fn accepted(&self) -> &AtomicU64 {
        match self {
            Load::One(p) => &p.counts.ok,
            Load::Bulk(p) => &p.counts.ok,
        }
    }

    async fn stop(self) -> Arc<Counts> {
        match self {
            Load::One(p) => p.stop().await,
            Load::Bulk(p) => p.stop().await,
        }
    }
}

struct BullmqRate {
    jobs_per_sec: f64,
    accepted_per_sec: f64,
    server_cpu_us: f64,
    redis_cpu_us: f64,
    bench_cpu_us: f64,
}

struct Sample {
    at: Instant,
    accepted: u64,
    jobs: u64,
    server: f64,
    redis: f64,
    bench: f64,
}

async fn sample(
    admin: &mut MultiplexedConnection,
    prefix: &str,
    accepted: &AtomicU64,
    server: u32,
) -> Result<Sample> {
    Ok(Sample {
        jobs: queued(admin, prefix, G_QUEUE).await?,
        accepted: accepted.load(Ordering::Relaxed),
        at: Instant::now(),
        server: cpu_secs(server).unwrap_or(0.0),
        bench: cpu_secs(std::process::id()).unwrap_or(0.0),
        redis: redis_cpu(admin).await?,
    })
}

async fn bullmq_once(
    ctx: &Ctx,
    server: &crate::server::Server,
    admin: &mut MultiplexedConnection,
    prefix: &str,
    inflight: usize,
) -> Result<BullmqRate> {
    let pool = Pool::new(&server.url, inflight).await?;
    let make: MakeRequest = Arc::new(|seq| simple(G_QUEUE, payload_n(seq)));
    let p = Load::One(Producer::spawn(&pool, inflight, None, make));
    measure_via_bullmq(ctx, server, admin, prefix, p).await
}

/// The jobs `load` puts in Redis over the window, and the tasks it got
/// accepted; then every accepted task must reach Redis, once.
async fn measure_via_bullmq(
    ctx: &Ctx,
    server: &crate::server::Server,
    admin: &mut MultiplexedConnection,
    prefix: &str,
    load: Load,
) -> Result<BullmqRate> {
    let pid = server.pid();
    tokio::time::sleep(ctx.plan.warmup).await;
    let s1 = sample(admin, prefix, load.accepted(), pid).await;
    tokio::time::sleep(ctx.plan.window).await;
    let s2 = sample(admin, prefix, load.accepted(), pid).await;
    let counts = load.stop().await;
    let (s1, s2) = (s1?, s2?);
    check(&counts)?;
    // Every accepted task must reach Redis, once.
    let accepted = counts.ok.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = queued(admin, prefix, G_QUEUE).await?;
        if n == accepted {
            break;
        }
        if n > accepted {
            bail!("{n} jobs are in Redis for {accepted} accepted tasks");
        }
        if Instant::now() > deadline {
            bail!("only {n} of {accepted} accepted tasks reached Redis within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = (s2.at - s1.at).as_secs_f64();
    let jobs = (s2.jobs - s1.jobs).max(1) as f64;
    Ok(BullmqRate {
        jobs_per_sec: (s2.jobs - s1.jobs) as f64 / secs,
        accepted_per_sec: (s2.accepted - s1.accepted) as f64 / secs,
        server_cpu_us: (s2.server - s1.server) * 1e6 / jobs,
        redis_cpu_us: (s2.redis - s1.redis) * 1e6 / jobs,
        bench_cpu_us: (s2.bench - s1.bench) * 1e6 / jobs,
    })
}

/// Distinct tasks of one type whose status met a condition, from
/// `WatchTasks`; a task that fails first is an error.
struct Reached {
    n: AtomicU64,
    last: Mutex<Option<Instant>>,
    failure: Mutex<Option<String>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Reached {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }
}

impl Reached {
    /// Opens the watch (live only) and waits until it is live.
    async fn watch(url: &str, cond: fn(&pb::TaskStatus) -> bool) -> Result<Arc<Reached>> {
        let ch = crate::server::connect(url).await?;
        let mut client = OrchestratorServiceClient::new(ch).max_decoding_message_size(64 << 20);
        let req = pb::WatchTasksRequest {
            filter: Some(pb::TaskFilter {
                task_types: vec![pb::TaskType::Complex as i32],
                ..Default::default()
            }),
            after_sequence: 0,
            include_snapshot: false,
        };
        let mut stream = client
            .watch_tasks(req)
            .await
            .context("WatchTasks")?
            .into_inner();
        let (live_tx, live_rx) = tokio::sync::oneshot::channel::<()>();
        let reached = Arc::new(Reached {
            n: AtomicU64::new(0),
            last: Mutex::new(None),
            failure: Mutex::new(None),
            task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&reached);
        let task = tokio::spawn(async move {
            let mut live_tx = Some(live_tx);
            let mut seen: HashSet<String> = HashSet::new();
            while let Ok(Some(m)) = stream.message().await {
                let Some(r) = weak.upgrade() else { break };
                match m.item {
                    Some(Item::Live(_)) => {
                        if let Some(tx) = live_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Some(Item::Event(ev)) => {
                        let Some(st) = ev.status else { continue };
                        let state =
                            pb::TaskState::try_from(st.state).unwrap_or(pb::TaskState::Unspecified);
                        if matches!(state, pb::TaskState::Failed | pb::TaskState::Cancelled) {
                            let mut f = r.failure.lock();
                            if f.is_none() {
                                *f = Some(format!(
                                    "task {} ended {state:?}: {}",
                                    st.id,
                                    st.last_error.map(|e| e.message).unwrap_or_default()
                                ));
                            }
                            continue;
                        }
                        if cond(&st) && seen.insert(st.id.clone()) {
                            r.n.fetch_add(1, Ordering::Relaxed);
                            *r.last.lock() = Some(Instant::now());
                        }
                    }
                    _ => {}
                }
            }
        });
        *reached.task.lock() = Some(task);
        tokio::time::timeout(Duration::from_secs(5), live_rx)
            .await
            .map_err(|_| anyhow!("the watch was not live within 5 s"))?
            .map_err(|_| anyhow!("the watch ended before it was live"))?;
        Ok(reached)
    }

    /// Waits for `n` tasks; returns when the last one was seen.
    async fn wait(&self, n: u64, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.failure.lock().clone() {
                bail!("{f}");
            }
            let got = self.n.load(Ordering::Relaxed);
            if got >= n {
                break;
            }
            if Instant::now() > deadline {
                bail!("only {got} of {n} tasks got there within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.last.lock().ok_or_else(|| anyhow!("nothing was seen"))
    }
}

/// Started on Temporal: RUNNING with the run id as the external id.
fn started(st: &pb::TaskStatus) -> bool {
    !st.external_id.is_empty()
        && matches!(
            pb::TaskState::try_from(st.state),
            Ok(pb::TaskState::Running | pb::TaskState::Completed)
        )
}

fn completed(st: &pb::TaskStatus) -> bool {
    pb::TaskState::try_from(st.state) == Ok(pb::TaskState::Completed)
}

fn temporal_maker(task_queue: String) -> MakeRequest {
    Arc::new(move |seq| pb::ScheduleTaskRequest {
        name: "bench.h".into(),
        payload: Some(payload_n(seq)),
        task_type: pb::TaskType::Complex as i32,
        options: None,
        target: Some(pb::schedule_task_request::Target::Complex(
            pb::ComplexTarget {
                workflow_type: H_WORKFLOW.into(),
                workflow_args: Some(prost_types::ListValue {
                    values: vec![prost_types::Value {
                        kind: Some(prost_types::value::Kind::NumberValue(seq as f64)),
                    }],
                }),
                task_queue: task_queue.clone(),
                ..Default::default()
            },
        )),
    })
}

/// h, one run: `h.starts` (workflows started per second, first
/// `ScheduleTask` to the last RUNNING), `h.starts.accepted` (first to last
/// `ScheduleTask` answer), and `h.completed` (three-activity workflows per
/// second with one Python worker, first `ScheduleTask` to the last
/// COMPLETED).
pub async fn via_temporal(
    ctx: &Ctx,
    temporal_url: &str,
    python: &Path,
    run: usize,
) -> Result<Vec<(String, f64)>> {
    let env = temporal_env(temporal_url);
    let inflight = ctx.plan.producer_inflight;
    let mut out = Vec::new();

    let n = ctx.plan.temporal_starts_n;
    let f = ctx.fresh_with("h-starts", &env).await?;
    let r = async {
        let seen = Reached::watch(&f.server.url, started).await?;
        let pool = Pool::new(&f.server.url, inflight).await?;
        // A task queue no worker polls, as the peer's starts use.
        let p = Producer::spawn(
            &pool,
            inflight,
            Some(n),
            temporal_maker(format!("sy-starts-{run}")),
        );
        let t = p.started;
        let counts = p.join().await;
        let acked = t.elapsed();
        check(&counts)?;
        let last = seen.wait(n, Duration::from_secs(300)).await?;
        anyhow::Ok((
            n as f64 / (last - t).as_secs_f64(),
            n as f64 / acked.as_secs_f64(),
        ))
    }
    .await;
    f.done().await;
    let (starts, accepted) = r.context("h: starts")?;
    out.push(("h.starts".into(), starts));
    out.push(("h.starts.accepted".into(), accepted));

    let n = ctx.plan.temporal_completed_n;
    let queue = format!("sy-run-{run}");
    let worker = PyWorker::start(python, &temporal_address(temporal_url), &queue).await?;
    let f = ctx.fresh_with("h-run", &env).await?;
    let r = async {
        let done = Reached::watch(&f.server.url, completed).await?;
        let pool = Pool::new(&f.server.url, inflight).await?;
        let p = Producer::spawn(&pool, inflight, Some(n), temporal_maker(queue.clone()));
        let t = p.started;
        let counts = p.join().await;
        check(&counts)?;
        let last = done.wait(n, Duration::from_secs(600)).await?;
        anyhow::Ok(n as f64 / (last - t).as_secs_f64())
    }
    .await;
    f.done().await;
    worker.stop().await;
    out.push(("h.completed".into(), r.context("h: completed")?));
    Ok(out)
}

fn temporal_address(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// `bench/temporal/bench.py` in worker mode: one Python worker of the
/// peer's workflow on `queue`, until its stdin closes.
struct PyWorker {
    child: Child,
}

impl PyWorker {
    async fn start(python: &Path, address: &str, queue: &str) -> Result<PyWorker> {
        let cfg = serde_json::json!({"mode": "worker", "address": address, "task_queue": queue});
        let mut child = Command::new(python)
            .arg(PathBuf::from("bench/temporal/bench.py"))
            .arg(cfg.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the Python worker ({})", python.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("the worker's stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(l) = lines.next_line().await? {
                if l.trim() == "@@ READY" {
                    return anyhow::Ok(true);
                }
            }
            anyhow::Ok(false)
        })
        .await;
        match ready {
            Ok(Ok(true)) => Ok(PyWorker { child }),
            Ok(Ok(false)) => bail!("the Python worker exited before it was ready"),
            Ok(Err(e)) => Err(e.context("reading the Python worker's output")),
            Err(_) => bail!("the Python worker was not ready within 60 s"),
        }
    }

    async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
