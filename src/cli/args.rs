//! The clap types of the client subcommands, and the pure step from parsed
//! flags to a gRPC request. Nothing here talks to the network; reading
//! `--payload-file` is the only I/O.
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value as Json};

use super::error::CliError;
use crate::pb;

/// Options every client subcommand shares: where the server is, and whether to
/// print JSON. Flatten it into the top-level parser.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The Switchyard server's gRPC address (`http://host:port`, or
    /// `https://host:port` for TLS; `host:port` means plain http).
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_SERVER",
        default_value = "http://127.0.0.1:50051",
        display_order = 1000
    )]
    pub server: String,
    /// The CAs to trust for an `https://` server, PEM (default: the
    /// system's roots).
    #[arg(long, global = true, env = "SWITCHYARD_CA_FILE", display_order = 1002)]
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate to show (mTLS), PEM; with `--key-file`.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_CERT_FILE",
        requires = "key_file",
        display_order = 1003
    )]
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key, PEM; with `--cert-file`.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_KEY_FILE",
        requires = "cert_file",
        display_order = 1004
    )]
    pub key_file: Option<std::path::PathBuf>,
    /// Print machine-readable JSON instead of tables: one document, or one
    /// object per line for `task watch` and `task logs`.
    #[arg(long, global = true, display_order = 1001)]
    pub json: bool,
    /// The bearer token every call sends (`authorization: Bearer <token>`):
    /// an API key's secret, a static `auth.tokens` token or a JWT the
    /// server accepts. Needed when the server has authentication on.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_TOKEN",
        hide_env_values = true,
        display_order = 1005
    )]
    pub token: Option<String>,
    /// The namespace every call acts in (the `switchyard-namespace`
    /// header): for a static token or a server without authentication; a
    /// key acts in its own namespace. Default: `default`.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_NAMESPACE",
        display_order = 1006
    )]
    pub namespace: Option<String>,
}

impl ClientArgs {
    /// The TLS files of `--ca-file`, `--cert-file` and `--key-file`.
    pub fn tls(&self) -> switchyard_client::TlsFiles {
        switchyard_client::TlsFiles {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }

    /// How every call connects: the TLS files and `--token`.
    pub fn conn(&self) -> super::commands::Conn {
        super::commands::Conn {
            tls: self.tls(),
            token: self.token.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

/// `switchyard cluster ...`: the replicas over a PostgreSQL store.
#[derive(Subcommand, Debug, Clone)]
pub enum ClusterCommand {
    /// Who leads (partition, term, lease age) and which replicas are alive.
    Status,
}

/// `switchyard task ...`: schedule, inspect, cancel and watch tasks.
#[derive(Subcommand, Debug, Clone)]
pub enum TaskCommand {
    /// Schedule a task and print its id.
    Schedule(Box<ScheduleArgs>),
    /// Schedule the tasks of a JSON-lines file, up to 1,000 per call
    /// (`ScheduleTasks`), and print one result per line.
    ScheduleMany(ScheduleManyArgs),
    /// Show everything the server knows about one task, and its payload.
    Status(StatusArgs),
    /// Cancel one task.
    Cancel(CancelArgs),
    /// Run ended (FAILED, CANCELLED, COMPENSATED) tasks again under their
    /// ids, with a new attempt budget; one line per task.
    Retry(RetryArgs),
    /// Run an ended workflow again from a step; the steps before it keep
    /// their outputs.
    Replay(ReplayArgs),
    /// Print task events as they happen, until Ctrl-C.
    Watch(WatchArgs),
    /// List tasks, newest first.
    List(ListArgs),
    /// Print a task's log.
    Logs(LogsArgs),
    /// Explain what holds a pending task: its waiting reason and, when a
    /// flow rule holds it, the rule, its key, the limit and its place in
    /// line.
    Why(StatusArgs),
}

/// A task type, as a flag value.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskTypeArg {
    /// A short queue job run by a worker that registered the task's name.
    Simple,
    /// A long-running workflow with compensation.
    Complex,
    /// A call to an external webhook (n8n).
    Integration,
}

impl From<TaskTypeArg> for pb::TaskType {
    fn from(t: TaskTypeArg) -> Self {
        match t {
            TaskTypeArg::Simple => pb::TaskType::Simple,
            TaskTypeArg::Complex => pb::TaskType::Complex,
            TaskTypeArg::Integration => pb::TaskType::Integration,
        }
    }
}

/// A task state, as a filter value.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStateArg {
    /// Accepted, not running.
    Pending,
    /// An attempt is in progress.
    Running,
    /// Finished successfully.
    Completed,
    /// Failed for good.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Running a workflow's compensations.
    Compensating,
    /// A workflow's compensations all ran.
    Compensated,
}

impl From<TaskStateArg> for pb::TaskState {
    fn from(s: TaskStateArg) -> Self {
        match s {
            TaskStateArg::Pending => pb::TaskState::Pending,
            TaskStateArg::Running => pb::TaskState::Running,
            TaskStateArg::Completed => pb::TaskState::Completed,
            TaskStateArg::Failed => pb::TaskState::Failed,
            TaskStateArg::Cancelled => pb::TaskState::Cancelled,
            TaskStateArg::Compensating => pb::TaskState::Compensating,
            TaskStateArg::Compensated => pb::TaskState::Compensated,
        }
    }
}

/// The engine that runs a task, as a filter value.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskSourceArg {
    /// Switchyard's embedded engine.
    Embedded,
    /// A BullMQ queue on Redis.
    Bullmq,
    /// A Temporal cluster.
    Temporal,
    /// An n8n workflow or other webhook.
    N8n,
}

impl From<TaskSourceArg> for pb::TaskSource {
    fn from(s: TaskSourceArg) -> Self {
        match s {
            TaskSourceArg::Embedded => pb::TaskSource::Embedded,
            TaskSourceArg::Bullmq => pb::TaskSource::Bullmq,
            TaskSourceArg::Temporal => pb::TaskSource::Temporal,
            TaskSourceArg::N8n => pb::TaskSource::N8n,
        }
    }
}

/// How the delay between attempts grows, as a flag value.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffArg {
    /// Always the base delay.
    Fixed,
    /// `base * 2^(attempt-1)`, capped at the maximum.
    Exponential,
}

