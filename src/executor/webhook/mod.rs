//! The INTEGRATION executor: calls the webhook an INTEGRATION task names
//! (n8n-aware) and reports the answer like any other task's outcome.
//!
//! It is a local worker of the core ([`start`] registers it for
//! [`internal_key`]`(Integration)`), so attempts, backoff, cancellation,
//! `Disconnect`, logs and events come from the core; this module owns only the
//! call: where it goes ([`call::resolve_url`]), what it sends (the JSON body,
//! idempotency, trace and signature headers, credentials from config), the
//! SSRF guard ([`guard`]), redirects, timeouts, the bounded response, and the
//! verdict: a result, or a failure that says whether to retry and after how
//! long (`Retry-After`, else the task's backoff with jitter).
//!
//! It must not touch the core's state other than through [`Core::report`],
//! and nothing it logs or reports may contain a configured secret.
//!
//! Shutdown policy: abort. On `Push::Close` (or when the executor is dropped)
//! every call in flight is dropped, which closes its connection; the core
//! requeues those tasks.

pub mod call;
mod config;
pub mod guard;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use parking_lot::Mutex;
use rand::Rng as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode, Url};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::core::{Assignment, Core, CoreError, EngineKind, Push, Report, WorkerLink};
use crate::domain::{now_micros, Micros, Target, Task, TaskError, TaskId, TaskSpec};
use call::{kind, Failure};
use guard::{AllowList, GuardedResolver};

pub use config::{load_secret, AuthConfig, AuthKind, Secret, SourceConfig, WebhookConfig};

/// Idle connections are kept this long for reuse.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Host gates kept before idle ones are pruned.
const MAX_GATES: usize = 4096;

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static TASK_ID: HeaderName = HeaderName::from_static("x-switchyard-task-id");
static ATTEMPT: HeaderName = HeaderName::from_static("x-switchyard-attempt");
static TIMESTAMP: HeaderName = HeaderName::from_static("x-switchyard-timestamp");
static SIGNATURE: HeaderName = HeaderName::from_static("x-switchyard-signature");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Starts the executor: registers it with the core for INTEGRATION tasks and
/// spawns its loop. Fails (naming the setting) when the config is invalid or
/// a secret it names cannot be read.
pub fn start(core: &Core, cfg: &WebhookConfig) -> Result<JoinHandle<()>, CoreError> {
    let exec = Arc::new(Executor::new(core.clone(), cfg, &|k| {
        std::env::var(k).ok()
    })?);
    // What cannot be honoured is refused when the task is scheduled, not
    // failed at its first attempt. Weak: the core outlives the executor.
    core.set_admission(EngineKind::Webhook, {
        let exec = Arc::downgrade(&exec);
        Arc::new(move |spec: &TaskSpec| exec.upgrade().map_or(Ok(()), |e| e.admit(spec)))
    });
    let link = core.register_engine(EngineKind::Webhook, Some(cfg.concurrency))?;
    tracing::info!(
        worker_id = %link.id,
        concurrency = cfg.concurrency,
        per_host_concurrency = cfg.per_host_concurrency,
        n8n_base_url = cfg.n8n_base_url.as_deref().unwrap_or("-"),
        signing = exec.signing.is_some(),
        "webhook executor started"
    );
    Ok(tokio::spawn(
        exec.run(link)
            .instrument(tracing::info_span!("webhook_executor")),
    ))
}

/// Credentials ready to send.
struct Auth {
    name: HeaderName,
    value: HeaderValue,
}

/// One source's or host's prepared settings.
#[derive(Default)]
struct Settings {
    auth: Option<Auth>,
    auth_hosts: Vec<String>,
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
}

/// What a call uses, picked from the host's, the source's and the global
/// settings.
struct CallSettings<'a> {
    client: &'a reqwest::Client,
    timeout: Duration,
    auth: Option<&'a Auth>,
}

/// The calls to one host: a semaphore, and how many wait for it.
struct HostGate {
    sem: Arc<Semaphore>,
    waiting: AtomicUsize,
}

