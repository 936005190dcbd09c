//! k. Schedule-to-start at half load while many schedules fire (issue 22:
//! 10,000 active schedules firing every minute add at most 1 ms to p99).
//!
//! On one fresh server: c's measurement over one minute without schedules
//! (the control), then `n` schedules are created that all fire at the same
//! second of every minute (the worst case: one burst of `n` fires a
//! minute, no jitter), and the same measurement runs again over the minute
//! that holds one burst, the burst in its middle. Quick mode: 200
//! schedules firing every second, over c's short window.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use switchyard::pb;
use switchyard::pb::schedule_service_client::ScheduleServiceClient;

use crate::load::simple;
use crate::scenarios::{latency_over, Ctx, Latency};

/// Schedules of the full run.
pub const SCHEDULES: usize = 10_000;
/// Schedules of the quick run.
const QUICK_SCHEDULES: usize = 200;

/// The control and the loaded measurement, and the schedules created.
pub struct Outcome {
    pub control: Latency,
    pub loaded: Latency,
    pub schedules: usize,
}

pub async fn with_schedules(ctx: &Ctx, rate: f64) -> Result<Outcome> {
    let f = ctx.fresh("k").await?;
    let r = run(ctx, &f.server.url, rate).await;
    f.done().await;
    r
}

async fn run(ctx: &Ctx, url: &str, rate: f64) -> Result<Outcome> {
    let quick = ctx.plan.quick;
    let (n, warmup, window) = if quick {
        (
            QUICK_SCHEDULES,
            ctx.plan.lat_warmup,
            ctx.plan.lat_window * 2,
        )
    } else {
        (SCHEDULES, ctx.plan.lat_warmup, Duration::from_secs(60))
    };
    let control = latency_over(ctx, url, rate, warmup, window)
        .await
        .context("k: the control (no schedules)")?;

    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect()
        .await
        .context("k: connecting")?;
    let sc = ScheduleServiceClient::new(channel);
    // The second of the minute the burst falls on: far enough ahead for
    // the creation, moved to the window's middle below.
    let second = (chrono::Utc::now().timestamp() + 45).rem_euclid(60);
    let cron = if quick {
        "* * * * * *".to_string()
    } else {
        format!("{second} * * * * *")
    };
    let created: Vec<Result<(), tonic::Status>> = futures::stream::iter(0..n)
        .map(|i| {
            let mut sc = sc.clone();
            let cron = cron.clone();
            async move {
                sc.create_schedule(pb::CreateScheduleRequest {
                    schedule_id: format!("bench-k-{i:05}"),
                    spec: Some(pb::ScheduleSpec {
                        timing: Some(pb::schedule_spec::Timing::Cron(cron)),
                        overlap: pb::ScheduleOverlapPolicy::AllowAll as i32,
                        // No worker takes them: each fire is one more
                        // accepted task, the schedules' whole cost.
                        task: Some(simple("bench.k.fire", prost_types::Struct::default())),
                        ..Default::default()
                    }),
                    paused: false,
                })
                .await
                .map(drop)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    if let Some(Err(e)) = created.into_iter().find(Result::is_err) {
        bail!("k: CreateSchedule: {e}");
    }
    if !quick {
        // Start so that the burst falls in the window's middle.
        let now = chrono::Utc::now();
        let now_s = now.timestamp();
        let mut burst = now_s - now_s.rem_euclid(60) + second;
        let lead = (warmup + window / 2).as_secs() as i64;
        while burst - lead <= now_s {
            burst += 60;
        }
        let start_at = burst - lead;
        let wait_ms = (start_at * 1000 - now.timestamp_millis()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    }
    let loaded = latency_over(ctx, url, rate, warmup, window)
        .await
        .context("k: with the schedules firing")?;
    // The burst did fall: the first and the last schedule have fired.
    for i in [0, n - 1] {
        let info = sc
            .clone()
            .get_schedule(pb::GetScheduleRequest {
                schedule_id: format!("bench-k-{i:05}"),
            })
            .await
            .context("k: GetSchedule")?
            .into_inner()
            .schedule
            .unwrap_or_default();
        if info.fires == 0 {
            bail!("k: schedule bench-k-{i:05} did not fire during the window");
        }
    }
    Ok(Outcome {
        control,
        loaded,
        schedules: n,
    })
}
