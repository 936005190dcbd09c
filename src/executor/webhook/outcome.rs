//! Turning one attempt's outcome into what the core hears: a result (with
//! n8n's execution id), a failure that says whether to retry and after how
//! long (`Retry-After`, else the task's backoff with jitter), `Busy` when
//! the host had no room (no attempt used), and the log line of a call a
//! cancel, a disconnect or the execution timeout stopped.
//!
//! It owns those verdicts and their words; it must not send anything
//! (`exchange.rs`) nor report by itself (the loop does).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use reqwest::StatusCode;

use super::call;
use super::inflight::{Flight, RECEIVING, SENDING};
use super::Executor;
use crate::core::{CancelReason, Report};
use crate::domain::{FailureKind, Micros, Task, TaskError};

/// What a finished call reports.
pub(super) struct Done {
    log: Option<(&'static str, String)>,
    /// n8n's execution id, recorded as the task's external id.
    external_id: Option<String>,
    report: Report,
}

impl Done {
    /// Hands the log line, the external id and the outcome to `report`, in
    /// that order.
    pub(super) fn send(self, report: impl Fn(Report)) {
        if let Some((level, message)) = self.log {
            report(Report::Log {
                source: crate::domain::LogSource::Worker,
                level: level.into(),
                message,
            });
        }
        if let Some(x) = self.external_id {
            report(Report::ExternalId(x));
        }
        report(self.report);
    }
}

impl Executor {
    /// One attempt, turned into what to report.
    pub(super) async fn attempt(
        &self,
        task: &Task,
        payload: Option<Arc<str>>,
        deadline: Option<Micros>,
        flight: &Flight,
    ) -> Done {
        let started = Instant::now();
        let outcome = self.exchange(task, payload, deadline, flight).await;
        let ms = started.elapsed().as_millis();
        let url = flight.url.get().map(String::as_str);
        match outcome {
            Ok((result, via)) => Done {
                log: url.map(|u| {
                    (
                        "info",
                        format!("POST {u} → {} in {ms} ms{via}", status_of(&result)),
                    )
                }),
                external_id: result
                    .get("execution_id")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string),
                report: Report::Complete(result),
            },
            // Nothing was sent: the task waits for the host without using
            // an attempt.
            Err(f) if f.kind == FailureKind::HostBusy => Done {
                log: None,
                external_id: None,
                report: Report::Busy {
                    retry_after: f.retry_after.unwrap_or_else(|| {
                        jitter(
                            task.spec
                                .backoff
                                .delay(1)
                                .clamp(Duration::from_millis(50), Duration::from_secs(2)),
                        )
                    }),
                    message: f.message,
                },
            },
            Err(f) => {
                let what = match flight.status.load(Ordering::Acquire) {
                    0 => f.kind.to_string(),
                    s => StatusCode::from_u16(s)
                        .map(call::status_text)
                        .unwrap_or_else(|_| s.to_string()),
                };
                let retry_after = f.retryable.then(|| {
                    f.retry_after
                        .unwrap_or_else(|| jitter(task.spec.backoff.delay(task.rt.attempt)))
                });
                Done {
                    log: url.map(|u| ("warn", format!("POST {u} → {what} in {ms} ms"))),
                    external_id: None,
                    report: Report::Fail {
                        error: TaskError {
                            message: f.message,
                            kind: f.kind.to_string(),
                            details: f.details,
                            retryable: f.retryable,
                            attempt: task.rt.attempt,
                        },
                        retry_after,
                    },
                }
            }
        }
    }
}

/// The log line of a call the core stopped: how far it got, and so whether
/// the webhook may have run. `None` when no cancel stopped it (the
/// executor is closing).
pub(super) fn stopped(flight: &Flight) -> Option<Report> {
    let reason = flight.cancel_reason.get()?;
    let url = flight
        .url
        .get()
        .map(String::as_str)
        .unwrap_or("the webhook");
    let what = match reason {
        CancelReason::Disconnected => "the disconnect",
        CancelReason::Timeout => "the execution timeout",
        CancelReason::Cancelled | CancelReason::NotAccepted(_) => "cancel",
    };
    let (level, message) = match flight.phase.load(Ordering::Acquire) {
        SENDING => (
            "warn",
            format!(
                "POST {url}: request sent; no response before {what} — the webhook may have run"
            ),
        ),
        RECEIVING => (
            "warn",
            format!(
                "POST {url} answered {}; stopped by {what} while reading the response — the webhook \
                 has run",
                call::status_text(
                    StatusCode::from_u16(flight.status.load(Ordering::Acquire))
                        .unwrap_or(StatusCode::OK)
                )
            ),
        ),
        _ => (
            "info",
            format!("POST {url}: stopped by {what} before the request was sent"),
        ),
    };
    Some(Report::Log {
        source: crate::domain::LogSource::Worker,
        level: level.into(),
        message,
    })
}

fn status_of(result: &serde_json::Value) -> String {
    result
        .get("status")
        .and_then(serde_json::Value::as_u64)
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .map(call::status_text)
        .unwrap_or_default()
}

/// A delay multiplied by a random factor in [0.5, 1.0], so retries of many
/// tasks spread out.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(5) && d <= Duration::from_secs(10),
                "{d:?}"
            );
        }
    }
}
