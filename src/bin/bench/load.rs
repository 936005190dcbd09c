//! The load side: pools of HTTP/2 connections, closed-loop producers (a
//! fixed number of calls in flight) and the open-loop pacer (a fixed offered
//! rate), all sending `ScheduleTask`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use parking_lot::Mutex;
use prost_types::value::Kind;
use switchyard::pb;
use switchyard::pb::orchestrator_service_client::OrchestratorServiceClient;
use tokio::task::JoinHandle;

use crate::server::{connect_with, Access, Authed};

/// Calls in flight per HTTP/2 connection.
pub const INFLIGHT_PER_CONNECTION: usize = 32;

/// The clock shared by producers and in-process workers.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One client per connection; loop `i` uses connection `i / 32`.
#[derive(Clone)]
pub struct Pool {
    clients: Vec<OrchestratorServiceClient<Authed>>,
}

impl Pool {
    /// Enough connections for `inflight` calls (one per 32).
    pub async fn new(url: &str, inflight: usize) -> Result<Pool> {
        Pool::with_access(url, inflight, &Access::default()).await
    }

    /// [`Pool::new`] over TLS and with a bearer token, as `access` says.
    pub async fn with_access(url: &str, inflight: usize, access: &Access) -> Result<Pool> {
        let n = inflight.div_ceil(INFLIGHT_PER_CONNECTION).max(1);
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(OrchestratorServiceClient::new(
                connect_with(url, access).await?,
            ));
        }
        Ok(Pool { clients })
    }

    /// The client for loop `i`.
    pub fn client(&self, i: usize) -> OrchestratorServiceClient<Authed> {
        self.clients[(i / INFLIGHT_PER_CONNECTION) % self.clients.len()].clone()
    }

    /// Round-robin, for the open loop.
    pub fn nth(&self, i: u64) -> OrchestratorServiceClient<Authed> {
        self.clients[(i as usize) % self.clients.len()].clone()
    }
}

/// Builds the request for call number `seq`.
pub type MakeRequest = Arc<dyn Fn(u64) -> pb::ScheduleTaskRequest + Send + Sync>;

fn num(v: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::NumberValue(v)),
    }
}

/// `{"n": seq}`.
pub fn payload_n(seq: u64) -> prost_types::Struct {
    let mut fields = BTreeMap::new();
    fields.insert("n".to_string(), num(seq as f64));
    prost_types::Struct { fields }
}

/// `{"t": ns}`: the send time on [`now_ns`]'s clock.
pub fn payload_t(t_ns: u64) -> prost_types::Struct {
    let mut fields = BTreeMap::new();
    fields.insert("t".to_string(), num(t_ns as f64));
    prost_types::Struct { fields }
}

/// A SIMPLE task named `name`.
pub fn simple(name: &str, payload: prost_types::Struct) -> pb::ScheduleTaskRequest {
    pb::ScheduleTaskRequest {
        name: name.to_string(),
        payload: Some(payload),
        task_type: pb::TaskType::Simple as i32,
        options: None,
        target: None,
    }
}

/// Shared counters of a producer.
#[derive(Default)]
pub struct Counts {
    /// Accepted calls.
    pub ok: AtomicU64,
    /// Refused or failed calls.
    pub errors: AtomicU64,
    /// The first error.
    pub first_error: Mutex<Option<tonic::Status>>,
}

impl Counts {
    fn error(&self, s: tonic::Status) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock();
        if first.is_none() {
            *first = Some(s);
        }
    }

    /// The first error, if any.
    pub fn first_error(&self) -> Option<tonic::Status> {
        self.first_error.lock().clone()
    }
}

/// `inflight` loops sending back to back until stopped or `limit` calls were
/// made.
pub struct Producer {
    stop: Arc<AtomicBool>,
    /// What happened so far.
    pub counts: Arc<Counts>,
    loops: Vec<JoinHandle<()>>,
    /// When the first call was sent.
    pub started: Instant,
}

