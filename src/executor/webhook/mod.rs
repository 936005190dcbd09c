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
//!
//! This file holds [`start`], the executor's prepared configuration
//! ([`Executor::new`]) and the admission check of a new task; the rest, by
//! concern: `settings.rs` (per-source and per-host credentials and
//! timeouts), `gate.rs` (the per-host gate), `actor.rs` (the loop and each
//! call's life), `exchange.rs` (one call on the wire), `outcome.rs` (the
//! answer turned into a report), `inflight.rs` (the calls in flight).

mod actor;
pub mod call;
mod config;
mod exchange;
mod gate;
pub mod guard;
mod inflight;
mod outcome;
mod settings;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::core::{Core, CoreError, EngineKind};
use crate::domain::{Target, TaskSpec};
use exchange::causes;
use gate::{Gates, Pacer};
use guard::{AllowList, GuardedResolver};
use inflight::Inflight;
use settings::Settings;

pub use config::{
    load_secret, AuthConfig, AuthKind, HostRateConfig, Secret, SourceConfig, WebhookConfig,
};

/// Idle connections are kept this long for reuse.
const POOL_IDLE: Duration = Duration::from_secs(90);

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
    gates: Gates,
    pacer: Pacer,
    inflight: Inflight,
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
        let n8n_base = n8n_base(cfg)?;
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
        let (sources, hosts) = settings::prepare_all(cfg, getenv)?;
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
            gates: Gates::new(cfg.per_host_concurrency as usize),
            pacer: Pacer::default(),
            inflight: Inflight::default(),
        })
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
    if let Some(path) = &cfg.ca_file {
        let bad = |why: String| invalid("webhook.ca_file", format!("{}: {why}", path.display()));
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(causes(&e)))?;
        if certs.is_empty() {
            return Err(bad("holds no PEM certificate".into()));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| {
        invalid(
            "webhook",
            format!("cannot build the HTTP client: {}", causes(&e)),
        )
    })
}

/// The n8n base URL, if one is configured: an http(s) URL with a host.
fn n8n_base(cfg: &WebhookConfig) -> Result<Option<Url>, CoreError> {
    let Some(u) = cfg.n8n_base_url.as_deref() else {
        return Ok(None);
    };
    let url =
        Url::parse(u).map_err(|e| invalid("webhook.n8n_base_url", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            "webhook.n8n_base_url",
            "must be an http:// or https:// URL with a host",
        ));
    }
    Ok(Some(url))
}
