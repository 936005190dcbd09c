//! Switchyard's scenarios a–f, each on a fresh server with a fresh data
//! directory (removed afterwards), so no run inherits another's backlog.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use parking_lot::Mutex;
use switchyard::pb;
use switchyard::pb::orchestrator_service_client::OrchestratorServiceClient;
use switchyard::pb::watch_tasks_response::Item;
use switchyard_client::TlsFiles;
use tonic::transport::Channel;

use crate::load::{
    self, check, measure_rate, open_loop, payload_n, payload_t, simple, MakeRequest, Pool,
    Producer, Rate,
};
use crate::pg::Pg;
use crate::server::{Access, Server, ServerSpec, Stop};
use crate::webhook::Hook;
use crate::worker::{Sink, WorkerKind, Workers};

/// Sizes and durations of one mode.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub quick: bool,
    pub runs: usize,
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub lat_warmup: Duration,
    #[serde(with = "humantime_serde")]
    pub lat_window: Duration,
    pub inflight: Vec<usize>,
    pub producer_inflight: usize,
    pub drain_n: u64,
    pub workflow_starts_n: u64,
    pub workflow_n: u64,
    pub webhook_n: u64,
    pub pending_n: u64,
    pub fill_inflight: usize,
    /// Workflow starts per run on Temporal (the peer's and h's).
    pub temporal_starts_n: u64,
    /// Three-activity workflows completed per run on Temporal.
    pub temporal_completed_n: u64,
    /// Pending tasks filled before the failover's worker starts.
    pub failover_pending: u64,
    /// Ended tasks in the store of i (the store over months).
    pub months_finished: u64,
    /// Pending tasks in the store of i.
    pub months_pending: u64,
    /// Minutes the soak ran (0: it did not).
    pub soak_minutes: u32,
    /// API keys created on each TLS server of tls.
    pub tls_keys: usize,
    /// tls as a control (`--tls-control`): both sides plaintext without
    /// auth, to show what the ratios are when nothing differs.
    pub tls_control: bool,
    /// Distinct concurrency keys in fk.
    pub fk_keys: u64,
    /// Pending tasks in fm.
    pub fm_pending: u64,
    /// Distinct concurrency keys over fm's pending tasks.
    pub fm_keys: u64,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                runs: 1,
                warmup: Duration::from_millis(200),
                window: Duration::from_millis(500),
                lat_warmup: Duration::from_millis(200),
                lat_window: Duration::from_millis(800),
                inflight: vec![1, 16, 64, 256],
                producer_inflight: 64,
                drain_n: 2_000,
                workflow_starts_n: 200,
                workflow_n: 100,
                webhook_n: 200,
                pending_n: 20_000,
                fill_inflight: 256,
                temporal_starts_n: 50,
                temporal_completed_n: 20,
                failover_pending: 2_000,
                months_finished: 20_000,
                months_pending: 2_000,
                soak_minutes: 0,
                tls_keys: 1_000,
                tls_control: false,
                fk_keys: 10_000,
                fm_pending: 20_000,
                fm_keys: 2_000,
            }
        } else {
            Plan {
                quick,
                runs: 3,
                warmup: Duration::from_secs(1),
                window: Duration::from_secs(4),
                lat_warmup: Duration::from_secs(1),
                lat_window: Duration::from_secs(6),
                inflight: vec![1, 16, 64, 256],
                producer_inflight: 64,
                drain_n: 50_000,
                workflow_starts_n: 10_000,
                workflow_n: 5_000,
                webhook_n: 10_000,
                pending_n: 1_000_000,
                fill_inflight: 256,
                temporal_starts_n: 1_000,
                temporal_completed_n: 300,
                failover_pending: 100_000,
                months_finished: 1_000_000,
                months_pending: 100_000,
                soak_minutes: 0,
                tls_keys: 1_000,
                tls_control: false,
                fk_keys: 10_000,
                fm_pending: 1_000_000,
                fm_keys: 100_000,
            }
        }
    }
}

