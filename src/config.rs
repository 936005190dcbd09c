//! Configuration by layers: built-in defaults, then a TOML file, then
//! `SWITCHYARD_*` environment variables (`__` separates sections:
//! `SWITCHYARD_SCHEDULER__LEASE_TTL=10s`), then command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::store::sqlite::Synchronous;

/// The top-level keys of [`Config`], the only first parts of a
/// `SWITCHYARD_*` variable read as settings (a unit test keeps the list
/// true).
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "store",
    "cluster",
    "limits",
    "scheduler",
    "retention",
    "flow",
    "log",
    "otel",
    "webhook",
    "workflows",
    "temporal",
    "bullmq",
    "admin",
    "auth",
    "tls",
];

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Where the store keeps its file.
    pub data_dir: PathBuf,
    /// The store.
    pub store: StoreConfig,
    /// Several replicas over one PostgreSQL store.
    pub cluster: crate::cluster::ClusterConfig,
    /// Request limits.
    pub limits: LimitsConfig,
    /// The scheduler core.
    pub scheduler: SchedulerConfig,
    /// How long ended tasks are kept.
    pub retention: RetentionConfig,
    /// Flow control: concurrency policies per key.
    pub flow: FlowConfig,
    /// Logging.
    pub log: LogConfig,
    /// OpenTelemetry traces over OTLP/gRPC (off without an endpoint).
    pub otel: crate::telemetry::OtelConfig,
    /// INTEGRATION executor.
    pub webhook: crate::executor::webhook::WebhookConfig,
    /// The embedded workflow engine (COMPLEX tasks).
    pub workflows: crate::executor::workflow::WorkflowsConfig,
    /// The Temporal backend of COMPLEX tasks.
    pub temporal: crate::backend::temporal::TemporalConfig,
    /// The BullMQ backend of SIMPLE tasks.
    pub bullmq: crate::backend::bullmq::BullmqConfig,
    /// The admin HTTP server (JSON API, events, Prometheus, dashboard).
    pub admin: crate::admin::AdminConfig,
    /// Bearer tokens required by the gRPC services and the admin server.
    pub auth: crate::auth::AuthConfig,
    /// TLS on the gRPC and admin ports, and client certificates (mTLS).
    pub tls: crate::tls::TlsConfig,
}

/// Flow control (`[flow]`): how many tasks of one concurrency key
/// (`TaskOptions.concurrency_key`) run at once, and how many start per
/// interval. Policies and rate limits set at run time (`FlowService`) come
/// before these; the first whose pattern matches a task's name (or queue)
/// wins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    /// The limit per key of keyed tasks no policy matches; none if absent
    /// (their keys still take turns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_concurrency: Option<i64>,
    /// `[[flow.concurrency]]`: a pattern and a limit per key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub concurrency: Vec<FlowPolicyConfig>,
    /// `[[flow.rate_limit]]`: a pattern, a rate per interval and a burst.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limit: Vec<FlowRateConfig>,
}

/// One `[[flow.rate_limit]]`: at most `rate` tasks start per `interval`
/// among the tasks whose name or queue matches `match`, up to `burst` at
/// once; with `per_key`, per concurrency key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FlowRateConfig {
    /// The glob pattern.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Starts per interval, 1 to 1,000,000.
    pub rate: i64,
    /// The interval (`"1s"`, `"1m"`), 1 ms to 24 h. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Starts at once after a quiet time, 1 to 1,000,000. Default 1.
    pub burst: i64,
    /// One bucket per concurrency key. Default false.
    pub per_key: bool,
}

impl Default for FlowRateConfig {
    fn default() -> Self {
        FlowRateConfig {
            pattern: String::new(),
            rate: 0,
            interval: Duration::from_secs(1),
            burst: 1,
            per_key: false,
        }
    }
}

/// One `[[flow.concurrency]]`: at most `limit` tasks of one key run at once
/// among the tasks whose name or queue matches `match` (`*` any run of
/// characters, `?` one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FlowPolicyConfig {
    /// The glob pattern.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Tasks of one key at once, at least 1.
    pub limit: i64,
    /// Turns per round of fairness of some keys (`{ "tenant-a" = 3 }`),
    /// 1 to 100 each, at most 100 keys; other keys have 1.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub weights: std::collections::BTreeMap<String, i64>,
}

