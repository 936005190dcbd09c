//! The Rust worker library: runs task handlers for Switchyard's
//! `WorkerService`.
//!
//! A [`Worker`] opens one bidirectional `WorkerService.Work` stream, registers
//! the task names it has handlers for, and runs each `Assignment` the server
//! pushes on a Tokio task, reporting `Complete`, `Fail` or `CancelAck` on the
//! same stream. It heartbeats to keep its leases, turns `CancelAssignment`
//! into the task's [`CancellationToken`],
//! reconnects with backoff when the stream breaks, and drains on shutdown.
//!
//! This module owns the client side of the worker protocol; the
//! `Struct`/JSON conversions in [`convert`] are `pb::json`'s. It speaks
//! only the protos.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use switchyard_client::worker::{HandlerError, TaskContext, Worker};
//!
//! # async fn example() -> Result<(), switchyard_client::worker::WorkerError> {
//! let worker = Worker::builder("http://127.0.0.1:50051")
//!     .name("thumbnailer-1")
//!     .concurrency(8)
//!     .drain_timeout(Duration::from_secs(10))
//!     .handler("resize-image", |ctx: TaskContext| async move {
//!         let width = ctx.payload()["width"]
//!             .as_u64()
//!             .ok_or_else(|| HandlerError::fatal("payload needs an integer `width`"))?;
//!         tokio::select! {
//!             _ = ctx.cancelled() => return Err(HandlerError::retryable("cancelled")),
//!             _ = tokio::time::sleep(Duration::from_millis(width)) => {}
//!         }
//!         ctx.progress(100.0, "resized");
//!         Ok(serde_json::json!({ "width": width }))
//!     })
//!     .build();
//!
//! // Runs until Ctrl-C, then drains: no new tasks, running ones get 10 s.
//! worker
//!     .run(async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await
//! # }
//! ```
//!
//! Or in the background, as tests do:
//!
//! ```no_run
//! # use switchyard_client::worker::{TaskContext, Worker};
//! # async fn example() -> Result<(), switchyard_client::worker::WorkerError> {
//! let handle = Worker::builder("http://127.0.0.1:50051")
//!     .handler("echo", |ctx: TaskContext| async move { Ok(ctx.payload().clone()) })
//!     .build()
//!     .spawn();
//! let worker_id = handle.wait_registered().await.expect("worker stopped");
//! // ... schedule tasks ...
//! handle.shutdown();
//! handle.join().await
//! # }
//! ```
//!
//! # Protocol, as this client plays it
//!
//! - First message `Register { worker_name, task_names, slots,
//!   immediate_slots }`; then it waits (up to 10 s) for `Registered`, and
//!   sends `Heartbeat` every `heartbeat_interval` (or `lease_ttl / 3`, or 5 s,
//!   if the server gives none) for as long as the stream is open.
//! - Each `Assignment` runs its handler on its own Tokio task, inside a
//!   `task` span with `task_id` and `attempt`. The result becomes:
//!   - `Ok(value)` → `Complete` (even if the task was cancelled meanwhile);
//!   - `Err` after the server's `CancelAssignment` → `CancelAck`;
//!   - `Err` after the worker cancelled the task itself (drain timeout) →
//!     nothing: the task is requeued by the server when the stream closes;
//!   - `Err` otherwise → `Fail` with the [`HandlerError`]'s fields;
//!   - a panic → `Fail`, retryable, kind `panic`.
//!
//!   An assignment whose name has no handler fails for good (kind
//!   `no_handler`); one whose payload has a NaN or infinite number fails for
//!   good (kind `invalid_payload`).
//! - A broken stream cancels the tokens of every running task (reason
//!   [`REASON_CONNECTION_LOST`]) and reconnects after 100 ms .. 5 s of
//!   exponential backoff with jitter; their results are not reported (the
//!   server requeues those tasks). The worker registers again as a new
//!   worker id.
//! - Shutdown sends `Drain`, keeps serving (assignments already in flight
//!   still run) until no task runs or the drain timeout passes, then cancels
//!   what remains (reason [`REASON_WORKER_SHUTDOWN`]), gives it 2 s, closes
//!   its side of the stream, waits up to 5 s for the server to close its own,
//!   and returns. Handlers still running then are aborted.
//!
//! `http://` URLs connect in plaintext; `https://` URLs over TLS, with the
//! CAs and client certificate of [`WorkerBuilder::tls`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;

