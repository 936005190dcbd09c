//! Shared helpers of the integration tests: a real server on an ephemeral
//! port (in-process, or as a separate process for kill -9 tests), gRPC
//! clients, waiting on conditions with a deadline, and small builders for
//! requests.
//!
//! Nothing here sleeps to synchronise: every wait polls a condition until a
//! deadline and fails the test with what it was waiting for.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

use switchyard::pb;
use switchyard::pb::orchestrator_service_client::OrchestratorServiceClient;
use switchyard::pb::worker_service_client::WorkerServiceClient;
use switchyard::worker::{TaskContext, Worker, WorkerHandle};

/// The orchestrator client the tests use.
pub type Client = OrchestratorServiceClient<Channel>;

/// How long a test waits for something that should take well under a second.
pub const SHORT: Duration = Duration::from_secs(5);
/// How long a test waits for something that involves a lease or a restart.
pub const LONG: Duration = Duration::from_secs(15);

/// Installs the test binary's one tracing subscriber (every test module
/// shares the process): the test output gets what `RUST_LOG` asks for
/// (errors by default), and [`server_logs`] captures Switchyard's own lines
/// at debug level for the tests that check what the server logs.
pub fn init_tracing() {
    let _ = server_logs();
}

/// Everything the in-process servers of this test binary logged at debug
/// level and above.
pub fn server_logs() -> Arc<parking_lot::Mutex<Vec<u8>>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    static LOGS: std::sync::OnceLock<Arc<parking_lot::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        struct W(Arc<parking_lot::Mutex<Vec<u8>>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sink = buf.clone();
        let shown = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
        let _ = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(shown),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || W(sink.clone()))
                    .with_filter(tracing_subscriber::EnvFilter::new("switchyard=debug")),
            )
            .try_init();
        buf
    })
    .clone()
}

// ---------------------------------------------------------------------------
// Waiting on conditions.
// ---------------------------------------------------------------------------

