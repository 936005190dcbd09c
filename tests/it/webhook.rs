//! The INTEGRATION executor end to end: the real Switchyard server on an
//! ephemeral port, driven by the generated gRPC client, calling a real HTTP
//! server (`N8nFixture`) that behaves as n8n's documentation says. Everything
//! stays on loopback: the servers under test bind outgoing calls to 127.0.0.1,
//! and every destination outside loopback is refused by the guard before any
//! connection is attempted.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::server_logs;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use switchyard::executor::webhook::{AuthConfig, AuthKind, SourceConfig, WebhookConfig};
use switchyard::pb;
use switchyard::pb::orchestrator_service_client::OrchestratorServiceClient;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::transport::Channel;

/// How long any condition may take before a test fails.
const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The n8n fixture.
// ---------------------------------------------------------------------------

/// How a workflow's Webhook node answers.
#[derive(Clone)]
enum Respond {
    /// "Respond: Immediately" (n8n's default): `{"message":"Workflow was started"}`.
    Immediately,
    /// "Respond: When Last Node Finishes": the last node's data, with an
    /// execution id header when given.
    LastNode {
        data: Value,
        execution_id: Option<&'static str>,
    },
    /// Answers (immediately-style) after a delay.
    Slow(Duration),
    /// A 307 to another URL.
    Redirect(String),
}

/// The Webhook node's "Authentication" setting.
#[derive(Clone)]
enum NodeAuth {
    None,
    Header {
        name: &'static str,
        value: String,
    },
    Basic {
        user: &'static str,
        password: String,
    },
    Bearer(String),
}