/// The worker connections and slots of each end-to-end configuration:
/// (id, connections, slots each, BullMQ concurrency it is compared with).
pub const E2E_CONFIGS: &[(&str, usize, u32, u32)] = &[
    ("b.1x1", 1, 1, 1),
    ("b.1x16", 1, 16, 16),
    ("b.1x100", 1, 100, 100),
    ("b.4x25", 4, 25, 100),
];

/// The end-to-end configuration of b on PostgreSQL (pb): one worker
/// connection.
pub const PG_E2E_CONFIGS: &[(&str, usize, u32, u32)] = &[("b.1x100", 1, 100, 100)];

/// Where and how servers are started.
pub struct Ctx {
    pub spec: ServerSpec,
    pub work_dir: PathBuf,
    pub plan: Plan,
    pub worker: WorkerKind,
    pub workflow_definition: String,
    /// The store: SQLite in the data directory (`None`), or PostgreSQL, a
    /// fresh schema per server.
    pub pg: Option<Arc<Pg>>,
    /// b's worker configurations.
    pub e2e_configs: &'static [(&'static str, usize, u32, u32)],
    seq: AtomicU64,
}

/// A server and the directory (and PostgreSQL schema) to remove after it.
pub struct Fresh {
    pub server: Server,
    dir: PathBuf,
    schema: Option<(Arc<Pg>, String)>,
}

impl Fresh {
    pub async fn done(self) {
        let _ = self.server.stop(Stop::Kill).await;
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((pg, schema)) = self.schema {
            if let Err(e) = pg.drop_schema(&schema).await {
                eprintln!("bench: {e:#}");
            }
        }
    }
}

pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

impl Ctx {
    pub fn new(
        spec: ServerSpec,
        work_dir: PathBuf,
        plan: Plan,
        worker: WorkerKind,
        workflow_definition: String,
    ) -> Ctx {
        Ctx {
            spec,
            work_dir,
            plan,
            worker,
            workflow_definition,
            pg: None,
            e2e_configs: E2E_CONFIGS,
            seq: AtomicU64::new(0),
        }
    }

    /// The same servers on PostgreSQL at `pg` (pa, pb, pc): one worker
    /// connection in b.
    pub fn on_postgres(&self, pg: Arc<Pg>) -> Ctx {
        Ctx {
            spec: self.spec.clone(),
            work_dir: self.work_dir.clone(),
            plan: self.plan.clone(),
            worker: self.worker,
            workflow_definition: self.workflow_definition.clone(),
            pg: Some(pg),
            e2e_configs: PG_E2E_CONFIGS,
            seq: AtomicU64::new(0),
        }
    }

    /// A figure's id: `a.c1` on SQLite, `pa.c1` on PostgreSQL.
    pub fn fig(&self, id: &str) -> String {
        match self.pg {
            Some(_) => format!("p{id}"),
            None => id.to_string(),
        }
    }

    /// The server environment of the PostgreSQL store in `schema`.
    pub fn pg_env(pg: &Pg, schema: &str) -> Vec<(String, String)> {
        vec![
            ("SWITCHYARD_STORE__URL".to_string(), pg.url.clone()),
            ("SWITCHYARD_STORE__SCHEMA".to_string(), schema.to_string()),
        ]
    }

    pub async fn fresh(&self, tag: &str) -> Result<Fresh> {
        self.fresh_with(tag, &[]).await
    }

    /// A fresh server with `env` added to its configuration.
    pub async fn fresh_with(&self, tag: &str, env: &[(String, String)]) -> Result<Fresh> {
        self.fresh_spec(tag, env, None).await
    }

    /// A fresh server serving TLS (its `[tls]` in `env`), reached with
    /// `trust`'s CA.
    pub async fn fresh_tls(
        &self,
        tag: &str,
        env: &[(String, String)],
        trust: TlsFiles,
    ) -> Result<Fresh> {
        self.fresh_spec(tag, env, Some(trust)).await
    }

