//! The executor's loop: each `Push::Assign` becomes one spawned call (with
//! its `webhook.call` span when tracing is on), each `Push::Cancel` stops
//! the call of that attempt, and `Push::Close` (or the loop's end) stops
//! every call in flight.
//!
//! It owns the calls' lifetimes (spawned, cancelled, taken out of the
//! in-flight table) and hands their outcome to the core with
//! [`Core::report`](crate::core::Core::report); it must not build requests
//! (`exchange.rs`) nor judge answers (`outcome.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::inflight::Flight;
use super::Executor;
use crate::core::{Assignment, Push, Report, WorkerLink};

impl Executor {
    /// The loop: one spawned call per assignment; cancels and close.
    pub(super) async fn run(self: Arc<Self>, mut link: WorkerLink) {
        let worker: Arc<str> = Arc::from(link.id.as_str());
        let root = CancellationToken::new();
        // However the loop ends (close, or the executor dropped), every call
        // in flight stops.
        let _stop_all = root.clone().drop_guard();
        while let Some(push) = link.rx.recv().await {
            match push {
                Push::Assign(a) => self.spawn_call(&root, &worker, a),
                Push::Cancel {
                    task_id,
                    attempt,
                    reason,
                    ..
                } => {
                    let flight = self.inflight.get(&task_id);
                    match flight {
                        Some(f) if f.attempt == attempt => {
                            let _ = f.cancel_reason.set(reason);
                            f.token.cancel();
                        }
                        _ => {
                            tracing::debug!(task_id = %task_id, attempt, "cancel of a call no longer in flight")
                        }
                    }
                }
                Push::Rejected {
                    task_id,
                    code,
                    message,
                } => tracing::debug!(
                    task_id,
                    code,
                    message,
                    "a report of the webhook executor was refused"
                ),
                Push::Close(why) => {
                    let n = self.inflight.len();
                    tracing::info!(
                        why,
                        in_flight = n,
                        "webhook executor closing; aborting the calls in flight"
                    );
                    break;
                }
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
        root.cancel();
    }

    /// Spawns one attempt's call, in the table of calls in flight.
    fn spawn_call(self: &Arc<Self>, root: &CancellationToken, worker: &Arc<str>, a: Assignment) {
        // One client span per attempt (a child of the task's `task.run`),
        // whose context goes in the header.
        let span = crate::telemetry::enabled().then(|| {
            tracing::info_span!(
                parent: None,
                "webhook.call",
                otel.kind = "client",
                task.id = %a.task.id,
                task.name = %a.task.spec.name,
                task.type = a.task.spec.task_type.as_str(),
                task.attempt = a.task.rt.attempt,
                http.request.method = "POST",
                http.response.status_code = tracing::field::Empty,
            )
        });
        let traceparent = match &span {
            Some(span) => crate::telemetry::adopt(span, a.traceparent()),
            None => a.task.spec.traceparent.as_deref().map(str::to_owned),
        };
        let flight = Arc::new(Flight::new(
            a.task.rt.attempt,
            root.child_token(),
            traceparent,
        ));
        self.inflight.insert(a.task.id, flight.clone());
        let call = self.clone().call(worker.clone(), a, flight.clone());
        match span {
            None => {
                tokio::spawn(call);
            }
            Some(span) => {
                tokio::spawn(
                    async move {
                        call.await;
                        let status = flight.status.load(Ordering::Acquire);
                        if status != 0 {
                            tracing::Span::current().record("http.response.status_code", status);
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// Runs one attempt and reports it.
    #[tracing::instrument(level = "debug", name = "webhook_call", skip_all, fields(task_id = %a.task.id, attempt = a.task.rt.attempt))]
    async fn call(self: Arc<Self>, worker: Arc<str>, a: Assignment, flight: Arc<Flight>) {
        let Assignment {
            task,
            payload,
            deadline,
            ..
        } = a;
        let id = task.id;
        let attempt = flight.attempt;
        let done = tokio::select! {
            biased;
            _ = flight.token.cancelled() => None,
            d = self.attempt(&task, payload, deadline, &flight) => Some(d),
        };
        self.inflight.remove(&id, &flight);
        let report = |r: Report| {
            if let Err(e) = self.core.report(&worker, id, attempt, r) {
                tracing::debug!(task_id = %id, cause = %e, "report refused");
            }
        };
        match done {
            Some(d) => d.send(report),
            None => match super::outcome::stopped(&flight) {
                Some(log) => {
                    report(log);
                    report(Report::CancelAck);
                }
                None => tracing::debug!(task_id = %id, "call aborted: the executor is closing"),
            },
        }
    }
}
