//! Client subcommands of the `switchyard` CLI: `task schedule|status|cancel|
//! watch|list|logs`, `disconnect` and `metrics`, all over gRPC to
//! `OrchestratorService`, and `schedule create|update|get|list|pause|resume|
//! trigger|delete` to `ScheduleService` (`schedule.rs`), and `queue
//! pause|resume`, `flow set|delete|list` and `task why` (`flow.rs`), and
//! `keys create|list|revoke` and `audit` to `KeysService` (`keys.rs`).
//!
//! This module owns the clap types of those subcommands, their output (tables
//! for people, JSON with `--json`) and the readable rendering of gRPC errors.
//! It does not own the top-level parser, `serve`, or any server code: `main.rs`
//! embeds these types and calls the `run_*` functions, which return a
//! [`CliError`] carrying the exit code.
//!
//! ```ignore
//! #[derive(clap::Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     client: switchyard::cli::ClientArgs,
//!     #[command(subcommand)]
//!     command: Command,
//! }
//! #[derive(clap::Subcommand)]
//! enum Command {
//!     #[command(subcommand)]
//!     Task(switchyard::cli::TaskCommand),
//!     Disconnect(switchyard::cli::DisconnectArgs),
//!     Metrics(switchyard::cli::MetricsArgs),
//! }
//! // In an async main returning std::process::ExitCode:
//! let result = match cli.command {
//!     Command::Task(cmd) => switchyard::cli::run_task(&cli.client, cmd).await,
//!     Command::Disconnect(args) => switchyard::cli::run_disconnect(&cli.client, args).await,
//!     Command::Metrics(args) => switchyard::cli::run_metrics(&cli.client, args).await,
//! };
//! match result {
//!     Ok(()) => std::process::ExitCode::SUCCESS,
//!     Err(err) => err.report(),
//! }
//! ```

mod args;
mod commands;
mod error;
mod flow;
mod json;
mod keys;
mod render;
mod schedule;

use std::io;

pub use args::{
    parse_duration, parse_json_array, parse_json_object, parse_label, schedule_line, BackoffArg,
    CancelArgs, ClientArgs, ClusterCommand, DisconnectArgs, FilterArgs, ListArgs, LogsArgs,
    MetricsArgs, ReplayArgs, RetryArgs, ScheduleArgs, ScheduleManyArgs, StatusArgs, TaskCommand,
    TaskSourceArg, TaskStateArg, TaskTypeArg, WatchArgs,
};
pub use error::{describe_status, CliError};
pub use flow::{DeletePolicyArgs, FlowCommand, QueueArgs, QueueCommand, SetPolicyArgs};
pub use keys::{AuditArgs, CreateKeyArgs, KeysCommand, RevokeKeyArgs, RoleArg};
pub use schedule::{
    CatchUpArg, CreateArgs, IdArgs, ListSchedulesArgs, NoteArgs, OverlapArg, ScheduleCommand,
    TimingArgs, UpdateArgs,
};

use commands::{connect, Output};

/// Resolves on Ctrl-C (or never, if the signal cannot be listened for).
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs one `task` subcommand against the server in `client`, printing to
/// stdout. `task watch` and `task logs --follow` run until Ctrl-C (or, for
/// logs, until the task is final).
pub async fn run_task(client: &ClientArgs, command: TaskCommand) -> Result<(), CliError> {
    let mut out = Output::new(io::stdout(), client.json);
    let server = &client.server;
    let tls = &client.conn();
    match command {
        TaskCommand::Schedule(args) => {
            // Bad flags fail before the connection does.
            let request = args.to_request()?;
            commands::schedule(&mut connect(server, tls).await?, request, &mut out).await
        }
        TaskCommand::ScheduleMany(args) => {
            // The file is read and every line parsed before connecting.
            let lines = commands::read_lines(&args.file)?;
            commands::schedule_many(&mut connect(server, tls).await?, lines, &mut out).await
        }
        TaskCommand::Status(args) => {
            commands::status(&mut connect(server, tls).await?, &args, &mut out).await
        }
        TaskCommand::Cancel(args) => {
            commands::cancel(&mut connect(server, tls).await?, &args, &mut out).await
        }
        TaskCommand::Retry(args) => {
            commands::retry(&mut connect(server, tls).await?, &args, &mut out).await
        }
        TaskCommand::Replay(args) => {
            commands::replay(&mut connect(server, tls).await?, &args, &mut out).await
        }
        TaskCommand::List(args) => {
            commands::list(&mut connect(server, tls).await?, &args, &mut out).await
        }
        TaskCommand::Logs(args) => {
            commands::logs(&mut connect(server, tls).await?, &args, &mut out, ctrl_c()).await
        }
        TaskCommand::Watch(args) => commands::watch(server, tls, &args, &mut out, ctrl_c()).await,
        TaskCommand::Why(args) => flow::why(client, &args, &mut out).await,
    }
}

/// Runs one `queue` subcommand (pause, resume) against the server in
/// `client`, printing to stdout.
pub async fn run_queue(client: &ClientArgs, command: QueueCommand) -> Result<(), CliError> {
    let mut out = Output::new(io::stdout(), client.json);
    flow::run_queue(client, command, &mut out).await
}

/// Runs one `flow` subcommand (concurrency policies) against the server in
/// `client`, printing to stdout.
pub async fn run_flow(client: &ClientArgs, command: FlowCommand) -> Result<(), CliError> {
    let mut out = Output::new(io::stdout(), client.json);
    flow::run_flow(client, command, &mut out).await
}

/// Runs one `keys` subcommand against the server in `client`, printing to
/// stdout.
pub async fn run_keys(client: &ClientArgs, command: KeysCommand) -> Result<(), CliError> {
    let mut out = Output::new(io::stdout(), client.json);
    keys::run_keys(client, command, &mut out).await
}

/// Runs `audit` against the server in `client`, printing to stdout.
pub async fn run_audit(client: &ClientArgs, args: AuditArgs) -> Result<(), CliError> {
    let mut out = Output::new(io::stdout(), client.json);
    keys::run_audit(client, args, &mut out).await
}

/// Runs one `schedule` subcommand against the server in `client`, printing
/// to stdout.
pub async fn run_schedule(client: &ClientArgs, command: ScheduleCommand) -> Result<(), CliError> {
    let mut out = Output::new(io::stdout(), client.json);
    schedule::run(&client.server, &client.conn(), command, &mut out).await
}

/// Runs `disconnect`: cancels every active task of a user or a session and
/// prints a receipt per task.
pub async fn run_disconnect(client: &ClientArgs, args: DisconnectArgs) -> Result<(), CliError> {
    let mut out = Output::new(io::stdout(), client.json);
    let mut grpc = connect(&client.server, &client.conn()).await?;
    commands::disconnect(&mut grpc, &args, &mut out).await
}

/// Runs `cluster status`: who leads, under which term, and the replicas.
pub async fn run_cluster(client: &ClientArgs, cmd: ClusterCommand) -> Result<(), CliError> {
    let mut out = Output::new(io::stdout(), client.json);
    let mut grpc = connect(&client.server, &client.conn()).await?;
    match cmd {
        ClusterCommand::Status => commands::cluster_status(&mut grpc, &mut out).await,
    }
}

/// Runs `metrics`: prints counts per state and type, queues, throughput and
/// latency.
pub async fn run_metrics(client: &ClientArgs, args: MetricsArgs) -> Result<(), CliError> {
    let mut out = Output::new(io::stdout(), client.json);
    let mut grpc = connect(&client.server, &client.conn()).await?;
    commands::metrics(&mut grpc, &args, &mut out).await
}