    async fn fresh_spec(
        &self,
        tag: &str,
        env: &[(String, String)],
        tls: Option<TlsFiles>,
    ) -> Result<Fresh> {
        let n = self.next_id();
        let pg_tag = if self.pg.is_some() { "pg-" } else { "" };
        let dir = self
            .work_dir
            .join(format!("{pg_tag}{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spec = self.spec.clone();
        spec.env.extend(env.iter().cloned());
        spec.tls = tls;
        let schema = self.pg.as_ref().map(|pg| (pg.clone(), pg.schema_name()));
        if let Some((pg, name)) = &schema {
            spec.env.extend(Ctx::pg_env(pg, name));
        }
        match Server::start(&spec, &dir, READY_TIMEOUT).await {
            Ok(server) => Ok(Fresh {
                server,
                dir,
                schema,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                if let Some((pg, name)) = schema {
                    let _ = pg.drop_schema(&name).await;
                }
                Err(e)
            }
        }
    }

    /// A number no other call returns (directory names, key prefixes).
    pub fn next_id(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }
}

fn simple_maker(name: &'static str) -> MakeRequest {
    Arc::new(move |seq| simple(name, payload_n(seq)))
}

/// a. Durable `ScheduleTask` throughput at each concurrency.
pub async fn schedule(ctx: &Ctx) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for &c in &ctx.plan.inflight {
        let f = ctx.fresh("a").await?;
        let r = load::schedule_throughput(
            &f.server.url,
            f.server.pid(),
            c,
            ctx.plan.warmup,
            ctx.plan.window,
            simple_maker("bench.a"),
            ctx.pg.is_some(),
        )
        .await;
        f.done().await;
        push_rate(
            &mut out,
            &ctx.fig(&format!("a.c{c}")),
            r.with_context(|| format!("a: {c} in flight"))?,
        );
    }
    Ok(out)
}

/// Tasks per `ScheduleTasks` call in j.
pub const BULK_PER_CALL: usize = 100;
/// Calls in flight in j.
pub const BULK_INFLIGHT: [usize; 2] = [4, 16];

/// j. Durable tasks accepted per second through `ScheduleTasks`, 100 tasks
/// per call, at each number of calls in flight (`j.bulk100.c{c}`).
pub async fn bulk(ctx: &Ctx) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for &c in &BULK_INFLIGHT {
        let f = ctx.fresh("j").await?;
        let r = load::bulk_throughput(
            &f.server.url,
            f.server.pid(),
            (c, BULK_PER_CALL),
            ctx.plan.warmup,
            ctx.plan.window,
            "bench.j",
            ctx.pg.is_some(),
        )
        .await;
        f.done().await;
        push_rate(
            &mut out,
            &ctx.fig(&format!("j.bulk{BULK_PER_CALL}.c{c}")),
            r.with_context(|| format!("j: {c} calls of {BULK_PER_CALL} in flight"))?,
        );
    }
    Ok(out)
}

/// b. End-to-end SIMPLE throughput with the producer running, per worker
/// configuration; then the drain of a pre-filled queue.
pub async fn end_to_end(ctx: &Ctx) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for &(id, conns, slots, _) in ctx.e2e_configs {
        let f = ctx.fresh("b").await?;
        let r = e2e_once(ctx, &f.server, conns, slots).await;
        f.done().await;
        push_rate(
            &mut out,
            &ctx.fig(id),
            r.with_context(|| format!("b: {conns} × {slots} slots"))?,
        );
    }
    let f = ctx.fresh("b-drain").await?;
    let r = drain_once(ctx, &f.server.url).await;
    f.done().await;
    out.push((ctx.fig("b.drain"), r.context("b: drain")?));
    Ok(out)
}

/// `id`, `id.server_cpu_us`, `id.bench_cpu_us`, on PostgreSQL
/// `id.db_cpu_us`, and their sum `id.total_cpu_us`.
pub fn push_rate(out: &mut Vec<(String, f64)>, id: &str, r: Rate) {
    out.push((id.to_string(), r.per_sec));
    out.push((format!("{id}.server_cpu_us"), r.server_cpu_us));
    out.push((format!("{id}.bench_cpu_us"), r.bench_cpu_us));
    if let Some(db) = r.db_cpu_us {
        out.push((format!("{id}.db_cpu_us"), db));
    }
    out.push((
        format!("{id}.total_cpu_us"),
        r.server_cpu_us + r.bench_cpu_us + r.db_cpu_us.unwrap_or(0.0),
    ));
}

