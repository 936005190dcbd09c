//! The failover scenario: three replicas on one PostgreSQL schema, a backlog
//! of pending tasks, a worker connected to all three, and `kill -9` of the
//! leader. Measured from the kill:
//!
//! - **detect**: kill → a standby holds the lease with the next term (the
//!   lease row's `acquired_at`, on the database's clock, which is this
//!   machine's);
//! - **load**: takeover → the new leader answers health SERVING (it has read
//!   every active task from the database and started the core);
//! - **resume**: SERVING → the first task started on the new leader, at the
//!   worker (it reconnects with its own backoff and registers again);
//! - **rebuild** = load + resume, and **total** = detect + rebuild.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use switchyard::pb;
use switchyard::pb::orchestrator_service_client::OrchestratorServiceClient;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::load::now_ns;
use crate::pg::{self, Pg};
use crate::scenarios::{fill, Ctx};
use crate::server::{self, Server};
use crate::worker::{Sink, WorkerKind, Workers};

const REPLICAS: usize = 3;
const NAME: &str = "bench.failover";
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The id suffix of a lease length: `1s`, `2s`, `500ms`.
pub fn lease_tag(lease: Duration) -> String {
    humantime::format_duration(lease)
        .to_string()
        .replace(' ', "")
}

fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One failover with lease `lease` and `pending` tasks filled before the
/// worker starts.
pub async fn failover(
    ctx: &Ctx,
    pg: &Arc<Pg>,
    lease: Duration,
    pending: u64,
) -> Result<Vec<(String, f64)>> {
    let schema = pg.schema_name();
    let n = ctx.next_id();
    let dirs: Vec<_> = (0..REPLICAS)
        .map(|i| {
            ctx.work_dir
                .join(format!("failover-{}-{n}-r{}", std::process::id(), i + 1))
        })
        .collect();
    let mut servers: Vec<Option<Server>> = Vec::new();
    let r = run(ctx, pg, &schema, &dirs, lease, pending, &mut servers).await;
    for s in servers.into_iter().flatten() {
        let _ = s.kill_now().await;
    }
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    if let Err(e) = pg.drop_schema(&schema).await {
        eprintln!("bench: {e:#}");
    }
    r
}