impl From<BackoffArg> for pb::backoff::Kind {
    fn from(b: BackoffArg) -> Self {
        match b {
            BackoffArg::Fixed => pb::backoff::Kind::Fixed,
            BackoffArg::Exponential => pb::backoff::Kind::Exponential,
        }
    }
}

/// `task schedule NAME`: the task, its options and its target.
#[derive(Args, Debug, Clone)]
pub struct ScheduleArgs {
    /// The task name (what it does: `send-email`). SIMPLE tasks go to workers
    /// that registered this name.
    pub name: String,
    /// The input, a JSON object. Default `{}`.
    #[arg(long, value_name = "JSON", value_parser = parse_json_object, conflicts_with = "payload_file")]
    pub payload: Option<Map<String, Json>>,
    /// Read the input (a JSON object) from this file; `-` reads stdin.
    #[arg(long, value_name = "PATH")]
    pub payload_file: Option<PathBuf>,
    /// The task type. Default: `complex` with --workflow-type,
    /// `integration` with --webhook-url or --n8n-workflow-id, else `simple`.
    #[arg(long = "type", value_enum, ignore_case = true)]
    pub task_type: Option<TaskTypeArg>,
    /// Priority from -1000 (lowest) to 1000 (highest). Default 0.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Attempts in all, first included (1 to 100). Default 1.
    #[arg(long, value_name = "N")]
    pub attempts: Option<u32>,
    /// How the delay between attempts grows. Default exponential.
    #[arg(long, value_enum, ignore_case = true)]
    pub backoff: Option<BackoffArg>,
    /// The first delay between attempts (`1s`, `500ms`). Default 1s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub backoff_base: Option<Duration>,
    /// The largest delay between attempts. Default 5m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub backoff_max: Option<Duration>,
    /// Do not start before this delay (`10s`, `2h`). Default 0.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Time limit of one attempt (`30s`, `5m`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Keep the task this long after it completes (`0s`: removed at the
    /// next sweep). Default: the server's `[retention]` policy.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keep_completed: Option<Duration>,
    /// Keep the task this long after it fails for good.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keep_failed: Option<Duration>,
    /// Keep the task this long after it is cancelled.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keep_cancelled: Option<Duration>,
    /// The user the task belongs to (`disconnect --user` stops it).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// The session the task belongs to (`disconnect --session` stops it).
    #[arg(long, value_name = "SESSION")]
    pub session: Option<String>,
    /// Run on reserved capacity, ahead of normal tasks.
    #[arg(long)]
    pub immediate: bool,
    /// Scheduling twice with the same key returns the first task.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// How long the idempotency key matches this task (`10m`); after it,
    /// the same key creates a new task. Default: as long as it is kept.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idempotency_ttl: Option<Duration>,
    /// A debounce key: of tasks of the key scheduled closer together than
    /// `--debounce-period`, only the last runs (or, with `--throttle`, only
    /// the first).
    #[arg(long, value_name = "KEY", requires = "debounce_period")]
    pub debounce: Option<String>,
    /// The debounce key's quiet period (or throttle period), e.g. `5s`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "debounce")]
    pub debounce_period: Option<Duration>,
    /// The debounce key throttles: the first task of a period wins.
    #[arg(long, requires = "debounce")]
    pub throttle: bool,
    /// The concurrency key (a user, tenant or resource id): the server's
    /// concurrency policies limit how many tasks of one key run at once,
    /// and keys take turns in their queue.
    #[arg(long, value_name = "KEY")]
    pub concurrency_key: Option<String>,
    /// A label, `KEY=VALUE`; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// A task name to schedule with the same payload if this one fails for
    /// good or is cancelled.
    #[arg(long, value_name = "NAME")]
    pub cleanup: Option<String>,

    /// SIMPLE: the queue (on BullMQ, the queue the job is added to).
    #[arg(long, value_name = "QUEUE", help_heading = "Simple target")]
    pub queue: Option<String>,

