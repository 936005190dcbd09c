//! Helpers of tests/it/bullmq.rs: a server in the test process on an ephemeral
//! port, waiting on conditions with a deadline, and request builders (the
//! subset of the integration tests' shared helpers these tests use, kept
//! here so the BullMQ tests stand alone).
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

use switchyard::pb;
use switchyard::pb::orchestrator_service_client::OrchestratorServiceClient;

/// The orchestrator client the tests use.
pub type Client = OrchestratorServiceClient<Channel>;

/// How long a test waits for something that should take well under a second.
pub const SHORT: Duration = Duration::from_secs(5);

/// How long a test waits for something that involves a lease or a restart.
pub const LONG: Duration = Duration::from_secs(15);

/// Installs a tracing subscriber once (quiet unless `RUST_LOG` says more).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

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
    cfg
}

/// A server running inside the test process on `127.0.0.1:0`.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://addr`.
    pub url: String,
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), switchyard::api::ServeError>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with the test defaults.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server with the test defaults changed by `f`.
    pub async fn start_with(f: impl FnOnce(&mut switchyard::Config)) -> TestServer {
        init_tracing();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut cfg = test_config(dir.path());
        f(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(switchyard::run(listener, cfg, async move {
            let _ = rx.await;
        }));
        let server = TestServer {
            addr,
            url: format!("http://{addr}"),
            shutdown: Some(tx),
            join: Some(join),
            _dir: dir,
        };
        // Ready once the orchestrator answers.
        let mut client = server.client().await;
        wait_until("the server to answer GetMetrics", SHORT, || {
            let mut c = client.clone();
            async move { c.get_metrics(pb::GetMetricsRequest {}).await.is_ok() }
        })
        .await;
        let _ = client.get_metrics(pb::GetMetricsRequest {}).await;
        server
    }

    /// A connected orchestrator client (retries the connection until ready).
    pub async fn client(&self) -> Client {
        connect(&self.url).await
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

/// A JSON object as a protobuf `Struct`.
pub fn payload(v: Value) -> prost_types::Struct {
    switchyard::worker::convert::json_to_struct(&v).expect("a JSON object")
}

/// A protobuf `Value` as JSON.
pub fn to_json(v: &prost_types::Value) -> Value {
    switchyard::worker::convert::value_to_json(v).expect("a JSON value")
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