async fn e2e_once(ctx: &Ctx, server: &Server, conns: usize, slots: u32) -> Result<Rate> {
    e2e_with(
        ctx,
        server,
        conns,
        slots,
        "bench.b",
        simple_maker("bench.b"),
    )
    .await
}

/// End-to-end throughput of the tasks `make` builds (named `name`) with
/// `conns` worker connections of `slots` slots and the producer running.
pub async fn e2e_with(
    ctx: &Ctx,
    server: &Server,
    conns: usize,
    slots: u32,
    name: &str,
    make: MakeRequest,
) -> Result<Rate> {
    let url = server.url.as_str();
    let sink = Sink::counting();
    let workers = Workers::start(ctx.worker, url, &[name], conns, slots, sink.clone()).await?;
    let pool = Pool::new(url, ctx.plan.producer_inflight).await?;
    let p = Producer::spawn(&pool, ctx.plan.producer_inflight, None, make);
    let rate = measure_rate(
        &sink.started,
        server.pid(),
        ctx.plan.warmup,
        ctx.plan.window,
        ctx.pg.is_some(),
    )
    .await;
    let counts = p.stop().await;
    workers.stop().await?;
    check(&counts)?;
    Ok(rate)
}

pub async fn fill(url: &str, n: u64, inflight: usize, name: &'static str) -> Result<Duration> {
    fill_with(url, n, inflight, simple_maker(name)).await
}

/// Schedules `n` tasks built by `make`, `inflight` calls at a time; every
/// one must be accepted. Returns how long it took.
pub async fn fill_with(url: &str, n: u64, inflight: usize, make: MakeRequest) -> Result<Duration> {
    let pool = Pool::new(url, inflight).await?;
    let t = Instant::now();
    let counts = Producer::spawn(&pool, inflight, Some(n), make).join().await;
    check(&counts)?;
    let ok = counts.ok.load(Ordering::Relaxed);
    if ok < n {
        bail!("only {ok} of {n} tasks were accepted");
    }
    Ok(t.elapsed())
}