const QUEUED: u8 = 0;
const SENDING: u8 = 1;
const RECEIVING: u8 = 2;

/// A call in flight.
struct Flight {
    attempt: u32,
    token: CancellationToken,
    /// Set by `Push::Cancel`; unset when the executor is closing.
    cancel_reason: OnceLock<String>,
    phase: AtomicU8,
    status: AtomicU16,
    url: OnceLock<String>,
    /// The `traceparent` header: the `webhook.call` span's while tracing is
    /// on, else the one the task was scheduled with.
    traceparent: Option<String>,
}

/// What a finished call reports.
struct Done {
    log: Option<(&'static str, String)>,
    /// n8n's execution id, recorded as the task's external id.
    external_id: Option<String>,
    report: Report,
}

struct Executor {
    core: Core,
    clients: HashMap<Duration, reqwest::Client>,
    connect_timeout: Duration,
    timeout: Duration,
    allow: Arc<AllowList>,
    n8n_base: Option<Url>,
    /// `host:port` of the n8n base URL: where source credentials go by default.
    n8n_origin: Option<String>,
    paths: std::collections::BTreeMap<String, String>,
    max_redirects: u32,
    max_response_bytes: usize,
    signing: Option<Secret>,
    sources: HashMap<String, Settings>,
    hosts: HashMap<String, Settings>,
    global: Arc<Semaphore>,
    per_host: usize,
    gates: Mutex<HashMap<String, Arc<HostGate>>>,
    inflight: Mutex<HashMap<TaskId, Arc<Flight>>>,
}

fn invalid(field: &str, why: impl Into<String>) -> CoreError {
    CoreError::field(field, why)
}

/// `host:port` of a URL (the port is the scheme's default when not given).
fn host_port(url: &Url) -> String {
    format!(
        "{}:{}",
        guard::normalize_host(url.host_str().unwrap_or_default()),
        url.port_or_known_default().unwrap_or(0)
    )
}

fn prepare_auth(
    field: &str,
    a: &AuthConfig,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Auth, CoreError> {
    let secret = load_secret(a.value_env.as_deref(), a.value_file.as_deref(), getenv)
        .map_err(|e| invalid(field, e))?;
    let (name, value) = match a.kind {
        AuthKind::Header => {
            let n = a
                .name
                .as_deref()
                .ok_or_else(|| invalid(field, "header auth needs `name`"))?;
            let name = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| invalid(field, format!("{n:?} is not a valid header name")))?;
            (name, secret.expose().to_string())
        }
        AuthKind::Basic => {
            let user = a
                .user
                .as_deref()
                .ok_or_else(|| invalid(field, "basic auth needs `user`"))?;
            if user.contains(':') {
                return Err(invalid(field, "a basic-auth user name cannot contain ':'"));
            }
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", secret.expose()));
            (reqwest::header::AUTHORIZATION, format!("Basic {token}"))
        }
        AuthKind::Bearer => (
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", secret.expose()),
        ),
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        invalid(
            field,
            "the secret is not a valid header value (control characters?)",
        )
    })?;
    value.set_sensitive(true);
    Ok(Auth { name, value })
}

fn prepare_settings(
    field: &str,
    s: &SourceConfig,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, CoreError> {
    let auth = match &s.auth {
        Some(a) => Some(prepare_auth(&format!("{field}.auth"), a, getenv)?),
        None => None,
    };
    let auth_hosts = s
        .auth_hosts
        .iter()
        .map(|h| match h.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => {
                format!("{}:{port}", guard::normalize_host(host))
            }
            _ => guard::normalize_host(h),
        })
        .collect();
    for (name, d) in [
        ("connect_timeout", s.connect_timeout),
        ("timeout", s.timeout),
    ] {
        if d.is_some_and(|d| d.is_zero()) {
            return Err(invalid(&format!("{field}.{name}"), "must be more than 0"));
        }
    }
    Ok(Settings {
        auth,
        auth_hosts,
        connect_timeout: s.connect_timeout,
        timeout: s.timeout,
    })
}

