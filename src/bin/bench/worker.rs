//! In-process workers: they complete every assignment at once and record
//! when each task started, on the same clock as the producers
//! ([`crate::load::now_ns`]), so schedule-to-start needs no clock sync.
//!
//! Two kinds: `raw` speaks `WorkerService.Work` directly (register, then
//! `Complete` for each `Assignment` straight from the receive loop: the
//! least client overhead), and `lib` uses `switchyard::worker::Worker`, the
//! Rust worker library (a Tokio task per assignment, JSON payloads).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use prost_types::value::Kind;
use switchyard::pb;
use switchyard::pb::server_message::Msg as ServerMsg;
use switchyard::pb::worker_message::Msg as WorkerMsg;
use switchyard::pb::worker_service_client::WorkerServiceClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::load::{latency_histogram, now_ns};
use crate::server::{connect_with, Access};

/// Which worker client the bench uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerKind {
    /// The raw `WorkerService.Work` stream.
    Raw,
    /// The Rust worker library.
    Lib,
}

impl WorkerKind {
    pub fn describe(self) -> &'static str {
        match self {
            WorkerKind::Raw => "the raw WorkerService stream (Complete sent from the receive loop)",
            WorkerKind::Lib => {
                "the Rust worker library, switchyard::worker::Worker (a Tokio task per assignment)"
            }
        }
    }
}

/// What the workers saw.
pub struct Sink {
    /// Assignments started.
    pub started: AtomicU64,
    /// Schedule-to-start, in microseconds, of tasks sent in the recording
    /// window.
    latency: Option<Mutex<Histogram<u64>>>,
    rec_from: AtomicU64,
    rec_to: AtomicU64,
    /// Messages the server rejected.
    pub rejected: AtomicU64,
    /// From this time on (ns on [`now_ns`]'s clock) the first starts are
    /// kept, in `after_mark` (the failover scenario).
    mark: AtomicU64,
    after_mark: Mutex<Vec<u64>>,
}

/// Starts kept after the mark.
const AFTER_MARK_MAX: usize = 10_000;

impl Sink {
    /// Counts only.
    pub fn counting() -> Arc<Sink> {
        Arc::new(Sink {
            started: AtomicU64::new(0),
            latency: None,
            rec_from: AtomicU64::new(u64::MAX),
            rec_to: AtomicU64::new(u64::MAX),
            rejected: AtomicU64::new(0),
            mark: AtomicU64::new(u64::MAX),
            after_mark: Mutex::new(Vec::new()),
        })
    }

    /// Counts and records schedule-to-start of tasks whose payload `t` falls
    /// in the window set by [`Sink::record_between`].
    pub fn with_latency() -> Arc<Sink> {
        let mut s = Sink::counting();
        if let Some(s) = Arc::get_mut(&mut s) {
            s.latency = Some(Mutex::new(latency_histogram()));
        }
        s
    }

    /// Record tasks sent at `from <= t < to` (ns on [`now_ns`]'s clock).
    pub fn record_between(&self, from: u64, to: u64) {
        self.rec_from.store(from, Ordering::Relaxed);
        self.rec_to.store(to, Ordering::Relaxed);
    }

    /// Keep the times of the first starts from `t_ns` on.
    pub fn mark(&self, t_ns: u64) {
        self.mark.store(t_ns, Ordering::Relaxed);
    }

    /// The first start at or after `t_ns` among those kept since the mark.
    pub fn first_start_after(&self, t_ns: u64) -> Option<u64> {
        self.after_mark.lock().iter().copied().find(|&s| s >= t_ns)
    }

    /// A task started; `t` is its send time if the payload carried one.
    pub fn on_start(&self, t: Option<f64>) {
        self.started.fetch_add(1, Ordering::Relaxed);
        let mark = self.mark.load(Ordering::Relaxed);
        if mark != u64::MAX {
            let now = now_ns();
            if now >= mark {
                let mut v = self.after_mark.lock();
                if v.len() < AFTER_MARK_MAX {
                    v.push(now);
                }
            }
        }
        if let (Some(h), Some(t)) = (&self.latency, t) {
            let t = t as u64;
            if t >= self.rec_from.load(Ordering::Relaxed) && t < self.rec_to.load(Ordering::Relaxed)
            {
                let us = now_ns().saturating_sub(t) / 1000;
                h.lock().saturating_record(us.max(1));
            }
        }
    }

    /// A copy of the latency histogram.
    pub fn latency(&self) -> Option<Histogram<u64>> {
        self.latency.as_ref().map(|h| h.lock().clone())
    }

    /// The histogram so far, and a fresh one for what comes next.
    pub fn take_latency(&self) -> Option<Histogram<u64>> {
        self.latency
            .as_ref()
            .map(|h| std::mem::replace(&mut *h.lock(), latency_histogram()))
    }

