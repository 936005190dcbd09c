//! An example Switchyard worker.
//!
//! Connects to `SWITCHYARD_SERVER` (default `http://127.0.0.1:50051`) and
//! handles three task names:
//! - `echo`: returns its payload;
//! - `sleep`: payload `{"ms": N}`; sleeps N milliseconds, reporting progress
//!   every tenth, and stops early when cancelled;
//! - `fail`: always fails with a retryable error;
//! - `flaky`: fails for good on a task's first run, and completes when the
//!   task is run again by `RetryTask` (a later run's idempotency key is
//!   `<task id>:run<n>:<attempt>`); returns that key.
//!
//! Ctrl-C drains (running tasks get 30 s); set `RUST_LOG` to tune the logs.
//!
//! ```sh
//! cargo run --example worker
//! ```
use std::time::Duration;

use serde_json::{json, Value};
use switchyard_client::worker::{HandlerError, TaskContext, Worker};
use tokio::time::Instant;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let server =
        std::env::var("SWITCHYARD_SERVER").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());
    let worker = Worker::builder(server)
        .name(format!("example-worker-{}", std::process::id()))
        .concurrency(4)
        .handler("echo", echo)
        .handler("sleep", sleep)
        .handler("fail", fail)
        .handler("flaky", flaky)
        .build();

    worker.run(ctrl_c()).await?;
    Ok(())
}

/// Resolves on Ctrl-C. If the signal cannot be watched, never resolves (the
/// process then stops only when killed) rather than shutting down at once.
async fn ctrl_c() {
    if let Err(err) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %err, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
    tracing::info!("Ctrl-C: draining");
}

/// Returns the payload unchanged.
async fn echo(ctx: TaskContext) -> Result<Value, HandlerError> {
    Ok(ctx.payload().clone())
}

/// Sleeps `payload.ms` milliseconds in ten steps, reporting progress after
/// each; returns early (with an error, which the worker turns into the
/// cancel's acknowledgement) when the task is cancelled.
async fn sleep(ctx: TaskContext) -> Result<Value, HandlerError> {
    let ms = ctx
        .payload()
        .get("ms")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            HandlerError::fatal("the payload needs a non-negative integer \"ms\"")
                .with_kind("invalid_payload")
        })?;
    let total = Duration::from_millis(ms);
    let start = Instant::now();
    for step in 1..=10u32 {
        tokio::select! {
            () = ctx.cancelled() => {
                let reason = ctx.cancel_reason().unwrap_or_default();
                ctx.log("info", format!("stopping after {:?}: {reason}", start.elapsed()));
                return Err(HandlerError::retryable(format!("cancelled: {reason}"))
                    .with_kind("cancelled"));
            }
            () = tokio::time::sleep_until(start + total * step / 10) => {
                ctx.progress(f64::from(step * 10), format!("slept {} ms", ms * u64::from(step) / 10));
            }
        }
    }
    Ok(json!({ "slept_ms": ms }))
}

/// Always fails, allowing a retry.
async fn fail(ctx: TaskContext) -> Result<Value, HandlerError> {
    Err(HandlerError::retryable(format!(
        "asked to fail (attempt {} of {})",
        ctx.attempt(),
        ctx.max_attempts()
    ))
    .with_kind("requested_failure"))
}

/// Fails for good on the first run (no retry); completes on a later run
/// (after `RetryTask`), returning the idempotency key that tells them apart.
async fn flaky(ctx: TaskContext) -> Result<Value, HandlerError> {
    let key = ctx.idempotency_key();
    if !key.contains(":run") {
        return Err(
            HandlerError::fatal("fails on the first run; retry the task").with_kind("first_run"),
        );
    }
    Ok(json!({ "idempotency_key": key }))
}