mod backoff;
mod context;
/// `google.protobuf.Struct` ⇄ JSON (payloads in, results out).
pub use crate::pb::json as convert;
mod error;
mod session;
mod transport;

pub use context::{TaskContext, REASON_CONNECTION_LOST, REASON_WORKER_SHUTDOWN};
pub use error::{HandlerError, WorkerError};

/// Default of [`WorkerBuilder::concurrency`].
pub const DEFAULT_CONCURRENCY: u32 = 10;
/// Default of [`WorkerBuilder::immediate_slots`].
pub const DEFAULT_IMMEDIATE_SLOTS: u32 = 1;
/// Default of [`WorkerBuilder::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

type HandlerFuture = Pin<Box<dyn Future<Output = Result<serde_json::Value, HandlerError>> + Send>>;
type HandlerFn = Arc<dyn Fn(TaskContext) -> HandlerFuture + Send + Sync>;

/// The settings a builder collects.
#[derive(Debug, Clone)]
struct Config {
    server_url: String,
    name: String,
    slots: u32,
    immediate_slots: u32,
    drain_timeout: Duration,
    tls: crate::TlsFiles,
    /// Sent as `authorization: Bearer <token>` when the stream opens.
    token: Option<String>,
}

/// Where the worker is, for [`WorkerHandle::wait_registered`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Connecting or reconnecting; not registered.
    Connecting,
    /// Registered under this worker id.
    Registered(String),
    /// `run` has returned.
    Stopped,
}

/// A worker process's connection to Switchyard: its handlers and settings.
/// Built by [`Worker::builder`]; started by [`run`](Worker::run) or
/// [`spawn`](Worker::spawn).
pub struct Worker {
    config: Config,
    handlers: HashMap<String, HandlerFn>,
    status: watch::Sender<Status>,
    /// Cancelled by [`WorkerHandle::abort`]: every socket the worker opened
    /// fails at once.
    kill: CancellationToken,
}