impl Executor {
    fn new(
        core: Core,
        cfg: &WebhookConfig,
        getenv: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, CoreError> {
        if cfg.concurrency == 0 {
            return Err(invalid("webhook.concurrency", "must be at least 1"));
        }
        if cfg.per_host_concurrency == 0 {
            return Err(invalid(
                "webhook.per_host_concurrency",
                "must be at least 1",
            ));
        }
        if cfg.timeout.is_zero() || cfg.connect_timeout.is_zero() {
            return Err(invalid("webhook.timeout", "timeouts must be more than 0"));
        }
        let n8n_base = match cfg.n8n_base_url.as_deref() {
            Some(u) => {
                let url = Url::parse(u)
                    .map_err(|e| invalid("webhook.n8n_base_url", format!("not a URL: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(invalid(
                        "webhook.n8n_base_url",
                        "must be an http:// or https:// URL with a host",
                    ));
                }
                Some(url)
            }
            None => None,
        };
        let allow = Arc::new(
            AllowList::parse(&cfg.allow_hosts)
                .map_err(|e| invalid("webhook.allow_hosts", e))?
                .with_own(&cfg.own_addresses),
        );
        let signing = match (&cfg.signing_secret_env, &cfg.signing_secret_file) {
            (None, None) => None,
            (env, file) => Some(
                load_secret(env.as_deref(), file.as_deref(), getenv)
                    .map_err(|e| invalid("webhook.signing_secret_env", e))?,
            ),
        };
        let mut sources = HashMap::new();
        for (name, s) in &cfg.sources {
            sources.insert(
                name.clone(),
                prepare_settings(&format!("webhook.sources.{name}"), s, getenv)?,
            );
        }
        let mut hosts = HashMap::new();
        for (name, s) in &cfg.hosts {
            let key = match name.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok() => {
                    format!("{}:{p}", guard::normalize_host(h))
                }
                _ => guard::normalize_host(name),
            };
            hosts.insert(
                key,
                prepare_settings(&format!("webhook.hosts.{name}"), s, getenv)?,
            );
        }
        // One client (one connection pool) per distinct connect timeout.
        let mut clients = HashMap::new();
        let timeouts = std::iter::once(cfg.connect_timeout).chain(
            sources
                .values()
                .chain(hosts.values())
                .filter_map(|s| s.connect_timeout),
        );
        for ct in timeouts {
            if let std::collections::hash_map::Entry::Vacant(e) = clients.entry(ct) {
                e.insert(build_client(cfg, ct, allow.clone())?);
            }
        }
        Ok(Executor {
            core,
            clients,
            connect_timeout: cfg.connect_timeout,
            timeout: cfg.timeout,
            allow,
            n8n_origin: n8n_base.as_ref().map(host_port),
            n8n_base,
            paths: cfg.workflow_paths.clone(),
            max_redirects: cfg.max_redirects,
            max_response_bytes: usize::try_from(cfg.max_response_bytes).unwrap_or(usize::MAX),
            signing,
            sources,
            hosts,
            global: Arc::new(Semaphore::new(cfg.concurrency as usize)),
            per_host: cfg.per_host_concurrency as usize,
            gates: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// The loop: one spawned call per assignment; cancels and close.
    async fn run(self: Arc<Self>, mut link: WorkerLink) {
        let worker: Arc<str> = Arc::from(link.id.as_str());
        let root = CancellationToken::new();
        // However the loop ends (close, or the executor dropped), every call
        // in flight stops.
        let _stop_all = root.clone().drop_guard();
        while let Some(push) = link.rx.recv().await {
            match push {
                Push::Assign(a) => {
                    // One client span per attempt (a child of the task's
                    // `task.run`), whose context goes in the header.
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
                    let flight = Arc::new(Flight {
                        attempt: a.task.rt.attempt,
                        token: root.child_token(),
                        cancel_reason: OnceLock::new(),
                        phase: AtomicU8::new(QUEUED),
                        status: AtomicU16::new(0),
                        url: OnceLock::new(),
                        traceparent,
                    });
                    self.inflight.lock().insert(a.task.id, flight.clone());
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
                                        tracing::Span::current()
                                            .record("http.response.status_code", status);
                                    }
                                }
                                .instrument(span),
                            );
                        }
                    }
                }
                Push::Cancel {
                    task_id,
                    attempt,
                    reason,
                    ..
                } => {
                    let flight = self.inflight.lock().get(&task_id).cloned();
                    match flight {
                        Some(f) if f.attempt == attempt => {
                            let _ = f.cancel_reason.set(reason.to_string());
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
                    let n = self.inflight.lock().len();
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
        {
            let mut m = self.inflight.lock();
            if m.get(&id).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                m.remove(&id);
            }
        }
        let report = |r: Report| {
            if let Err(e) = self.core.report(&worker, id, attempt, r) {
                tracing::debug!(task_id = %id, cause = %e, "report refused");
            }
        };
        match done {
            Some(d) => {
                if let Some((level, message)) = d.log {
                    report(Report::Log {
                        source: crate::domain::LogSource::Worker,
                        level: level.into(),
                        message,
                    });
                }
                if let Some(x) = d.external_id {
                    report(Report::ExternalId(x));
                }
                report(d.report);
            }
            None => match flight.cancel_reason.get() {
                Some(reason) => {
                    let url = flight
                        .url
                        .get()
                        .map(String::as_str)
                        .unwrap_or("the webhook");
                    // The core's word: `cancelled`, `disconnected` or `timeout`.
                    let what = match reason.as_str() {
                        "disconnected" => "the disconnect",
                        "timeout" => "the execution timeout",
                        _ => "cancel",
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
                    report(Report::Log {
                        source: crate::domain::LogSource::Worker,
                        level: level.into(),
                        message,
                    });
                    report(Report::CancelAck);
                }
                None => tracing::debug!(task_id = %id, "call aborted: the executor is closing"),
            },
        }
    }

    /// One attempt, turned into what to report.
    async fn attempt(
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
            Err(f) if f.kind == kind::HOST_BUSY => Done {
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

    /// What is known of an INTEGRATION task when it is scheduled: where its
    /// call goes, and whether the SSRF guard refuses that without resolving
    /// its host (a name that resolves to a refused address is refused at
    /// the call, `ssrf_refused`). A caller's `webhook_url` that cannot be
    /// called is INVALID_ARGUMENT; a `workflow_id` the server's
    /// configuration cannot turn into a callable URL is FAILED_PRECONDITION.
    fn admit(&self, spec: &TaskSpec) -> Result<(), CoreError> {
        let Target::Integration { webhook_url, .. } = &spec.target else {
            return Ok(());
        };
        const URL: &str = "integration.n8n.webhook_url";
        const ID: &str = "integration.n8n.workflow_id";
        let by_url = webhook_url.as_deref().is_some_and(|u| !u.is_empty());
        let url = match call::resolve_url(&spec.target, self.n8n_base.as_ref(), &self.paths) {
            Ok(u) => u,
            Err(m) if by_url => return Err(invalid(URL, m)),
            Err(m) if self.n8n_base.is_none() => {
                return Err(CoreError::FailedPrecondition(format!("{ID}: {m}")))
            }
            Err(m) => return Err(invalid(ID, m)),
        };
        match self.allow.check_without_dns(&url) {
            Ok(()) => Ok(()),
            Err(r) if by_url => Err(invalid(URL, r.to_string())),
            Err(r) => Err(CoreError::FailedPrecondition(format!(
                "{ID}: resolves to {} (webhook.n8n_base_url), which this server may not call: {r}",
                call::display_url(&url)
            ))),
        }
    }

    /// The call itself: resolve, guard, wait for capacity, send (following
    /// redirects), read the answer. Returns the result and a note on
    /// redirects.
    async fn exchange(
        &self,
        task: &Task,
        payload: Option<Arc<str>>,
        deadline: Option<Micros>,
        flight: &Flight,
    ) -> Result<(serde_json::Value, String), Failure> {
        let payload = self.payload(task.id, payload).await?;
        let mut url = call::resolve_url(&task.spec.target, self.n8n_base.as_ref(), &self.paths)
            .map_err(|m| Failure::new(kind::INVALID_TARGET, false, m))?;
        let mut shown = call::display_url(&url);
        let _ = flight.url.set(shown.clone());
        self.allow.check(&url).await.map_err(refused)?;
        let source = match &task.spec.target {
            Target::Integration {
                integration_source, ..
            } => integration_source.as_deref(),
            _ => None,
        };
        let settings = self.settings(&url, source)?;

        let _host_permit = self.host_permit(host_port(&url)).await?;
        let _global_permit =
            self.global.clone().acquire_owned().await.map_err(|_| {
                Failure::new(kind::HOST_BUSY, true, "the webhook executor is closing")
            })?;

        let mut budget = settings.timeout;
        if let Some(d) = deadline {
            budget = budget.min(Duration::from_micros((d - now_micros()).max(0) as u64));
        }
        let until = tokio::time::Instant::now() + budget;
        let body = call::request_body(task, &payload);
        let mut headers = self.headers(task, flight.traceparent.as_deref(), &body);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(a) = settings.auth {
            headers.insert(a.name.clone(), a.value.clone());
        }
        // The request of the current hop; each send takes a cheap clone (the
        // body is shared), and a redirect edits it for the next hop.
        let mut next_req = settings
            .client
            .post(url.clone())
            .headers(headers)
            .body(body)
            .build()
            .map_err(|e| {
                Failure::new(
                    kind::INVALID_TARGET,
                    false,
                    format!("cannot build the request: {}", causes(&e)),
                )
            })?;
        let mut hops = 0u32;
        let exchange = async {
            loop {
                let req = next_req.try_clone().ok_or_else(|| {
                    Failure::new(
                        kind::INVALID_TARGET,
                        false,
                        "the request cannot be repeated",
                    )
                })?;
                flight.phase.store(SENDING, Ordering::Release);
                let resp = settings
                    .client
                    .execute(req)
                    .await
                    .map_err(|e| send_failure(&e, &shown))?;
                let status = resp.status();
                if let Some(m) = &self.core.config().metrics_sink {
                    m.webhook_response(status.as_u16());
                }
                flight.status.store(status.as_u16(), Ordering::Release);
                if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                    let next = self
                        .redirect_target(&url, &shown, status, resp.headers(), hops)
                        .await?;
                    if next.origin() != url.origin() {
                        // Credentials belong to the origin they were configured for.
                        if let Some(a) = settings.auth {
                            next_req.headers_mut().remove(&a.name);
                        }
                    }
                    if matches!(status.as_u16(), 301..=303) && next_req.method() == Method::POST {
                        // As browsers and curl do: the next hop is a GET without the body.
                        *next_req.method_mut() = Method::GET;
                        *next_req.body_mut() = None;
                        next_req.headers_mut().remove(CONTENT_TYPE);
                    }
                    hops += 1;
                    *next_req.url_mut() = next.clone();
                    url = next;
                    shown = call::display_url(&url);
                    flight.status.store(0, Ordering::Release);
                    continue;
                }
                flight.phase.store(RECEIVING, Ordering::Release);
                return self
                    .read_answer(resp, next_req.method().as_str(), &shown)
                    .await;
            }
        };
        let via = |hops: u32, shown: &str| match hops {
            0 => String::new(),
            1 => format!(" (via 1 redirect, to {shown})"),
            n => format!(" (via {n} redirects, to {shown})"),
        };
        match tokio::time::timeout_at(until, exchange).await {
            Ok(Ok(result)) => Ok((result, via(hops, &call::display_url(&url)))),
            Ok(Err(f)) => Err(f),
            Err(_) => {
                let first = flight.url.get().map(String::as_str).unwrap_or_default();
                let after = crate::domain::text::duration(budget);
                Err(match flight.phase.load(Ordering::Acquire) {
                    RECEIVING => Failure::new(
                        kind::RESPONSE_INTERRUPTED,
                        true,
                        format!(
                            "POST {first} answered {} but its body did not arrive within {after}; the webhook has run",
                            StatusCode::from_u16(flight.status.load(Ordering::Acquire))
                                .map(call::status_text)
                                .unwrap_or_default()
                        ),
                    ),
                    _ => Failure::new(
                        kind::NO_RESPONSE,
                        true,
                        format!(
                            "POST {first}: no response within {after}; the request was sent, so the outcome is \
                             unknown (the webhook may have run)"
                        ),
                    ),
                })
            }
        }
    }

    /// The task's payload (see [`Core::load_payload`]): a store error is
    /// retryable, a payload still missing is not.
    async fn payload(&self, id: TaskId, cached: Option<Arc<str>>) -> Result<Arc<str>, Failure> {
        self.core
            .load_payload(id, cached)
            .await
            .map_err(|e| match e {
                CoreError::NotFound(_) => Failure::new(
                    kind::PAYLOAD_MISSING,
                    false,
                    "the task's payload is not in the store",
                ),
                e => Failure::new(
                    kind::PAYLOAD_MISSING,
                    true,
                    format!("cannot read the task's payload: {e}"),
                ),
            })
    }

    /// Picks the client, timeout and credentials of a call: the host's
    /// settings win over the source's, which win over the global ones.
    fn settings(&self, url: &Url, source: Option<&str>) -> Result<CallSettings<'_>, Failure> {
        let s = source.and_then(|s| self.sources.get(s));
        let (h, hp) = if self.hosts.is_empty() && s.is_none_or(|s| s.auth.is_none()) {
            (None, String::new())
        } else {
            let hp = host_port(url);
            let host = guard::normalize_host(url.host_str().unwrap_or_default());
            (self.hosts.get(&hp).or_else(|| self.hosts.get(&host)), hp)
        };
        let connect_timeout = h
            .and_then(|h| h.connect_timeout)
            .or(s.and_then(|s| s.connect_timeout))
            .unwrap_or(self.connect_timeout);
        let timeout = h
            .and_then(|h| h.timeout)
            .or(s.and_then(|s| s.timeout))
            .unwrap_or(self.timeout);
        let client = self
            .clients
            .get(&connect_timeout)
            .or_else(|| self.clients.get(&self.connect_timeout))
            .or_else(|| self.clients.values().next())
            .ok_or_else(|| Failure::new(kind::CONNECT_ERROR, true, "no HTTP client"))?;
        let auth = match (h.and_then(|h| h.auth.as_ref()), s) {
            (Some(a), _) => Some(a),
            (None, Some(s)) => match &s.auth {
                Some(a) => {
                    let host = hp.rsplit_once(':').map(|(h, _)| h).unwrap_or(&hp);
                    let allowed = if s.auth_hosts.is_empty() {
                        self.n8n_origin.as_deref() == Some(hp.as_str())
                    } else {
                        s.auth_hosts.iter().any(|a| *a == hp || a == host)
                    };
                    if !allowed {
                        let name = source.unwrap_or_default();
                        let to = if s.auth_hosts.is_empty() {
                            format!(
                                "the n8n host ({})",
                                self.n8n_origin.as_deref().unwrap_or("none configured")
                            )
                        } else {
                            s.auth_hosts.join(", ")
                        };
                        return Err(Failure::new(
                            kind::AUTH_REFUSED,
                            false,
                            format!(
                                "the credentials of source {name:?} are only sent to {to}, not to {hp}; list the host \
                                 in webhook.sources.{name}.auth_hosts to allow it"
                            ),
                        ));
                    }
                    Some(a)
                }
                None => None,
            },
            (None, None) => None,
        };
        Ok(CallSettings {
            client,
            timeout,
            auth,
        })
    }

    /// A permit for one call to `host`; fails at once (`host_busy`) when the
    /// host has `per_host_concurrency` calls in flight and as many waiting.
    async fn host_permit(&self, host: String) -> Result<OwnedSemaphorePermit, Failure> {
        let gate = {
            let mut gates = self.gates.lock();
            if let Some(g) = gates.get(&host) {
                g.clone()
            } else {
                if gates.len() >= MAX_GATES {
                    let max = self.per_host;
                    gates
                        .retain(|_, g| Arc::strong_count(g) > 1 || g.sem.available_permits() < max);
                }
                let g = Arc::new(HostGate {
                    sem: Arc::new(Semaphore::new(self.per_host)),
                    waiting: AtomicUsize::new(0),
                });
                gates.insert(host.clone(), g.clone());
                g
            }
        };
        if let Ok(p) = gate.sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        if gate.waiting.fetch_add(1, Ordering::AcqRel) >= self.per_host {
            gate.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Failure::new(
                kind::HOST_BUSY,
                true,
                format!(
                    "{host} already has {} calls in flight and {} waiting (webhook.per_host_concurrency)",
                    self.per_host, self.per_host
                ),
            ));
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&gate.waiting);
        gate.sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Failure::new(kind::HOST_BUSY, true, "the webhook executor is closing"))
    }

    /// The headers of every request of a call (credentials are added per
    /// hop).
    fn headers(&self, task: &Task, traceparent: Option<&str>, body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(8);
        let mut buf = uuid::Uuid::encode_buffer();
        let id = task.id.hyphenated().encode_lower(&mut buf);
        if let Ok(v) = HeaderValue::from_str(id) {
            h.insert(IDEMPOTENCY_KEY.clone(), v.clone());
            h.insert(TASK_ID.clone(), v);
        }
        h.insert(ATTEMPT.clone(), HeaderValue::from(task.rt.attempt));
        if let Some(tp) = traceparent {
            if let Ok(v) = HeaderValue::from_str(tp) {
                h.insert(TRACEPARENT.clone(), v);
            }
        }
        if let Some(secret) = &self.signing {
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            h.insert(TIMESTAMP.clone(), HeaderValue::from(ts));
            if let Ok(v) =
                HeaderValue::from_str(&call::signature(secret.expose().as_bytes(), ts, body))
            {
                h.insert(SIGNATURE.clone(), v);
            }
        }
        h
    }

    /// Where a redirect goes, once the guard has accepted it.
    async fn redirect_target(
        &self,
        from: &Url,
        shown: &str,
        status: StatusCode,
        headers: &HeaderMap,
        hops: u32,
    ) -> Result<Url, Failure> {
        if hops >= self.max_redirects {
            return Err(Failure::new(
                kind::REDIRECT,
                false,
                format!(
                    "POST {shown} answered {}; more than {} redirects (webhook.max_redirects)",
                    call::status_text(status),
                    self.max_redirects
                ),
            ));
        }
        let next = headers
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| from.join(l).ok())
            .ok_or_else(|| {
                Failure::new(
                    kind::REDIRECT,
                    false,
                    format!(
                        "POST {shown} answered {} without a usable Location",
                        call::status_text(status)
                    ),
                )
            })?;
        self.allow.check(&next).await.map_err(|r| {
            let mut f = refused(r);
            f.message = format!("POST {shown} redirected: {}", f.message);
            f
        })?;
        Ok(next)
    }

