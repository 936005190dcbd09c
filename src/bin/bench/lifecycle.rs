//! i. The store over months: a store holding many ended tasks (and some
//! pending), as months of work under a long retention leave it, then the
//! server's start-up on it and a page of `ListTasks` with each filter.
//!
//! The tasks are written straight into the store through the library's
//! `SqliteStore` (what the server's writer does, without the network), so
//! ten million rows take minutes, not an hour.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use switchyard::domain::{
    now_micros, EventKind, LogEntry, Payload, Source, Target, Task, TaskRuntime, TaskSpec,
    TaskState, TaskType, WaitingReason,
};
use switchyard::pb;
use switchyard::pb::orchestrator_service_client::OrchestratorServiceClient;
use switchyard::store::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use switchyard::store::{Store, WriteOp};
use tokio::sync::oneshot;

use crate::scenarios::{Ctx, READY_TIMEOUT};
use crate::server::{Server, Stop};

/// Names the seeded tasks spread over.
const NAMES: u64 = 20;

/// The seeded task number `i`: ended (mostly completed, one in 97 failed,
/// one in 89 cancelled) unless `pending`; an ended one in three is an
/// INTEGRATION task (a pending one is SIMPLE, of a name no worker takes, so
/// it stays pending: a pending webhook call would be made); an owner on one
/// in ten.
fn seeded(i: u64, pending: bool) -> Task {
    let task_type = match i % 3 {
        1 if !pending => TaskType::Integration,
        _ => TaskType::Simple,
    };
    let target = match task_type {
        TaskType::Integration => Target::Integration {
            webhook_url: Some("https://hooks.example.com/x".into()),
            workflow_id: None,
            integration_source: None,
        },
        _ => Target::Simple { queue: None },
    };
    let spec = TaskSpec {
        user_id: (i % 10 == 0).then(|| format!("user-{}", i % 1000)),
        session_id: (i % 10 == 1).then(|| format!("session-{}", i % 1000)),
        ..TaskSpec::new(format!("bench.months.{}", i % NAMES), task_type, target)
    };
    let now = now_micros();
    let mut rt = TaskRuntime::new_pending(now, Source::Embedded, WaitingReason::Queued);
    if !pending {
        rt.state = if i % 97 == 0 {
            TaskState::Failed
        } else if i % 89 == 0 {
            TaskState::Cancelled
        } else {
            TaskState::Completed
        };
        rt.attempt = 1;
        rt.started_at = Some(now);
        rt.finished_at = Some(now);
        rt.result = Some(Box::new(serde_json::json!({ "ok": true })));
    }
    rt.seq = i + 1;
    Task {
        id: uuid::Uuid::now_v7(),
        created_at: now,
        spec: Arc::new(spec),
        rt,
    }
}