impl FlowConfig {
    /// The rules these settings make; an error names the bad setting.
    pub fn rules(&self) -> Result<crate::domain::flow::FlowRules, String> {
        use crate::domain::flow::{check_limit, ConcurrencyPolicy, FlowRules, RateLimit};
        let default_limit = self
            .default_concurrency
            .map(|l| check_limit(l).map_err(|e| format!("flow.default_concurrency {e}")))
            .transpose()?;
        let mut policies: Vec<ConcurrencyPolicy> = Vec::new();
        for (i, p) in self.concurrency.iter().enumerate() {
            let policy = ConcurrencyPolicy::new(&p.pattern, p.limit, true)
                .and_then(|c| c.with_weights(p.weights.clone()))
                .map_err(|e| format!("flow.concurrency[{i}]: {e}"))?;
            if policies.iter().any(|q| q.pattern == policy.pattern) {
                return Err(format!(
                    "flow.concurrency[{i}]: pattern {:?} is given twice",
                    p.pattern
                ));
            }
            policies.push(policy);
        }
        let mut rate_limits: Vec<RateLimit> = Vec::new();
        for (i, r) in self.rate_limit.iter().enumerate() {
            let limit = RateLimit::new(&r.pattern, r.rate, r.interval, r.burst, r.per_key, true)
                .map_err(|e| format!("flow.rate_limit[{i}]: {e}"))?;
            if rate_limits.iter().any(|q| q.pattern == limit.pattern) {
                return Err(format!(
                    "flow.rate_limit[{i}]: pattern {:?} is given twice",
                    r.pattern
                ));
            }
            rate_limits.push(limit);
        }
        Ok(FlowRules {
            default_limit,
            policies,
            paused: Default::default(),
            rate_limits,
        })
    }
}

/// Store settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Keep everything in memory (tests, demos): nothing survives a restart.
    pub memory: bool,
    /// `full` (fsync every group commit) or `normal` (survives kill -9, not
    /// power loss).
    pub synchronous: Synchronous,
    /// Most writes in one transaction.
    pub max_batch: usize,
    /// A PostgreSQL URL (`postgres://user@host:5432/db`): the store lives
    /// there instead of in `data_dir`, and several `switchyard serve`
    /// processes on it form one cluster (see `[cluster]`). Without it,
    /// the embedded SQLite file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The PostgreSQL schema of the tables (created if missing), so several
    /// deployments or test runs share one database.
    pub schema: String,
}

/// Limits on requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest payload, serialised as JSON.
    pub max_payload_bytes: usize,
}

/// Scheduler settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// How long a worker's leases last without a message from it.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often workers are asked to heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How often a task may lose its worker before it fails.
    pub max_lease_losses: u32,
    /// Events kept for resuming watches.
    pub event_history: usize,
    /// Payload bytes of pending tasks kept in memory.
    pub payload_cache_bytes: usize,
    /// Execution timeout of tasks that set none (none if absent).
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub default_execution_timeout: Option<Duration>,
    /// How long running tasks get to finish on shutdown before they are
    /// requeued.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

pub use crate::telemetry::{LogConfig, LogFormat};

/// How long ended tasks are kept (`[retention]`). An age is a duration
/// (`"7d"`, `"90m"`, `"0s"`: removed at the next sweep) or `"forever"`.
/// The age counts from when the task ended and is fixed then: a change of
/// policy applies to tasks that end after it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Kept this long after COMPLETED.
    #[serde(with = "keep")]
    pub completed: Option<Duration>,
    /// Kept this long after FAILED.
    #[serde(with = "keep")]
    pub failed: Option<Duration>,
    /// Kept this long after CANCELLED or COMPENSATED.
    #[serde(with = "keep")]
    pub cancelled: Option<Duration>,
    /// At most this many COMPLETED tasks of one name are kept (the oldest
    /// go first); none if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completed: Option<u64>,
    /// The same for FAILED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed: Option<u64>,
    /// The same for CANCELLED (and, counted apart, COMPENSATED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cancelled: Option<u64>,
    /// How often the sweeper looks for tasks to remove.
    #[serde(with = "humantime_serde")]
    pub sweep_every: Duration,
    /// Tasks removed per write. The store's writer adds removals to each
    /// group commit in slices (at most as many tasks as the commit's
    /// other writes, at least 32), after the writes that came, so they
    /// never make a commit long; a sweep queues up to 25 writes at once.
    pub batch: usize,
    /// Rules for the tasks whose name (or queue) matches a pattern; the
    /// first match wins, field by field, over the settings above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RetentionRuleConfig>,
}