    /// Reads a final answer into the result or a failure.
    async fn read_answer(
        &self,
        mut resp: reqwest::Response,
        method: &str,
        shown: &str,
    ) -> Result<serde_json::Value, Failure> {
        let status = resp.status();
        if !status.is_success() {
            let (body, _) = read_limited(&mut resp, call::DETAILS_EXCERPT)
                .await
                .unwrap_or_default();
            return Err(call::failure_for_status(
                method,
                shown,
                status,
                resp.headers(),
                &body,
                SystemTime::now(),
            ));
        }
        let too_large = |n: String| {
            Failure::new(
                kind::RESPONSE_TOO_LARGE,
                false,
                format!(
                    "{method} {shown} answered {} with a body of {n} bytes; the limit is {} (webhook.max_response_bytes)",
                    call::status_text(status),
                    self.max_response_bytes
                ),
            )
        };
        if let Some(len) = resp.content_length() {
            if len > self.max_response_bytes as u64 {
                return Err(too_large(len.to_string()));
            }
        }
        match read_limited(&mut resp, self.max_response_bytes).await {
            Ok((_, true)) => Err(too_large("more than that".into())),
            Ok((body, false)) => Ok(call::success_result(shown, status, resp.headers(), &body)),
            Err(e) => Err(Failure::new(
                kind::RESPONSE_INTERRUPTED,
                true,
                format!(
                    "{method} {shown} answered {} but its body was cut off ({}); the webhook has run",
                    call::status_text(status),
                    causes(&e)
                ),
            )),
        }
    }
}