/// Writes `finished` ended and `pending` pending tasks into a new store in
/// `dir`, each with a log line.
async fn seed(dir: &Path, finished: u64, pending: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let store = SqliteStore::open(SqliteOptions {
        path: Some(dir.join("switchyard.db")),
        synchronous: Synchronous::Normal,
        ..Default::default()
    })
    .map_err(|e| anyhow!("opening the store: {e}"))?;
    let total = finished + pending;
    let mut waits = std::collections::VecDeque::new();
    let mut i = 0;
    while i < total {
        let end = (i + 5_000).min(total);
        let ops: Vec<WriteOp> = (i..end)
            .map(|n| {
                let t = seeded(n, n >= finished);
                WriteOp::Insert {
                    log: vec![LogEntry::system(t.id, 0, "scheduled")],
                    payload: Payload::Json(Arc::from("{\"to\":\"user@example.com\"}")),
                    event: Some(EventKind::Scheduled),
                    task: t,
                }
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        store.submit(ops, Some(tx));
        waits.push_back(rx);
        if waits.len() > 4 {
            waits
                .pop_front()
                .unwrap()
                .await?
                .map_err(|e| anyhow!("{e}"))?;
        }
        i = end;
    }
    for w in waits {
        w.await?.map_err(|e| anyhow!("{e}"))?;
    }
    store.flush().await.map_err(|e| anyhow!("{e}"))?;
    store.close();
    Ok(())
}

/// The names of the filters timed (the rows `i.list_NAME`).
pub const FILTERS: [&str; 10] = [
    "none",
    "state_pending",
    "state_failed",
    "states_active",
    "type_integration",
    "type_complex",
    "name",
    "user",
    "session",
    "source_bullmq",
];

/// The filters timed, one field each, in the order of [`FILTERS`].
fn filters() -> Vec<(&'static str, pb::TaskFilter)> {
    let f = pb::TaskFilter::default;
    vec![
        ("none", f()),
        (
            "state_pending",
            pb::TaskFilter {
                states: vec![pb::TaskState::Pending as i32],
                ..f()
            },
        ),
        (
            "state_failed",
            pb::TaskFilter {
                states: vec![pb::TaskState::Failed as i32],
                ..f()
            },
        ),
        (
            "states_active",
            pb::TaskFilter {
                states: vec![pb::TaskState::Pending as i32, pb::TaskState::Running as i32],
                ..f()
            },
        ),
        (
            "type_integration",
            pb::TaskFilter {
                task_types: vec![pb::TaskType::Integration as i32],
                ..f()
            },
        ),
        (
            "type_complex",
            pb::TaskFilter {
                task_types: vec![pb::TaskType::Complex as i32],
                ..f()
            },
        ),
        (
            "name",
            pb::TaskFilter {
                names: vec!["bench.months.7".into()],
                ..f()
            },
        ),
        (
            "user",
            pb::TaskFilter {
                user_id: "user-420".into(),
                ..f()
            },
        ),
        (
            "session",
            pb::TaskFilter {
                session_id: "session-421".into(),
                ..f()
            },
        ),
        (
            "source_bullmq",
            pb::TaskFilter {
                sources: vec![pb::TaskSource::Bullmq as i32],
                ..f()
            },
        ),
    ]
}

/// i. Seeds a store, then per run: start-up on it (seconds to SERVING) and
/// the median and worst of 10 pages of 100 with each filter (ms).
pub async fn lifecycle(ctx: &Ctx, finished: u64, pending: u64) -> Result<Vec<(String, f64)>> {
    let names: Vec<&str> = filters().iter().map(|f| f.0).collect();
    anyhow::ensure!(names == FILTERS, "the filters and their row names disagree");
    let dir = ctx
        .work_dir
        .join(format!("i-{}-{}", std::process::id(), ctx.next_id()));
    let _ = std::fs::remove_dir_all(&dir);
    let started = Instant::now();
    seed(&dir, finished, pending)
        .await
        .context("seeding the store")?;
    let mut out = vec![(
        "i.seed".to_string(),
        (finished + pending) as f64 / started.elapsed().as_secs_f64(),
    )];
    let r = async {
        for _ in 0..ctx.plan.runs {
            let server = Server::start(&ctx.spec, &dir, READY_TIMEOUT * 4).await?;
            out.push(("i.ready".into(), server.ready_in.as_secs_f64()));
            let mut client =
                OrchestratorServiceClient::new(crate::server::connect(&server.url).await?);
            for (name, filter) in filters() {
                let mut times = Vec::new();
                for _ in 0..10 {
                    let t = Instant::now();
                    client
                        .list_tasks(pb::ListTasksRequest {
                            filter: Some(filter.clone()),
                            page_size: 100,
                            page_token: String::new(),
                        })
                        .await
                        .with_context(|| format!("ListTasks {name}"))?;
                    times.push(t.elapsed());
                }
                times.sort();
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                out.push((format!("i.list_{name}"), ms(times[times.len() / 2])));
                out.push((format!("i.list_{name}_max"), ms(times[times.len() - 1])));
            }
            server.stop(Stop::Kill).await?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    // BENCH_KEEP_STORE=1 leaves the seeded store for a look by hand.
    if std::env::var_os("BENCH_KEEP_STORE").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    r.map(|()| out)
}

/// The soak: `minutes` of open-loop load at `rate` tasks/s on a server
/// that keeps completed tasks `keep`; per minute, p99 schedule-to-start
/// (ms), the store on disk and the RSS (MiB). With retention the disk and
/// the RSS level off once the first tasks age out, and the latency does not
/// drift.
pub async fn soak(
    ctx: &Ctx,
    rate: f64,
    minutes: u32,
    keep: Duration,
) -> Result<Vec<(String, f64)>> {
    use crate::load::{check, open_loop, payload_t, simple, Pool};
    use crate::worker::{Sink, Workers};
    let keep_env = humantime::format_duration(keep).to_string();
    let f = ctx
        .fresh_with(
            "soak",
            &[
                ("SWITCHYARD_RETENTION__COMPLETED".into(), keep_env),
                ("SWITCHYARD_RETENTION__SWEEP_EVERY".into(), "1s".into()),
            ],
        )
        .await?;
    let url = f.server.url.clone();
    let sink = Sink::with_latency();
    let r = async {
        let workers = Workers::start(ctx.worker, &url, &["bench.soak"], 1, 100, sink.clone()).await?;
        let pool = Pool::new(&url, ctx.plan.producer_inflight).await?;
        sink.record_between(0, u64::MAX);
        let mut out = Vec::new();
        const MIB: f64 = 1024.0 * 1024.0;
        for m in 1..=minutes {
            let make: crate::load::MakeRequest = Arc::new(|t| simple("bench.soak", payload_t(t)));
            let ol = open_loop(&pool, rate, Duration::from_secs(60), make, Duration::ZERO).await;
            check(&ol.counts)?;
            anyhow::ensure!(
                ol.dropped == 0,
                "minute {m}: the server fell behind ({} sends dropped)",
                ol.dropped
            );
            let h = sink.take_latency().ok_or_else(|| anyhow!("no histogram"))?;
            let p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
            let disk = f.server.disk_bytes() as f64 / MIB;
            let rss = f.server.rss_bytes().unwrap_or(0) as f64 / MIB;
            crate::log(format!(
                "soak minute {m}: {:.0}/s offered, p99 {p99:.2} ms, disk {disk:.0} MiB, RSS {rss:.0} MiB",
                ol.sent as f64 / 60.0
            ));
            out.push((format!("soak.p99_m{m}"), p99));
            out.push((format!("soak.disk_m{m}"), disk));
            out.push((format!("soak.rss_m{m}"), rss));
        }
        workers.stop().await?;
        Ok::<_, anyhow::Error>(out)
    }
    .await;
    f.done().await;
    r
}