    /// COMPLEX: the workflow type (definition name).
    #[arg(long, value_name = "TYPE", help_heading = "Complex target")]
    pub workflow_type: Option<String>,
    // Always a `Json::Array` once parsed: clap would read a `Vec` field as a
    // repeated flag.
    /// COMPLEX: the workflow's arguments, a JSON array.
    #[arg(long, value_name = "JSON", value_parser = parse_json_array_value, help_heading = "Complex target")]
    pub workflow_args: Option<Json>,
    /// COMPLEX: the task queue the workflow's work goes to.
    #[arg(long, value_name = "QUEUE", help_heading = "Complex target")]
    pub task_queue: Option<String>,
    /// COMPLEX: a BullMQ queue that receives each state change as a job.
    #[arg(long, value_name = "QUEUE", help_heading = "Complex target")]
    pub tracking_queue: Option<String>,
    /// COMPLEX: the workflow id. Default: the task id.
    #[arg(long, value_name = "ID", help_heading = "Complex target")]
    pub workflow_id: Option<String>,

    /// INTEGRATION: a full http(s) URL to POST to.
    #[arg(long, value_name = "URL", help_heading = "Integration target")]
    pub webhook_url: Option<String>,
    /// INTEGRATION: an n8n workflow id, resolved against the configured n8n
    /// base URL.
    #[arg(long, value_name = "ID", help_heading = "Integration target")]
    pub n8n_workflow_id: Option<String>,
    /// INTEGRATION: the system the integration concerns (github, jenkins).
    #[arg(long, value_name = "SOURCE", help_heading = "Integration target")]
    pub integration_source: Option<String>,
}

/// `task status ID`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The task id.
    pub id: String,
}

/// `task cancel ID`.
#[derive(Args, Debug, Clone)]
pub struct CancelArgs {
    /// The task id.
    pub id: String,
    /// A reason, recorded in the task's log.
    #[arg(long)]
    pub reason: Option<String>,
    /// Stop without letting the task clean up (Temporal: terminate).
    #[arg(long)]
    pub force: bool,
}

/// `task retry ID...`.
#[derive(Args, Debug, Clone)]
pub struct RetryArgs {
    /// The task ids (select them with `task list --state failed
    /// --error-kind KIND`).
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// A reason, recorded in each task's log.
    #[arg(long)]
    pub reason: Option<String>,
}

/// `task replay ID --from STEP`.
#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The workflow task's id.
    pub id: String,
    /// The step to run again from (its id in the definition).
    #[arg(long = "from", value_name = "STEP")]
    pub from_step: String,
    /// A reason, recorded in the task's log.
    #[arg(long)]
    pub reason: Option<String>,
}

/// Which tasks `task watch` and `task list` show. Repeated flags (or
/// comma-separated values) mean "any of"; different flags combine with AND.
#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only tasks of this user.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Only tasks of this session.
    #[arg(long, value_name = "SESSION")]
    pub session: Option<String>,
    /// Only this task id; repeat for more.
    #[arg(long = "task", value_name = "ID")]
    pub task_ids: Vec<String>,
    /// Only this task name; repeat for more.
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Only this type; repeat for more.
    #[arg(long = "type", value_enum, ignore_case = true, value_delimiter = ',')]
    pub types: Vec<TaskTypeArg>,
    /// Only tasks now in this state; repeat for more.
    #[arg(long = "state", value_enum, ignore_case = true, value_delimiter = ',')]
    pub states: Vec<TaskStateArg>,
    /// Only tasks run by this engine; repeat for more.
    #[arg(long = "source", value_enum, ignore_case = true, value_delimiter = ',')]
    pub sources: Vec<TaskSourceArg>,
    /// Only the fires of this schedule.
    #[arg(long = "schedule", value_name = "ID")]
    pub schedule: Option<String>,
    /// Only tasks whose last error has this kind (`timeout`,
    /// `worker_lost`, a worker's own).
    #[arg(long = "error-kind", value_name = "KIND")]
    pub error_kind: Option<String>,
}

impl FilterArgs {
    /// The filter as the proto message.
    pub fn to_proto(&self) -> pb::TaskFilter {
        pb::TaskFilter {
            user_id: self.user.clone().unwrap_or_default(),
            session_id: self.session.clone().unwrap_or_default(),
            task_ids: self.task_ids.clone(),
            names: self.names.clone(),
            task_types: self
                .types
                .iter()
                .map(|t| pb::TaskType::from(*t) as i32)
                .collect(),
            states: self
                .states
                .iter()
                .map(|s| pb::TaskState::from(*s) as i32)
                .collect(),
            sources: self
                .sources
                .iter()
                .map(|s| pb::TaskSource::from(*s) as i32)
                .collect(),
            schedule_id: self.schedule.clone().unwrap_or_default(),
            error_kind: self.error_kind.clone().unwrap_or_default(),
        }
    }
}

/// `task watch`.
#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Which tasks.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Replay the events after this sequence number first.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: u64,
    /// First print the current status of every matching active task
    /// (without --after).
    #[arg(long)]
    pub snapshot: bool,
}

impl WatchArgs {
    /// The request that (re)opens the watch after sequence `after`. The
    /// snapshot is only asked for on a first open (`after == 0`).
    pub fn to_request(&self, after: u64) -> pb::WatchTasksRequest {
        pb::WatchTasksRequest {
            filter: Some(self.filter.to_proto()),
            after_sequence: after,
            include_snapshot: self.snapshot && after == 0,
        }
    }
}

/// `task list`.
#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// Which tasks.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Tasks per page (server default 50, at most 1000).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Start at this page (the token the previous page printed).
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
    /// Follow the pages to the end.
    #[arg(long)]
    pub all: bool,
}