fn build_client(
    cfg: &WebhookConfig,
    connect_timeout: Duration,
    allow: Arc<AllowList>,
) -> Result<reqwest::Client, CoreError> {
    let mut b = reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver::new(allow)))
        // A proxy would resolve names itself, out of the guard's sight.
        .no_proxy()
        // Redirects are followed by the executor, each hop re-checked.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(cfg.per_host_concurrency as usize)
        .tcp_nodelay(true)
        .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")));
    if let Some(addr) = cfg.local_address {
        b = b.local_address(addr);
    }
    b.build().map_err(|e| {
        invalid(
            "webhook",
            format!("cannot build the HTTP client: {}", causes(&e)),
        )
    })
}

/// Reads at most `limit` bytes of a body; `true` when there was more.
async fn read_limited(
    resp: &mut reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let hint = resp
        .content_length()
        .unwrap_or(0)
        .min(limit as u64)
        .min(1 << 20) as usize;
    let mut buf = Vec::with_capacity(hint);
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > limit {
            let room = limit - buf.len();
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf, true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, false))
}

/// An error's causes, joined (the top-level message of a reqwest error names
/// the URL with its query, so it is left out).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

fn refused(r: guard::SsrfRefused) -> Failure {
    Failure::new(kind::SSRF_REFUSED, false, r.to_string())
}