/// One `[[retention.rules]]`: the settings of `[retention]` for the tasks
/// whose name or queue matches `match` (`*` any run of characters, `?` one).
/// A setting left out falls through to `[retention]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionRuleConfig {
    /// The glob pattern.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Kept this long after COMPLETED.
    #[serde(with = "keep_opt", skip_serializing_if = "Option::is_none")]
    pub completed: Option<Option<Duration>>,
    /// Kept this long after FAILED.
    #[serde(with = "keep_opt", skip_serializing_if = "Option::is_none")]
    pub failed: Option<Option<Duration>>,
    /// Kept this long after CANCELLED or COMPENSATED.
    #[serde(with = "keep_opt", skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Option<Duration>>,
    /// COMPLETED tasks kept per name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completed: Option<u64>,
    /// FAILED tasks kept per name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_failed: Option<u64>,
    /// CANCELLED tasks kept per name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cancelled: Option<u64>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let p = crate::domain::retention::RetentionPolicy::standard();
        RetentionConfig {
            completed: p.keep.completed,
            failed: p.keep.failed,
            cancelled: p.keep.cancelled,
            max_completed: None,
            max_failed: None,
            max_cancelled: None,
            sweep_every: Duration::from_secs(1),
            batch: 32,
            rules: Vec::new(),
        }
    }
}

impl RetentionConfig {
    /// The policy, or why a rule cannot be used.
    pub fn policy(&self) -> Result<crate::domain::retention::RetentionPolicy, String> {
        use crate::domain::retention::{Caps, Retention, RetentionPolicy, RetentionRule};
        if self.batch == 0 {
            return Err("retention.batch must be at least 1".into());
        }
        if self.sweep_every.is_zero() {
            return Err("retention.sweep_every must be more than 0s".into());
        }
        // A rule's "forever" is kept apart from "not set": the rule's own
        // ages are Option<Option<_>>, flattened here into the rule's keep,
        // where an explicit "forever" becomes the longest age there is.
        let forever = |v: Option<Option<Duration>>| v.map(|d| d.unwrap_or(Duration::MAX));
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                RetentionRule::new(
                    &r.pattern,
                    Retention {
                        completed: forever(r.completed),
                        failed: forever(r.failed),
                        cancelled: forever(r.cancelled),
                    },
                    Caps {
                        completed: r.max_completed,
                        failed: r.max_failed,
                        cancelled: r.max_cancelled,
                    },
                )
                .map_err(|e| format!("retention.rules[{i}]: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(RetentionPolicy {
            keep: Retention {
                completed: self.completed,
                failed: self.failed,
                cancelled: self.cancelled,
            },
            caps: Caps {
                completed: self.max_completed,
                failed: self.max_failed,
                cancelled: self.max_cancelled,
            },
            rules,
        })
    }
}