impl ListArgs {
    /// The request for the page at `page_token`.
    pub fn to_request(&self, page_token: String) -> pb::ListTasksRequest {
        pb::ListTasksRequest {
            filter: Some(self.filter.to_proto()),
            page_size: self.limit.unwrap_or(0),
            page_token,
        }
    }
}

/// `task logs ID`.
#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// The task id.
    pub id: String,
    /// Only lines after this line number.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub after: u64,
    /// At most this many lines (server default 200, at most 5000); without
    /// it, every line.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Keep printing new lines (polling every 500ms) until the task is final.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// `disconnect`: cancel every active task of a user or a session.
#[derive(Args, Debug, Clone)]
pub struct DisconnectArgs {
    /// The user whose tasks to stop.
    #[arg(
        long,
        value_name = "USER",
        required_unless_present = "session",
        conflicts_with = "session"
    )]
    pub user: Option<String>,
    /// The session whose tasks to stop.
    #[arg(long, value_name = "SESSION")]
    pub session: Option<String>,
    /// A reason for the task logs.
    #[arg(long)]
    pub reason: Option<String>,
}

impl DisconnectArgs {
    /// The request.
    pub fn to_request(&self) -> pb::DisconnectRequest {
        pb::DisconnectRequest {
            user_id: self.user.clone().unwrap_or_default(),
            session_id: self.session.clone().unwrap_or_default(),
            reason: self.reason.clone().unwrap_or_default(),
        }
    }
}

/// `metrics`: counts, queues, throughput and latency.
#[derive(Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Also show the counts per task name.
    #[arg(long)]
    pub by_name: bool,
}

/// Parses a duration such as `500ms`, `10s`, `5m`, `1h30m` or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (examples: 500ms, 10s, 5m, 1h30m)"))
}

/// Parses a label `KEY=VALUE` (the value may contain `=` and may be empty;
/// the key may not be empty).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        Some(_) => Err(format!("label `{s}` has an empty key (expected KEY=VALUE)")),
        None => Err(format!("label `{s}` has no `=` (expected KEY=VALUE)")),
    }
}

/// Parses a JSON object.
pub fn parse_json_object(s: &str) -> Result<Map<String, Json>, String> {
    match serde_json::from_str::<Json>(s) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "expected a JSON object like {{\"key\": 1}}, got {}",
            json_kind(&other)
        )),
        Err(e) => Err(format!("malformed JSON: {e}")),
    }
}

/// Parses a JSON array.
pub fn parse_json_array(s: &str) -> Result<Vec<Json>, String> {
    match serde_json::from_str::<Json>(s) {
        Ok(Json::Array(items)) => Ok(items),
        Ok(other) => Err(format!(
            "expected a JSON array like [1, \"two\"], got {}",
            json_kind(&other)
        )),
        Err(e) => Err(format!("malformed JSON: {e}")),
    }
}

