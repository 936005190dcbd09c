//! The in-process worker on the Rust worker library
//! (`switchyard::worker::Worker`): one handler per name that records the
//! start and returns `null` at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use switchyard::worker::{TaskContext, Worker};
use switchyard_client::TlsFiles;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::worker::Sink;

/// Starts one worker connection and waits for its registration; the
/// returned task shuts it down (drain) when `stop` is cancelled.
pub async fn start(
    url: &str,
    tls: &TlsFiles,
    i: usize,
    names: &[&str],
    slots: u32,
    sink: Arc<Sink>,
    stop: CancellationToken,
) -> Result<JoinHandle<Result<()>>> {
    let mut b = Worker::builder(url)
        .name(format!("bench-lib-{i}"))
        .concurrency(slots)
        .immediate_slots(0)
        .drain_timeout(Duration::from_secs(2));
    if !tls.is_empty() {
        b = b.tls(tls.clone());
    }
    for name in names {
        let sink = sink.clone();
        b = b.handler(*name, move |ctx: TaskContext| {
            let sink = sink.clone();
            async move {
                sink.on_start(ctx.payload().get("t").and_then(|v| v.as_f64()));
                Ok(serde_json::Value::Null)
            }
        });
    }
    let handle = b.build().spawn();
    match tokio::time::timeout(Duration::from_secs(10), handle.wait_registered()).await {
        Ok(Some(_)) => {}
        _ => {
            handle.abort();
            return Err(anyhow!("the library worker did not register within 10 s"));
        }
    }
    Ok(tokio::spawn(async move {
        stop.cancelled().await;
        handle.shutdown();
        handle
            .join()
            .await
            .map_err(|e| anyhow!("worker library: {e}"))
    }))
}
