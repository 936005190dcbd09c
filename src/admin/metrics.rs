//! Prometheus metrics of one server instance: a `prometheus-client` registry
//! owned by the server (never a process-global recorder, so several servers
//! in one process keep their numbers apart), served as text at `/metrics`.
//!
//! Three sources feed it:
//! - at scrape time, the core's own figures ([`Core::metrics`]): tasks by
//!   state, type, name and source, queue depths, workers, the outbox backlog
//!   of each external engine;
//! - committed task events, followed like a `WatchTasks` client
//!   ([`Metrics::follow`]): schedule-to-start and run-time histograms per
//!   type, finished tasks per type and state;
//! - hooks in code the core does not see ([`MetricsSink`]): the store
//!   writer's commit latency and batch size, webhook response codes.
//!
//! This module only reads: it never changes a task.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::core::{Core, EngineKind};
use crate::domain::{EventKind, Source, TaskEvent, TaskState, TaskType};
use crate::telemetry::MetricsSink;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The states in the order of the core's counts.
const STATES: [TaskState; 7] = TaskState::ALL;

/// The label value of a task type.
pub fn type_name(t: TaskType) -> &'static str {
    match t {
        TaskType::Simple => "simple",
        TaskType::Complex => "complex",
        TaskType::Integration => "integration",
    }
}

/// The label value of an engine.
pub fn source_name(s: Source) -> &'static str {
    match s {
        Source::Unspecified => "unspecified",
        Source::Embedded => "embedded",
        Source::Bullmq => "bullmq",
        Source::Temporal => "temporal",
        Source::N8n => "n8n",
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 300.0, 1800.0,
    ])
}

/// The metrics of one server.
pub struct Metrics {
    registry: Registry,
    core: Arc<OnceLock<Core>>,
    schedule_to_start: HistogramFamily,
    run_time: HistogramFamily,
    finished: Family<Labels, Counter>,
    webhook_responses: Family<Labels, Counter>,
    commit_seconds: Histogram,
    commit_batch: Histogram,
    events_missed: Counter,
    quarantined: Counter,
    leader_term: Gauge,
    leader_changes: Counter,
    store_blocked: Gauge,
    lease_renew_seconds: Histogram,
}