async fn drain_once(ctx: &Ctx, url: &str) -> Result<f64> {
    let n = ctx.plan.drain_n;
    fill(url, n, ctx.plan.fill_inflight, "bench.drain").await?;
    let sink = Sink::counting();
    let t = Instant::now();
    let workers = Workers::start(ctx.worker, url, &["bench.drain"], 1, 100, sink.clone()).await?;
    let done = sink.wait_started(n, Duration::from_secs(120)).await;
    let elapsed = t.elapsed();
    workers.stop().await?;
    if !done {
        bail!(
            "only {} of {n} tasks started within 120 s",
            sink.started.load(Ordering::Relaxed)
        );
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// What c measured at one rate; latencies in ms.
pub struct Latency {
    /// Schedule-to-start quantiles.
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    /// The rate achieved, per second.
    pub offered: f64,
    /// `ScheduleTask`'s send-to-reply quantiles: the durable accept's share.
    pub reply_p50: f64,
    pub reply_p99: f64,
}

/// c. Schedule-to-start at a fixed offered rate.
pub async fn latency(ctx: &Ctx, rate: f64) -> Result<Latency> {
    let f = ctx.fresh("c").await?;
    let r = latency_once(ctx, &f.server.url, rate).await;
    f.done().await;
    r
}

async fn latency_once(ctx: &Ctx, url: &str, rate: f64) -> Result<Latency> {
    latency_over(ctx, url, rate, ctx.plan.lat_warmup, ctx.plan.lat_window).await
}

/// Schedule-to-start at `rate` on the server at `url`: `warmup`, then the
/// samples of `window`.
pub async fn latency_over(
    ctx: &Ctx,
    url: &str,
    rate: f64,
    warmup: Duration,
    window: Duration,
) -> Result<Latency> {
    let make: MakeRequest = Arc::new(|t| simple("bench.c", payload_t(t)));
    let load = LatencyLoad::plain(ctx, "bench.c", make);
    latency_with(ctx, url, rate, (warmup, window), &load).await
}

/// What c's measurement sends, and how its producer and worker connect.
pub struct LatencyLoad {
    /// The task name the worker serves.
    pub name: &'static str,
    /// Builds a task from its send time, which must go into the payload as
    /// `t`.
    pub make: MakeRequest,
    /// The producer's connections.
    pub producer: Access,
    /// The worker's client and connection.
    pub worker: (WorkerKind, Access),
}

impl LatencyLoad {
    /// Plaintext, no token, the worker client of the run.
    pub fn plain(ctx: &Ctx, name: &'static str, make: MakeRequest) -> LatencyLoad {
        LatencyLoad {
            name,
            make,
            producer: Access::default(),
            worker: (ctx.worker, Access::default()),
        }
    }
}

/// c's measurement of `load`'s tasks on the server at `url`.
pub async fn latency_with(
    ctx: &Ctx,
    url: &str,
    rate: f64,
    (warmup, window): (Duration, Duration),
    load: &LatencyLoad,
) -> Result<Latency> {
    let sink = Sink::with_latency();
    let (kind, access) = &load.worker;
    let workers =
        Workers::start_with(*kind, url, access, &[load.name], (1, 100), sink.clone()).await?;
    let pool = Pool::with_access(url, ctx.plan.producer_inflight, &load.producer).await?;
    let make = load.make.clone();
    let start = load::now_ns();
    let from = start + warmup.as_nanos() as u64;
    sink.record_between(from, from + window.as_nanos() as u64);
    let ol = open_loop(&pool, rate, warmup + window, make, warmup).await;
    // Every accepted task must start.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = ol.counts.ok.load(Ordering::Relaxed) + ol.counts.errors.load(Ordering::Relaxed);
        if ok >= ol.sent
            && sink.started.load(Ordering::Relaxed) >= ol.counts.ok.load(Ordering::Relaxed)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} tasks started within 30 s of the end",
                sink.started.load(Ordering::Relaxed),
                ol.sent
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    workers.stop().await?;
    check(&ol.counts)?;
    if ol.dropped > 0 {
        bail!(
            "the server fell behind: {} sends were dropped at 20,000 outstanding",
            ol.dropped
        );
    }
    let h = sink.latency().ok_or_else(|| anyhow!("no histogram"))?;
    if h.is_empty() {
        bail!("no latency sample was recorded");
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let r = ol.replies.lock();
    let reply = |q: f64| r.value_at_quantile(q) as f64 / 1000.0;
    Ok(Latency {
        p50: ms(0.5),
        p99: ms(0.99),
        p999: ms(0.999),
        offered: ol.sent as f64 / (warmup + window).as_secs_f64(),
        reply_p50: reply(0.5),
        reply_p99: reply(0.99),
    })
}

/// Final events of one task type, counted once per task, from `WatchTasks`.
pub struct Finals {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub last: Mutex<Option<Instant>>,
    pub first_failure: Mutex<Option<String>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Finals {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }
}

impl Finals {
    pub fn total(&self) -> u64 {
        self.completed.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    /// Opens the watch and waits until it is live.
    pub async fn watch(url: &str, task_type: pb::TaskType) -> Result<Arc<Finals>> {
        let ch = crate::server::connect(url).await?;
        let mut client = OrchestratorServiceClient::new(ch).max_decoding_message_size(64 << 20);
        let req = pb::WatchTasksRequest {
            filter: Some(pb::TaskFilter {
                task_types: vec![task_type as i32],
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
        // The Arc exists before the reader starts: a reader spawned inside
        // `Arc::new_cyclic` could see a message (the buffered `live` marker)
        // before construction ends, fail to upgrade and quietly stop.
        let finals = Arc::new(Finals {
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last: Mutex::new(None),
            first_failure: Mutex::new(None),
            task: Mutex::new(None),
        });
        {
            let weak = Arc::downgrade(&finals);
            let task = tokio::spawn(async move {
                let mut live_tx = Some(live_tx);
                let mut seen: HashSet<String> = HashSet::new();
                while let Ok(Some(m)) = stream.message().await {
                    let Some(f) = weak.upgrade() else { break };
                    match m.item {
                        Some(Item::Live(_)) => {
                            if let Some(tx) = live_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Some(Item::Event(ev)) => {
                            let Some(st) = ev.status else { continue };
                            if st.task_type != task_type as i32 {
                                continue;
                            }
                            let state = pb::TaskState::try_from(st.state)
                                .unwrap_or(pb::TaskState::Unspecified);
                            let ok = match state {
                                pb::TaskState::Completed => true,
                                pb::TaskState::Failed
                                | pb::TaskState::Cancelled
                                | pb::TaskState::Compensated => false,
                                _ => continue,
                            };
                            if !seen.insert(st.id.clone()) {
                                continue;
                            }
                            if ok {
                                f.completed.fetch_add(1, Ordering::Relaxed);
                            } else {
                                f.failed.fetch_add(1, Ordering::Relaxed);
                                let mut first = f.first_failure.lock();
                                if first.is_none() {
                                    *first = Some(format!(
                                        "{:?}: {}",
                                        state,
                                        st.last_error.map(|e| e.message).unwrap_or_default()
                                    ));
                                }
                            }
                            *f.last.lock() = Some(Instant::now());
                        }
                        _ => {}
                    }
                }
            });
            *finals.task.lock() = Some(task);
        }
        // Live-only watches may or may not announce it; wait a little.
        let _ = tokio::time::timeout(Duration::from_secs(2), live_rx).await;
        Ok(finals)
    }

    /// Waits for `n` final events; returns the time of the last one.
    pub async fn wait(&self, n: u64, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        while self.total() < n {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {n} tasks finished within {timeout:?} ({} failed)",
                    self.total(),
                    self.failed.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let failed = self.failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!(
                "{failed} of {n} tasks did not complete; first: {}",
                self.first_failure.lock().clone().unwrap_or_default()
            );
        }
        self.last.lock().ok_or_else(|| anyhow!("no final event"))
    }
}

/// Whether a refusal means "this executor is not built into the server".
fn engine_missing(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::FailedPrecondition && s.message().contains("no executor")
}

/// The outcome of d and e: figures, or why the engine is not there.
pub enum Optional {
    Figures(Vec<(String, f64)>),
    NotBuilt(String),
}

mod rpc {
    //! `RegisterWorkflow`, called by path so the bench builds whether or not
    //! the generated client has it yet.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RegisterWorkflowRequest {
        #[prost(string, tag = "1")]
        pub definition: String,
        #[prost(string, tag = "2")]
        pub format: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RegisterWorkflowResponse {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(uint32, tag = "2")]
        pub version: u32,
        #[prost(bool, tag = "3")]
        pub created: bool,
    }
}

async fn register_workflow(
    ch: Channel,
    definition: &str,
) -> Result<rpc::RegisterWorkflowResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/switchyard.v1.OrchestratorService/RegisterWorkflow",
    );
    let codec = tonic_prost::ProstCodec::<
        rpc::RegisterWorkflowRequest,
        rpc::RegisterWorkflowResponse,
    >::default();
    let req = rpc::RegisterWorkflowRequest {
        definition: definition.to_string(),
        format: "json".into(),
    };
    grpc.unary(tonic::Request::new(req), path, codec)
        .await
        .map(|r| r.into_inner())
}

/// The workflow type of the bench definition.
pub const WORKFLOW_TYPE: &str = "bench-three-step";
const STEP_NAMES: [&str; 3] = ["bench.wf.a", "bench.wf.b", "bench.wf.c"];

fn complex_maker() -> MakeRequest {
    Arc::new(|seq| pb::ScheduleTaskRequest {
        name: "bench.workflow".into(),
        payload: Some(payload_n(seq)),
        task_type: pb::TaskType::Complex as i32,
        options: None,
        target: Some(pb::schedule_task_request::Target::Complex(
            pb::ComplexTarget {
                workflow_type: WORKFLOW_TYPE.into(),
                ..Default::default()
            },
        )),
    })
}

/// Registers the definition and schedules one workflow; `Err(reason)` when
/// the engine is not built.
async fn workflow_ready(ctx: &Ctx, url: &str) -> Result<Result<(), String>> {
    let ch = crate::server::connect(url).await?;
    let registered = register_workflow(ch.clone(), &ctx.workflow_definition).await;
    let mut client = OrchestratorServiceClient::new(ch);
    let probe = client
        .schedule_task((complex_maker())(u64::MAX >> 11))
        .await;
    match (registered, probe) {
        (_, Err(s)) if engine_missing(&s) => Ok(Err("n/a (engine not built)".into())),
        (Err(s), _) if s.code() == tonic::Code::Unimplemented => Ok(Err("n/a (engine not built)".into())),
        (Err(s), _) => bail!(
            "RegisterWorkflow refused bench/workflows/three-step.json ({:?}: {}); update it to the engine's schema",
            s.code(),
            s.message()
        ),
        (Ok(_), Err(s)) => bail!("ScheduleTask COMPLEX: {:?}: {}", s.code(), s.message()),
        (Ok(_), Ok(_)) => Ok(Ok(())),
    }
}

/// d. COMPLEX: workflow starts per second (no worker), and three-step
/// workflows completed per second with one worker connection.
pub async fn workflows(ctx: &Ctx) -> Result<Optional> {
    // Starts: ScheduleTask COMPLEX, the steps wait for a worker.
    let f = ctx.fresh("d-starts").await?;
    let r = async {
        if let Err(why) = workflow_ready(ctx, &f.server.url).await? {
            return Ok(Err(why));
        }
        let pool = Pool::new(&f.server.url, ctx.plan.producer_inflight).await?;
        let t = Instant::now();
        let n = ctx.plan.workflow_starts_n;
        let counts = Producer::spawn(&pool, ctx.plan.producer_inflight, Some(n), complex_maker())
            .join()
            .await;
        let rate = n as f64 / t.elapsed().as_secs_f64();
        check(&counts)?;
        anyhow::Ok(Ok(rate))
    }
    .await;
    f.done().await;
    let starts = match r? {
        Ok(r) => r,
        Err(why) => return Ok(Optional::NotBuilt(why)),
    };
    // Completed: every workflow's three steps run on one worker connection.
    let f = ctx.fresh("d-run").await?;
    let r = async {
        let finals = Finals::watch(&f.server.url, pb::TaskType::Complex).await?;
        let sink = Sink::counting();
        let workers =
            Workers::start(ctx.worker, &f.server.url, &STEP_NAMES, 1, 100, sink.clone()).await?;
        if let Err(why) = workflow_ready(ctx, &f.server.url).await? {
            workers.stop().await?;
            return Ok(Err(why));
        }
        let n = ctx.plan.workflow_n;
        let pool = Pool::new(&f.server.url, ctx.plan.producer_inflight).await?;
        let p = Producer::spawn(
            &pool,
            ctx.plan.producer_inflight,
            Some(n - 1),
            complex_maker(),
        );
        let t = p.started;
        let counts = p.join().await;
        check(&counts)?;
        let last = finals.wait(n, Duration::from_secs(300)).await?;
        workers.stop().await?;
        anyhow::Ok(Ok(n as f64 / (last - t).as_secs_f64()))
    }
    .await;
    f.done().await;
    match r? {
        Ok(done) => Ok(Optional::Figures(vec![
            ("d.starts".into(), starts),
            ("d.completed".into(), done),
        ])),
        Err(why) => Ok(Optional::NotBuilt(why)),
    }
}

fn webhook_maker(url: String) -> MakeRequest {
    Arc::new(move |seq| pb::ScheduleTaskRequest {
        name: "bench.hook".into(),
        payload: Some(payload_n(seq)),
        task_type: pb::TaskType::Integration as i32,
        options: None,
        target: Some(pb::schedule_task_request::Target::Integration(
            pb::IntegrationTarget {
                n8n: Some(pb::N8nTarget {
                    workflow_id: String::new(),
                    webhook_url: url.clone(),
                    integration_source: "bench".into(),
                }),
            },
        )),
    })
}

/// e. INTEGRATION webhook calls per second, end to end (accepted, called,
/// recorded), to a local hyper server.
pub async fn webhooks(ctx: &Ctx) -> Result<Optional> {
    let hook = Hook::start().await?;
    let f = ctx.fresh("e").await?;
    let r = async {
        let finals = Finals::watch(&f.server.url, pb::TaskType::Integration).await?;
        let make = webhook_maker(hook.url());
        let mut client = OrchestratorServiceClient::new(f.server.channel().await?);
        let t = Instant::now();
        match client.schedule_task(make(0)).await {
            Err(s) if engine_missing(&s) => return Ok(None),
            Err(s) => bail!("ScheduleTask INTEGRATION: {:?}: {}", s.code(), s.message()),
            Ok(_) => {}
        }
        let n = ctx.plan.webhook_n;
        let pool = Pool::new(&f.server.url, ctx.plan.producer_inflight).await?;
        let counts = Producer::spawn(&pool, ctx.plan.producer_inflight, Some(n - 1), make)
            .join()
            .await;
        check(&counts)?;
        let last = finals.wait(n, Duration::from_secs(300)).await?;
        let calls = hook.calls.load(Ordering::Relaxed);
        if calls < n {
            bail!("{n} tasks completed but the hook server saw {calls} calls");
        }
        anyhow::Ok(Some(n as f64 / (last - t).as_secs_f64()))
    }
    .await;
    f.done().await;
    Ok(match r? {
        Some(rate) => Optional::Figures(vec![("e.calls".into(), rate)]),
        None => Optional::NotBuilt("n/a (webhook executor not built)".into()),
    })
}

/// f. Memory with `pending_n` pending tasks, then restarts on the same data.
pub async fn memory(ctx: &Ctx) -> Result<Vec<(String, f64)>> {
    let f = ctx.fresh("f").await?;
    let dir = f.dir.clone();
    let r = memory_on(ctx, f.server).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

pub const MIB: f64 = 1024.0 * 1024.0;

async fn memory_on(ctx: &Ctx, server: Server) -> Result<Vec<(String, f64)>> {
    let n = ctx.plan.pending_n;
    let mut out = Vec::new();
    let took = fill(&server.url, n, ctx.plan.fill_inflight, "bench.pending").await?;
    out.push(("f.fill".to_string(), n as f64 / took.as_secs_f64()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    out.push(("f.rss".into(), server.rss_bytes().unwrap_or(0) as f64 / MIB));
    out.push((
        "f.rss_peak".into(),
        server.peak_rss_bytes().unwrap_or(0) as f64 / MIB,
    ));
    out.push(("f.disk".into(), server.disk_bytes() as f64 / MIB));
    let mut server = server;
    for _ in 0..ctx.plan.runs {
        for how in [Stop::Term, Stop::Kill] {
            let (s, total) = server.restart(how, READY_TIMEOUT).await?;
            server = s;
            let tag = match how {
                Stop::Term => "term",
                Stop::Kill => "kill",
            };
            out.push((format!("f.ready_{tag}"), server.ready_in.as_secs_f64()));
            out.push((format!("f.restart_{tag}"), total.as_secs_f64()));
            out.push((
                "f.rss_restarted".into(),
                server.rss_bytes().unwrap_or(0) as f64 / MIB,
            ));
            let pending = pending_count(&server.url).await?;
            if pending != n {
                bail!(
                    "after a {} restart the server reports {pending} pending tasks, not {n}",
                    how.name()
                );
            }
        }
    }
    let _ = server.stop(Stop::Kill).await;
    Ok(out)
}

pub async fn pending_count(url: &str) -> Result<u64> {
    let mut client = OrchestratorServiceClient::new(crate::server::connect(url).await?);
    let m = tokio::time::timeout(
        Duration::from_secs(60),
        client.get_metrics(pb::GetMetricsRequest {}),
    )
    .await
    .map_err(|_| anyhow!("GetMetrics took over 60 s"))?
    .context("GetMetrics")?
    .into_inner();
    Ok(m.total.map(|t| t.pending).unwrap_or(0))
}