impl Producer {
    /// Starts the loops.
    pub fn spawn(pool: &Pool, inflight: usize, limit: Option<u64>, make: MakeRequest) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let next = Arc::new(AtomicU64::new(0));
        let mut loops = Vec::with_capacity(inflight);
        for i in 0..inflight {
            let mut client = pool.client(i);
            let (stop, counts, next, make) =
                (stop.clone(), counts.clone(), next.clone(), make.clone());
            loops.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if limit.is_some_and(|l| seq >= l) {
                        break;
                    }
                    match client.schedule_task(make(seq)).await {
                        Ok(_) => {
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(s) => {
                            counts.error(s);
                            // Do not spin on a refusing server.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            }));
        }
        Producer {
            stop,
            counts,
            loops,
            started: Instant::now(),
        }
    }

    /// Stops the loops and waits for the calls in flight.
    pub async fn stop(self) -> Arc<Counts> {
        self.stop.store(true, Ordering::Relaxed);
        self.join().await
    }

    /// Waits for the loops to end by themselves (a `limit` was given).
    pub async fn join(self) -> Arc<Counts> {
        for l in self.loops {
            let _ = l.await;
        }
        self.counts
    }
}

/// A rate, and the CPU the server and this process spent per operation.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Operations per second.
    pub per_sec: f64,
    /// Server CPU (user + system, all threads) per operation, µs.
    pub server_cpu_us: f64,
    /// This process's CPU (load generator and workers) per operation, µs.
    pub bench_cpu_us: f64,
    /// PostgreSQL's processes' CPU per operation, µs (measured on the
    /// PostgreSQL store only).
    pub db_cpu_us: Option<f64>,
}

/// The rate of `counter` over `window`, after `warmup`, with the CPU that
/// process `server` and this process used meanwhile, and PostgreSQL's
/// processes if `db`.
pub async fn measure_rate(
    counter: &AtomicU64,
    server: u32,
    warmup: Duration,
    window: Duration,
    db: bool,
) -> Rate {
    let me = std::process::id();
    let cpu = |pid| crate::server::cpu_secs(pid).unwrap_or(0.0);
    let db_cpu = || db.then(crate::pg::postgres_cpu_secs);
    tokio::time::sleep(warmup).await;
    let (c1, t1, s1, b1, d1) = (
        counter.load(Ordering::Relaxed),
        Instant::now(),
        cpu(server),
        cpu(me),
        db_cpu(),
    );
    tokio::time::sleep(window).await;
    let (c2, t2, s2, b2, d2) = (
        counter.load(Ordering::Relaxed),
        Instant::now(),
        cpu(server),
        cpu(me),
        db_cpu(),
    );
    let ops = (c2 - c1).max(1) as f64;
    Rate {
        per_sec: (c2 - c1) as f64 / (t2 - t1).as_secs_f64(),
        server_cpu_us: (s2 - s1) * 1e6 / ops,
        bench_cpu_us: (b2 - b1) * 1e6 / ops,
        db_cpu_us: d1.zip(d2).map(|(a, b)| (b - a) * 1e6 / ops),
    }
}

/// Closed-loop `ScheduleTask` throughput at `inflight` calls in flight.
pub async fn schedule_throughput(
    url: &str,
    server: u32,
    inflight: usize,
    warmup: Duration,
    window: Duration,
    make: MakeRequest,
    db: bool,
) -> Result<Rate> {
    let pool = Pool::new(url, inflight).await?;
    schedule_rate(&pool, server, inflight, (warmup, window), make, db).await
}

/// [`schedule_throughput`] on the connections of `pool`.
pub async fn schedule_rate(
    pool: &Pool,
    server: u32,
    inflight: usize,
    (warmup, window): (Duration, Duration),
    make: MakeRequest,
    db: bool,
) -> Result<Rate> {
    let p = Producer::spawn(pool, inflight, None, make);
    let counts = p.counts.clone();
    let rate = measure_rate(&counts.ok, server, warmup, window, db).await;
    let counts = p.stop().await;
    check(&counts)?;
    Ok(rate)
}

/// Durable tasks accepted per second through `ScheduleTasks`: `inflight`
/// loops each sending calls of `per_call` SIMPLE tasks named `name` back to
/// back; the rate counts accepted tasks (items), not calls.
pub async fn bulk_throughput(
    url: &str,
    server: u32,
    (inflight, per_call): (usize, usize),
    warmup: Duration,
    window: Duration,
    name: &'static str,
    db: bool,
) -> Result<Rate> {
    let pool = Pool::new(url, inflight).await?;
    let p = BulkProducer::spawn(&pool, inflight, per_call, name);
    let rate = measure_rate(&p.counts.ok, server, warmup, window, db).await;
    let counts = p.stop().await;
    check(&counts)?;
    Ok(rate)
}

/// `inflight` loops sending `ScheduleTasks` calls of `per_call` SIMPLE
/// tasks named `name` (`{"n": seq}`) back to back until stopped;
/// `counts.ok` counts accepted items, and an answer with refused items
/// counts as an error.
pub struct BulkProducer {
    stop: Arc<AtomicBool>,
    /// Accepted items so far.
    pub counts: Arc<Counts>,
    loops: Vec<JoinHandle<()>>,
}

impl BulkProducer {
    /// Starts the loops.
    pub fn spawn(
        pool: &Pool,
        inflight: usize,
        per_call: usize,
        name: &'static str,
    ) -> BulkProducer {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let next = Arc::new(AtomicU64::new(0));
        let mut loops = Vec::with_capacity(inflight);
        for i in 0..inflight {
            let mut client = pool.client(i);
            let (stop, counts, next) = (stop.clone(), counts.clone(), next.clone());
            loops.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let first = next.fetch_add(per_call as u64, Ordering::Relaxed);
                    let tasks = (first..first + per_call as u64)
                        .map(|seq| simple(name, payload_n(seq)))
                        .collect();
                    match client
                        .schedule_tasks(pb::ScheduleTasksRequest { tasks })
                        .await
                    {
                        Ok(r) => {
                            let r = r.into_inner();
                            let ok = r
                                .results
                                .iter()
                                .filter(|x| {
                                    matches!(
                                        x.outcome,
                                        Some(pb::schedule_tasks_result::Outcome::Scheduled(_))
                                    )
                                })
                                .count();
                            counts.ok.fetch_add(ok as u64, Ordering::Relaxed);
                            if ok < r.results.len() {
                                counts.error(tonic::Status::internal(format!(
                                    "{} of {} items refused",
                                    r.results.len() - ok,
                                    r.results.len()
                                )));
                            }
                        }
                        Err(s) => {
                            counts.error(s);
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            }));
        }
        BulkProducer {
            stop,
            counts,
            loops,
        }
    }