async fn run(
    ctx: &Ctx,
    pg: &Arc<Pg>,
    schema: &str,
    dirs: &[std::path::PathBuf],
    lease: Duration,
    pending: u64,
    servers: &mut Vec<Option<Server>>,
) -> Result<Vec<(String, f64)>> {
    let tag = lease_tag(lease);
    let id = |k: &str| format!("failover.{tag}.{k}");
    // The first replica leads; the two others stand by.
    for (i, dir) in dirs.iter().enumerate() {
        let _ = std::fs::remove_dir_all(dir);
        let mut spec = ctx.spec.clone();
        spec.perf_dir = None;
        spec.env.extend(Ctx::pg_env(pg, schema));
        spec.env.extend([
            (
                "SWITCHYARD_CLUSTER__LEASE_TTL".to_string(),
                humantime::format_duration(lease).to_string(),
            ),
            (
                "SWITCHYARD_CLUSTER__REPLICA_ID".to_string(),
                format!("bench-r{}", i + 1),
            ),
        ]);
        let s = if i == 0 {
            Server::start(&spec, dir, READY_TIMEOUT).await
        } else {
            Server::start_standby(&spec, dir, READY_TIMEOUT).await
        }
        .with_context(|| format!("starting replica {}", i + 1))?;
        servers.push(Some(s));
    }
    let db = pg.connect().await?;
    let before = pg::lease(&db, schema)
        .await?
        .ok_or_else(|| anyhow!("no lease row after the first replica started"))?;
    if before.holder != "bench-r1" {
        bail!("replica 1 should lead, but {} does", before.holder);
    }
    let urls: Vec<String> = servers.iter().flatten().map(|s| s.url.clone()).collect();
    let leader_url = urls[0].clone();

    // The backlog, on the leader, no worker running.
    let t = Instant::now();
    fill(&leader_url, pending, ctx.plan.fill_inflight, NAME).await?;
    let fill_rate = pending as f64 / t.elapsed().as_secs_f64();

    // One worker connection (100 slots), given all three addresses; the
    // library reconnects to the next one when its stream breaks.
    let sink = Sink::counting();
    let workers = Workers::start(
        WorkerKind::Lib,
        &urls.join(","),
        &[NAME],
        1,
        100,
        sink.clone(),
    )
    .await
    .context("starting the worker")?;
    // Kill once the worker is busy (a twentieth of the backlog done).
    let busy = (pending / 20).max(1);
    if !sink.wait_started(busy, Duration::from_secs(60)).await {
        bail!(
            "the worker started only {} tasks within 60 s",
            sink.started.load(Ordering::Relaxed)
        );
    }
    // Channels to the standbys' health, opened before the kill.
    let mut standbys = Vec::new();
    for u in &urls[1..] {
        standbys.push((u.clone(), server::connect(u).await?));
    }

    let leader = servers[0].take().expect("replica 1");
    let (kill_ns, kill_wall) = (now_ns(), wall_us());
    sink.mark(kill_ns);
    leader.kill_now().await?;
    let started_at_kill = sink.started.load(Ordering::Relaxed);

    // Each standby's health, polled on a task of its own so that a check
    // held up by the promotion (its connections are closed) delays nothing
    // else: the first SERVING and when it was seen.
    let serving_at: Arc<parking_lot::Mutex<Option<(String, u64)>>> = Default::default();
    let pollers: Vec<_> = standbys
        .into_iter()
        .map(|(u, ch)| {
            let serving_at = serving_at.clone();
            tokio::spawn(async move {
                loop {
                    if server::health(ch.clone(), Duration::from_millis(500)).await
                        == Some(ServingStatus::Serving)
                    {
                        let now = now_ns();
                        serving_at.lock().get_or_insert((u, now));
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let r = watch(&db, schema, &before, kill_ns, kill_wall, &sink, &serving_at).await;
    for p in pollers {
        p.abort();
    }
    let (row, takeover_ns, new_url, serving_ns, first) = r?;
    let expected = format!(
        "bench-r{}",
        urls.iter().position(|u| *u == new_url).unwrap_or(0) + 1
    );
    if row.holder != expected {
        bail!(
            "the lease went to {} but {new_url} ({expected}) answered SERVING",
            row.holder
        );
    }
    // Every task completes, on the new leader.
    let done_by = Instant::now() + Duration::from_secs(if ctx.plan.quick { 60 } else { 180 });
    let mut client = OrchestratorServiceClient::new(server::connect(&new_url).await?);
    loop {
        let m = client
            .get_metrics(pb::GetMetricsRequest {})
            .await
            .context("GetMetrics on the new leader")?
            .into_inner();
        let t = m.total.unwrap_or_default();
        if t.completed >= pending {
            break;
        }
        if t.failed + t.cancelled > 0 {
            bail!(
                "{} tasks failed and {} were cancelled",
                t.failed,
                t.cancelled
            );
        }
        if Instant::now() > done_by {
            bail!(
                "after the failover only {} of {pending} tasks completed ({} pending, {} running)",
                t.completed,
                t.pending,
                t.running
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    workers.stop().await?;
    let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9;
    Ok(vec![
        (id("detect"), secs(kill_ns, takeover_ns)),
        (id("load"), secs(takeover_ns, serving_ns)),
        (id("resume"), secs(serving_ns, first)),
        (id("rebuild"), secs(takeover_ns, first)),
        (id("total"), secs(kill_ns, first)),
        (id("active"), pending.saturating_sub(started_at_kill) as f64),
        (
            id("ran_twice"),
            sink.started.load(Ordering::Relaxed).saturating_sub(pending) as f64,
        ),
        (id("fill"), fill_rate),
    ])
}

/// Polls the lease row until the term moves on, and the worker until a
/// task starts on the new leader after the takeover; returns the new lease,
/// the takeover, the replica that answered SERVING and when, and the first
/// start after the takeover (ns on [`now_ns`]'s clock).
async fn watch(
    db: &tokio_postgres::Client,
    schema: &str,
    before: &pg::LeaseRow,
    kill_ns: u64,
    kill_wall: i64,
    sink: &Sink,
    serving_at: &parking_lot::Mutex<Option<(String, u64)>>,
) -> Result<(pg::LeaseRow, u64, String, u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut takeover: Option<(pg::LeaseRow, u64)> = None;
    let mut serving: Option<(String, u64)> = None;
    let first = loop {
        if Instant::now() > deadline {
            bail!(
                "60 s after the kill: takeover {:?}, serving {:?}, no task started on the new leader",
                takeover.as_ref().map(|t| &t.0),
                serving
            );
        }
        if takeover.is_none() {
            if let Some(row) = pg::lease(db, schema).await? {
                if row.term > before.term {
                    let ns = kill_ns as i64 + (row.acquired_at_us - kill_wall) * 1000;
                    takeover = Some((row, ns.max(0) as u64));
                }
            }
        }
        if serving.is_none() {
            serving = serving_at.lock().clone();
        }
        if let (Some((_, t)), Some(_)) = (&takeover, &serving) {
            if let Some(f) = sink.first_start_after(*t) {
                break f;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let (row, takeover_ns) = takeover.expect("set before the loop ends");
    let (new_url, serving_ns) = serving.expect("set before the loop ends");
    Ok((row, takeover_ns, new_url, serving_ns, first))
}