impl Metrics {
    /// A registry with every metric; the core's figures appear once
    /// [`Metrics::attach`] has been called.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let core = Arc::new(OnceLock::new());
        let schedule_to_start: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let run_time: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let finished = Family::<Labels, Counter>::default();
        let webhook_responses = Family::<Labels, Counter>::default();
        let commit_seconds = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ]);
        let commit_batch = Histogram::new([
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
        ]);
        let events_missed = Counter::default();
        let quarantined = Counter::default();
        let leader_term = Gauge::default();
        let leader_changes = Counter::default();
        let store_blocked = Gauge::default();
        let lease_renew_seconds = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ]);
        registry.register(
            "switchyard_leader_term",
            "The lease term this replica leads under (PostgreSQL store; 0 on SQLite)",
            leader_term.clone(),
        );
        registry.register(
            "switchyard_store_cannot_commit",
            "1 while the store cannot commit (a full disk, failing writes, an unreachable database): its writes wait and are retried, new tasks are refused",
            store_blocked.clone(),
        );
        registry.register(
            "switchyard_leader_changes",
            "Times this replica became the leader (a takeover or a start)",
            leader_changes.clone(),
        );
        registry.register(
            "switchyard_lease_renew_seconds",
            "Latency of one renewal of the leader's lease (PostgreSQL store)",
            lease_renew_seconds.clone(),
        );
        registry.register(
            "switchyard_store_quarantined_rows",
            "Stored task rows set aside at start-up because they could not be read back (GetTaskStatus answers DATA_LOSS for them)",
            quarantined.clone(),
        );
        registry.register(
            "switchyard_schedule_to_start_seconds",
            "Time from when a task could start (created, or its delay or backoff over) to the start of an attempt, by task type",
            schedule_to_start.clone(),
        );
        registry.register(
            "switchyard_run_time_seconds",
            "Duration of attempts that ended (completed, failed, retrying or cancelled while running), by task type",
            run_time.clone(),
        );
        registry.register(
            "switchyard_tasks_finished",
            "Tasks that reached a final state since the server started, by type and state",
            finished.clone(),
        );
        registry.register(
            "switchyard_webhook_responses",
            "HTTP responses received by the webhook executor (INTEGRATION tasks), by status class and code",
            webhook_responses.clone(),
        );
        registry.register(
            "switchyard_store_commit_seconds",
            "Latency of one store group commit (transaction and fsync)",
            commit_seconds.clone(),
        );
        registry.register(
            "switchyard_store_commit_batch_size",
            "Writes committed in one store group commit",
            commit_batch.clone(),
        );
        registry.register(
            "switchyard_metrics_events_missed",
            "Task events the metrics follower skipped because it fell behind (histograms then undercount)",
            events_missed.clone(),
        );
        registry.register_collector(Box::new(CoreCollector { core: core.clone() }));
        // Every type's series exist from the start (at zero).
        for t in TaskType::ALL {
            let ty = vec![("type", type_name(t).to_string())];
            let _ = schedule_to_start.get_or_create(&ty);
            let _ = run_time.get_or_create(&ty);
            for s in STATES.iter().filter(|s| s.is_final()) {
                let _ = finished.get_or_create(&vec![
                    ("type", type_name(t).to_string()),
                    ("state", s.as_str().to_string()),
                ]);
            }
        }
        Arc::new(Metrics {
            registry,
            core,
            schedule_to_start,
            run_time,
            finished,
            webhook_responses,
            commit_seconds,
            commit_batch,
            events_missed,
            quarantined,
            leader_term,
            leader_changes,
            store_blocked,
            lease_renew_seconds,
        })
    }

    /// Makes the core's figures part of every scrape.
    pub fn attach(&self, core: Core) {
        let _ = self.core.set(core);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(cause = %e, "cannot encode metrics");
        }
        out
    }

    /// Records what one committed event tells.
    pub fn observe(&self, e: &TaskEvent) {
        let t = &e.task;
        let ty = || vec![("type", type_name(t.spec.task_type).to_string())];
        let secs = |from: i64, to: i64| (to - from).max(0) as f64 / 1e6;
        match e.kind {
            EventKind::Started => {
                if let Some(started) = t.rt.started_at {
                    self.schedule_to_start
                        .get_or_create(&ty())
                        .observe(secs(t.rt.run_at, started));
                }
            }
            EventKind::Completed
            | EventKind::Failed
            | EventKind::Retrying
            | EventKind::Cancelled => {
                if let Some(started) = t.rt.started_at {
                    let end = t.rt.finished_at.unwrap_or(e.time);
                    if e.kind != EventKind::Cancelled || t.rt.attempt > 0 {
                        self.run_time
                            .get_or_create(&ty())
                            .observe(secs(started, end));
                    }
                }
            }
            _ => {}
        }
        if t.rt.state.is_final() && e.kind != EventKind::Snapshot {
            self.finished
                .get_or_create(&vec![
                    ("type", type_name(t.spec.task_type).to_string()),
                    ("state", t.rt.state.as_str().to_string()),
                ])
                .inc();
        }
    }

    /// Follows committed events until `stop`: the histograms' source.
    /// Spawned by the admin server; policy on shutdown: abort (it only
    /// reads).
    pub async fn follow(self: Arc<Self>, core: Core, stop: CancellationToken) {
        let mut rx = core.events().subscribe(0).rx;
        loop {
            let next = tokio::select! {
                r = rx.recv() => r,
                _ = stop.cancelled() => return,
            };
            match next {
                Ok(e) => self.observe(&e),
                Err(RecvError::Lagged(n)) => {
                    self.events_missed.inc_by(n);
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl MetricsSink for Metrics {
    fn store_commit(&self, elapsed: Duration, ops: usize) {
        self.commit_seconds.observe(elapsed.as_secs_f64());
        self.commit_batch.observe(ops as f64);
    }

    fn store_quarantined(&self, rows: u64) {
        self.quarantined.inc_by(rows);
    }

    fn store_blocked(&self, blocked: bool) {
        self.store_blocked.set(i64::from(blocked));
    }

    fn leading(&self, term: i64) {
        self.leader_term.set(term);
        self.leader_changes.inc();
    }

    fn lease_renewed(&self, elapsed: Duration) {
        self.lease_renew_seconds.observe(elapsed.as_secs_f64());
    }

    fn webhook_response(&self, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.webhook_responses
            .get_or_create(&vec![
                ("class", class.to_string()),
                ("code", status.to_string()),
            ])
            .inc();
    }
}

/// Reads the core's figures at scrape time.
struct CoreCollector {
    core: Arc<OnceLock<Core>>,
}

impl std::fmt::Debug for CoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoreCollector")
    }
}

/// The engine whose queue key this is.
fn source_of_key(key: &str) -> Source {
    EngineKind::of_key(key).source()
}

fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        family.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

impl Collector for CoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(core) = self.core.get() else {
            return Ok(());
        };
        let m = core.metrics();
        let l = |pairs: &[(&'static str, &str)]| -> Labels {
            pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
        };

        let mut by_type = Vec::new();
        for t in TaskType::ALL {
            let counts = m.counts.by_type.get(&t).copied().unwrap_or_default();
            for (s, n) in STATES.iter().zip(counts) {
                by_type.push((
                    l(&[("type", type_name(t)), ("state", s.as_str())]),
                    n as f64,
                ));
            }
        }
        gauges(
            &mut encoder,
            "switchyard_tasks",
            "Tasks in the store by type and state (as GetMetrics counts them)",
            &by_type,
        )?;

        let mut by_name = Vec::new();
        let mut names: Vec<_> = m.counts.by_name.iter().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (name, counts) in names {
            for (s, n) in STATES.iter().zip(counts) {
                if *n > 0 {
                    by_name.push((l(&[("name", name), ("state", s.as_str())]), *n as f64));
                }
            }
        }
        gauges(
            &mut encoder,
            "switchyard_tasks_by_name",
            "Tasks by name and state (states with no task are left out)",
            &by_name,
        )?;

        // Active tasks by the engine that runs them, from the queues.
        let mut by_source: std::collections::BTreeMap<(&'static str, &'static str), u64> =
            Default::default();
        for s in [
            Source::Embedded,
            Source::Bullmq,
            Source::Temporal,
            Source::N8n,
        ] {
            by_source.insert((source_name(s), "pending"), 0);
            by_source.insert((source_name(s), "running"), 0);
        }
        for q in &m.queues {
            let s = source_name(source_of_key(&q.name));
            *by_source.entry((s, "pending")).or_default() += q.ready + q.scheduled;
            *by_source.entry((s, "running")).or_default() += q.running;
        }
        let rows: Vec<_> = by_source
            .iter()
            .map(|((s, st), n)| (l(&[("source", s), ("state", st)]), *n as f64))
            .collect();
        gauges(
            &mut encoder,
            "switchyard_tasks_active_by_source",
            "Active tasks by the engine that runs them (embedded, bullmq, temporal, n8n) and state (pending, running)",
            &rows,
        )?;

        let mut queues = m.queues.clone();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        let per_queue = |f: &dyn Fn(&crate::core::QueueInfo) -> f64| -> Vec<(Labels, f64)> {
            queues
                .iter()
                .map(|q| (l(&[("queue", &q.name)]), f(q)))
                .collect()
        };
        gauges(
            &mut encoder,
            "switchyard_queue_depth",
            "Tasks ready to run now, waiting for a worker slot, per queue (task name; # marks internal engine queues)",
            &per_queue(&|q| q.ready as f64),
        )?;
        gauges(
            &mut encoder,
            "switchyard_queue_scheduled",
            "Tasks waiting on a timer (delay or backoff) per queue",
            &per_queue(&|q| q.scheduled as f64),
        )?;
        gauges(
            &mut encoder,
            "switchyard_queue_running",
            "Tasks running per queue",
            &per_queue(&|q| q.running as f64),
        )?;
        gauges(
            &mut encoder,
            "switchyard_queue_workers",
            "Workers that take each queue",
            &per_queue(&|q| q.workers as f64),
        )?;
        gauges(
            &mut encoder,
            "switchyard_queue_free_slots",
            "Free worker slots per queue (not shown for an engine without a concurrency limit)",
            &queues
                .iter()
                .filter(|q| !q.unbounded)
                .map(|q| (l(&[("queue", &q.name)]), q.free_slots as f64))
                .collect::<Vec<_>>(),
        )?;

        let backlog: Vec<_> = [EngineKind::Bullmq, EngineKind::Temporal]
            .iter()
            .map(|engine| {
                let key = engine.key().unwrap_or_default();
                let engine = engine.name();
                let n = m
                    .queues
                    .iter()
                    .filter(|q| q.name == key)
                    .map(|q| q.ready + q.scheduled)
                    .sum::<u64>();
                (l(&[("engine", engine)]), n as f64)
            })
            .collect();
        gauges(
            &mut encoder,
            "switchyard_outbox_backlog",
            "Tasks routed to an external engine and not yet handed to it (waiting, or kept while the engine is unreachable)",
            &backlog,
        )?;
        gauges(
            &mut encoder,
            "switchyard_tasks_held",
            "Pending tasks held by a flow rule, per rule (concurrency_limit: their key runs its limit; queue_paused: their name or queue is paused; rate_limited: their rate limit had no token)",
            &m.held
                .iter()
                .map(|(rule, n)| (l(&[("rule", *rule)]), *n as f64))
                .collect::<Vec<_>>(),
        )?;
        let mut held_by_queue = Vec::new();
        let mut top_keys = Vec::new();
        for q in &m.flow {
            for (rule, n) in [
                ("concurrency_limit", q.held_limit),
                ("queue_paused", q.held_paused),
                ("rate_limited", q.held_rate),
            ] {
                held_by_queue.push((l(&[("queue", q.name.as_str()), ("rule", rule)]), n as f64));
            }
            for k in &q.top_keys {
                top_keys.push((
                    l(&[("queue", q.name.as_str()), ("key", k.key.as_str())]),
                    k.pending as f64,
                ));
            }
        }
        gauges(
            &mut encoder,
            "switchyard_queue_tasks_held",
            "Pending tasks held by a flow rule per queue and rule (the 100 queues with the most keyed or held tasks)",
            &held_by_queue,
        )?;
        gauges(
            &mut encoder,
            "switchyard_queue_key_pending",
            "Ready tasks of the concurrency keys with the most of them, per queue (at most 5 keys per queue)",
            &top_keys,
        )?;
        if !m.rate_tokens.is_empty() {
            gauges(
                &mut encoder,
                "switchyard_rate_limit_tokens",
                "Tokens in each rate limit's bucket, by its pattern (for a rate limit per key, the emptiest key's); one series per rate limit, at most 1,000",
                &m.rate_tokens
                    .iter()
                    .map(|(rule, n)| (l(&[("rule", rule.as_str())]), *n))
                    .collect::<Vec<_>>(),
            )?;
        }
        gauges(
            &mut encoder,
            "switchyard_workers_connected",
            "Remote workers connected",
            &[(Vec::new(), m.workers_connected as f64)],
        )?;
        gauges(
            &mut encoder,
            "switchyard_throughput_per_second",
            "Tasks finished per second, averaged over the last minute",
            &[(Vec::new(), m.throughput)],
        )?;
        gauges(
            &mut encoder,
            "switchyard_last_sequence",
            "Sequence number of the last committed task event",
            &[(Vec::new(), m.last_seq as f64)],
        )?;
        Ok(())
    }
}