    /// Stops the loops and waits for the calls in flight.
    pub async fn stop(self) -> Arc<Counts> {
        self.stop.store(true, Ordering::Relaxed);
        for l in self.loops {
            let _ = l.await;
        }
        self.counts
    }
}

/// Fails if every call failed, or more than 1% did.
pub fn check(counts: &Counts) -> Result<()> {
    let ok = counts.ok.load(Ordering::Relaxed);
    let errors = counts.errors.load(Ordering::Relaxed);
    if errors > 0 && (ok == 0 || errors * 100 > ok) {
        let e = counts.first_error();
        bail!(
            "{errors} of {} ScheduleTask calls failed; first: {}",
            ok + errors,
            // Its causes too: for a transport error, h2 says "detected" for
            // its own side giving up, "received" for the peer's.
            e.map(|s| switchyard::cli::describe_status(&s))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// What the pacer did.
pub struct OpenLoop {
    /// Calls sent.
    pub sent: u64,
    /// Calls that were due but not sent because too many were outstanding.
    pub dropped: u64,
    /// The counts of the calls.
    pub counts: Arc<Counts>,
    /// Send-to-reply of the accepted calls sent from `record_from` on, in
    /// microseconds: how much of schedule-to-start is the durable accept.
    pub replies: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
}

/// A histogram of latencies in microseconds, 1 µs to 120 s, 3 digits.
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 120_000_000, 3).expect("static histogram bounds")
}

/// Sends at `rate` per second for `duration`: every millisecond, every call
/// that has come due is started on its own task (open loop: a slow reply
/// does not delay the next send). `make` gets the send time, taken just
/// before the call.
pub async fn open_loop(
    pool: &Pool,
    rate: f64,
    duration: Duration,
    make: Arc<dyn Fn(u64) -> pb::ScheduleTaskRequest + Send + Sync>,
    record_from: Duration,
) -> OpenLoop {
    let replies = Arc::new(Mutex::new(latency_histogram()));
    let record_from = now_ns() + record_from.as_nanos() as u64;
    const MAX_OUTSTANDING: u64 = 20_000;
    let counts = Arc::new(Counts::default());
    let outstanding = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut sent, mut dropped) = (0u64, 0u64);
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        let end = elapsed >= duration;
        let due = (elapsed.min(duration).as_secs_f64() * rate) as u64;
        while sent + dropped < due {
            if outstanding.load(Ordering::Relaxed) >= MAX_OUTSTANDING {
                dropped += 1;
                continue;
            }
            let mut client = pool.nth(sent);
            let (make, counts, outstanding, replies) = (
                make.clone(),
                counts.clone(),
                outstanding.clone(),
                replies.clone(),
            );
            outstanding.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let t = now_ns();
                let req = make(t);
                match client.schedule_task(req).await {
                    Ok(_) => {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                        if t >= record_from {
                            let us = (now_ns() - t) / 1000;
                            replies.lock().saturating_record(us.max(1));
                        }
                    }
                    Err(s) => counts.error(s),
                }
                outstanding.fetch_sub(1, Ordering::Relaxed);
            });
            sent += 1;
        }
        if end {
            break;
        }
    }
    OpenLoop {
        sent,
        dropped,
        counts,
        replies,
    }
}