/// An age or `"forever"` (`None`).
mod keep {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_str("forever"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn parse(text: &str) -> Result<Option<Duration>, String> {
        match text.trim() {
            "forever" => Ok(None),
            t => humantime::parse_duration(t)
                .map(Some)
                .map_err(|e| format!("{t:?} is neither a duration (\"7d\") nor \"forever\": {e}")),
        }
    }
}

/// A rule's age: absent (`None`), an age, or `"forever"` (`Some(None)`).
mod keep_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<Duration>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => super::keep::serialize(inner, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<Duration>>, D::Error> {
        let text = String::deserialize(d)?;
        super::keep::parse(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("./data"),
            store: StoreConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            limits: LimitsConfig::default(),
            scheduler: SchedulerConfig::default(),
            retention: RetentionConfig::default(),
            flow: FlowConfig::default(),
            log: LogConfig::default(),
            otel: crate::telemetry::OtelConfig::default(),
            webhook: crate::executor::webhook::WebhookConfig::default(),
            workflows: crate::executor::workflow::WorkflowsConfig::default(),
            temporal: crate::backend::temporal::TemporalConfig::default(),
            bullmq: crate::backend::bullmq::BullmqConfig::default(),
            admin: crate::admin::AdminConfig::default(),
            auth: crate::auth::AuthConfig::default(),
            tls: crate::tls::TlsConfig::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            memory: false,
            synchronous: Synchronous::Full,
            max_batch: 4096,
            url: None,
            schema: "switchyard".into(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_payload_bytes: 1 << 20,
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let c = crate::core::CoreConfig::default();
        SchedulerConfig {
            lease_ttl: c.lease_ttl,
            heartbeat_interval: c.heartbeat_interval,
            max_lease_losses: c.max_lease_losses,
            event_history: c.event_history,
            payload_cache_bytes: c.payload_cache_bytes,
            default_execution_timeout: c.default_execution_timeout,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Values given as flags; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--memory`.
    #[serde(skip_serializing_if = "Option::is_none", rename = "store.memory")]
    pub memory: Option<bool>,
    /// `--log-format`.
    #[serde(skip_serializing_if = "Option::is_none", rename = "log.format")]
    pub log_format: Option<LogFormat>,
    /// `--admin-listen`.
    #[serde(skip_serializing_if = "Option::is_none", rename = "admin.listen")]
    pub admin_listen: Option<SocketAddr>,
}

impl Config {
    /// Loads the layers. `file` is the TOML file, if any (missing is an error
    /// only when named explicitly).
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, Box<figment::Error>> {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    path.display()
                ))));
            }
            f = f.merge(Toml::file(path));
        }
        // Only variables whose first part names a setting of ours: other
        // tools use the prefix too (SWITCHYARD_SERVER for the CLI, test
        // rigs' SWITCHYARD_BIN). Inside a known section an unknown key is
        // still an error, so a typo is caught.
        f = f.merge(Env::prefixed("SWITCHYARD_").split("__").filter(|k| {
            let top = k.as_str().split('.').next().unwrap_or_default();
            TOP_LEVEL_KEYS.iter().any(|t| t.eq_ignore_ascii_case(top))
        }));
        let mut flat = Figment::new();
        if let Some(l) = overrides.listen {
            flat = flat.merge(Serialized::default("listen", l));
        }
        if let Some(d) = &overrides.data_dir {
            flat = flat.merge(Serialized::default("data_dir", d));
        }
        if let Some(m) = overrides.memory {
            flat = flat.merge(Serialized::default("store.memory", m));
        }
        if let Some(l) = overrides.log_format {
            flat = flat.merge(Serialized::default("log.format", l));
        }
        if let Some(l) = overrides.admin_listen {
            flat = flat.merge(Serialized::default("admin.listen", l));
        }
        f.merge(flat).extract().map_err(Box::new)
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        // A password in the store's URL is not shown.
        let mut shown = self.clone();
        if let Some(url) = &mut shown.store.url {
            *url = crate::store::postgres::redact(url);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }

    /// The core's settings.
    pub fn core(&self) -> crate::core::CoreConfig {
        let s = &self.scheduler;
        let mut routes = crate::core::Routes::default();
        if self.temporal.enabled {
            routes.temporal_workflows = self.temporal.workflow_types.clone();
        }
        if self.bullmq.enabled {
            routes.bullmq_queues = self.bullmq.queues.clone();
        }
        crate::core::CoreConfig {
            lease_ttl: s.lease_ttl,
            heartbeat_interval: s.heartbeat_interval,
            max_lease_losses: s.max_lease_losses,
            event_history: s.event_history,
            payload_cache_bytes: s.payload_cache_bytes,
            default_execution_timeout: s.default_execution_timeout,
            routes,
            metrics_sink: None,
            retention: Default::default(),
            sweep_every: self.retention.sweep_every,
            sweep_batch: self.retention.batch,
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail returns its own large error
mod tests {

    #[test]
    fn the_store_password_is_not_printed() {
        let mut c = Config::default();
        c.store.url = Some("postgres://app:s3cret@db:5432/app".into());
        let shown = c.to_toml();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://app:***@db:5432/app"), "{shown}");
    }
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn flow_reads_policies_and_refuses_a_zero_limit_or_a_bad_pattern() {
        let c: Config = toml::from_str(
            "[flow]\ndefault_concurrency = 4\n[[flow.concurrency]]\nmatch = \"email.*\"\nlimit = 2\n",
        )
        .unwrap();
        let r = c.flow.rules().unwrap();
        assert_eq!(r.default_limit, Some(4));
        assert_eq!(r.policies[0].pattern, "email.*");
        assert_eq!(r.policies[0].limit, 2);
        assert!(r.policies[0].from_config);
        let mut bad = c.flow.clone();
        bad.concurrency[0].limit = 0;
        assert!(bad
            .rules()
            .unwrap_err()
            .starts_with("flow.concurrency[0]: limit"));
        bad.concurrency[0].limit = 1;
        bad.concurrency[0].pattern = "a[".into();
        assert!(bad
            .rules()
            .unwrap_err()
            .starts_with("flow.concurrency[0]: pattern"));
        bad.concurrency[0].pattern = "x".into();
        bad.default_concurrency = Some(-1);
        assert!(bad
            .rules()
            .unwrap_err()
            .starts_with("flow.default_concurrency"));
        assert!(Config::default().flow.rules().is_ok());
    }

    #[test]
    fn flow_reads_rate_limits_and_refuses_a_zero_rate_or_burst() {
        let c: Config = toml::from_str(
            "[[flow.rate_limit]]\nmatch = \"hook.*\"\nrate = 50\ninterval = \"1s\"\nburst = 10\n\
             [[flow.rate_limit]]\nmatch = \"mail\"\nrate = 3\nper_key = true\n",
        )
        .unwrap();
        let r = c.flow.rules().unwrap();
        let l = &r.rate_limits[0];
        assert_eq!(
            (l.pattern.as_str(), l.rate, l.interval, l.burst, l.per_key),
            ("hook.*", 50, Duration::from_secs(1), 10, false)
        );
        assert!(l.from_config);
        let l = &r.rate_limits[1];
        assert_eq!(
            (l.interval, l.burst, l.per_key),
            (Duration::from_secs(1), 1, true)
        );
        let mut bad = c.flow.clone();
        bad.rate_limit[0].rate = 0;
        assert!(bad
            .rules()
            .unwrap_err()
            .starts_with("flow.rate_limit[0]: rate"));
        bad.rate_limit[0].rate = 1;
        bad.rate_limit[0].burst = 0;
        assert!(bad
            .rules()
            .unwrap_err()
            .starts_with("flow.rate_limit[0]: burst"));
        bad.rate_limit[0].burst = 1;
        bad.rate_limit[0].interval = Duration::ZERO;
        assert!(bad
            .rules()
            .unwrap_err()
            .starts_with("flow.rate_limit[0]: interval"));
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back.flow, c.flow);
    }

    #[test]
    fn retention_reads_ages_forever_rules_and_refuses_a_bad_pattern() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "s.toml",
                "[retention]\ncompleted = \"90m\"\nfailed = \"forever\"\nmax_cancelled = 10\n\
                 [[retention.rules]]\nmatch = \"email.*\"\ncompleted = \"forever\"\nmax_completed = 3\n",
            )?;
            jail.set_env("SWITCHYARD_RETENTION__CANCELLED", "2d");
            let c = Config::load(Some(Path::new("s.toml")), &Overrides::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(c.retention.completed, Some(Duration::from_secs(5400)));
            assert_eq!(c.retention.failed, None);
            assert_eq!(c.retention.cancelled, Some(Duration::from_secs(2 * 86_400)));
            let p = c.retention.policy().map_err(|e| e.to_string())?;
            let mut spec = crate::domain::TaskSpec::test_simple("email.send", None);
            assert_eq!(
                p.purge_at(&spec, crate::domain::TaskState::Completed, 0),
                None
            );
            assert_eq!(
                p.max_kept("email.send", crate::domain::TaskState::Completed),
                Some(3)
            );
            assert_eq!(
                p.max_kept("other", crate::domain::TaskState::Cancelled),
                Some(10)
            );
            spec.name = "report".into();
            assert_eq!(
                p.purge_at(&spec, crate::domain::TaskState::Completed, 0),
                Some(5_400_000_000)
            );
            let back: Config = toml::from_str(&c.to_toml()).map_err(|e| e.to_string())?;
            assert_eq!(back.retention, c.retention);
            Ok(())
        });
        let mut c = Config::default();
        c.retention.rules.push(RetentionRuleConfig {
            pattern: "a[".into(),
            ..Default::default()
        });
        let e = c.retention.policy().unwrap_err();
        assert!(e.contains("retention.rules[0]"), "{e}");
        let e = toml::from_str::<Config>("[retention]\ncompleted = \"soon\"\n").unwrap_err();
        assert!(e.to_string().contains("forever"), "{e}");
    }

    #[test]
    fn a_jwt_section_layers_and_is_never_printed_with_its_secret() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "s.toml",
                "[auth.jwt]\nissuer = \"https://issuer.test\"\n\
                 hs256_secret = \"a-shared-secret-of-at-least-32-bytes!\"\nrole_claim = \"sy_role\"\n",
            )?;
            jail.set_env("SWITCHYARD_AUTH__JWT__AUDIENCE", "switchyard");
            let c = Config::load(Some(Path::new("s.toml")), &Overrides::default())
                .map_err(|e| e.to_string())?;
            let j = c.auth.jwt.clone().expect("[auth.jwt]");
            assert_eq!(j.audience.as_deref(), Some("switchyard"));
            assert_eq!(
                (
                    j.role_claim.as_str(),
                    j.user_claim.as_str(),
                    j.names_claim.as_str()
                ),
                ("sy_role", "user_id", "names")
            );
            let printed = c.to_toml();
            assert!(!printed.contains("at-least-32"), "{printed}");
            assert!(!format!("{c:?}").contains("at-least-32"));
            Ok(())
        });
        let e = toml::from_str::<Config>("[auth.jwt]\nissuer = \"i\"\nnope = 1\n").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "s.toml",
                "listen = \"127.0.0.1:6000\"\n[scheduler]\nlease_ttl = \"5s\"\nmax_lease_losses = 2\n",
            )?;
            jail.set_env("SWITCHYARD_SCHEDULER__LEASE_TTL", "7s");
            let c = Config::load(
                Some(Path::new("s.toml")),
                &Overrides {
                    listen: Some("127.0.0.1:7000".parse().unwrap()),
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 7000, "flag beats file");
            assert_eq!(
                c.scheduler.lease_ttl,
                Duration::from_secs(7),
                "env beats file"
            );
            assert_eq!(c.scheduler.max_lease_losses, 2, "file beats defaults");
            Ok(())
        });
    }

    #[test]
    fn top_level_keys_are_the_configs() {
        let v = serde_json::to_value(Config::default()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut listed = TOP_LEVEL_KEYS.to_vec();
        keys.sort_unstable();
        listed.sort_unstable();
        assert_eq!(keys, listed);
    }

    #[test]
    fn other_tools_variables_are_ignored_but_typos_in_a_section_are_not() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SWITCHYARD_BIN", "/somewhere/switchyard");
            jail.set_env("SWITCHYARD_TEST_LOG", "1");
            jail.set_env("SWITCHYARD_SERVER", "http://127.0.0.1:1");
            assert!(Config::load(None, &Overrides::default()).is_ok());
            jail.set_env("SWITCHYARD_SCHEDULER__LEASE_TLL", "5s");
            assert!(Config::load(None, &Overrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("s.toml", "[scheduler]\nlease_tt = \"5s\"\n")?;
            assert!(Config::load(Some(Path::new("s.toml")), &Overrides::default()).is_err());
            Ok(())
        });
    }
}
