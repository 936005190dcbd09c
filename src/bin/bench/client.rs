//! `bench --client-timing URL`: the Rust client's `ScheduleTask` against a
//! server someone else started, timed the way `bench/nestjs/bench.mjs` times
//! the TypeScript client (the same warm-up, the same N, sequential and then
//! 32 in flight on one HTTP/2 connection), so `bench/nestjs/run.mjs` can put
//! both clients side by side against one server and read the TypeScript
//! client's own overhead as the difference. Prints one JSON line.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;

use crate::load::{payload_n, simple, MakeRequest, Pool, Producer, INFLIGHT_PER_CONNECTION};

/// Times `n` sequential `ScheduleTask` calls (SIMPLE, named `name`, payload
/// `{"n": i}`), then `n` with 32 in flight, and prints
/// `{"client":"rust","seq_ms":…,"rate32":…}`. `warmup` sequential calls
/// come first, untimed (as bench.mjs's `WARMUP`).
pub async fn run(url: &str, name: &str, n: u64, warmup: u64) -> Result<()> {
    let pool = Pool::new(url, INFLIGHT_PER_CONNECTION).await?;
    let name: Arc<str> = Arc::from(name);
    let make: MakeRequest = Arc::new(move |seq| simple(&name, payload_n(seq)));
    let mut client = pool.client(0);
    for i in 0..warmup {
        client.schedule_task(make(i)).await?;
    }
    let t = Instant::now();
    for i in 0..n {
        client.schedule_task(make(i)).await?;
    }
    let seq_ms = t.elapsed().as_secs_f64() * 1e3 / n as f64;

    let t = Instant::now();
    let counts = Producer::spawn(&pool, INFLIGHT_PER_CONNECTION, Some(n), make)
        .join()
        .await;
    let rate32 = n as f64 / t.elapsed().as_secs_f64();
    if let Some(e) = counts.first_error() {
        bail!("ScheduleTask failed at 32 in flight: {e}");
    }
    println!(
        "{}",
        json!({ "client": "rust", "seq_ms": seq_ms, "rate32": rate32, "n": n })
    );
    Ok(())
}