/// Polls `check` until it returns `Some`, and returns that value; panics with
/// `what` once `timeout` has passed.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        // A pause between polls, not a synchronisation: the condition decides.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Polls `check` until it is true; panics with `what` once `timeout` has
/// passed.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Awaits `fut`, failing the test with `what` if it takes longer than
/// `timeout`.
pub async fn within<T>(what: &str, timeout: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------
// Servers.
// ---------------------------------------------------------------------------

/// The test defaults: short leases so that lease tests stay fast, a short
/// drain, and a file store in a temporary directory.
pub fn test_config(data_dir: &Path) -> switchyard::Config {
    let mut cfg = switchyard::Config {
        data_dir: data_dir.to_path_buf(),
        ..Default::default()
    };
    cfg.scheduler.lease_ttl = Duration::from_secs(2);
    cfg.scheduler.heartbeat_interval = Duration::from_millis(500);
    cfg.scheduler.shutdown_grace = Duration::from_secs(1);
    if let Some((url, schema)) = postgres_store(data_dir) {
        cfg.store.url = Some(url);
        cfg.store.schema = schema;
        cfg.cluster.lease_ttl = Duration::from_secs(2);
    }
    cfg
}

/// With `SWITCHYARD_TEST_STORE=postgres`, every server of the suite runs on
/// PostgreSQL (`DATABASE_URL`, default the local `test` database), in a
/// schema named after its data directory, so a restart on the same
/// directory finds its tasks, as with SQLite.
pub fn postgres_store(data_dir: &Path) -> Option<(String, String)> {
    if std::env::var("SWITCHYARD_TEST_STORE").ok()?.as_str() != "postgres" {
        return None;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut h);
    Some((database_url(), format!("it_{:016x}", h.finish())))
}

/// `DATABASE_URL`, default the local `test` database.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A server running inside the test process on `127.0.0.1:0`.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://addr` (`https://addr` with `[tls]` set).
    pub url: String,
    /// Where its admin HTTP server listens.
    pub admin_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), switchyard::server::ServeError>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with the test defaults.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server with the test defaults changed by `f`; with `[tls]`
    /// set, returns without waiting for it to answer.
    pub async fn start_with(f: impl FnOnce(&mut switchyard::Config)) -> TestServer {
        init_tracing();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut cfg = test_config(dir.path());
        f(&mut cfg);
        let tls = cfg.tls.enabled();
        let scheme = if tls { "https" } else { "http" };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let admin_addr = admin.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel::<()>();
        let listeners = switchyard::Listeners {
            grpc: listener,
            admin: Some(admin),
        };
        let join = tokio::spawn(switchyard::run_with(listeners, cfg, async move {
            let _ = rx.await;
        }));
        let server = TestServer {
            addr,
            url: format!("{scheme}://{addr}"),
            admin_addr,
            shutdown: Some(tx),
            join: Some(join),
            _dir: dir,
        };
        if tls {
            // The caller has the CA: it waits for the server itself.
            return server;
        }
        // Ready once the orchestrator answers (asking for a token counts).
        let mut client = server.client().await;
        // On PostgreSQL a server first creates its schema and takes the
        // lease: slower on a loaded machine.
        let ready_within = if postgres_store(server.data_dir()).is_some() {
            LONG
        } else {
            SHORT
        };
        wait_until("the server to answer GetMetrics", ready_within, || {
            let mut c = client.clone();
            async move {
                match c.get_metrics(pb::GetMetricsRequest {}).await {
                    Ok(_) => true,
                    Err(s) => s.code() == Code::Unauthenticated,
                }
            }
        })
        .await;
        let _ = client.get_metrics(pb::GetMetricsRequest {}).await;
        server
    }

    /// The server's data directory (its store is `switchyard.db` there).
    pub fn data_dir(&self) -> &Path {
        self._dir.path()
    }

    /// `http://admin_addr` (no trailing slash).
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// A connected orchestrator client (retries the connection until ready).
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// A raw worker-service client.
    pub async fn worker_client(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(channel(&self.url).await)
    }

    /// Drains and stops the server, waiting for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(join) = self.join.take() {
            let r = within("the server to stop", LONG, join).await;
            r.expect("the server task")
                .expect("the server stopped cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A channel to `url`, retrying until the server accepts connections.
pub async fn channel(url: &str) -> Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(2));
    wait_for(&format!("a connection to {url}"), SHORT, || {
        let e = endpoint.clone();
        async move { e.connect().await.ok() }
    })
    .await
}

/// An orchestrator client for `url`.
pub async fn connect(url: &str) -> Client {
    OrchestratorServiceClient::new(channel(url).await)
}

/// A free port on 127.0.0.1, found by binding port 0 and letting it go.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

/// The `switchyard` binary running `serve` as a child process.
pub struct ServerProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://addr`.
    pub url: String,
    child: tokio::process::Child,
}

impl ServerProcess {
    /// Starts `switchyard serve` on `port` with its store in `data_dir`, with
    /// the extra environment `env`, and waits until its health check answers
    /// SERVING.
    pub async fn start(port: u16, data_dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        Self::start_with_log(port, data_dir, env, Stdio::null()).await
    }

    /// Starts one replica of a cluster (PostgreSQL in `env`): it may stand
    /// by, so this waits only until it answers health, SERVING or not.
    pub async fn start_replica(port: u16, data_dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        let mut s = Self::spawn(port, data_dir, env, Stdio::null());
        let url = s.url.clone();
        let deadline = Instant::now() + LONG;
        while health_status(&url).await.is_none() {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("the replica exited early: {status}");
            }
            assert!(Instant::now() < deadline, "{url} never answered health");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        s
    }