impl Worker {
    /// Starts building a worker that connects to `server_url`, for example
    /// `http://127.0.0.1:50051`.
    pub fn builder(server_url: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            config: Config {
                server_url: server_url.into(),
                name: String::new(),
                slots: DEFAULT_CONCURRENCY,
                immediate_slots: DEFAULT_IMMEDIATE_SLOTS,
                drain_timeout: DEFAULT_DRAIN_TIMEOUT,
                tls: crate::TlsFiles::default(),
                token: None,
            },
            handlers: HashMap::new(),
        }
    }

    /// Connects, registers, runs handlers until `shutdown` resolves, then
    /// drains: sends `Drain`, waits for running handlers up to the drain
    /// timeout, cancels the rest and gives them 2 s, then closes the stream
    /// and returns `Ok(())`.
    ///
    /// Reconnects with exponential backoff (100 ms .. 5 s, with jitter)
    /// whenever the connection fails or the stream breaks, for as long as it
    /// takes; on a broken stream it cancels the tokens of running handlers
    /// (the server requeues their tasks). `shutdown` resolving while
    /// disconnected returns `Ok(())` at once.
    ///
    /// # Errors
    ///
    /// Only for what a retry cannot fix: no handler
    /// ([`WorkerError::NoHandlers`]), a bad setting or URL, a registration the
    /// server refuses, or a server that breaks the protocol.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), WorkerError> {
        let result = self.run_until(shutdown).await;
        if let Err(err) = &result {
            tracing::error!(error = %err, "worker stopped");
        }
        self.status.send_replace(Status::Stopped);
        result
    }

    /// Spawns [`run`](Self::run) on Tokio and returns a handle to shut it
    /// down, abort it, wait for its registration and join it.
    ///
    /// Dropping the handle does not stop the worker.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, like [`tokio::spawn`].
    pub fn spawn(self) -> WorkerHandle {
        let shutdown = CancellationToken::new();
        let status = self.status.subscribe();
        let kill = self.kill.clone();
        let signal = shutdown.clone().cancelled_owned();
        let join = tokio::spawn(self.run(signal));
        WorkerHandle {
            shutdown,
            kill,
            abort: join.abort_handle(),
            status,
            join,
        }
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.handlers.keys().collect();
        names.sort();
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("handlers", &names)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Worker`]: settings, and one handler per task name.
pub struct WorkerBuilder {
    config: Config,
    handlers: HashMap<String, HandlerFn>,
}

impl WorkerBuilder {
    /// A stable name for the server's logs and task status (for example host
    /// and pid), sent as `Register.worker_name`; at most 200 bytes. Default:
    /// empty, and the server picks an id.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// How many normal tasks run at once (`Register.slots`, 1 to 10000).
    /// Default [`DEFAULT_CONCURRENCY`] (10). The server assigns no more than
    /// this; the worker does not queue.
    pub fn concurrency(mut self, slots: u32) -> Self {
        self.config.slots = slots;
        self
    }

    /// Extra slots reserved for immediate tasks (`Register.immediate_slots`,
    /// 0 to 10000). Default [`DEFAULT_IMMEDIATE_SLOTS`] (1).
    pub fn immediate_slots(mut self, n: u32) -> Self {
        self.config.immediate_slots = n;
        self
    }

    /// How long shutdown waits for running tasks before cancelling them.
    /// Default [`DEFAULT_DRAIN_TIMEOUT`] (30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// TLS for an `https://` server URL: the CAs to trust (else the
    /// system's roots) and, for mTLS, the worker's client certificate.
    /// Setting files for an `http://` URL is refused when the worker runs.
    pub fn tls(mut self, files: crate::TlsFiles) -> Self {
        self.config.tls = files;
        self
    }

    /// Sends `authorization: Bearer <token>` when the work stream opens: a
    /// static token of the server's `auth.tokens`, a worker key (which
    /// may serve only its listed task names) or a JWT. A token that is
    /// not valid metadata, or that the server refuses, stops the worker
    /// with [`WorkerError::Refused`] (a retry cannot help).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = Some(token.into());
        self
    }

    /// Handles tasks named `task_name` with `f`, which gets the task's
    /// [`TaskContext`] and returns the result (any JSON value) or a
    /// [`HandlerError`]. Registering a name twice keeps the last handler.
    ///
    /// The handler runs on its own Tokio task, so it may block briefly but
    /// should use `spawn_blocking` for long CPU-bound work. It should watch
    /// [`TaskContext::cancelled`] and return soon after it fires.
    pub fn handler<F, Fut>(mut self, task_name: impl Into<String>, f: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, HandlerError>> + Send + 'static,
    {
        let handler: HandlerFn = Arc::new(move |ctx| Box::pin(f(ctx)) as HandlerFuture);
        self.handlers.insert(task_name.into(), handler);
        self
    }

    /// Builds the worker. Settings are checked when it runs.
    pub fn build(self) -> Worker {
        let (status, _) = watch::channel(Status::Connecting);
        Worker {
            config: self.config,
            handlers: self.handlers,
            status,
            kill: CancellationToken::new(),
        }
    }
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.handlers.keys().collect();
        names.sort();
        f.debug_struct("WorkerBuilder")
            .field("config", &self.config)
            .field("handlers", &names)
            .finish()
    }
}

/// A worker running in the background, from [`Worker::spawn`].
#[derive(Debug)]
pub struct WorkerHandle {
    shutdown: CancellationToken,
    kill: CancellationToken,
    abort: AbortHandle,
    status: watch::Receiver<Status>,
    join: JoinHandle<Result<(), WorkerError>>,
}

impl WorkerHandle {
    /// Starts the graceful drain (see [`Worker::run`]); returns at once.
    /// [`join`](Self::join) waits for the end.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for the worker to stop and returns what [`Worker::run`]
    /// returned; [`WorkerError::Aborted`] after [`abort`](Self::abort).
    pub async fn join(self) -> Result<(), WorkerError> {
        match self.join.await {
            Ok(result) => result,
            Err(err) if err.is_cancelled() => Err(WorkerError::Aborted),
            Err(err) => Err(WorkerError::Join(err)),
        }
    }

    /// Stops at once, like a killed process: the TCP connection drops without
    /// a goodbye (no `Drain`, no end of stream) and every running handler is
    /// aborted. The server finds out the way it would from a crash and
    /// requeues the worker's tasks.
    pub fn abort(&self) {
        self.kill.cancel();
        self.abort.abort();
    }

    /// Waits until the worker is registered and returns the worker id the
    /// server gave it; `None` if the worker stopped first. After a reconnect,
    /// this is the new id.
    pub async fn wait_registered(&self) -> Option<String> {
        if self.kill.is_cancelled() {
            return None;
        }
        let mut status = self.status.clone();
        let registered = status.wait_for(|s| !matches!(s, Status::Connecting)).await;
        match registered.as_deref() {
            Ok(Status::Registered(id)) if !self.kill.is_cancelled() => Some(id.clone()),
            _ => None,
        }
    }
}