/// [`parse_json_array`] as a `Json::Array` (clap would take a `Vec` field
/// for a repeated flag).
fn parse_json_array_value(s: &str) -> Result<Json, String> {
    parse_json_array(s).map(Json::Array)
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn proto_duration(flag: &str, d: Duration) -> Result<prost_types::Duration, CliError> {
    prost_types::Duration::try_from(d)
        .map_err(|_| CliError::usage(format!("--{flag}: {d:?} is too long")))
}

fn opt_duration(
    flag: &str,
    d: Option<Duration>,
) -> Result<Option<prost_types::Duration>, CliError> {
    d.map(|d| proto_duration(flag, d)).transpose()
}

impl ScheduleArgs {
    /// The payload: `--payload`, the contents of `--payload-file`, or `{}`.
    fn payload(&self) -> Result<Map<String, Json>, CliError> {
        if let Some(map) = &self.payload {
            return Ok(map.clone());
        }
        let Some(path) = &self.payload_file else {
            return Ok(Map::new());
        };
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
                .map_err(|e| CliError::usage(format!("--payload-file -: cannot read stdin: {e}")))?
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| CliError::usage(format!("--payload-file {}: {e}", path.display())))?
        };
        parse_json_object(&text)
            .map_err(|e| CliError::usage(format!("--payload-file {}: {e}", path.display())))
    }

    /// The flags of each target that were given, by target type.
    fn target_flags(&self) -> [(TaskTypeArg, Vec<&'static str>); 3] {
        let given = |pairs: &[(&'static str, bool)]| {
            pairs
                .iter()
                .filter(|(_, present)| *present)
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
        };
        [
            (
                TaskTypeArg::Simple,
                given(&[("--queue", self.queue.is_some())]),
            ),
            (
                TaskTypeArg::Complex,
                given(&[
                    ("--workflow-type", self.workflow_type.is_some()),
                    ("--workflow-args", self.workflow_args.is_some()),
                    ("--task-queue", self.task_queue.is_some()),
                    ("--tracking-queue", self.tracking_queue.is_some()),
                    ("--workflow-id", self.workflow_id.is_some()),
                ]),
            ),
            (
                TaskTypeArg::Integration,
                given(&[
                    ("--webhook-url", self.webhook_url.is_some()),
                    ("--n8n-workflow-id", self.n8n_workflow_id.is_some()),
                    ("--integration-source", self.integration_source.is_some()),
                ]),
            ),
        ]
    }

    /// The task type: `--type`, or the one whose target flags were given.
    /// Target flags of another type are refused rather than silently dropped.
    fn resolved_type(&self) -> Result<TaskTypeArg, CliError> {
        let flags = self.target_flags();
        let used: Vec<_> = flags.iter().filter(|(_, f)| !f.is_empty()).collect();
        let task_type = match (self.task_type, used.as_slice()) {
            (Some(t), _) => t,
            (None, []) => TaskTypeArg::Simple,
            (None, [(t, _)]) => *t,
            (None, _) => {
                return Err(CliError::usage(
                    "target flags of several task types were given; pick one --type",
                ))
            }
        };
        for (t, given) in &flags {
            if *t != task_type && !given.is_empty() {
                return Err(CliError::usage(format!(
                    "{} {} to --type {}, but the task is --type {}",
                    given.join(", "),
                    if given.len() == 1 { "applies" } else { "apply" },
                    type_flag(*t),
                    type_flag(task_type)
                )));
            }
        }
        Ok(task_type)
    }

    /// The `ScheduleTaskRequest` these flags describe. Fails on input the
    /// server could not make sense of (malformed payload, clashing flags);
    /// everything else is left to the server to validate.
    pub fn to_request(&self) -> Result<pb::ScheduleTaskRequest, CliError> {
        use pb::schedule_task_request::Target;

        let task_type = self.resolved_type()?;
        let payload = pb::json::map_to_struct(&self.payload()?);

        let mut labels = HashMap::with_capacity(self.labels.len());
        for (key, value) in &self.labels {
            if labels.insert(key.clone(), value.clone()).is_some() {
                return Err(CliError::usage(format!("--label {key} is given twice")));
            }
        }
        let backoff = if self.backoff.is_some()
            || self.backoff_base.is_some()
            || self.backoff_max.is_some()
        {
            Some(pb::Backoff {
                kind: self
                    .backoff
                    .map_or(pb::backoff::Kind::Unspecified, Into::into)
                    as i32,
                base: opt_duration("backoff-base", self.backoff_base)?,
                max: opt_duration("backoff-max", self.backoff_max)?,
            })
        } else {
            None
        };
        let options = pb::TaskOptions {
            priority: self.priority.unwrap_or(0),
            attempts: self.attempts.unwrap_or(0),
            backoff,
            delay: opt_duration("delay", self.delay)?,
            execution_timeout: opt_duration("timeout", self.timeout)?,
            user_id: self.user.clone().unwrap_or_default(),
            session_id: self.session.clone().unwrap_or_default(),
            immediate: self.immediate,
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
            idempotency_ttl: opt_duration("idempotency-ttl", self.idempotency_ttl)?,
            debounce: match &self.debounce {
                Some(key) => Some(pb::Debounce {
                    key: key.clone(),
                    period: opt_duration("debounce-period", self.debounce_period)?,
                    mode: if self.throttle {
                        pb::DebounceMode::Throttle
                    } else {
                        pb::DebounceMode::Debounce
                    } as i32,
                }),
                None => None,
            },
            concurrency_key: self.concurrency_key.clone().unwrap_or_default(),
            labels,
            cleanup: self.cleanup.clone().map(|name| pb::CleanupTask { name }),
            retention: if self.keep_completed.is_some()
                || self.keep_failed.is_some()
                || self.keep_cancelled.is_some()
            {
                Some(pb::Retention {
                    completed: opt_duration("keep-completed", self.keep_completed)?,
                    failed: opt_duration("keep-failed", self.keep_failed)?,
                    cancelled: opt_duration("keep-cancelled", self.keep_cancelled)?,
                })
            } else {
                None
            },
        };
        let target = match task_type {
            TaskTypeArg::Simple => self
                .queue
                .clone()
                .map(|queue| Target::Simple(pb::SimpleTarget { queue })),
            TaskTypeArg::Complex => Some(Target::Complex(pb::ComplexTarget {
                workflow_type: self.workflow_type.clone().unwrap_or_default(),
                workflow_args: match &self.workflow_args {
                    Some(Json::Array(items)) => Some(prost_types::ListValue {
                        values: items.iter().map(pb::json::json_to_value).collect(),
                    }),
                    Some(_) => return Err(CliError::usage("--workflow-args must be a JSON array")),
                    None => None,
                },
                task_queue: self.task_queue.clone().unwrap_or_default(),
                tracking_queue: self.tracking_queue.clone().unwrap_or_default(),
                workflow_id: self.workflow_id.clone().unwrap_or_default(),
            })),
            TaskTypeArg::Integration => Some(Target::Integration(pb::IntegrationTarget {
                n8n: Some(pb::N8nTarget {
                    workflow_id: self.n8n_workflow_id.clone().unwrap_or_default(),
                    webhook_url: self.webhook_url.clone().unwrap_or_default(),
                    integration_source: self.integration_source.clone().unwrap_or_default(),
                }),
            })),
        };
        Ok(pb::ScheduleTaskRequest {
            name: self.name.clone(),
            payload: Some(payload),
            task_type: pb::TaskType::from(task_type) as i32,
            options: Some(options),
            target,
        })
    }
}

/// `task schedule-many FILE`: many tasks from a JSON-lines file.
#[derive(Args, Debug, Clone)]
pub struct ScheduleManyArgs {
    /// The file (`-` for stdin). Each line is one task, as `task schedule`
    /// takes it: either its arguments as a JSON array of strings
    /// (`["send-email", "--payload", "{}"]`) or an object of its flags by
    /// long name, with `name` for the task name (`{"name": "send-email",
    /// "payload": {"to": "a@b.c"}, "label": ["team=mail"], "immediate":
    /// true}`). Blank lines and lines starting with `#` are skipped. The
    /// tasks go in calls of up to 1,000; one result is printed per task, in
    /// file order, naming its line.
    pub file: PathBuf,
}

/// What a `schedule-many` line is made into: the flags of `task schedule`.
#[derive(clap::Parser, Debug)]
#[command(name = "schedule", no_binary_name = true)]
struct ScheduleLine {
    #[command(flatten)]
    args: ScheduleArgs,
}

/// One line of a `schedule-many` file as the `ScheduleTaskRequest` that
/// `task schedule` would send for the same arguments.
pub fn schedule_line(line: &str) -> Result<pb::ScheduleTaskRequest, CliError> {
    let value: Json = serde_json::from_str(line)
        .map_err(|e| CliError::usage(format!("not a JSON value: {e}")))?;
    let argv: Vec<String> = match value {
        Json::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Json::String(s) => Ok(s),
                other => Err(CliError::usage(format!(
                    "an argument list holds strings only, not {}",
                    json_kind(&other)
                ))),
            })
            .collect::<Result<_, _>>()?,
        Json::Object(flags) => {
            let mut argv = Vec::new();
            let mut name = None;
            for (k, v) in flags {
                if k == "name" {
                    match v {
                        Json::String(s) => name = Some(s),
                        other => {
                            return Err(CliError::usage(format!(
                                "name must be a string, not {}",
                                json_kind(&other)
                            )))
                        }
                    }
                    continue;
                }
                let flag = format!("--{k}");
                let values = match v {
                    Json::Array(items) if k != "workflow-args" => items,
                    other => vec![other],
                };
                for v in values {
                    match v {
                        Json::Bool(true) => argv.push(flag.clone()),
                        Json::Bool(false) | Json::Null => {}
                        Json::String(s) => argv.extend([flag.clone(), s]),
                        other => argv.extend([flag.clone(), other.to_string()]),
                    }
                }
            }
            let name = name.ok_or_else(|| CliError::usage("a task object needs \"name\""))?;
            // `--` keeps a name that starts with `-` a name.
            argv.push("--".into());
            argv.push(name);
            argv
        }
        other => {
            return Err(CliError::usage(format!(
                "a line is an array of arguments or an object of flags, not {}",
                json_kind(&other)
            )))
        }
    };
    use clap::Parser as _;
    let parsed = ScheduleLine::try_parse_from(argv).map_err(|e| {
        let text = e.to_string();
        CliError::usage(text.lines().next().unwrap_or("bad arguments").to_string())
    })?;
    parsed.args.to_request()
}

