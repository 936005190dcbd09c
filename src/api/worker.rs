//! `WorkerService`: one bidirectional stream per worker. Inbound messages
//! become core reports; what the core pushes becomes outbound messages.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::authz::caller;
use super::convert;
use crate::core::{Core, CoreError, Push, Report};
use crate::domain::text;
use crate::keys::Keys;
use crate::pb;
use crate::pb::json::value_to_json;
use crate::pb::server_message::Msg as Out;
use crate::pb::worker_message::Msg as In;
use crate::pb::worker_service_server::WorkerService;

/// The most worker streams open at once that have not registered yet; more
/// are refused with RESOURCE_EXHAUSTED.
pub const MAX_UNREGISTERED: usize = 1024;

/// The service.
pub struct Workers {
    core: Core,
    keys: Keys,
    /// Streams open that have not sent `Register` yet.
    unregistered: Arc<AtomicUsize>,
}

impl Workers {
    /// A service over a core.
    pub fn new(core: Core, keys: Keys) -> Self {
        Workers {
            core,
            keys,
            unregistered: Arc::default(),
        }
    }
}

/// Counts a stream as unregistered while it lives.
struct Unregistered(Arc<AtomicUsize>);

impl Drop for Unregistered {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type OutStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;
type Tx = mpsc::Sender<Result<pb::ServerMessage, Status>>;

fn dur(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[tonic::async_trait]
impl WorkerService for Workers {
    type WorkStream = OutStream;

    async fn work(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let who = caller(&req)?;
        let mut inbound = req.into_inner();
        // A stream must register within a lease: one that never does would
        // otherwise hold its memory forever, uncounted.
        if self.unregistered.fetch_add(1, Ordering::Relaxed) >= MAX_UNREGISTERED {
            self.unregistered.fetch_sub(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "more than {MAX_UNREGISTERED} worker streams are waiting to register"
            )));
        }
        let waiting = Unregistered(self.unregistered.clone());
        let within = self.core.config().lease_ttl;
        let first = tokio::time::timeout(within, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "the worker did not register within the lease ({})",
                    humantime::format_duration(within)
                ))
            })??
            .ok_or_else(|| Status::cancelled("the worker closed the stream before registering"))?;
        drop(waiting);
        let Some(In::Register(reg)) = first.msg else {
            return Err(CoreError::FailedPrecondition(
                "the first message of a worker must be Register".into(),
            )
            .into());
        };
        let (name, names, slots, imm) = convert::registration(reg)?;
        if let Err(n) = who.may_register(&names) {
            return Err(Status::permission_denied(format!(
                "register.task_names: this worker key may not register task name {n:?}"
            )));
        }
        // Its queue keys: the names, in the worker's namespace (a worker
        // takes only its namespace's tasks).
        let keys: Vec<String> = names
            .iter()
            .map(|n| crate::domain::namespace::qualify(n, who.namespace()).into_owned())
            .collect();
        let link = self.core.register_worker(&name, &keys, slots, imm)?;
        let worker_id = link.id.clone();
        self.keys
            .audit(
                &who,
                "worker_register",
                &worker_id,
                &format!("worker {name:?}, names {}", names.join(",")),
            )
            .await;
        let (tx, rx) = mpsc::channel::<Result<pb::ServerMessage, Status>>(1024);
        let cfg = self.core.config();
        let _ = tx
            .send(Ok(pb::ServerMessage {
                msg: Some(Out::Registered(pb::Registered {
                    worker_id: worker_id.clone(),
                    lease_ttl: Some(dur(cfg.lease_ttl)),
                    heartbeat_interval: Some(dur(cfg.heartbeat_interval)),
                })),
            }))
            .await;
        let span = tracing::info_span!("worker", worker_id = %worker_id, worker_name = %name);
        // Outbound: policy on shutdown — ends when the core closes the worker.
        tokio::spawn(outbound(self.core.clone(), link.rx, tx.clone()).instrument(span.clone()));
        // Inbound: ends when the worker's stream ends; its tasks are requeued.
        let core = self.core.clone();
        tokio::spawn(
            async move {
                let gone = who.gone();
                tokio::pin!(gone);
                let why = loop {
                    tokio::select! {
                        m = inbound.message() => match m {
                            Ok(Some(m)) => handle(&core, &worker_id, m, &tx).await,
                            Ok(None) => break "the worker closed its stream".to_string(),
                            Err(e) => break format!("stream error: {}", e.message()),
                        },
                        _ = &mut gone => {
                            // A revoked or expired key's stream ends now.
                            let _ = tx
                                .send(Err(Status::unauthenticated(
                                    "the worker's key was revoked or has expired",
                                )))
                                .await;
                            break "its key was revoked or expired".to_string();
                        }
                    }
                };
                core.worker_gone(&worker_id, &why);
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn handle(core: &Core, worker_id: &str, m: pb::WorkerMessage, tx: &Tx) {
    let Some(msg) = m.msg else {
        core.touch(worker_id);
        return;
    };
    let (task_id, attempt, report) = match msg {
        In::Heartbeat(_) => {
            core.touch(worker_id);
            return;
        }
        In::Drain(_) => {
            core.drain_worker(worker_id);
            return;
        }
        In::Register(_) => {
            reject(tx, "", "FAILED_PRECONDITION", "already registered".into()).await;
            return;
        }
        In::Progress(p) => (
            p.task_id,
            p.attempt,
            Report::Progress {
                percent: p.percent,
                message: text::prefix(&p.message, 1024).to_string(),
            },
        ),
        In::Log(l) => (
            l.task_id,
            l.attempt,
            Report::Log {
                source: crate::domain::LogSource::Worker,
                level: match l.level.as_str() {
                    "" => "info".to_string(),
                    "debug" | "info" | "warn" | "error" => l.level,
                    _ => "info".to_string(),
                },
                message: text::prefix(&l.message, 8192).to_string(),
            },
        ),
        In::Complete(c) => {
            let result = match c.result.as_ref().map(value_to_json) {
                None => serde_json::Value::Null,
                Some(Ok(v)) => v,
                Some(Err(e)) => {
                    reject(tx, &c.task_id, "INVALID_ARGUMENT", format!("result: {e}")).await;
                    return;
                }
            };
            (c.task_id, c.attempt, Report::Complete(result))
        }
        In::Fail(f) => match convert::fail_report(&f) {
            Ok((error, retry_after)) => (f.task_id, f.attempt, Report::Fail { error, retry_after }),
            Err(e) => {
                reject(tx, &f.task_id, "INVALID_ARGUMENT", e.to_string()).await;
                return;
            }
        },
        In::CancelAck(a) => (a.task_id, a.attempt, Report::CancelAck),
    };
    let id = match convert::parse_id("task_id", &task_id) {
        Ok(id) => id,
        Err(e) => {
            reject(tx, &task_id, "INVALID_ARGUMENT", e.to_string()).await;
            return;
        }
    };
    if let Err(e) = core.report(worker_id, id, attempt, report) {
        tracing::warn!(task_id = %id, attempt, cause = %e, "worker report refused");
        reject(tx, &task_id, "FAILED_PRECONDITION", e.to_string()).await;
    }
}

async fn reject(tx: &Tx, task_id: &str, code: &str, message: String) {
    let _ = tx
        .send(Ok(pb::ServerMessage {
            msg: Some(Out::Rejected(pb::Rejected {
                task_id: task_id.to_string(),
                code: code.to_string(),
                message,
            })),
        }))
        .await;
}

async fn outbound(core: Core, mut rx: mpsc::UnboundedReceiver<Push>, tx: Tx) {
    while let Some(push) = rx.recv().await {
        let msg = match push {
            Push::Assign(a) => {
                let payload = match core.load_payload(a.task.id, a.payload.clone()).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(task_id = %a.task.id, cause = %e, "payload missing from the store");
                        continue;
                    }
                };
                Out::Assignment(convert::assignment(&a, &payload))
            }
            Push::Cancel {
                task_id,
                attempt,
                reason,
                ..
            } => Out::Cancel(pb::CancelAssignment {
                task_id: task_id.to_string(),
                attempt,
                reason: reason.to_string(),
            }),
            Push::Rejected {
                task_id,
                code,
                message,
            } => Out::Rejected(pb::Rejected {
                task_id,
                code: code.to_string(),
                message,
            }),
            Push::Close(why) => {
                let _ = tx.send(Err(Status::unavailable(why))).await;
                return;
            }
            // Only in-process executors hold workflows; nothing to forward.
            Push::ChildDone { .. } | Push::Signal { .. } => continue,
        };
        if tx
            .send(Ok(pb::ServerMessage { msg: Some(msg) }))
            .await
            .is_err()
        {
            return;
        }
    }
}
