//! The connection loop: connect, register, serve assignments, drain; and
//! reconnect with backoff when a stream breaks.
//!
//! Policy for the tasks it spawns: every handler runs on its own Tokio task,
//! watched by a supervisor task in one `JoinSet` that lives as long as
//! [`Worker::run`]. When `run` returns (or is aborted) the set is dropped,
//! which aborts the supervisors, and each supervisor aborts its handler.
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt as _, Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::Endpoint;
use tonic::Streaming;
use tracing::{debug, error, info, warn, Instrument as _};

use super::backoff::Backoff;
use super::context::{CancelState, TaskContext, REASON_CONNECTION_LOST, REASON_WORKER_SHUTDOWN};
use super::convert::{json_to_value, struct_to_json};
use super::error::{truncate_utf8, HandlerError, WorkerError, MAX_DETAILS_BYTES};
use super::transport::{KillableConnector, CONNECT_TIMEOUT};
use super::{Status, Worker};
use crate::error_chain;
use crate::pb::{self, server_message::Msg as ServerMsg, worker_message::Msg};

/// The first reconnect delay.
const RECONNECT_FLOOR: Duration = Duration::from_millis(100);
/// The longest reconnect delay.
const RECONNECT_CAP: Duration = Duration::from_secs(5);
/// Messages buffered towards the server before progress and log lines are
/// dropped and results wait.
const OUTBOUND_CAPACITY: usize = 1024;
/// How long to wait for `Registered` after opening the stream.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for room in the outbound buffer for `Drain`.
const DRAIN_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long tasks cancelled at the end of the drain get to return.
const CANCEL_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for the server to end its stream after ours ended.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The heartbeat period when the server gives neither a heartbeat interval
/// nor a lease TTL.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// The shortest heartbeat period, whatever the server says.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// The largest message either side may send (payloads are at most 1 MiB by
/// default; a server may allow more).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// HTTP/2 keep-alive: detects a server that vanished without closing.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A task attempt, as the server names it.
type Key = (String, u32);

/// How one connection ended.
#[derive(Debug)]
enum SessionEnd {
    /// Shut down (drained, or asked to stop while not connected).
    Stopped,
    /// The connection failed or the stream broke: reconnect.
    Lost(String),
    /// A retry cannot help.
    Fatal(WorkerError),
    /// A live server said UNAVAILABLE: a standby while a takeover is under
    /// way, a server starting or draining. Retried soon (at the floor
    /// delay, not backing off), so a worker is back within moments of the
    /// new leader serving.
    Unavailable(String),
}

/// Why [`Session::pump`] returned.
enum Pumped {
    /// The `until` future resolved.
    Until,
    /// No task is running (only when asked to stop then).
    Idle,
    /// The stream broke.
    Lost(String),
}

