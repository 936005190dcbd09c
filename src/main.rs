//! The `switchyard` binary: `serve`, `config`, and the client subcommands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The scheduler allocates small objects on every transition; mimalloc cuts
// that cost well below glibc's malloc (see the README's Performance section).
// Its v2 (the `v2` feature), not v3: with a million pending tasks v3 held
// 1,016 MiB after the fill and 985–1,081 MiB after restarts, v2 924 and
// 882–939 MiB, at the same throughput (bench scenarios a, b, c, f).
// Without transparent huge pages (the `no_thp` feature: mimalloc does not
// `madvise` its memory for them): with them, every page mimalloc gave back
// and touched again was a 2 MiB page for the kernel to zero, a tenth of the
// server's CPU while scheduling in bulk (the README's Performance section).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use switchyard::config::{Config, LogFormat, Overrides};

/// One API to schedule, track, cancel and watch background work.
#[derive(Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    #[command(flatten)]
    client: switchyard::cli::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server.
    Serve(ServeArgs),
    /// Prints the effective configuration (defaults, file, environment, flags).
    Config(ServeArgs),
    /// Copies the SQLite store (the server may be running) into FILE: one
    /// consistent snapshot. Restore: stop the server, put the copy in place
    /// as <data_dir>/switchyard.db, start it.
    Backup(BackupArgs),
    /// Schedules and inspects tasks.
    #[command(subcommand)]
    Task(switchyard::cli::TaskCommand),
    /// Repeatable schedules: a task fired on a cron expression or an interval.
    #[command(subcommand)]
    Schedule(switchyard::cli::ScheduleCommand),
    /// Cancels every active task of a user or session.
    Disconnect(switchyard::cli::DisconnectArgs),
    /// Prints counts, queues, throughput and latencies.
    Metrics(switchyard::cli::MetricsArgs),
    /// The replicas over a PostgreSQL store: who leads, terms, lease ages.
    #[command(subcommand)]
    Cluster(switchyard::cli::ClusterCommand),
    /// Pauses and resumes a task name or queue.
    #[command(subcommand)]
    Queue(switchyard::cli::QueueCommand),
    /// Concurrency policies: how many tasks of one key run at once.
    #[command(subcommand)]
    Flow(switchyard::cli::FlowCommand),
    /// Scoped API keys: create (prints the secret once), list, revoke.
    #[command(subcommand)]
    Keys(switchyard::cli::KeysCommand),
    /// The audit log: who cancelled, paused, retried, signalled, changed a
    /// key or registered a worker.
    Audit(switchyard::cli::AuditArgs),
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// A TOML config file.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Where the store keeps its file [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep everything in memory: nothing survives a restart.
    #[arg(long)]
    memory: bool,
    /// Log format: pretty or json.
    #[arg(long, value_parser = ["pretty", "json"])]
    log_format: Option<String>,
    /// Admin HTTP listen address (JSON API, /metrics, dashboard)
    /// [default: 127.0.0.1:50052].
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
}

#[derive(clap::Args, Clone)]
struct BackupArgs {
    /// The copy to write. With the embedded workflow engine's registry in
    /// the data directory, it is copied too, to FILE with the extension
    /// `.workflows.db`.
    file: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
    /// The server's TOML config file.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// The server's data directory [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl ServeArgs {
    fn load(&self) -> Result<Config, String> {
        let o = Overrides {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            memory: self.memory.then_some(true),
            admin_listen: self.admin_listen,
            log_format: self.log_format.as_deref().map(|f| {
                if f == "json" {
                    LogFormat::Json
                } else {
                    LogFormat::Pretty
                }
            }),
        };
        Config::load(self.config.as_deref(), &o).map_err(|e| format!("configuration error: {e}"))
    }
}