    /// Waits until `n` tasks started, or `timeout`.
    pub async fn wait_started(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.started.load(Ordering::Relaxed) < n {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }
}

fn payload_t(p: Option<&prost_types::Struct>) -> Option<f64> {
    match p?.fields.get("t")?.kind {
        Some(Kind::NumberValue(v)) => Some(v),
        _ => None,
    }
}

/// Running worker connections.
pub struct Workers {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<Result<()>>>,
}

impl Workers {
    /// `connections` worker connections of `slots` slots each, handling
    /// `names`; returns once every one is registered.
    pub async fn start(
        kind: WorkerKind,
        url: &str,
        names: &[&str],
        connections: usize,
        slots: u32,
        sink: Arc<Sink>,
    ) -> Result<Workers> {
        let access = Access::default();
        Workers::start_with(kind, url, &access, names, (connections, slots), sink).await
    }

    /// [`Workers::start`] over TLS and with a bearer token, as `access`
    /// says. The worker library takes no token (only TLS files): with a
    /// token, use the raw stream.
    pub async fn start_with(
        kind: WorkerKind,
        url: &str,
        access: &Access,
        names: &[&str],
        (connections, slots): (usize, u32),
        sink: Arc<Sink>,
    ) -> Result<Workers> {
        if kind == WorkerKind::Lib && access.token.is_some() {
            bail!("the worker library sends no bearer token: this needs --worker raw");
        }
        let stop = CancellationToken::new();
        let mut w = Workers {
            stop: stop.clone(),
            tasks: Vec::new(),
        };
        for i in 0..connections {
            match kind {
                WorkerKind::Raw => {
                    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
                    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
                    let task = tokio::spawn(raw_worker(
                        (url.to_string(), access.clone()),
                        format!("bench-raw-{i}"),
                        names,
                        slots,
                        sink.clone(),
                        stop.clone(),
                        ready_tx,
                    ));
                    match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
                        Ok(Ok(())) => w.tasks.push(task),
                        _ => {
                            stop.cancel();
                            let err = match task.await {
                                Ok(Err(e)) => e,
                                _ => anyhow!("the worker did not register within 10 s"),
                            };
                            return Err(err.context("starting a raw worker"));
                        }
                    }
                }
                WorkerKind::Lib => {
                    let task = crate::libworker::start(
                        url,
                        &access.tls,
                        i,
                        names,
                        slots,
                        sink.clone(),
                        stop.clone(),
                    )
                    .await?;
                    w.tasks.push(task);
                }
            }
        }
        Ok(w)
    }

    /// Closes every connection.
    pub async fn stop(self) -> Result<()> {
        self.stop.cancel();
        for t in self.tasks {
            match tokio::time::timeout(Duration::from_secs(10), t).await {
                Ok(Ok(r)) => r?,
                Ok(Err(e)) => bail!("worker task: {e}"),
                Err(_) => bail!("a worker did not stop within 10 s"),
            }
        }
        Ok(())
    }
}

async fn raw_worker(
    (url, access): (String, Access),
    name: String,
    names: Vec<String>,
    slots: u32,
    sink: Arc<Sink>,
    stop: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<()> {
    let channel = connect_with(&url, &access).await?;
    let (tx, rx) = mpsc::channel::<pb::WorkerMessage>(8192);
    let send = |m: WorkerMsg| pb::WorkerMessage { msg: Some(m) };
    tx.send(send(WorkerMsg::Register(pb::Register {
        worker_name: name,
        task_names: names,
        slots,
        immediate_slots: 0,
    })))
    .await
    .map_err(|_| anyhow!("outbound closed"))?;
    let mut client = WorkerServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut inbound = client
        .work(ReceiverStream::new(rx))
        .await
        .context("opening WorkerService.Work")?
        .into_inner();
    let registered = match inbound.message().await.context("waiting for Registered")? {
        Some(pb::ServerMessage {
            msg: Some(ServerMsg::Registered(r)),
        }) => r,
        other => bail!("expected Registered, got {other:?}"),
    };
    let period = registered
        .heartbeat_interval
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(5));
    let _ = ready.send(());
    let mut heartbeat = tokio::time::interval(period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = inbound.message() => match m {
                Ok(Some(pb::ServerMessage { msg: Some(m) })) => match m {
                    ServerMsg::Assignment(a) => {
                        sink.on_start(payload_t(a.payload.as_ref()));
                        let done = WorkerMsg::Complete(pb::Complete {
                            task_id: a.task_id,
                            attempt: a.attempt,
                            result: None,
                        });
                        if tx.send(send(done)).await.is_err() {
                            bail!("the outbound stream closed");
                        }
                    }
                    ServerMsg::Cancel(c) => {
                        let ack = WorkerMsg::CancelAck(pb::CancelAck { task_id: c.task_id, attempt: c.attempt });
                        let _ = tx.send(send(ack)).await;
                    }
                    ServerMsg::Rejected(_) => {
                        sink.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    ServerMsg::Registered(_) => {}
                },
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(s) if stop.is_cancelled() => { let _ = s; break; }
                Err(s) => bail!("worker stream failed: {:?}: {}", s.code(), s.message()),
            },
            _ = heartbeat.tick() => {
                let _ = tx.try_send(send(WorkerMsg::Heartbeat(pb::Heartbeat {})));
            }
        }
    }
    // Closing the outbound side ends the stream; the server requeues
    // nothing, since every assignment was completed.
    drop(tx);
    Ok(())
}