fn type_flag(t: TaskTypeArg) -> &'static str {
    match t {
        TaskTypeArg::Simple => "simple",
        TaskTypeArg::Complex => "complex",
        TaskTypeArg::Integration => "integration",
    }
}

#[cfg(test)]
mod tests {
    use super::super::json;
    use super::*;
    use clap::{CommandFactory, Parser};
    use pb::schedule_task_request::Target;
    use serde_json::json;

    /// The shape `main.rs` embeds these types in.
    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(Subcommand, Debug)]
    enum TestCommand {
        #[command(subcommand)]
        Task(TaskCommand),
        Disconnect(DisconnectArgs),
        Metrics(MetricsArgs),
    }

    fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("switchyard").chain(args.iter().copied()))
    }

    fn schedule(args: &[&str]) -> ScheduleArgs {
        let mut all = vec!["task", "schedule"];
        all.extend_from_slice(args);
        match parse(&all).map(|c| c.command) {
            Ok(TestCommand::Task(TaskCommand::Schedule(a))) => *a,
            other => panic!("not a schedule command: {other:?}"),
        }
    }

    #[test]
    fn clap_definitions_are_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn minimal_schedule_is_a_simple_task_with_an_empty_payload() {
        let req = schedule(&["send-email"]).to_request().unwrap();
        assert_eq!(req.name, "send-email");
        assert_eq!(req.task_type, pb::TaskType::Simple as i32);
        assert_eq!(req.payload, Some(prost_types::Struct::default()));
        assert_eq!(req.target, None);
        let options = req.options.unwrap();
        assert_eq!(options, pb::TaskOptions::default());
    }

    #[test]
    fn schedule_options_map_to_task_options() {
        let req = schedule(&[
            "send-email",
            "--payload",
            r#"{"to": "a@b.c", "n": 2}"#,
            "--priority",
            "-20",
            "--attempts",
            "3",
            "--backoff",
            "fixed",
            "--backoff-base",
            "2s",
            "--backoff-max",
            "5m",
            "--delay",
            "1m30s",
            "--timeout",
            "500ms",
            "--user",
            "u1",
            "--session",
            "s1",
            "--immediate",
            "--idempotency-key",
            "k1",
            "--label",
            "team=mail",
            "--label",
            "expr=a=b",
            "--cleanup",
            "undo-email",
            "--queue",
            "mail",
        ])
        .to_request()
        .unwrap();
        assert_eq!(
            json::struct_to_json(req.payload.as_ref().unwrap()),
            json!({"to": "a@b.c", "n": 2})
        );
        assert_eq!(
            req.target,
            Some(Target::Simple(pb::SimpleTarget {
                queue: "mail".into()
            }))
        );
        let o = req.options.unwrap();
        assert_eq!(o.priority, -20);
        assert_eq!(o.attempts, 3);
        let backoff = o.backoff.unwrap();
        assert_eq!(backoff.kind, pb::backoff::Kind::Fixed as i32);
        assert_eq!(backoff.base.unwrap().seconds, 2);
        assert_eq!(backoff.max.unwrap().seconds, 300);
        assert_eq!(o.delay.unwrap().seconds, 90);
        let timeout = o.execution_timeout.unwrap();
        assert_eq!((timeout.seconds, timeout.nanos), (0, 500_000_000));
        assert_eq!((o.user_id.as_str(), o.session_id.as_str()), ("u1", "s1"));
        assert!(o.immediate);
        assert_eq!(o.idempotency_key, "k1");
        assert_eq!(o.labels.len(), 2);
        assert_eq!(o.labels["team"], "mail");
        assert_eq!(o.labels["expr"], "a=b");
        assert_eq!(o.cleanup.unwrap().name, "undo-email");
    }

    #[test]
    fn priority_accepts_negative_numbers_in_both_spellings() {
        for args in [
            &["t", "--priority", "-1000"][..],
            &["t", "--priority=-1000"],
        ] {
            let o = schedule(args).to_request().unwrap().options.unwrap();
            assert_eq!(o.priority, -1000);
        }
    }

    #[test]
    fn backoff_base_alone_leaves_the_kind_to_the_server() {
        let o = schedule(&["t", "--backoff-base", "1s"])
            .to_request()
            .unwrap()
            .options
            .unwrap();
        let b = o.backoff.unwrap();
        assert_eq!(b.kind, pb::backoff::Kind::Unspecified as i32);
        assert_eq!(b.max, None);
    }

    #[test]
    fn complex_target_from_flags() {
        let req = schedule(&[
            "scan",
            "--type",
            "complex",
            "--workflow-type",
            "ScanRepo",
            "--workflow-args",
            r#"["repo", 3, {"deep": true}]"#,
            "--task-queue",
            "scans",
            "--tracking-queue",
            "scan-events",
            "--workflow-id",
            "wf-1",
        ])
        .to_request()
        .unwrap();
        assert_eq!(req.task_type, pb::TaskType::Complex as i32);
        let Some(Target::Complex(c)) = req.target else {
            panic!("not complex: {:?}", req.target)
        };
        assert_eq!(c.workflow_type, "ScanRepo");
        assert_eq!(
            Json::Array(
                c.workflow_args
                    .as_ref()
                    .unwrap()
                    .values
                    .iter()
                    .map(json::value_to_json)
                    .collect()
            ),
            json!(["repo", 3, {"deep": true}])
        );
        assert_eq!(
            (
                c.task_queue.as_str(),
                c.tracking_queue.as_str(),
                c.workflow_id.as_str()
            ),
            ("scans", "scan-events", "wf-1")
        );
    }

    #[test]
    fn type_is_inferred_from_target_flags() {
        let req = schedule(&["hook", "--webhook-url", "https://example.test/h"])
            .to_request()
            .unwrap();
        assert_eq!(req.task_type, pb::TaskType::Integration as i32);
        let Some(Target::Integration(i)) = req.target else {
            panic!("not integration: {:?}", req.target)
        };
        let n8n = i.n8n.unwrap();
        assert_eq!(n8n.webhook_url, "https://example.test/h");
        assert_eq!(n8n.workflow_id, "");

        let req = schedule(&["wf", "--workflow-type", "W"])
            .to_request()
            .unwrap();
        assert_eq!(req.task_type, pb::TaskType::Complex as i32);
    }

    #[test]
    fn complex_and_integration_always_carry_a_target() {
        let req = schedule(&["wf", "--type", "COMPLEX"]).to_request().unwrap();
        assert!(matches!(req.target, Some(Target::Complex(_))));
        let req = schedule(&["h", "--type", "integration"])
            .to_request()
            .unwrap();
        assert!(matches!(req.target, Some(Target::Integration(_))));
    }

    #[test]
    fn target_flags_of_another_type_are_refused() {
        let err = schedule(&["t", "--type", "simple", "--workflow-type", "W"])
            .to_request()
            .unwrap_err();
        assert_eq!(err.exit_code(), CliError::USAGE);
        assert!(err.message().contains("--workflow-type"), "{err}");
        let err = schedule(&["t", "--queue", "q", "--webhook-url", "http://x"])
            .to_request()
            .unwrap_err();
        assert!(err.message().contains("several"), "{err}");
    }

    #[test]
    fn malformed_payload_fails_at_parse_time() {
        let err = parse(&["task", "schedule", "t", "--payload", "{nope"]).unwrap_err();
        assert!(err.to_string().contains("malformed JSON"), "{err}");
        let err = parse(&["task", "schedule", "t", "--payload", "[1]"]).unwrap_err();
        assert!(err.to_string().contains("expected a JSON object"), "{err}");
        let err = parse(&["task", "schedule", "t", "--workflow-args", "{}"]).unwrap_err();
        assert!(err.to_string().contains("expected a JSON array"), "{err}");
    }

    #[test]
    fn payload_and_payload_file_conflict() {
        assert!(parse(&[
            "task",
            "schedule",
            "t",
            "--payload",
            "{}",
            "--payload-file",
            "p.json"
        ])
        .is_err());
    }

    #[test]
    fn payload_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"a": [1, 2]}"#).unwrap();
        let req = schedule(&["t", "--payload-file", good.to_str().unwrap()])
            .to_request()
            .unwrap();
        assert_eq!(
            json::struct_to_json(req.payload.as_ref().unwrap()),
            json!({"a": [1, 2]})
        );

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "not json").unwrap();
        let err = schedule(&["t", "--payload-file", bad.to_str().unwrap()])
            .to_request()
            .unwrap_err();
        assert_eq!(err.exit_code(), CliError::USAGE);
        assert!(err.message().contains("malformed JSON"), "{err}");

        let missing = dir.path().join("missing.json");
        let err = schedule(&["t", "--payload-file", missing.to_str().unwrap()])
            .to_request()
            .unwrap_err();
        assert!(err.message().contains("missing.json"), "{err}");
    }

    #[test]
    fn labels_need_an_equals_sign_and_a_key() {
        assert_eq!(parse_label("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(parse_label("a="), Ok(("a".into(), String::new())));
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_label("ab").unwrap_err().contains("no `=`"));
        assert!(parse_label("=b").unwrap_err().contains("empty key"));
        let err = parse(&["task", "schedule", "t", "--label", "oops"]).unwrap_err();
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
    }

    #[test]
    fn duplicate_labels_are_refused() {
        let err = schedule(&["t", "--label", "a=1", "--label", "a=2"])
            .to_request()
            .unwrap_err();
        assert!(err.message().contains("twice"), "{err}");
    }

    #[test]
    fn durations_use_humantime() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn filters_map_to_task_filter() {
        let cli = parse(&[
            "task",
            "watch",
            "--user",
            "u",
            "--session",
            "s",
            "--task",
            "a",
            "--task",
            "b",
            "--name",
            "n",
            "--type",
            "simple,integration",
            "--state",
            "PENDING",
            "--state",
            "failed",
            "--source",
            "bullmq",
            "--after",
            "41",
            "--snapshot",
        ])
        .unwrap();
        let TestCommand::Task(TaskCommand::Watch(w)) = cli.command else {
            panic!("not watch")
        };
        let req = w.to_request(w.after);
        assert_eq!(req.after_sequence, 41);
        assert!(!req.include_snapshot, "no snapshot when resuming");
        assert!(w.to_request(0).include_snapshot);
        let f = req.filter.unwrap();
        assert_eq!((f.user_id.as_str(), f.session_id.as_str()), ("u", "s"));
        assert_eq!(f.task_ids, ["a", "b"]);
        assert_eq!(f.names, ["n"]);
        assert_eq!(
            f.task_types,
            [
                pb::TaskType::Simple as i32,
                pb::TaskType::Integration as i32
            ]
        );
        assert_eq!(
            f.states,
            [pb::TaskState::Pending as i32, pb::TaskState::Failed as i32]
        );
        assert_eq!(f.sources, [pb::TaskSource::Bullmq as i32]);
    }

    #[test]
    fn every_state_name_parses() {
        for name in [
            "pending",
            "running",
            "completed",
            "failed",
            "cancelled",
            "compensating",
            "compensated",
        ] {
            let state = TaskStateArg::from_str(name, true).unwrap();
            assert_eq!(
                json::task_state_name(pb::TaskState::from(state) as i32),
                name
            );
        }
    }

    #[test]
    fn list_flags_map_to_the_request() {
        let cli = parse(&[
            "task", "list", "--limit", "10", "--state", "running", "--all",
        ])
        .unwrap();
        let TestCommand::Task(TaskCommand::List(l)) = cli.command else {
            panic!("not list")
        };
        assert!(l.all);
        let req = l.to_request("tok".into());
        assert_eq!((req.page_size, req.page_token.as_str()), (10, "tok"));
        assert_eq!(req.filter.unwrap().states, [pb::TaskState::Running as i32]);
    }

    #[test]
    fn disconnect_needs_exactly_one_owner() {
        assert!(parse(&["disconnect"]).is_err());
        assert!(parse(&["disconnect", "--user", "u", "--session", "s"]).is_err());
        let cli = parse(&["disconnect", "--session", "s", "--reason", "logout"]).unwrap();
        let TestCommand::Disconnect(d) = cli.command else {
            panic!("not disconnect")
        };
        let req = d.to_request();
        assert_eq!(
            (
                req.user_id.as_str(),
                req.session_id.as_str(),
                req.reason.as_str()
            ),
            ("", "s", "logout")
        );
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["metrics", "--json", "--server", "http://h:1"]).unwrap();
        assert!(cli.client.json);
        assert_eq!(cli.client.server, "http://h:1");
        let cli = parse(&["--json", "task", "status", "abc"]).unwrap();
        assert!(cli.client.json);
    }
}