    /// Sends a signal (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("the server is running");
        let sent = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{sig} {pid}");
    }

    /// Its exit status, once it has exited by itself within `timeout`.
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .map(|r| r.expect("wait for the server"))
    }

    /// [`ServerProcess::start`], with the server's log (its stdout) written
    /// to the file `log`.
    pub async fn start_logging_to(
        port: u16,
        data_dir: &Path,
        env: &[(&str, &str)],
        log: &Path,
    ) -> ServerProcess {
        let file = std::fs::File::create(log).expect("create the server's log file");
        Self::start_with_log(port, data_dir, env, Stdio::from(file)).await
    }

    async fn start_with_log(
        port: u16,
        data_dir: &Path,
        env: &[(&str, &str)],
        log: Stdio,
    ) -> ServerProcess {
        let mut server = Self::spawn(port, data_dir, env, log);
        server.wait_serving().await;
        server
    }

    fn spawn(port: u16, data_dir: &Path, env: &[(&str, &str)], log: Stdio) -> ServerProcess {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .env("SWITCHYARD_SCHEDULER__LEASE_TTL", "2s")
            .env("SWITCHYARD_SCHEDULER__HEARTBEAT_INTERVAL", "500ms")
            .env("SWITCHYARD_SCHEDULER__SHUTDOWN_GRACE", "1s")
            .env("SWITCHYARD_ADMIN__LISTEN", "127.0.0.1:0")
            .env(
                "SWITCHYARD_LOG__FILTER",
                std::env::var("SWITCHYARD_TEST_SERVER_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .envs(
                postgres_store(data_dir)
                    .map(|(url, schema)| {
                        [
                            ("SWITCHYARD_STORE__URL", url),
                            ("SWITCHYARD_STORE__SCHEMA", schema),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .stdout(log)
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the switchyard binary");
        ServerProcess {
            addr,
            url: format!("http://{addr}"),
            child,
        }
    }

    /// Waits until `grpc.health.v1.Health/Check` answers SERVING.
    pub async fn wait_serving(&mut self) {
        let url = self.url.clone();
        let deadline = Instant::now() + LONG;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the server process exited early: {status}");
            }
            if health_serving(&url).await {
                return;
            }
            if Instant::now() >= deadline {
                panic!("timed out waiting for {url} to answer SERVING");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the process with SIGTERM (a graceful drain) and waits until it
    /// has exited; returns whether it exited successfully.
    pub async fn terminate(mut self) -> bool {
        let pid = self.child.id().expect("the server is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        within("the server to exit after SIGTERM", LONG, self.child.wait())
            .await
            .expect("wait for the server")
            .success()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL the server");
        let status = within("the killed server to exit", SHORT, self.child.wait())
            .await
            .expect("wait for the server");
        assert!(!status.success(), "a SIGKILLed server cannot exit cleanly");
    }
}

/// Whether the health service at `url` answers SERVING (for the whole server).
pub async fn health_serving(url: &str) -> bool {
    health_status(url).await == Some(true)
}

/// What the health service at `url` answers for the whole server: SERVING
/// (`true`), something else (`false`), or nothing.
pub async fn health_status(url: &str) -> Option<bool> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string()).ok()?;
    let ch = endpoint
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let mut h = HealthClient::new(ch);
    let r = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(
        r.into_inner().status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
    )
}

// ---------------------------------------------------------------------------
// Requests.
// ---------------------------------------------------------------------------

/// A JSON object as a protobuf `Struct`.
pub fn payload(v: Value) -> prost_types::Struct {
    switchyard::worker::convert::json_to_struct(&v).expect("a JSON object")
}

/// A protobuf `Value` as JSON.
pub fn to_json(v: &prost_types::Value) -> Value {
    switchyard::worker::convert::value_to_json(v).expect("a JSON value")
}

/// A protobuf `Struct` as JSON.
pub fn struct_json(s: &prost_types::Struct) -> Value {
    switchyard::worker::convert::struct_to_json(s).expect("a JSON object")
}

/// A protobuf duration.
pub fn dur(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A SIMPLE task request with default options.
pub fn simple(name: &str, p: Value) -> pb::ScheduleTaskRequest {
    pb::ScheduleTaskRequest {
        name: name.to_string(),
        payload: Some(payload(p)),
        task_type: pb::TaskType::Simple as i32,
        options: Some(pb::TaskOptions::default()),
        target: None,
    }
}

/// A fixed backoff of `base` between attempts.
pub fn fixed_backoff(base: Duration) -> Option<pb::Backoff> {
    Some(pb::Backoff {
        kind: pb::backoff::Kind::Fixed as i32,
        base: Some(dur(base)),
        max: None,
    })
}

/// A SIMPLE task request with `options`.
pub fn simple_with(name: &str, p: Value, options: pb::TaskOptions) -> pb::ScheduleTaskRequest {
    pb::ScheduleTaskRequest {
        options: Some(options),
        ..simple(name, p)
    }
}

/// Schedules a task and returns its id.
pub async fn schedule(client: &mut Client, req: pb::ScheduleTaskRequest) -> String {
    let name = req.name.clone();
    let r = client
        .schedule_task(req)
        .await
        .unwrap_or_else(|e| panic!("ScheduleTask {name}: {e:?}"))
        .into_inner();
    assert!(!r.task_id.is_empty(), "ScheduleTask returned no id");
    r.task_id
}

/// The status of a task.
pub async fn status(client: &mut Client, id: &str) -> pb::TaskStatus {
    client
        .get_task_status(pb::GetTaskStatusRequest {
            task_id: id.to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("GetTaskStatus {id}: {e:?}"))
        .into_inner()
        .status
        .expect("a status")
}

/// The state of a status.
pub fn state(s: &pb::TaskStatus) -> pb::TaskState {
    pb::TaskState::try_from(s.state).unwrap_or(pb::TaskState::Unspecified)
}

/// `CancelTask` without force; panics if the call fails.
pub async fn cancel(client: &mut Client, id: &str, reason: &str) -> pb::CancelTaskResponse {
    client
        .cancel_task(pb::CancelTaskRequest {
            task_id: id.to_string(),
            reason: reason.to_string(),
            force: false,
        })
        .await
        .unwrap_or_else(|e| panic!("CancelTask {id}: {e:?}"))
        .into_inner()
}

/// Waits until a task reaches `want` and returns its status; fails early if
/// it reaches another final state.
pub async fn wait_state(
    client: &mut Client,
    id: &str,
    want: pb::TaskState,
    timeout: Duration,
) -> pb::TaskStatus {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        let s = status(client, id).await;
        let st = state(&s);
        if st == want {
            return s;
        }
        if is_final(st) {
            panic!("task {id} ended {st:?} instead of {want:?}: {s:#?}");
        }
        if Instant::now() >= deadline {
            // What the task's own log says is what tells a flake from a bug.
            let lines = logs(client, id).await;
            panic!(
                "timed out after {timeout:?} waiting for task {id} to be {want:?}; it is {st:?} ({:?}); its log:\n{}",
                pb::WaitingReason::try_from(s.waiting_reason).unwrap_or_default(),
                log_text(&lines)
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Whether a state is final.
pub fn is_final(s: pb::TaskState) -> bool {
    matches!(
        s,
        pb::TaskState::Completed
            | pb::TaskState::Failed
            | pb::TaskState::Cancelled
            | pb::TaskState::Compensated
    )
}

/// The messages of every log line of a task, oldest first.
pub async fn log_messages(client: &mut Client, id: &str) -> Vec<String> {
    logs(client, id)
        .await
        .into_iter()
        .map(|l| l.message)
        .collect()
}

/// Every log line of a task, oldest first (pages through `has_more`).
pub async fn logs(client: &mut Client, id: &str) -> Vec<pb::LogLine> {
    let mut out: Vec<pb::LogLine> = Vec::new();
    let mut after = 0;
    loop {
        let r = client
            .get_task_logs(pb::GetTaskLogsRequest {
                task_id: id.to_string(),
                after_line: after,
                limit: 100,
            })
            .await
            .unwrap_or_else(|e| panic!("GetTaskLogs {id}: {e:?}"))
            .into_inner();
        if let Some(l) = r.lines.last() {
            after = l.line;
        }
        out.extend(r.lines);
        if !r.has_more {
            return out;
        }
    }
}

/// The log lines' messages, one per line, for assertion messages.
pub fn log_text(lines: &[pb::LogLine]) -> String {
    lines
        .iter()
        .map(|l| format!("#{} [{}] a{} {}", l.line, l.level, l.attempt, l.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The index of the first line at or after `from` whose message contains
/// every one of `needles`.
pub fn find_line(lines: &[pb::LogLine], from: usize, needles: &[&str]) -> Option<usize> {
    lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| needles.iter().all(|n| l.message.contains(n)))
        .map(|(i, _)| i)
}

/// Microseconds since the epoch of a timestamp.
pub fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("a timestamp");
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

/// The gRPC status of a failed call, and the fields its `BadRequest` names.
pub fn violations(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Asserts a call failed with INVALID_ARGUMENT naming `field` in its
/// `google.rpc.BadRequest`.
#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(case: &str, r: Result<T, Status>, field: &str) {
    let status = match r {
        Ok(v) => panic!("{case}: expected INVALID_ARGUMENT on {field}, got OK: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{case}: expected INVALID_ARGUMENT, got {status:?}"
    );
    let fields = violations(&status);
    assert!(
        fields.iter().any(|f| f == field),
        "{case}: expected a BadRequest violation on {field:?}, got {fields:?} ({})",
        status.message()
    );
}

// ---------------------------------------------------------------------------
// Workers.
// ---------------------------------------------------------------------------

/// Spawns a worker and waits until it is registered.
pub async fn spawn_worker(worker: Worker) -> (WorkerHandle, String) {
    let handle = worker.spawn();
    let id = within("the worker to register", SHORT, handle.wait_registered())
        .await
        .expect("the worker stopped before registering");
    (handle, id)
}

/// A record of what handlers saw, shared between handlers and the test.
#[derive(Clone, Default)]
pub struct Journal {
    inner: Arc<Mutex<Vec<Entry>>>,
}

/// One handler call.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The task id.
    pub task_id: String,
    /// The task name.
    pub name: String,
    /// The attempt.
    pub attempt: u32,
    /// The payload.
    pub payload: Value,
    /// The labels.
    pub labels: HashMap<String, String>,
    /// When the handler started.
    pub at: Instant,
}

impl Journal {
    /// Records a handler call.
    pub fn record(&self, ctx: &TaskContext) {
        self.inner.lock().push(Entry {
            task_id: ctx.task_id().to_string(),
            name: ctx.name().to_string(),
            attempt: ctx.attempt(),
            payload: ctx.payload().clone(),
            labels: ctx.labels().clone(),
            at: Instant::now(),
        });
    }

    /// Every call so far.
    pub fn entries(&self) -> Vec<Entry> {
        self.inner.lock().clone()
    }

    /// How many calls so far.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether no call happened.
    pub fn is_empty(&self) -> bool {
        self.inner.lock().is_empty()
    }

    /// The calls for one task id.
    pub fn for_task(&self, id: &str) -> Vec<Entry> {
        self.inner
            .lock()
            .iter()
            .filter(|e| e.task_id == id)
            .cloned()
            .collect()
    }
}

/// A gate that handlers wait on until the test opens it.
#[derive(Clone, Default)]
pub struct Gate {
    open: Arc<tokio::sync::Notify>,
    opened: Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    /// Opens the gate for every waiter, now and later.
    pub fn open(&self) {
        self.opened.store(true, std::sync::atomic::Ordering::SeqCst);
        self.open.notify_waiters();
    }

    /// Waits until the gate is open.
    pub async fn wait(&self) {
        loop {
            let notified = self.open.notified();
            if self.opened.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

// ---------------------------------------------------------------------------
// The raw worker protocol.
// ---------------------------------------------------------------------------

/// A hand-driven `WorkerService.Work` stream.
pub struct RawWorker {
    /// Feeds the worker's side of the stream; dropping it ends the stream.
    pub tx: mpsc::Sender<pb::WorkerMessage>,
    /// The server's side.
    pub rx: Streaming<pb::ServerMessage>,
    /// The id the server gave.
    pub worker_id: String,
}

impl RawWorker {
    /// Opens a stream and registers for `names` with `slots` slots.
    pub async fn register(url: &str, names: &[&str], slots: u32) -> RawWorker {
        let mut client = WorkerServiceClient::new(channel(url).await);
        let (tx, rx) = mpsc::channel(64);
        tx.send(wmsg(pb::worker_message::Msg::Register(pb::Register {
            worker_name: "raw-test-worker".into(),
            task_names: names.iter().map(|s| s.to_string()).collect(),
            slots,
            immediate_slots: 0,
        })))
        .await
        .expect("queue Register");
        let mut inbound = within("the Work call", SHORT, client.work(ReceiverStream::new(rx)))
            .await
            .expect("Work accepted")
            .into_inner();
        let first = within("Registered", SHORT, inbound.next())
            .await
            .expect("a first message")
            .expect("no stream error");
        let Some(pb::server_message::Msg::Registered(r)) = first.msg else {
            panic!("expected Registered, got {first:?}");
        };
        RawWorker {
            tx,
            rx: inbound,
            worker_id: r.worker_id,
        }
    }

    /// Sends a message.
    pub async fn send(&self, msg: pb::worker_message::Msg) {
        self.tx.send(wmsg(msg)).await.expect("the stream is open");
    }

    /// The next server message (fails on a stream error or the end).
    pub async fn next(&mut self, what: &str) -> pb::server_message::Msg {
        let m = within(what, SHORT, self.rx.next())
            .await
            .unwrap_or_else(|| panic!("the server ended the stream while waiting for {what}"))
            .unwrap_or_else(|e| panic!("stream error while waiting for {what}: {e:?}"));
        m.msg.expect("a non-empty server message")
    }

    /// The next assignment, skipping nothing else.
    pub async fn assignment(&mut self) -> pb::Assignment {
        match self.next("an assignment").await {
            pb::server_message::Msg::Assignment(a) => a,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }
}

/// Wraps a worker message.
pub fn wmsg(msg: pb::worker_message::Msg) -> pb::WorkerMessage {
    pb::WorkerMessage { msg: Some(msg) }
}

/// The example worker binary (`target/<profile>/examples/worker`), next to
/// the test binary's `deps` folder, if it was built.
pub fn example_worker_path() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let p = profile_dir.join("examples").join("worker");
    p.is_file().then_some(p)
}

/// Whether tests run in CI, where missing tools are failures, not skips.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

// ---------------------------------------------------------------------------
// The store under a test server, whichever it is.
// ---------------------------------------------------------------------------

/// Runs `f` on a PostgreSQL client in the server's schema, on a thread of
/// its own (the callers are sync).
fn with_pg<T: Send + 'static>(
    (url, schema): (String, String),
    f: impl for<'c> FnOnce(
            &'c tokio_postgres::Client,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'c>>
        + Send
        + 'static,
) -> T {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to DATABASE_URL");
            tokio::spawn(conn);
            c.batch_execute(&format!("SET search_path = \"{schema}\""))
                .await
                .unwrap();
            f(&c).await
        })
    })
    .join()
    .expect("the store thread")
}

/// Changes one task's row behind the server's back: `sqlite` (with `?1`)
/// or `pg` (with `$1`), for the task `id`.
pub fn store_update(data_dir: &Path, sqlite: &str, pg: &str, id: &str) {
    let id = uuid::Uuid::parse_str(id).expect("a task id");
    match postgres_store(data_dir) {
        Some(at) => {
            let sql = pg.to_string();
            let n = with_pg(at, move |c| {
                Box::pin(async move { c.execute(&sql, &[&id]).await.unwrap() })
            });
            assert_eq!(n, 1, "{pg}");
        }
        None => {
            let conn = rusqlite::Connection::open(data_dir.join("switchyard.db")).unwrap();
            assert_eq!(conn.execute(sqlite, [id.as_bytes().to_vec()]).unwrap(), 1);
        }
    }
}

/// The rows of a table of the server's store.
pub fn store_count(data_dir: &Path, table: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {table}");
    match postgres_store(data_dir) {
        Some(at) => with_pg(at, move |c| {
            Box::pin(async move { c.query_one(&sql, &[]).await.unwrap().get(0) })
        }),
        None => {
            let conn = rusqlite::Connection::open(data_dir.join("switchyard.db")).unwrap();
            conn.query_row(&sql, [], |r| r.get(0)).unwrap()
        }
    }
}

/// The store's own consistency check: SQLite's `integrity_check`, or
/// amcheck over every B-tree index of the server's PostgreSQL schema.
pub fn store_integrity_ok(data_dir: &Path) {
    match postgres_store(data_dir) {
        Some(at) => {
            let schema = at.1.clone();
            let checked: i64 = with_pg(at, move |c| {
                Box::pin(async move {
                    c.batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck WITH SCHEMA public")
                        .await
                        .unwrap();
                    let rows = c
                        .query(
                            "SELECT public.bt_index_check(i.indexrelid, true)
                             FROM pg_index i
                             JOIN pg_class c ON c.oid = i.indexrelid
                             JOIN pg_namespace n ON n.oid = c.relnamespace
                             JOIN pg_am a ON a.oid = c.relam
                             WHERE n.nspname = $1 AND a.amname = 'btree'",
                            &[&schema],
                        )
                        .await
                        .expect("amcheck of the store's indexes");
                    rows.len() as i64
                })
            });
            assert!(checked >= 5, "amcheck checked {checked} indexes");
        }
        None => {
            let conn = rusqlite::Connection::open_with_flags(
                data_dir.join("switchyard.db"),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .expect("open the store read-only");
            let r: String = conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .expect("integrity_check");
            assert_eq!(r, "ok", "the store's integrity check");
        }
    }
}

/// A PostgreSQL server of the test's own (`initdb` on a temporary
/// directory, a free port, trust auth), to stop and start under load. The
/// binaries come with Debian's package, off the PATH; as root they run as
/// the `postgres` user.
pub struct OwnPostgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

/// A free port below Linux's ephemeral range (32768–60999). A server that
/// is down while clients retry must not have a port those clients may get
/// as their own source port: a connect to a closed local port can connect
/// to itself (TCP simultaneous open) and hold the port the server then
/// cannot bind.
fn port_outside_ephemeral_range() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(20_000..30_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl OwnPostgres {
    fn bin_dir() -> PathBuf {
        let base = Path::new("/usr/lib/postgresql");
        let mut versions: Vec<PathBuf> = std::fs::read_dir(base)
            .expect("PostgreSQL's binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .collect();
        versions.sort();
        versions
            .pop()
            .expect("an initdb under /usr/lib/postgresql/*/bin")
    }

    fn command(&self, program: &str) -> std::process::Command {
        let path = self.bin.join(program);
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0\n"))
            .unwrap_or(false);
        if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Initialises and starts it.
    pub fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let me = OwnPostgres {
            port: port_outside_ephemeral_range(),
            dir,
            bin: Self::bin_dir(),
        };
        // The postgres user must own (and reach) the directory.
        let _ = std::process::Command::new("chmod")
            .args(["755"])
            .arg(me.dir.path())
            .status();
        let _ = std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(me.dir.path())
            .status();
        let out = me
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(me.data())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        me.up();
        me
    }

    /// `postgres://postgres@127.0.0.1:port/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn up(&self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "30", "-l"])
            .arg(self.dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {}",
                self.port,
                self.dir.path().display()
            ))
            .arg("start")
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    /// Stops it the hard way (`immediate`: no checkpoint, as a crash).
    pub fn crash(&self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Every task named `name`, all pages of `ListTasks` (1,000 a page).
pub async fn all_named(client: &mut Client, name: &str) -> Vec<pb::TaskStatus> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_tasks(pb::ListTasksRequest {
                filter: Some(pb::TaskFilter {
                    names: vec![name.to_string()],
                    ..Default::default()
                }),
                page_size: 1000,
                page_token: token,
            })
            .await
            .expect("ListTasks")
            .into_inner();
        out.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// The most of `times` (wall-clock ms, from an engine's worker) that fall
/// in one window of `width_ms`.
pub fn most_in_window_ms(times: &[f64], width_ms: f64) -> usize {
    let mut times = times.to_vec();
    times.sort_by(f64::total_cmp);
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= width_ms {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// The most running at once in a worker's log of starts (`true`) and ends
/// (`false`), in the order it wrote them.
pub fn most_at_once(log: impl IntoIterator<Item = bool>) -> i64 {
    let (mut running, mut most) = (0i64, 0i64);
    for start in log {
        running += if start { 1 } else { -1 };
        most = most.max(running);
    }
    most
}

/// Start times (ms) of 60 tasks under a rate limit of 20 a second with a
/// burst of 2, as an engine's worker recorded them: no second holds more
/// than the rate and the burst (and 2 starts of slack: a worker sees a
/// start some ms after its hand-over, not always the same), and the
/// starts are spread over about the 2.9 s the rate needs.
pub fn assert_paced_20_a_second(starts: &[f64], what: &str) {
    let busiest = most_in_window_ms(starts, 1000.0);
    assert!(
        busiest <= 20 + 2 + 2,
        "{busiest} {what} started within one second (rate 20, burst 2)"
    );
    let first = starts.iter().copied().fold(f64::INFINITY, f64::min);
    let last = starts.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = last - first;
    // 2 at once, then 58 at 20 a second: 2.9 s, less the jitter.
    assert!(
        span >= 2_500.0,
        "the starts were spread over {span} ms only"
    );
    assert!(
        span <= 20_000.0,
        "the starts took {span} ms, far slower than 20/s"
    );
}

/// `msg` with a bearer secret (none: an open server) and, when given, the
/// namespace header (`switchyard-namespace`).
pub fn with_ns<T>(msg: T, secret: Option<&str>, ns: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(s) = secret {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {s}").parse().unwrap());
    }
    if let Some(ns) = ns {
        r.metadata_mut()
            .insert("switchyard-namespace", ns.parse().unwrap());
    }
    r
}

/// A key of `role` (a worker key's `names`) in namespace `ns`, made with
/// the static token `root`: (id, secret).
pub async fn key_in(
    url: &str,
    root: &str,
    ns: &str,
    role: pb::KeyRole,
    names: &[&str],
) -> (String, String) {
    let r = switchyard::pb::keys_service_client::KeysServiceClient::new(channel(url).await)
        .create_key(with_ns(
            pb::CreateKeyRequest {
                role: role as i32,
                names: names.iter().map(|s| s.to_string()).collect(),
                namespace: ns.into(),
                ..Default::default()
            },
            Some(root),
            None,
        ))
        .await
        .expect("CreateKey with the root token")
        .into_inner();
    let k = r.key.expect("the key");
    assert_eq!(k.namespace, ns);
    (k.id, r.secret)
}