/// Judges an error of `send()`: refused by the guard, not connected (not
/// sent), or sent with no answer (outcome unknown).
fn send_failure(e: &reqwest::Error, shown: &str) -> Failure {
    if let Some(r) = guard::find_refusal(e) {
        return refused(r.clone());
    }
    if e.is_connect() {
        Failure::new(
            kind::CONNECT_ERROR,
            true,
            format!("POST {shown}: cannot connect: {}", causes(e)),
        )
    } else {
        Failure::new(
            kind::NO_RESPONSE,
            true,
            format!(
                "POST {shown}: the request was sent but no answer came ({}); the outcome is unknown (the webhook \
                 may have run)",
                causes(e)
            ),
        )
    }
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

    #[test]
    fn basic_and_bearer_auth_become_sensitive_headers() {
        let env = |k: &str| (k == "PW").then(|| "pa55".to_string());
        let basic = prepare_auth(
            "f",
            &AuthConfig {
                kind: AuthKind::Basic,
                name: None,
                user: Some("sy".into()),
                value_env: Some("PW".into()),
                value_file: None,
            },
            &env,
        )
        .unwrap();
        assert_eq!(basic.name, reqwest::header::AUTHORIZATION);
        assert_eq!(basic.value.to_str().unwrap(), "Basic c3k6cGE1NQ==");
        assert!(basic.value.is_sensitive());
        assert!(!format!("{:?}", basic.value).contains("c3k6"));
        let header = AuthConfig {
            kind: AuthKind::Header,
            name: None,
            user: None,
            value_env: Some("PW".into()),
            value_file: None,
        };
        let e = prepare_auth("webhook.hosts.h.auth", &header, &env)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("webhook.hosts.h.auth") && e.contains("name"),
            "{e}"
        );
        assert!(!e.contains("pa55"));
    }
}
