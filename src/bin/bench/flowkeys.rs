//! Concurrency keys under load (issue 21's performance rows):
//!
//! - **fk**: b's end-to-end throughput (1 worker connection × 100 slots,
//!   the producer at 64 in flight) and c's schedule-to-start at half load,
//!   each with `keys` distinct concurrency keys (given round-robin, task
//!   `i` gets key `i % keys`) under a concurrency policy of
//!   [`LIMIT`] per key set through `FlowService`, and on another fresh
//!   server the same without keys or policy, in the same run.
//! - **fm**: the server's RSS with `pending` tasks over `keys` keys (the
//!   same policy), no worker connected.
//!
//! Each measurement runs on a fresh server; the keyed and unkeyed ones
//! alternate, so both see the same machine load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use switchyard::pb;
use switchyard::pb::flow_service_client::FlowServiceClient;
use switchyard::pb::orchestrator_service_client::OrchestratorServiceClient;

use crate::load::{payload_n, payload_t, simple, MakeRequest};
use crate::scenarios::{self, Ctx, Latency, LatencyLoad, MIB};

/// Tasks of one key that may run at once, in fk and fm.
pub const LIMIT: i32 = 4;
/// fk's task name (and so its queue).
const FK_NAME: &str = "bench.fk";
/// fm's task name: no worker serves it.
const FM_NAME: &str = "bench.fm";

/// The key of task `seq` among `keys`.
fn key_of(seq: u64, keys: u64) -> String {
    format!("tenant-{:06}", seq % keys.max(1))
}

/// SIMPLE tasks named `name` with `{"n": seq}` and key `seq % keys`.
fn keyed_maker(name: &'static str, keys: u64) -> MakeRequest {
    Arc::new(move |seq| {
        let mut r = simple(name, payload_n(seq));
        r.options = Some(pb::TaskOptions {
            concurrency_key: key_of(seq, keys),
            ..Default::default()
        });
        r
    })
}

/// c's tasks (`{"t": send time}`) named `name`, keys given round-robin by
/// a counter of their own (the open loop passes the send time, not a
/// sequence number).
fn keyed_latency_maker(name: &'static str, keys: u64) -> MakeRequest {
    let next = Arc::new(AtomicU64::new(0));
    Arc::new(move |t| {
        let mut r = simple(name, payload_t(t));
        r.options = Some(pb::TaskOptions {
            concurrency_key: key_of(next.fetch_add(1, Ordering::Relaxed), keys),
            ..Default::default()
        });
        r
    })
}

/// Sets the policy of [`LIMIT`] per key for `pattern`, and checks that the
/// server keeps a task's key (a server that does not know the field would
/// drop it silently and measure nothing).
async fn keyed_server(url: &str, pattern: &str, make: &MakeRequest) -> Result<()> {
    let ch = crate::server::connect(url).await?;
    FlowServiceClient::new(ch.clone())
        .set_concurrency_policy(pb::SetConcurrencyPolicyRequest {
            policy: Some(pb::ConcurrencyPolicy {
                pattern: pattern.to_string(),
                limit: LIMIT,
                from_config: false,
                ..Default::default()
            }),
        })
        .await
        .context("SetConcurrencyPolicy")?;
    let mut client = OrchestratorServiceClient::new(ch);
    // A task of its own: its `n` is past anything the load sends.
    let probe = make(u64::MAX >> 11);
    let want = probe
        .options
        .as_ref()
        .map(|o| o.concurrency_key.clone())
        .unwrap_or_default();
    let id = client
        .schedule_task(probe)
        .await
        .context("ScheduleTask with a concurrency key")?
        .into_inner()
        .task_id;
    let got = client
        .get_task_status(pb::GetTaskStatusRequest { task_id: id })
        .await
        .context("GetTaskStatus")?
        .into_inner()
        .status
        .map(|s| s.concurrency_key)
        .unwrap_or_default();
    if got != want {
        bail!("the server did not keep the concurrency key (sent {want:?}, status has {got:?})");
    }
    Ok(())
}

/// fk, one run: end to end without and with keys, then c at `rate`
/// without and with keys.
pub async fn fk(ctx: &Ctx, keys: u64, rate: Option<f64>) -> Result<Vec<(String, f64)>> {
    let mut figures = Vec::new();
    for keyed in [false, true] {
        let f = ctx.fresh("fk").await?;
        let r = async {
            let make = if keyed {
                let make = keyed_maker(FK_NAME, keys);
                keyed_server(&f.server.url, FK_NAME, &make).await?;
                make
            } else {
                Arc::new(|seq| simple(FK_NAME, payload_n(seq))) as MakeRequest
            };
            scenarios::e2e_with(ctx, &f.server, 1, 100, FK_NAME, make).await
        }
        .await;
        f.done().await;
        let tag = if keyed { "keys" } else { "nokeys" };
        let r = r.with_context(|| format!("fk: end to end, {tag}"))?;
        scenarios::push_rate(&mut figures, &format!("fk.{tag}"), r);
    }
    if let Some(rate) = rate {
        let mut p99 = [0.0; 2];
        for (i, keyed) in [false, true].into_iter().enumerate() {
            let f = ctx.fresh("fk-c").await?;
            let r = async {
                let make = if keyed {
                    let make = keyed_latency_maker(FK_NAME, keys);
                    keyed_server(&f.server.url, FK_NAME, &make).await?;
                    make
                } else {
                    Arc::new(|t| simple(FK_NAME, payload_t(t))) as MakeRequest
                };
                let times = (ctx.plan.lat_warmup, ctx.plan.lat_window);
                let load = LatencyLoad::plain(ctx, FK_NAME, make);
                scenarios::latency_with(ctx, &f.server.url, rate, times, &load).await
            }
            .await;
            f.done().await;
            let tag = if keyed { "keys" } else { "nokeys" };
            let l: Latency = r.with_context(|| format!("fk: schedule-to-start, {tag}"))?;
            for (q, v) in [("p50", l.p50), ("p99", l.p99), ("p999", l.p999)] {
                figures.push((format!("fk.50.{tag}.{q}"), v));
            }
            p99[i] = l.p99;
        }
        figures.push(("fk.50.p99_added_ms".into(), p99[1] - p99[0]));
    }
    Ok(figures)
}

/// fm: `pending` tasks over `keys` keys, no worker; the server's RSS once
/// every one is accepted.
pub async fn fm(ctx: &Ctx, pending: u64, keys: u64) -> Result<Vec<(String, f64)>> {
    let f = ctx.fresh("fm").await?;
    let r = async {
        let make = keyed_maker(FM_NAME, keys);
        keyed_server(&f.server.url, FM_NAME, &make).await?;
        // The probe is one more pending task.
        let took =
            scenarios::fill_with(&f.server.url, pending - 1, ctx.plan.fill_inflight, make).await?;
        let n = scenarios::pending_count(&f.server.url).await?;
        if n != pending {
            bail!("the server reports {n} pending tasks, not {pending}");
        }
        // As f: a second for the writer and the allocator to settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = &f.server;
        Ok(vec![
            ("fm.fill".to_string(), pending as f64 / took.as_secs_f64()),
            ("fm.rss".into(), s.rss_bytes().unwrap_or(0) as f64 / MIB),
            (
                "fm.rss_peak".into(),
                s.peak_rss_bytes().unwrap_or(0) as f64 / MIB,
            ),
            ("fm.disk".into(), s.disk_bytes() as f64 / MIB),
        ])
    }
    .await;
    f.done().await;
    r.context("fm")
}