fn main() -> ExitCode {
    // Before any thread and any SQLite call (see the function).
    switchyard_wal_vfs::install_page_cache_at_start();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let result = match cli.command {
            Command::Serve(args) => return serve(args).await,
            Command::Config(args) => {
                return match args.load() {
                    Ok(c) => {
                        print!("{}", c.to_toml());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::from(2)
                    }
                }
            }
            Command::Backup(args) => return backup(args, cli.client.json),
            Command::Task(cmd) => switchyard::cli::run_task(&cli.client, cmd).await,
            Command::Schedule(c) => switchyard::cli::run_schedule(&cli.client, c).await,
            Command::Disconnect(a) => switchyard::cli::run_disconnect(&cli.client, a).await,
            Command::Metrics(a) => switchyard::cli::run_metrics(&cli.client, a).await,
            Command::Cluster(c) => switchyard::cli::run_cluster(&cli.client, c).await,
            Command::Queue(c) => switchyard::cli::run_queue(&cli.client, c).await,
            Command::Flow(c) => switchyard::cli::run_flow(&cli.client, c).await,
            Command::Keys(c) => switchyard::cli::run_keys(&cli.client, c).await,
            Command::Audit(a) => switchyard::cli::run_audit(&cli.client, a).await,
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => e.report(),
        }
    })
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match switchyard::telemetry::init(&config.log, &config.otel) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.listen, cause = %e, "cannot listen");
            telemetry.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    let admin = match admin_listener(&config).await {
        Ok(l) => l,
        Err(code) => {
            telemetry.shutdown().await;
            return code;
        }
    };
    let listeners = switchyard::Listeners {
        grpc: listener,
        admin,
    };
    let code = match switchyard::run_with(listeners, config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(cause = %e, "server failed");
            ExitCode::FAILURE
        }
    };
    // Telemetry flushes last, once the server has stopped.
    telemetry.shutdown().await;
    code
}

/// `switchyard backup`: the same configuration layers as `serve` (file,
/// `SWITCHYARD_*`, flags) say where the store is.
fn backup(args: BackupArgs, json: bool) -> ExitCode {
    use switchyard::server::BackupFailed;
    use switchyard::store::sqlite::BackupError;
    let serve = ServeArgs {
        config: args.config,
        listen: None,
        data_dir: args.data_dir,
        memory: false,
        log_format: None,
        admin_listen: None,
    };
    let config = match serve.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match switchyard::server::backup(&config, &args.file, args.force) {
        Ok(copies) => {
            for c in copies {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "file": c.path,
                            "bytes": c.bytes,
                            "tasks": c.tasks,
                            "seconds": c.took.as_secs_f64(),
                        })
                    );
                } else {
                    let tasks = match c.tasks {
                        Some(n) => format!(", {n} tasks"),
                        None => String::new(),
                    };
                    println!(
                        "{}: {} bytes{tasks}, in {:.3} s",
                        c.path.display(),
                        c.bytes,
                        c.took.as_secs_f64()
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("backup: {e}");
            match e {
                BackupFailed::Postgres { .. }
                | BackupFailed::Memory
                | BackupFailed::Sqlite(BackupError::Exists(_)) => ExitCode::from(2),
                BackupFailed::Sqlite(_) => ExitCode::FAILURE,
            }
        }
    }
}

/// The admin server's listener, if enabled. The default address, when
/// taken (another server on this machine), is skipped with a warning; an
/// address set by the file, the environment or a flag must be bound.
async fn admin_listener(config: &Config) -> Result<Option<tokio::net::TcpListener>, ExitCode> {
    if !config.admin.enabled {
        return Ok(None);
    }
    let addr = config.admin.listen;
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e)
            if e.kind() == std::io::ErrorKind::AddrInUse
                && addr == switchyard::admin::AdminConfig::default().listen =>
        {
            tracing::warn!(
                admin_listen = %addr,
                "the default admin address is in use: no admin server, metrics or dashboard \
                 (set admin.listen, SWITCHYARD_ADMIN__LISTEN or --admin-listen)"
            );
            Ok(None)
        }
        Err(e) => {
            tracing::error!(admin_listen = %addr, cause = %e, "cannot listen");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    signal().await;
    tokio::spawn(async {
        signal().await;
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