/// A scripted answer: status, headers, body.
type Scripted = (u16, Vec<(&'static str, String)>, String);

struct Workflow {
    /// Production `/webhook/<path>` answers only while active.
    active: bool,
    /// Test `/webhook-test/<path>` answers once after "Execute workflow".
    armed: bool,
    auth: NodeAuth,
    respond: Respond,
    /// Answers given before `respond` takes over, in order.
    script: VecDeque<Scripted>,
}

impl Workflow {
    fn active(respond: Respond) -> Self {
        Workflow {
            active: true,
            armed: false,
            auth: NodeAuth::None,
            respond,
            script: VecDeque::new(),
        }
    }
    fn auth(mut self, auth: NodeAuth) -> Self {
        self.auth = auth;
        self
    }
    fn script(mut self, s: Vec<Scripted>) -> Self {
        self.script = s.into();
        self
    }
}

/// A request the fixture received.
struct Seen {
    prefix: &'static str,
    path: String,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
    /// Whether `X-Switchyard-Signature` verified (None: no secret set).
    signature_ok: Option<bool>,
    /// Set when the fixture's handler was dropped before it answered (the
    /// client closed the connection).
    dropped: Arc<AtomicBool>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct FixtureState {
    workflows: HashMap<String, Workflow>,
    seen: Vec<Seen>,
    signing_secret: Option<Vec<u8>>,
}

/// A loopback HTTP server that behaves like n8n's webhook endpoints.
#[derive(Clone)]
struct N8nFixture {
    state: Arc<Mutex<FixtureState>>,
    changed: Arc<watch::Sender<u64>>,
    addr: SocketAddr,
}

/// Marks a slow answer's handler as dropped unless it finished.
struct DropFlag {
    dropped: Arc<AtomicBool>,
    changed: Arc<watch::Sender<u64>>,
    finished: bool,
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.finished {
            self.dropped.store(true, Ordering::SeqCst);
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

impl N8nFixture {
    async fn start() -> N8nFixture {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, _) = watch::channel(0u64);
        let fixture = N8nFixture {
            state: Arc::default(),
            changed: Arc::new(tx),
            addr: listener.local_addr().unwrap(),
        };
        let app = axum::Router::new()
            .fallback(n8n)
            .with_state(fixture.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fixture
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn add(&self, path: &str, w: Workflow) -> &Self {
        self.state
            .lock()
            .unwrap()
            .workflows
            .insert(path.to_string(), w);
        self
    }

    fn sign_with(&self, secret: &str) {
        self.state.lock().unwrap().signing_secret = Some(secret.as_bytes().to_vec());
    }

    /// "Execute workflow" in the editor: the test URL answers once.
    fn arm(&self, path: &str) {
        if let Some(w) = self.state.lock().unwrap().workflows.get_mut(path) {
            w.armed = true;
        }
    }

    fn count(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|s| s.path == path)
            .count()
    }

    fn total(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    /// Waits until `f` returns something, or fails after [`DEADLINE`].
    async fn wait_for<T>(&self, what: &str, f: impl Fn(&FixtureState) -> Option<T>) -> T {
        let mut rx = self.changed.subscribe();
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(v) = f(&self.state.lock().unwrap()) {
                return v;
            }
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!("the fixture never saw {what}"),
            }
        }
    }
}

fn verify_signature(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let (Some(ts), Some(sig)) = (
        headers
            .get("x-switchyard-timestamp")
            .and_then(|v| v.to_str().ok()),
        headers
            .get("x-switchyard-signature")
            .and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let Ok(ts_secs) = ts.parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(ts_secs) > 300 {
        return false;
    }
    let Some(Ok(expected)) = sig.strip_prefix("sha256=").map(hex::decode) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// n8n's 404 for a webhook that is not registered (its `WebhookNotFoundError`).
fn not_registered(prefix: &str, method: &Method, path: &str) -> Response {
    let hint = if prefix == "webhook" {
        "The workflow must be active for a production URL to run successfully. You can activate the workflow \
         using the toggle in the top-right of the editor. Note that unlike test URL calls, production URL calls \
         aren't shown on the canvas (only in the executions list)"
    } else {
        "Click the 'Execute workflow' button on the canvas, then try again. (In test mode, the webhook only works \
         for one call after you click this button)"
    };
    let body = json!({
        "code": 404,
        "message": format!("The requested webhook \"{method} {path}\" is not registered."),
        "hint": hint,
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// The Webhook node's authentication check, with n8n's answers.
fn check_auth(auth: &NodeAuth, headers: &HeaderMap) -> Option<Response> {
    let wrong = || Some((StatusCode::FORBIDDEN, "Authorization data is wrong!").into_response());
    let got = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match auth {
        NodeAuth::None => None,
        NodeAuth::Header { name, value } if got(name).as_deref() == Some(value.as_str()) => None,
        NodeAuth::Bearer(token) if got("authorization") == Some(format!("Bearer {token}")) => None,
        NodeAuth::Basic { user, password } => {
            use base64::Engine as _;
            let Some(given) = got("authorization") else {
                let mut r =
                    (StatusCode::UNAUTHORIZED, "Authorization is required!").into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"Webhook\""),
                );
                return Some(r);
            };
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            );
            if given == expected {
                None
            } else {
                wrong()
            }
        }
        NodeAuth::Header { .. } | NodeAuth::Bearer(_) => wrong(),
    }
}

async fn n8n(
    State(f): State<N8nFixture>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (prefix, path) = if let Some(p) = uri.path().strip_prefix("/webhook/") {
        ("webhook", p)
    } else if let Some(p) = uri.path().strip_prefix("/webhook-test/") {
        ("webhook-test", p)
    } else {
        return (
            StatusCode::NOT_FOUND,
            format!("Cannot {method} {}", uri.path()),
        )
            .into_response();
    };
    let path = path.trim_end_matches('/').to_string();
    let dropped = Arc::new(AtomicBool::new(false));
    let (auth, scripted, respond) = {
        let mut st = f.state.lock().unwrap();
        let signature_ok = st
            .signing_secret
            .as_deref()
            .map(|s| verify_signature(s, &headers, &body));
        st.seen.push(Seen {
            prefix,
            path: path.clone(),
            method: method.clone(),
            headers: headers.clone(),
            body: body.clone(),
            at: Instant::now(),
            signature_ok,
            dropped: dropped.clone(),
        });
        f.changed.send_modify(|n| *n += 1);
        let registered = match st.workflows.get_mut(&path) {
            Some(w) if prefix == "webhook" => w.active,
            Some(w) => std::mem::take(&mut w.armed),
            None => false,
        };
        let Some(w) = st.workflows.get_mut(&path).filter(|_| registered) else {
            return not_registered(prefix, &method, &path);
        };
        (w.auth.clone(), w.script.pop_front(), w.respond.clone())
    };
    if let Some(refusal) = check_auth(&auth, &headers) {
        return refusal;
    }
    if let Some((status, hs, body)) = scripted {
        let mut r = (StatusCode::from_u16(status).unwrap(), body).into_response();
        for (k, v) in hs {
            r.headers_mut()
                .insert(k, HeaderValue::from_str(&v).unwrap());
        }
        return r;
    }
    let started = || axum::Json(json!({"message": "Workflow was started"})).into_response();
    match respond {
        Respond::Immediately => started(),
        Respond::LastNode { data, execution_id } => {
            let mut r = axum::Json(data).into_response();
            if let Some(id) = execution_id {
                r.headers_mut()
                    .insert("x-n8n-execution-id", HeaderValue::from_static(id));
            }
            r
        }
        Respond::Slow(d) => {
            let mut flag = DropFlag {
                dropped,
                changed: f.changed.clone(),
                finished: false,
            };
            tokio::time::sleep(d).await;
            flag.finished = true;
            started()
        }
        Respond::Redirect(to) => {
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response()
        }
    }
}

// ---------------------------------------------------------------------------
// The server under test, and its client.
// ---------------------------------------------------------------------------

struct Switchyard {
    client: OrchestratorServiceClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The executor settings of a server allowed to call the fixture.
fn allowed(fixture: &N8nFixture) -> WebhookConfig {
    WebhookConfig {
        n8n_base_url: Some(fixture.url()),
        allow_hosts: vec!["127.0.0.1".into()],
        local_address: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ..WebhookConfig::default()
    }
}

async fn start_switchyard(webhook: WebhookConfig) -> Switchyard {
    let _ = server_logs();
    let mut cfg = switchyard::Config::default();
    cfg.store.memory = true;
    cfg.scheduler.shutdown_grace = Duration::from_millis(200);
    cfg.webhook = webhook;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = switchyard::run(listener, cfg, async move {
            let _ = stopped.await;
        })
        .await
        {
            panic!("the server failed: {e}");
        }
    });
    let channel = tokio::time::timeout(DEADLINE, async {
        loop {
            match Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
            {
                Ok(c) => return c,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .expect("the server never accepted a connection");
    Switchyard {
        client: OrchestratorServiceClient::new(channel),
        stop: Some(stop),
    }
}

/// An INTEGRATION task to schedule.
#[derive(Default, Clone)]
struct Call {
    workflow_id: &'static str,
    webhook_url: String,
    source: &'static str,
    attempts: u32,
    payload: Option<Value>,
    traceparent: Option<&'static str>,
}

impl Call {
    fn workflow(id: &'static str) -> Self {
        Call {
            workflow_id: id,
            ..Call::default()
        }
    }
    fn url(url: impl Into<String>) -> Self {
        Call {
            webhook_url: url.into(),
            ..Call::default()
        }
    }
    fn source(mut self, s: &'static str) -> Self {
        self.source = s;
        self
    }
    fn attempts(mut self, n: u32) -> Self {
        self.attempts = n;
        self
    }
}

impl Switchyard {
    async fn schedule(&mut self, c: Call) -> String {
        self.try_schedule(c).await.expect("ScheduleTask")
    }

    async fn try_schedule(&mut self, c: Call) -> Result<String, tonic::Status> {
        let mut req = tonic::Request::new(pb::ScheduleTaskRequest {
            name: "notify".into(),
            payload: Some(crate::common::payload(
                c.payload.unwrap_or_else(|| json!({"repo": "acme/api"})),
            )),
            task_type: pb::TaskType::Integration as i32,
            options: Some(pb::TaskOptions {
                attempts: c.attempts,
                user_id: "u-1".into(),
                // Short, fixed backoff: retries follow at once unless the
                // server asks for a delay.
                backoff: Some(pb::Backoff {
                    kind: pb::backoff::Kind::Fixed as i32,
                    base: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 20_000_000,
                    }),
                    max: None,
                }),
                ..Default::default()
            }),
            target: Some(pb::schedule_task_request::Target::Integration(
                pb::IntegrationTarget {
                    n8n: Some(pb::N8nTarget {
                        workflow_id: c.workflow_id.into(),
                        webhook_url: c.webhook_url,
                        integration_source: c.source.into(),
                    }),
                },
            )),
        });
        if let Some(tp) = c.traceparent {
            req.metadata_mut()
                .insert("traceparent", tp.parse().unwrap());
        }
        self.client
            .schedule_task(req)
            .await
            .map(|r| r.into_inner().task_id)
    }

    async fn status(&mut self, id: &str) -> pb::GetTaskStatusResponse {
        self.client
            .get_task_status(pb::GetTaskStatusRequest { task_id: id.into() })
            .await
            .expect("GetTaskStatus")
            .into_inner()
    }

    /// Polls the status until the task is final, or fails after [`DEADLINE`].
    async fn finished(&mut self, id: &str) -> pb::TaskStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            let s = self.status(id).await.status.unwrap();
            if matches!(
                s.state(),
                pb::TaskState::Completed | pb::TaskState::Failed | pb::TaskState::Cancelled
            ) {
                return s;
            }
            assert!(Instant::now() < until, "task {id} never finished: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn logs(&mut self, id: &str) -> Vec<String> {
        self.client
            .get_task_logs(pb::GetTaskLogsRequest {
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
}

fn result_of(s: &pb::TaskStatus) -> Value {
    s.result
        .as_ref()
        .map(crate::common::to_json)
        .unwrap_or(Value::Null)
}

fn error_of(s: &pb::TaskStatus) -> pb::TaskError {
    s.last_error.clone().unwrap_or_default()
}

fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    writeln!(f, "{value}").unwrap();
    p
}

fn auth(
    kind: AuthKind,
    name: Option<&str>,
    user: Option<&str>,
    file: std::path::PathBuf,
) -> Option<AuthConfig> {
    Some(AuthConfig {
        kind,
        name: name.map(str::to_string),
        user: user.map(str::to_string),
        value_env: None,
        value_file: Some(file),
    })
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_ids_resolve_to_production_webhooks_and_answers_become_results() {
    let n8n = N8nFixture::start().await;
    n8n.add("wf-started", Workflow::active(Respond::Immediately));
    n8n.add(
        "ci/deploy",
        Workflow::active(Respond::LastNode {
            data: json!({"deployed": true, "version": "1.4.2"}),
            execution_id: Some("4711"),
        }),
    );
    n8n.sign_with("fixture-signing-secret");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = allowed(&n8n);
    cfg.workflow_paths
        .insert("deploy".into(), "ci/deploy".into());
    cfg.signing_secret_file = Some(secret_file(&dir, "signing", "fixture-signing-secret"));
    let mut sy = start_switchyard(cfg).await;

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let started = sy
        .schedule(Call {
            traceparent: Some(traceparent),
            payload: Some(json!({"repo": "acme/api", "sha": "abc123"})),
            ..Call::workflow("wf-started").source("github")
        })
        .await;
    let deployed = sy.schedule(Call::workflow("deploy")).await;

    let s = sy.finished(&started).await;
    assert_eq!(s.state(), pb::TaskState::Completed, "{s:?}");
    assert_eq!(s.attempt, 1);
    assert_eq!(s.source(), pb::TaskSource::N8n);
    let r = result_of(&s);
    assert_eq!(r["status"], 200);
    assert_eq!(r["body"], json!({"message": "Workflow was started"}));
    assert_eq!(r["url"], format!("{}/webhook/wf-started", n8n.url()));
    assert!(r["headers"]["content-type"]
        .as_str()
        .unwrap()
        .starts_with("application/json"));

    let d = sy.finished(&deployed).await;
    assert_eq!(d.state(), pb::TaskState::Completed, "{d:?}");
    let r = result_of(&d);
    assert_eq!(r["body"], json!({"deployed": true, "version": "1.4.2"}));
    assert_eq!(r["execution_id"], "4711", "n8n's execution id is kept");
    assert_eq!(d.external_id, "4711", "and is the task's external id");
    assert_eq!(r["headers"]["x-n8n-execution-id"], "4711");

    // What n8n received: the documented body, headers and a valid signature.
    {
        let st = n8n.state.lock().unwrap();
        let seen = st.seen.iter().find(|s| s.path == "wf-started").unwrap();
        assert_eq!((seen.prefix, &seen.method), ("webhook", &Method::POST));
        assert_eq!(
            seen.signature_ok,
            Some(true),
            "the fixture verifies the HMAC signature"
        );
        assert_eq!(seen.header("idempotency-key"), Some(started.as_str()));
        assert_eq!(seen.header("x-switchyard-task-id"), Some(started.as_str()));
        assert_eq!(seen.header("x-switchyard-attempt"), Some("1"));
        assert_eq!(seen.header("traceparent"), Some(traceparent));
        assert_eq!(seen.header("content-type"), Some("application/json"));
        let body = seen.json();
        assert_eq!(
            body["payload"],
            json!({"repo": "acme/api", "sha": "abc123"})
        );
        assert_eq!(body["switchyard"]["task_id"], started);
        assert_eq!(body["switchyard"]["name"], "notify");
        assert_eq!(body["switchyard"]["user_id"], "u-1");
        assert_eq!(body["switchyard"]["source"], "github");
        assert_eq!(body["switchyard"]["workflow_id"], "wf-started");
        assert_eq!(body["switchyard"]["attempt"], 1);
        assert_eq!(
            body["switchyard"]["max_attempts"], 5,
            "INTEGRATION tasks default to 5 attempts"
        );
        let mapped = st
            .seen
            .iter()
            .find(|s| s.path == "ci/deploy")
            .expect("the path map applies");
        assert_eq!(mapped.signature_ok, Some(true));
    }

    let logs = sy.logs(&started).await;
    assert!(
        logs.iter().any(|l| l.starts_with(&format!(
            "POST {}/webhook/wf-started → 200 OK in ",
            n8n.url()
        ))),
        "{logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_webhooks_fail_at_once_naming_the_likely_causes() {
    let n8n = N8nFixture::start().await;
    n8n.add(
        "sleepy",
        Workflow {
            active: false,
            ..Workflow::active(Respond::Immediately)
        },
    );
    n8n.add(
        "drafting",
        Workflow {
            active: false,
            ..Workflow::active(Respond::Immediately)
        },
    );
    let mut sy = start_switchyard(allowed(&n8n)).await;

    // An inactive workflow's production URL.
    let inactive = sy.schedule(Call::workflow("sleepy")).await;
    let s = sy.finished(&inactive).await;
    assert_eq!(s.state(), pb::TaskState::Failed, "{s:?}");
    assert_eq!(s.attempt, 1, "not retried");
    let e = error_of(&s);
    assert_eq!(
        (e.kind.as_str(), e.retryable),
        ("webhook_not_registered", false)
    );
    assert!(
        e.message
            .contains("The requested webhook \"POST sleepy\" is not registered."),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("inactive") && e.message.contains("/webhook-test/"),
        "{}",
        e.message
    );

    // A test URL while the editor is not listening.
    let test_url = format!("{}/webhook-test/drafting", n8n.url());
    let unarmed = sy.schedule(Call::url(&test_url)).await;
    let s = sy.finished(&unarmed).await;
    assert_eq!(s.state(), pb::TaskState::Failed);
    let e = error_of(&s);
    assert_eq!(e.kind, "webhook_not_registered");
    assert!(
        e.message.contains("/webhook-test/ URL") && e.message.contains("editor listens"),
        "{}",
        e.message
    );

    // Armed ("Execute workflow"), the test URL answers exactly once.
    n8n.arm("drafting");
    let once = sy.schedule(Call::url(&test_url)).await;
    assert_eq!(sy.finished(&once).await.state(), pb::TaskState::Completed);
    let twice = sy.schedule(Call::url(&test_url)).await;
    assert_eq!(
        error_of(&sy.finished(&twice).await).kind,
        "webhook_not_registered"
    );

    // An unknown path gets the same 404.
    let unknown = sy.schedule(Call::workflow("no-such-workflow")).await;
    assert_eq!(
        error_of(&sy.finished(&unknown).await).kind,
        "webhook_not_registered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_answer_and_stop_at_the_limit() {
    let n8n = N8nFixture::start().await;
    let busy = |code: u16| (code, vec![], format!("upstream said {code}"));
    n8n.add(
        "flaky",
        Workflow::active(Respond::Immediately).script(vec![busy(503), busy(502)]),
    );
    n8n.add(
        "down",
        Workflow::active(Respond::Immediately).script(vec![busy(500), busy(500), busy(500)]),
    );
    n8n.add(
        "limited",
        Workflow::active(Respond::Immediately).script(vec![(
            429,
            vec![("retry-after", "1".into())],
            "slow down".into(),
        )]),
    );
    n8n.add(
        "picky",
        Workflow::active(Respond::Immediately).script(vec![(
            400,
            vec![("content-type", "application/json".into())],
            r#"{"error":"repository is required"}"#.into(),
        )]),
    );
    n8n.add(
        "huge",
        Workflow::active(Respond::LastNode {
            data: json!({"blob": "x".repeat(10_000)}),
            execution_id: None,
        }),
    );
    let mut cfg = allowed(&n8n);
    cfg.max_response_bytes = 4096;
    let mut sy = start_switchyard(cfg).await;

    let flaky = sy.schedule(Call::workflow("flaky")).await;
    let down = sy.schedule(Call::workflow("down").attempts(2)).await;
    let limited = sy.schedule(Call::workflow("limited")).await;
    let picky = sy.schedule(Call::workflow("picky")).await;
    let huge = sy.schedule(Call::workflow("huge")).await;

    // 503, 502, then 200: completed on the third attempt, same idempotency key.
    let s = sy.finished(&flaky).await;
    assert_eq!(
        (s.state(), s.attempt),
        (pb::TaskState::Completed, 3),
        "{s:?}"
    );
    {
        let st = n8n.state.lock().unwrap();
        let calls: Vec<&Seen> = st.seen.iter().filter(|s| s.path == "flaky").collect();
        let attempts: Vec<_> = calls
            .iter()
            .map(|c| c.header("x-switchyard-attempt").unwrap())
            .collect();
        assert_eq!(attempts, ["1", "2", "3"]);
        assert!(calls
            .iter()
            .all(|c| c.header("idempotency-key") == Some(flaky.as_str())));
        assert!(calls.iter().all(|c| c.json()["switchyard"]["attempt"]
            == json!(c
                .header("x-switchyard-attempt")
                .unwrap()
                .parse::<u32>()
                .unwrap())));
    }
    let logs = sy.logs(&flaky).await.join("\n");
    assert!(logs.contains("→ 503 Service Unavailable in"), "{logs}");
    assert!(logs.contains("→ 502 Bad Gateway in"), "{logs}");

    // Always 500 with two attempts allowed: failed after two.
    let s = sy.finished(&down).await;
    assert_eq!((s.state(), s.attempt), (pb::TaskState::Failed, 2), "{s:?}");
    let e = error_of(&s);
    assert_eq!((e.kind.as_str(), e.retryable), ("server_error", true));
    assert!(
        e.message
            .contains("500 Internal Server Error: upstream said 500"),
        "{}",
        e.message
    );
    assert_eq!(n8n.count("down"), 2);

    // 429 with Retry-After: 1 is waited out although the backoff is 20 ms.
    let s = sy.finished(&limited).await;
    assert_eq!(
        (s.state(), s.attempt),
        (pb::TaskState::Completed, 2),
        "{s:?}"
    );
    let gap = {
        let st = n8n.state.lock().unwrap();
        let at: Vec<Instant> = st
            .seen
            .iter()
            .filter(|s| s.path == "limited")
            .map(|s| s.at)
            .collect();
        at[1] - at[0]
    };
    assert!(
        gap >= Duration::from_millis(900),
        "Retry-After ignored: retried after {gap:?}"
    );

    // 400: failed at once, with the status and the body in the error.
    let s = sy.finished(&picky).await;
    assert_eq!((s.state(), s.attempt), (pb::TaskState::Failed, 1), "{s:?}");
    let e = error_of(&s);
    assert_eq!((e.kind.as_str(), e.retryable), ("client_error", false));
    assert!(
        e.message.contains("400 Bad Request") && e.message.contains("repository is required"),
        "{}",
        e.message
    );
    assert!(e.details.contains("repository is required"));
    assert_eq!(n8n.count("picky"), 1);

    // A body over max_response_bytes fails, not retried.
    let s = sy.finished(&huge).await;
    assert_eq!((s.state(), s.attempt), (pb::TaskState::Failed, 1), "{s:?}");
    assert_eq!(error_of(&s).kind, "response_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_aborts_the_call_in_flight() {
    let n8n = N8nFixture::start().await;
    n8n.add(
        "slow",
        Workflow::active(Respond::Slow(Duration::from_secs(60))),
    );
    let mut sy = start_switchyard(allowed(&n8n)).await;

    let id = sy.schedule(Call::workflow("slow")).await;
    n8n.wait_for("the slow call", |st| {
        st.seen.iter().any(|s| s.path == "slow").then_some(())
    })
    .await;
    let r = sy
        .client
        .cancel_task(pb::CancelTaskRequest {
            task_id: id.clone(),
            reason: "deploy aborted".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.outcome(),
        pb::CancelOutcome::Cancelled,
        "the executor acknowledges at once"
    );
    let s = sy.finished(&id).await;
    assert_eq!(s.state(), pb::TaskState::Cancelled, "{s:?}");
    n8n.wait_for("the connection dropped", |st| {
        st.seen
            .iter()
            .any(|s| s.path == "slow" && s.dropped.load(Ordering::SeqCst))
            .then_some(())
    })
    .await;
    let logs = sy.logs(&id).await.join("\n");
    assert!(
        logs.contains("request sent; no response before cancel — the webhook may have run"),
        "{logs}"
    );
    assert_eq!(n8n.count("slow"), 1, "a cancelled task is not retried");

    // Disconnect stops the user's call in flight the same way.
    n8n.add(
        "slow2",
        Workflow::active(Respond::Slow(Duration::from_secs(60))),
    );
    let id = sy.schedule(Call::workflow("slow2")).await;
    n8n.wait_for("the second slow call", |st| {
        st.seen.iter().any(|s| s.path == "slow2").then_some(())
    })
    .await;
    sy.client
        .disconnect(pb::DisconnectRequest {
            user_id: "u-1".into(),
            session_id: String::new(),
            reason: "logged out".into(),
        })
        .await
        .unwrap();
    assert_eq!(sy.finished(&id).await.state(), pb::TaskState::Cancelled);
    n8n.wait_for("the second connection dropped", |st| {
        st.seen
            .iter()
            .any(|s| s.path == "slow2" && s.dropped.load(Ordering::SeqCst))
            .then_some(())
    })
    .await;
    let logs = sy.logs(&id).await.join("\n");
    assert!(logs.contains("no response before the disconnect"), "{logs}");
}

/// A host with every per-host slot and waiting place taken: the calls past
/// them are not sent and use no attempt; they wait (CAPACITY_FULL) and go
/// out once the host has room, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_host_delays_calls_without_using_their_attempts() {
    let n8n = N8nFixture::start().await;
    n8n.add(
        "busy",
        Workflow::active(Respond::Slow(Duration::from_millis(300))),
    );
    let mut sy = start_switchyard(WebhookConfig {
        per_host_concurrency: 1,
        ..allowed(&n8n)
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(sy.schedule(Call::workflow("busy").attempts(1)).await);
    }
    let mut kept = 0;
    for id in &ids {
        let s = sy.finished(id).await;
        assert_eq!(s.state(), pb::TaskState::Completed, "{s:?}");
        assert_eq!(s.attempt, 1, "{s:?}");
        let logs = sy.logs(id).await.join("\n");
        if logs.contains("not sent, kept and offered again") {
            assert!(logs.contains("webhook.per_host_concurrency"), "{logs}");
            kept += 1;
        }
    }
    // One call in flight and one waiting for the host: the others were
    // turned away at least once.
    assert!(kept >= 2, "{kept} tasks waited for the host");
    assert_eq!(n8n.count("busy"), 4, "each call was sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_aborts_the_calls_in_flight() {
    let n8n = N8nFixture::start().await;
    n8n.add(
        "slow",
        Workflow::active(Respond::Slow(Duration::from_secs(60))),
    );
    let mut sy = start_switchyard(allowed(&n8n)).await;
    sy.schedule(Call::workflow("slow")).await;
    n8n.wait_for("the slow call", |st| {
        st.seen.iter().any(|s| s.path == "slow").then_some(())
    })
    .await;
    drop(sy);
    n8n.wait_for("the connection dropped at shutdown", |st| {
        st.seen
            .iter()
            .any(|s| s.path == "slow" && s.dropped.load(Ordering::SeqCst))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_request_without_an_answer_is_no_response_never_success() {
    let n8n = N8nFixture::start().await;
    n8n.add(
        "stuck",
        Workflow::active(Respond::Slow(Duration::from_secs(60))),
    );
    let mut cfg = allowed(&n8n);
    cfg.sources.insert(
        "jenkins".into(),
        SourceConfig {
            timeout: Some(Duration::from_millis(300)),
            ..SourceConfig::default()
        },
    );
    let mut sy = start_switchyard(cfg).await;

    let id = sy
        .schedule(Call::workflow("stuck").source("jenkins").attempts(1))
        .await;
    let s = sy.finished(&id).await;
    assert_eq!(s.state(), pb::TaskState::Failed, "{s:?}");
    assert!(s.result.is_none());
    let e = error_of(&s);
    assert_eq!((e.kind.as_str(), e.retryable), ("no_response", true));
    assert!(
        e.message.contains("no response within 300ms") && e.message.contains("outcome is"),
        "{}",
        e.message
    );
    assert!(e.message.contains("unknown"), "{}", e.message);
    n8n.wait_for("the connection dropped", |st| {
        st.seen
            .iter()
            .any(|s| s.path == "stuck" && s.dropped.load(Ordering::SeqCst))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_refuses_private_destinations_unless_allowed() {
    let n8n = N8nFixture::start().await;
    n8n.add("open", Workflow::active(Respond::Immediately));
    // No allow-list: loopback is as forbidden as any private address.
    let mut sy = start_switchyard(WebhookConfig {
        local_address: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ..WebhookConfig::default()
    })
    .await;
    let port = n8n.addr.port();
    // What the guard refuses without resolving a name is refused when the
    // task is scheduled, naming the setting.
    for (url, why) in [
        (format!("http://127.0.0.1:{port}/webhook/open"), "loopback"),
        (format!("http://localhost:{port}/webhook/open"), "loopback"),
        (format!("http://[::1]:{port}/webhook/open"), "loopback"),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "cloud metadata",
        ),
        ("http://10.0.0.1/hook".to_string(), "private"),
    ] {
        let e = sy
            .try_schedule(Call::url(&url))
            .await
            .expect_err(&format!("{url} was accepted"));
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{url}: {e:?}");
        assert!(
            e.message().contains("integration.n8n.webhook_url")
                && e.message().contains(why)
                && e.message().contains("allow_hosts"),
            "{url}: {}",
            e.message()
        );
    }
    // A workflow id needs a base URL.
    let e = sy
        .try_schedule(Call::workflow("open"))
        .await
        .expect_err("a workflow id without a base URL was accepted");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("integration.n8n.workflow_id") && e.message().contains("n8n_base_url"),
        "{}",
        e.message()
    );
    assert_eq!(n8n.total(), 0, "nothing reached the fixture");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_a_few_times_and_rechecked() {
    let n8n = N8nFixture::start().await;
    let base = n8n.url();
    let port = n8n.addr.port();
    n8n.add(
        "hop",
        Workflow::active(Respond::Redirect(format!("{base}/webhook/target"))),
    );
    n8n.add(
        "target",
        Workflow::active(Respond::LastNode {
            data: json!({"landed": true}),
            execution_id: None,
        }),
    );
    n8n.add(
        "to-private",
        Workflow::active(Respond::Redirect("http://10.255.255.1/webhook/x".into())),
    );
    n8n.add(
        "to-other-loopback",
        Workflow::active(Respond::Redirect(format!(
            "http://127.0.0.2:{port}/webhook/target"
        ))),
    );
    n8n.add(
        "to-file",
        Workflow::active(Respond::Redirect("file:///etc/passwd".into())),
    );
    n8n.add(
        "loop",
        Workflow::active(Respond::Redirect(format!("{base}/webhook/loop"))),
    );
    let mut sy = start_switchyard(allowed(&n8n)).await;

    let hop = sy.schedule(Call::workflow("hop")).await;
    let s = sy.finished(&hop).await;
    assert_eq!(s.state(), pb::TaskState::Completed, "{s:?}");
    assert_eq!(result_of(&s)["body"], json!({"landed": true}));
    assert_eq!(result_of(&s)["url"], format!("{base}/webhook/target"));
    {
        let st = n8n.state.lock().unwrap();
        let landed = st.seen.iter().find(|s| s.path == "target").unwrap();
        assert_eq!(landed.method, Method::POST, "307 keeps the method");
        assert_eq!(landed.json()["switchyard"]["task_id"], hop, "and the body");
    }

    for path in ["to-private", "to-other-loopback", "to-file"] {
        let id = sy.schedule(Call::workflow(path)).await;
        let s = sy.finished(&id).await;
        assert_eq!(
            (s.state(), s.attempt),
            (pb::TaskState::Failed, 1),
            "{path}: {s:?}"
        );
        let e = error_of(&s);
        assert_eq!(e.kind, "ssrf_refused", "{path}");
        assert!(e.message.contains("redirected"), "{path}: {}", e.message);
    }
    assert_eq!(n8n.count("target"), 1, "the refused redirects went nowhere");

    let looped = sy.schedule(Call::workflow("loop")).await;
    let s = sy.finished(&looped).await;
    assert_eq!((s.state(), s.attempt), (pb::TaskState::Failed, 1), "{s:?}");
    let e = error_of(&s);
    assert!(
        e.kind == "redirect_error" && e.message.contains("more than 3 redirects"),
        "{e:?}"
    );
    assert_eq!(
        n8n.count("loop"),
        4,
        "the first request and three redirects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_config_per_source_and_per_host() {
    let (n8n, other, stranger) = (
        N8nFixture::start().await,
        N8nFixture::start().await,
        N8nFixture::start().await,
    );
    n8n.add(
        "hdr",
        Workflow::active(Respond::Immediately).auth(NodeAuth::Header {
            name: "X-N8N-Key",
            value: "header-key-1".into(),
        }),
    );
    n8n.add(
        "basic",
        Workflow::active(Respond::Immediately).auth(NodeAuth::Basic {
            user: "jenkins",
            password: "basic-pw-2".into(),
        }),
    );
    other.add(
        "b",
        Workflow::active(Respond::Immediately).auth(NodeAuth::Bearer("bearer-3".into())),
    );
    stranger.add("c", Workflow::active(Respond::Immediately));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = allowed(&n8n);
    cfg.sources.insert(
        "github".into(),
        SourceConfig {
            auth: auth(
                AuthKind::Header,
                Some("X-N8N-Key"),
                None,
                secret_file(&dir, "k", "header-key-1"),
            ),
            ..SourceConfig::default()
        },
    );
    cfg.sources.insert(
        "jenkins".into(),
        SourceConfig {
            auth: auth(
                AuthKind::Basic,
                None,
                Some("jenkins"),
                secret_file(&dir, "pw", "basic-pw-2"),
            ),
            ..SourceConfig::default()
        },
    );
    cfg.hosts.insert(
        other.addr.to_string(),
        SourceConfig {
            auth: auth(
                AuthKind::Bearer,
                None,
                None,
                secret_file(&dir, "t", "bearer-3"),
            ),
            ..SourceConfig::default()
        },
    );
    let mut sy = start_switchyard(cfg).await;

    let header = sy.schedule(Call::workflow("hdr").source("github")).await;
    let basic = sy.schedule(Call::workflow("basic").source("jenkins")).await;
    let wrong = sy.schedule(Call::workflow("basic").source("github")).await;
    let bearer = sy
        .schedule(Call::url(format!("{}/webhook/b", other.url())))
        .await;
    let refused = sy
        .schedule(Call::url(format!("{}/webhook/c", stranger.url())).source("jenkins"))
        .await;

    assert_eq!(sy.finished(&header).await.state(), pb::TaskState::Completed);
    assert_eq!(sy.finished(&basic).await.state(), pb::TaskState::Completed);
    assert_eq!(
        sy.finished(&bearer).await.state(),
        pb::TaskState::Completed,
        "host credentials apply"
    );
    let s = sy.finished(&wrong).await;
    let e = error_of(&s);
    assert_eq!(
        (s.state(), e.kind.as_str(), e.retryable),
        (pb::TaskState::Failed, "client_error", false)
    );
    assert!(
        e.message
            .contains("401 Unauthorized: Authorization is required!"),
        "{}",
        e.message
    );

    // A source's credentials only go to the n8n host unless listed.
    let s = sy.finished(&refused).await;
    let e = error_of(&s);
    assert_eq!(
        (s.state(), e.kind.as_str()),
        (pb::TaskState::Failed, "auth_refused"),
        "{e:?}"
    );
    assert!(e.message.contains("auth_hosts"), "{}", e.message);
    assert_eq!(stranger.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_status_logs_or_the_server_log() {
    let logs = server_logs();
    let n8n = N8nFixture::start().await;
    const BEARER: &str = "tok-5b0c6c1e-bearer-secret";
    const PASSWORD: &str = "pw-9f1d-basic-secret";
    const HEADER: &str = "hk-77aa-header-secret";
    const SIGNING: &str = "sig-31ce-signing-secret";
    n8n.add(
        "gh",
        Workflow::active(Respond::Immediately).auth(NodeAuth::Bearer(BEARER.into())),
    );
    n8n.add(
        "ci",
        Workflow::active(Respond::Immediately).auth(NodeAuth::Basic {
            user: "jenkins",
            password: PASSWORD.into(),
        }),
    );
    n8n.add(
        "strict",
        Workflow::active(Respond::Immediately).auth(NodeAuth::Header {
            name: "X-N8N-Key",
            value: "something-else".into(),
        }),
    );
    n8n.add(
        "flaky",
        Workflow::active(Respond::Immediately).script(vec![(503, vec![], "try later".into())]),
    );
    n8n.sign_with(SIGNING);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = allowed(&n8n);
    cfg.signing_secret_file = Some(secret_file(&dir, "sig", SIGNING));
    let src = |a| SourceConfig {
        auth: a,
        ..SourceConfig::default()
    };
    cfg.sources.insert(
        "github".into(),
        src(auth(
            AuthKind::Bearer,
            None,
            None,
            secret_file(&dir, "b", BEARER),
        )),
    );
    cfg.sources.insert(
        "jenkins".into(),
        src(auth(
            AuthKind::Basic,
            None,
            Some("jenkins"),
            secret_file(&dir, "p", PASSWORD),
        )),
    );
    cfg.sources.insert(
        "vault".into(),
        src(auth(
            AuthKind::Header,
            Some("X-N8N-Key"),
            None,
            secret_file(&dir, "h", HEADER),
        )),
    );
    let printed = switchyard::Config {
        webhook: cfg.clone(),
        ..Default::default()
    }
    .to_toml();
    let mut sy = start_switchyard(cfg).await;

    let ids = [
        sy.schedule(Call::workflow("gh").source("github")).await,
        sy.schedule(Call::workflow("ci").source("jenkins")).await,
        sy.schedule(Call::workflow("strict").source("vault")).await,
        sy.schedule(Call::workflow("flaky").source("github")).await,
    ];
    let mut seen_by_clients = String::new();
    for id in &ids {
        let s = sy.finished(id).await;
        seen_by_clients += &format!("{:?}\n{:?}\n", sy.status(id).await, sy.logs(id).await);
        if id == &ids[2] {
            assert_eq!(s.state(), pb::TaskState::Failed);
            assert!(error_of(&s)
                .message
                .contains("403 Forbidden: Authorization data is wrong!"));
        } else {
            assert_eq!(s.state(), pb::TaskState::Completed, "{s:?}");
        }
    }
    // The secrets were really sent (and signed with)...
    {
        let st = n8n.state.lock().unwrap();
        assert!(st.seen.iter().all(|s| s.signature_ok == Some(true)));
        assert!(st
            .seen
            .iter()
            .any(|s| s.header("authorization") == Some(&format!("Bearer {BEARER}"))));
        assert!(st
            .seen
            .iter()
            .any(|s| s.header("x-n8n-key") == Some(HEADER)));
    }
    // ...and appear nowhere else.
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("jenkins:{PASSWORD}"));
    let server_log = String::from_utf8_lossy(&logs.lock()).into_owned();
    assert!(
        server_log.contains("webhook executor started"),
        "the server's log is captured"
    );
    for secret in [BEARER, PASSWORD, HEADER, SIGNING, basic.as_str()] {
        assert!(
            !seen_by_clients.contains(secret),
            "{secret} in status or logs"
        );
        assert!(!server_log.contains(secret), "{secret} in the server's log");
        assert!(!printed.contains(secret), "{secret} in the printed config");
    }
}