impl Worker {
    /// The body of [`Worker::run`]: validation, then sessions until one ends
    /// for good.
    pub(super) async fn run_until(
        &self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), WorkerError> {
        if self.handlers.is_empty() {
            return Err(WorkerError::NoHandlers);
        }
        if self.config.slots == 0 {
            return Err(WorkerError::InvalidConfig(
                "concurrency (slots) must be at least 1".to_owned(),
            ));
        }
        // Several replicas (comma-separated): each new session tries the
        // next, so a worker whose replica died reconnects to another (a
        // standby forwards its stream to the leader).
        let endpoints = crate::client::split_urls(&self.config.server_url)
            .map(|u| endpoint(u, &self.config.tls))
            .collect::<Result<Vec<_>, _>>()?;
        let mut next = rand::random::<u32>() as usize;
        let shutdown = shutdown.fuse();
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new(RECONNECT_FLOOR, RECONNECT_CAP);
        let mut tasks = JoinSet::new();
        loop {
            self.status.send_replace(Status::Connecting);
            next = next.wrapping_add(1);
            let endpoint = &endpoints[next % endpoints.len()];
            let end = self
                .session(endpoint, shutdown.as_mut(), &mut tasks, &mut backoff)
                .await;
            match end {
                SessionEnd::Stopped => {
                    info!("worker stopped");
                    return Ok(());
                }
                SessionEnd::Fatal(err) => return Err(err),
                end @ (SessionEnd::Lost(_) | SessionEnd::Unavailable(_)) => {
                    let (reason, delay) = match end {
                        SessionEnd::Unavailable(reason) => {
                            (reason, RECONNECT_FLOOR.mul_f64(0.5 + rand::random::<f64>()))
                        }
                        SessionEnd::Lost(reason) => {
                            (reason, backoff.next_delay(rand::random::<f64>()))
                        }
                        _ => unreachable!("matched above"),
                    };
                    warn!(
                        %reason,
                        retry_in_ms = delay.as_millis() as u64,
                        url = %endpoint.uri(),
                        "disconnected from the server; reconnecting"
                    );
                    tokio::select! {
                        biased;
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// One connection: connect, register, serve until shutdown (then drain)
    /// or until the stream breaks.
    async fn session<S>(
        &self,
        endpoint: &Endpoint,
        mut shutdown: S,
        tasks: &mut JoinSet<()>,
        backoff: &mut Backoff,
    ) -> SessionEnd
    where
        S: Future<Output = ()> + Unpin,
    {
        let connector = KillableConnector::new(self.kill.clone());
        let channel = tokio::select! {
            biased;
            () = &mut shutdown => return SessionEnd::Stopped,
            res = endpoint.connect_with_connector(connector) => match res {
                Ok(channel) => channel,
                Err(err) => return SessionEnd::Lost(format!("cannot connect: {}", error_chain(&err))),
            },
        };
        let mut client = pb::worker_service_client::WorkerServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);

        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let closer = CancellationToken::new();
        // However the session ends, our half of the stream ends with it.
        let _close_on_drop = closer.clone().drop_guard();
        let mut task_names: Vec<String> = self.handlers.keys().cloned().collect();
        task_names.sort();
        let register = pb::Register {
            worker_name: self.config.name.clone(),
            task_names,
            slots: self.config.slots,
            immediate_slots: self.config.immediate_slots,
        };
        // Queued before the call: a server may wait for it before answering.
        if tx.try_send(message(Msg::Register(register))).is_err() {
            return SessionEnd::Lost("the outbound buffer refused Register".to_owned());
        }
        let mut outbound = tonic::Request::new(Outbound::new(rx, closer.clone()));
        if let Some(token) = &self.config.token {
            match format!("Bearer {token}").parse() {
                Ok(v) => {
                    outbound.metadata_mut().insert("authorization", v);
                }
                Err(_) => {
                    return SessionEnd::Fatal(WorkerError::Refused(
                        tonic::Status::invalid_argument("the worker's token is not valid metadata"),
                    ))
                }
            }
        }

        let response = tokio::select! {
            biased;
            () = &mut shutdown => return SessionEnd::Stopped,
            res = client.work(outbound) => res,
        };
        let mut inbound = match response {
            Ok(response) => response.into_inner(),
            Err(status) => return refused_or_lost(status),
        };

        let first = tokio::select! {
            biased;
            () = &mut shutdown => return SessionEnd::Stopped,
            first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.next()) => first,
        };
        let registered = match first {
            Err(_) => {
                return SessionEnd::Lost(format!(
                    "no Registered within {}s",
                    REGISTER_TIMEOUT.as_secs()
                ))
            }
            Ok(None) => {
                return SessionEnd::Lost("the server closed the stream before Registered".into())
            }
            Ok(Some(Err(status))) => return refused_or_lost(status),
            Ok(Some(Ok(msg))) => match msg.msg {
                Some(ServerMsg::Registered(registered)) => registered,
                Some(ServerMsg::Rejected(rejected)) => {
                    return SessionEnd::Fatal(WorkerError::Rejected {
                        code: rejected.code,
                        message: rejected.message,
                    })
                }
                Some(other) => {
                    return SessionEnd::Fatal(WorkerError::Protocol(format!(
                        "expected Registered as the first message, got {}",
                        server_msg_name(&other)
                    )))
                }
                None => {
                    return SessionEnd::Fatal(WorkerError::Protocol(
                        "expected Registered as the first message, got an empty one".into(),
                    ))
                }
            },
        };

        backoff.reset();
        let every = heartbeat_period(&registered);
        let worker_id = registered.worker_id.clone();
        info!(
            %worker_id,
            lease_ttl = ?registered.lease_ttl.and_then(|d| Duration::try_from(d).ok()),
            heartbeat = ?every,
            "registered"
        );
        self.status
            .send_replace(Status::Registered(worker_id.clone()));

        let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut session = Session {
            worker: self,
            tx,
            closer,
            running: HashMap::new(),
            by_id: HashMap::new(),
            heartbeat,
        };
        let span = tracing::info_span!("worker_session", %worker_id);
        session
            .serve(&mut inbound, shutdown, tasks)
            .instrument(span)
            .await
    }
}

/// A registered stream's state.
struct Session<'w> {
    worker: &'w Worker,
    /// Feeds the outbound stream.
    tx: mpsc::Sender<pb::WorkerMessage>,
    /// Ends the outbound stream (after what is buffered).
    closer: CancellationToken,
    /// The attempts this session runs, with their supervisor's task id.
    running: HashMap<Key, Running>,
    by_id: HashMap<tokio::task::Id, Key>,
    heartbeat: Interval,
}

struct Running {
    cancel: Arc<CancelState>,
}

impl Session<'_> {
    async fn serve<S>(
        &mut self,
        inbound: &mut Streaming<pb::ServerMessage>,
        mut shutdown: S,
        tasks: &mut JoinSet<()>,
    ) -> SessionEnd
    where
        S: Future<Output = ()> + Unpin,
    {
        loop {
            match self.pump(inbound, tasks, &mut shutdown, false).await {
                Pumped::Until => return self.drain(inbound, tasks).await,
                Pumped::Lost(reason) => {
                    self.cancel_all(REASON_CONNECTION_LOST);
                    return SessionEnd::Lost(reason);
                }
                // Not asked for here.
                Pumped::Idle => continue,
            }
        }
    }

    /// Handles server messages, finished tasks and heartbeats until `until`
    /// resolves, the stream breaks, or (with `idle_ends`) no task runs.
    async fn pump<U>(
        &mut self,
        inbound: &mut Streaming<pb::ServerMessage>,
        tasks: &mut JoinSet<()>,
        until: U,
        idle_ends: bool,
    ) -> Pumped
    where
        U: Future<Output = ()>,
    {
        tokio::pin!(until);
        loop {
            if idle_ends && self.running.is_empty() {
                return Pumped::Idle;
            }
            tokio::select! {
                biased;
                () = &mut until => return Pumped::Until,
                _ = self.heartbeat.tick() => self.send_heartbeat(),
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => self.on_finished(done),
                item = inbound.next() => match item {
                    Some(Ok(msg)) => self.on_message(msg, tasks),
                    Some(Err(status)) => {
                        return Pumped::Lost(format!("stream error: {}", status_text(&status)))
                    }
                    None => return Pumped::Lost("the server closed the stream".to_owned()),
                },
            }
        }
    }

    /// Sends `Drain`, waits for running tasks up to the drain timeout, cancels
    /// the rest, then closes the stream.
    async fn drain(
        &mut self,
        inbound: &mut Streaming<pb::ServerMessage>,
        tasks: &mut JoinSet<()>,
    ) -> SessionEnd {
        let drain_timeout = self.worker.config.drain_timeout;
        info!(
            running = self.running.len(),
            timeout = ?drain_timeout,
            "shutting down: draining"
        );
        let drain = message(Msg::Drain(pb::Drain {}));
        match tokio::time::timeout(DRAIN_SEND_TIMEOUT, self.tx.send(drain)).await {
            Ok(Ok(())) => {}
            _ => warn!("could not send Drain; the server may still assign tasks"),
        }

        let deadline = Instant::now() + drain_timeout;
        match self
            .pump(inbound, tasks, tokio::time::sleep_until(deadline), true)
            .await
        {
            Pumped::Idle => {}
            Pumped::Lost(reason) => return self.lost_while_draining(reason),
            Pumped::Until => {
                warn!(
                    running = self.running.len(),
                    "drain timeout passed; cancelling the remaining tasks"
                );
                self.cancel_all(REASON_WORKER_SHUTDOWN);
                match self
                    .pump(inbound, tasks, tokio::time::sleep(CANCEL_GRACE), true)
                    .await
                {
                    Pumped::Idle => {}
                    Pumped::Lost(reason) => return self.lost_while_draining(reason),
                    Pumped::Until => warn!(
                        running = self.running.len(),
                        "tasks still running after their cancel; abandoning them to the server's requeue"
                    ),
                }
            }
        }
        self.close(inbound).await;
        SessionEnd::Stopped
    }

    fn lost_while_draining(&mut self, reason: String) -> SessionEnd {
        warn!(
            %reason,
            running = self.running.len(),
            "stream lost while draining; the server requeues unfinished tasks"
        );
        self.cancel_all(REASON_CONNECTION_LOST);
        SessionEnd::Stopped
    }

    /// Ends our half of the stream once what is buffered is sent, then waits
    /// a little for the server to end its half.
    async fn close(&mut self, inbound: &mut Streaming<pb::ServerMessage>) {
        self.closer.cancel();
        let server_done = async {
            while let Some(item) = inbound.next().await {
                match item {
                    Ok(pb::ServerMessage {
                        msg: Some(ServerMsg::Assignment(a)),
                    }) => warn!(
                        task_id = %a.task_id,
                        attempt = a.attempt,
                        "assignment after the stream closed; left to the server's requeue"
                    ),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, server_done)
            .await
            .is_err()
        {
            debug!("the server did not end its stream in time");
        }
    }

    fn on_message(&mut self, msg: pb::ServerMessage, tasks: &mut JoinSet<()>) {
        match msg.msg {
            Some(ServerMsg::Assignment(assignment)) => self.start(assignment, tasks),
            Some(ServerMsg::Cancel(cancel)) => self.cancel(cancel),
            Some(ServerMsg::Rejected(rejected)) => warn!(
                task_id = %rejected.task_id,
                code = %rejected.code,
                message = %rejected.message,
                "the server rejected a message"
            ),
            Some(ServerMsg::Registered(_)) => warn!("ignoring a second Registered"),
            None => debug!("ignoring an empty or unknown server message"),
        }
    }

    /// Runs one assignment: its handler on a task, watched by a supervisor
    /// that reports the outcome.
    fn start(&mut self, assignment: pb::Assignment, tasks: &mut JoinSet<()>) {
        let span = tracing::info_span!(
            "task",
            task_id = %assignment.task_id,
            attempt = assignment.attempt,
            name = %assignment.name
        );
        // With an OpenTelemetry layer in this process's subscriber, the
        // handler's span continues the server's trace (a no-op without one).
        if !assignment.traceparent.is_empty() {
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(
                &span,
                crate::trace::context_of(&assignment.traceparent),
            );
        }
        let key = (assignment.task_id.clone(), assignment.attempt);
        if self.running.contains_key(&key) {
            warn!(parent: &span, "ignoring a duplicate assignment of a running attempt");
            return;
        }
        let payload = match assignment.payload.as_ref().map(struct_to_json).transpose() {
            Ok(Some(payload)) => payload,
            Ok(None) => serde_json::Value::Object(serde_json::Map::new()),
            Err(err) => {
                warn!(parent: &span, error = %err, "payload does not convert to JSON");
                let fail = fail_message(
                    &key,
                    HandlerError::fatal(format!("the payload is not valid JSON: {err}"))
                        .with_kind("invalid_payload"),
                );
                self.report(fail, tasks, span);
                return;
            }
        };
        let Some(handler) = self.worker.handlers.get(&assignment.name).cloned() else {
            warn!(parent: &span, "no handler for this task name");
            let fail = fail_message(
                &key,
                HandlerError::fatal(format!(
                    "this worker has no handler for {:?}",
                    assignment.name
                ))
                .with_kind("no_handler"),
            );
            self.report(fail, tasks, span);
            return;
        };

        debug!(parent: &span, "task started");
        let ctx = TaskContext::new(assignment, payload, self.tx.clone());
        let cancel = ctx.cancel_state();
        let handler_ctx = ctx.clone();
        // Calling the handler inside the task catches a panic in `f` itself too.
        let run = tokio::spawn(async move { handler(handler_ctx).await }.instrument(span.clone()));
        let id = tasks.spawn(supervise(run, ctx).instrument(span)).id();
        self.by_id.insert(id, key.clone());
        self.running.insert(key, Running { cancel });
    }

    /// Sends a message from a task of its own, so the loop never waits.
    fn report(&self, msg: Msg, tasks: &mut JoinSet<()>, span: tracing::Span) {
        let tx = self.tx.clone();
        tasks.spawn(
            async move {
                if tx.send(message(msg)).await.is_err() {
                    debug!("stream closed; report dropped");
                }
            }
            .instrument(span),
        );
    }

    fn cancel(&mut self, cancel: pb::CancelAssignment) {
        let key = (cancel.task_id, cancel.attempt);
        let reason = if cancel.reason.is_empty() {
            "cancelled"
        } else {
            cancel.reason.as_str()
        };
        match self.running.get(&key) {
            Some(running) => {
                info!(task_id = %key.0, attempt = key.1, %reason, "the server cancels a task");
                running.cancel.cancel_by_server(reason);
            }
            None => debug!(
                task_id = %key.0,
                attempt = key.1,
                "cancel for an attempt not running here; ignoring"
            ),
        }
    }

    fn on_finished(&mut self, done: Result<(tokio::task::Id, ()), JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(err) => {
                if err.is_panic() {
                    error!("a task supervisor panicked");
                }
                err.id()
            }
        };
        // Supervisors of earlier sessions, and reports, are not in the map.
        if let Some(key) = self.by_id.remove(&id) {
            self.running.remove(&key);
        }
    }

    fn cancel_all(&mut self, reason: &str) {
        for running in self.running.values() {
            running.cancel.cancel_locally(reason);
        }
    }

    fn send_heartbeat(&self) {
        match self.tx.try_send(message(Msg::Heartbeat(pb::Heartbeat {}))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                debug!("outbound buffer full; skipping a heartbeat")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Aborts a task when dropped (its supervisor was aborted).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits for a handler and reports its outcome.
async fn supervise(run: JoinHandle<Result<serde_json::Value, HandlerError>>, ctx: TaskContext) {
    let mut run = AbortOnDrop(run);
    let outcome = (&mut run.0).await;
    ctx.finish();
    let cancel = ctx.cancel_state();
    let key = (ctx.task_id().to_owned(), ctx.attempt());
    let msg = match outcome {
        Ok(Ok(result)) => {
            debug!("task completed");
            Some(Msg::Complete(pb::Complete {
                task_id: key.0,
                attempt: key.1,
                result: Some(json_to_value(&result)),
            }))
        }
        Ok(Err(err)) if cancel.by_server() => {
            info!(error = %err, "task stopped after the server's cancel");
            Some(Msg::CancelAck(pb::CancelAck {
                task_id: key.0,
                attempt: key.1,
            }))
        }
        Ok(Err(err)) if cancel.is_cancelled() => {
            info!(
                error = %err,
                reason = ?ctx.cancel_reason(),
                "task stopped after the worker cancelled it; not reported, the server requeues it"
            );
            None
        }
        Ok(Err(err)) => {
            info!(error = %err, retryable = err.retryable, "task failed");
            Some(fail_message(&key, err))
        }
        Err(err) if err.is_panic() => {
            let text = panic_text(err.into_panic());
            error!(panic = %text, "handler panicked");
            Some(fail_message(
                &key,
                HandlerError::retryable(format!("handler panicked: {text}"))
                    .with_kind("panic")
                    .with_details(text),
            ))
        }
        // Aborted: the worker is going away.
        Err(_) => None,
    };
    if let Some(msg) = msg {
        if ctx.outbound().send(message(msg)).await.is_err() {
            debug!("stream closed; the outcome is lost and the server requeues the task");
        }
    }
}

fn fail_message(key: &Key, err: HandlerError) -> Msg {
    Msg::Fail(pb::Fail {
        task_id: key.0.clone(),
        attempt: key.1,
        message: err.message,
        kind: err.kind,
        details: truncate_utf8(err.details, MAX_DETAILS_BYTES),
        retryable: err.retryable,
        retry_after: err
            .retry_after
            .and_then(|d| prost_types::Duration::try_from(d).ok()),
    })
}

fn message(msg: Msg) -> pb::WorkerMessage {
    pb::WorkerMessage { msg: Some(msg) }
}

/// The text of a panic payload.
fn panic_text(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// The heartbeat period from `Registered`: its `heartbeat_interval`, else a
/// third of `lease_ttl`, else 5 s; never under 100 ms.
fn heartbeat_period(registered: &pb::Registered) -> Duration {
    let positive = |d: Option<prost_types::Duration>| {
        d.and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
    };
    positive(registered.heartbeat_interval)
        .or_else(|| positive(registered.lease_ttl).map(|ttl| ttl / 3))
        .unwrap_or(DEFAULT_HEARTBEAT)
        .max(MIN_HEARTBEAT)
}

/// A permanent refusal ends the worker; anything else is retried.
fn refused_or_lost(status: tonic::Status) -> SessionEnd {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented
        | Code::AlreadyExists
        | Code::OutOfRange => SessionEnd::Fatal(WorkerError::Refused(status)),
        Code::Unavailable => {
            SessionEnd::Unavailable(format!("registration failed: {}", status_text(&status)))
        }
        _ => SessionEnd::Lost(format!("registration failed: {}", status_text(&status))),
    }
}

fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(": ");
        text.push_str(&error_chain(source));
    }
    text
}

fn server_msg_name(msg: &ServerMsg) -> &'static str {
    match msg {
        ServerMsg::Registered(_) => "Registered",
        ServerMsg::Assignment(_) => "Assignment",
        ServerMsg::Cancel(_) => "CancelAssignment",
        ServerMsg::Rejected(_) => "Rejected",
    }
}

/// Checks the server URL and sets the channel's timeouts.
fn endpoint(url: &str, tls: &crate::TlsFiles) -> Result<Endpoint, WorkerError> {
    let invalid = |reason: String| WorkerError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| invalid(error_chain(&e)))?;
    match endpoint.uri().scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(invalid(format!(
                "scheme {other:?} is not supported; use http:// or https://"
            )))
        }
        None => return Err(invalid("no scheme; expected http://host:port".to_owned())),
    }
    if endpoint.uri().host().is_none_or(str::is_empty) {
        return Err(invalid("no host".to_owned()));
    }
    // The TLS handshake runs over the killable TCP connection (tonic wraps
    // the connector for https:// URLs).
    let endpoint = tls.apply(endpoint).map_err(invalid)?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// The outbound half of the stream: what is sent on the channel, until the
/// closer fires; then what is already buffered, and the end.
struct Outbound {
    rx: mpsc::Receiver<pb::WorkerMessage>,
    close: Pin<Box<WaitForCancellationFutureOwned>>,
    closing: bool,
}

impl Outbound {
    fn new(rx: mpsc::Receiver<pb::WorkerMessage>, closer: CancellationToken) -> Self {
        Self {
            rx,
            close: Box::pin(closer.cancelled_owned()),
            closing: false,
        }
    }
}

impl Stream for Outbound {
    type Item = pb::WorkerMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if !this.closing && this.close.as_mut().poll(cx).is_ready() {
            this.closing = true;
            // Refuses new messages; buffered ones are still received.
            this.rx.close();
        }
        this.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: i64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    }

    #[test]
    fn heartbeat_period_prefers_the_interval_then_the_ttl() {
        let mut r = pb::Registered {
            worker_id: "w".into(),
            lease_ttl: secs(30),
            heartbeat_interval: secs(10),
        };
        assert_eq!(heartbeat_period(&r), Duration::from_secs(10));
        r.heartbeat_interval = secs(0);
        assert_eq!(heartbeat_period(&r), Duration::from_secs(10));
        r.heartbeat_interval = None;
        r.lease_ttl = secs(9);
        assert_eq!(heartbeat_period(&r), Duration::from_secs(3));
        r.lease_ttl = secs(-5);
        assert_eq!(heartbeat_period(&r), DEFAULT_HEARTBEAT);
        r.heartbeat_interval = Some(prost_types::Duration {
            seconds: 0,
            nanos: 1_000,
        });
        assert_eq!(heartbeat_period(&r), MIN_HEARTBEAT);
    }

    #[test]
    fn handler_errors_become_fail_messages() {
        let key = ("t".to_owned(), 3);
        let err = HandlerError::retryable("slow down")
            .with_kind("rate_limited")
            .with_details("x".repeat(MAX_DETAILS_BYTES + 10))
            .retry_after(Duration::from_millis(1500));
        match fail_message(&key, err) {
            Msg::Fail(fail) => {
                assert_eq!((fail.task_id.as_str(), fail.attempt), ("t", 3));
                assert_eq!(fail.message, "slow down");
                assert_eq!(fail.kind, "rate_limited");
                assert_eq!(fail.details.len(), MAX_DETAILS_BYTES);
                assert!(fail.retryable);
                assert_eq!(
                    fail.retry_after,
                    Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 500_000_000
                    })
                );
            }
            other => panic!("expected Fail, got {other:?}"),
        }
        match fail_message(&key, HandlerError::fatal("no")) {
            Msg::Fail(fail) => {
                assert!(!fail.retryable);
                assert_eq!(fail.retry_after, None);
            }
            other => panic!("expected Fail, got {other:?}"),
        }
    }

    #[test]
    fn panic_payloads_become_text() {
        assert_eq!(panic_text(Box::new("boom")), "boom");
        assert_eq!(panic_text(Box::new(String::from("bang"))), "bang");
        assert_eq!(panic_text(Box::new(42)), "non-string panic payload");
    }

    #[test]
    fn only_http_and_https_urls_are_accepted() {
        let none = crate::TlsFiles::default();
        assert!(endpoint("http://127.0.0.1:50051", &none).is_ok());
        assert!(endpoint("http://localhost:50051", &none).is_ok());
        assert!(endpoint("http://[::1]:50051", &none).is_ok());
        assert!(endpoint("https://example.com", &none).is_ok());
        for bad in ["ftp://example.com", "127.0.0.1:50051", "not a url", ""] {
            assert!(
                matches!(endpoint(bad, &none), Err(WorkerError::InvalidUrl { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn permanent_codes_are_fatal_others_are_retried() {
        assert!(matches!(
            refused_or_lost(tonic::Status::invalid_argument("no task names")),
            SessionEnd::Fatal(WorkerError::Refused(_))
        ));
        assert!(matches!(
            refused_or_lost(tonic::Status::unimplemented("")),
            SessionEnd::Fatal(WorkerError::Refused(_))
        ));
        assert!(matches!(
            refused_or_lost(tonic::Status::unavailable("draining")),
            SessionEnd::Unavailable(_)
        ));
        assert!(matches!(
            refused_or_lost(tonic::Status::internal("h2 protocol error")),
            SessionEnd::Lost(_)
        ));
    }

    #[tokio::test]
    async fn outbound_sends_what_is_buffered_then_ends() {
        let (tx, rx) = mpsc::channel(8);
        let closer = CancellationToken::new();
        let mut outbound = Outbound::new(rx, closer.clone());
        tx.send(message(Msg::Heartbeat(pb::Heartbeat {})))
            .await
            .unwrap();
        tx.send(message(Msg::Drain(pb::Drain {}))).await.unwrap();
        assert!(outbound.next().await.is_some());
        closer.cancel();
        // Still delivered after the close...
        assert!(matches!(
            outbound.next().await,
            Some(pb::WorkerMessage {
                msg: Some(Msg::Drain(_))
            })
        ));
        // ...but nothing new, and the stream ends although `tx` lives.
        assert!(tx
            .try_send(message(Msg::Heartbeat(pb::Heartbeat {})))
            .is_err());
        assert!(outbound.next().await.is_none());
    }

    #[tokio::test]
    async fn supervisor_reports_each_outcome() {
        async fn outcome_of(
            cancel: Option<bool>,
            result: Result<serde_json::Value, HandlerError>,
            panics: bool,
        ) -> Option<Msg> {
            let (tx, mut rx) = mpsc::channel(8);
            let assignment = pb::Assignment {
                task_id: "t".into(),
                attempt: 1,
                ..Default::default()
            };
            let ctx = TaskContext::new(assignment, serde_json::json!({}), tx);
            match cancel {
                Some(true) => ctx.cancel_state().cancel_by_server("cancelled"),
                Some(false) => ctx.cancel_state().cancel_locally(REASON_WORKER_SHUTDOWN),
                None => {}
            }
            let run = tokio::spawn(async move {
                if panics {
                    panic!("kaboom");
                }
                result
            });
            supervise(run, ctx).await;
            rx.try_recv().ok().and_then(|m| m.msg)
        }

        let ok = outcome_of(None, Ok(serde_json::json!({"n": 1})), false).await;
        assert!(
            matches!(ok, Some(Msg::Complete(c)) if c.result == Some(json_to_value(&serde_json::json!({"n": 1}))))
        );
        let failed = outcome_of(None, Err(HandlerError::fatal("no")), false).await;
        assert!(matches!(failed, Some(Msg::Fail(f)) if !f.retryable && f.message == "no"));
        let acked = outcome_of(Some(true), Err(HandlerError::retryable("stop")), false).await;
        assert!(matches!(acked, Some(Msg::CancelAck(a)) if a.task_id == "t" && a.attempt == 1));
        let completed_anyway = outcome_of(Some(true), Ok(serde_json::json!(1)), false).await;
        assert!(matches!(completed_anyway, Some(Msg::Complete(_))));
        let local = outcome_of(Some(false), Err(HandlerError::retryable("stop")), false).await;
        assert!(local.is_none());
        let panicked = outcome_of(None, Ok(serde_json::json!(null)), true).await;
        assert!(
            matches!(panicked, Some(Msg::Fail(f)) if f.retryable && f.kind == "panic" && f.message.contains("kaboom"))
        );
    }
}
