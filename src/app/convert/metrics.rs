//! The core's metrics snapshot as a `GetMetricsResponse`. It reads the
//! snapshot only: it must not compute metrics of its own.

use crate::core::metrics::{StateArray, Summary};
use crate::core::MetricsSnapshot;
use crate::pb;

use super::ts;

fn state_counts(a: &StateArray) -> pb::StateCounts {
    pb::StateCounts {
        pending: a[0],
        running: a[1],
        completed: a[2],
        failed: a[3],
        cancelled: a[4],
        compensating: a[5],
        compensated: a[6],
    }
}

fn latency(s: &Summary) -> pb::LatencySummary {
    pb::LatencySummary {
        count: s.count,
        p50_ms: s.p50,
        p90_ms: s.p90,
        p99_ms: s.p99,
        p999_ms: s.p999,
        max_ms: s.max,
    }
}

/// Metrics for the API.
pub fn metrics(m: &MetricsSnapshot) -> pb::GetMetricsResponse {
    pb::GetMetricsResponse {
        total: Some(state_counts(&m.counts.total())),
        by_type: m
            .counts
            .by_type
            .iter()
            .map(|(t, a)| (t.as_str().to_string(), state_counts(a)))
            .collect(),
        by_name: m
            .counts
            .by_name
            .iter()
            .map(|(n, a)| (n.clone(), state_counts(a)))
            .collect(),
        queues: m
            .queues
            .iter()
            .map(|q| pb::QueueMetrics {
                name: q.name.clone(),
                ready: q.ready,
                scheduled: q.scheduled,
                running: q.running,
                workers: q.workers,
                free_slots: q.free_slots,
            })
            .collect(),
        throughput_per_sec: m.throughput,
        schedule_to_start: Some(latency(&m.schedule_to_start)),
        run_time: Some(latency(&m.run_time)),
        workers_connected: m.workers_connected,
        started_at: Some(ts(m.started_at)),
        last_sequence: m.last_seq,
        queue_flow: m
            .flow
            .iter()
            .map(|q| pb::QueueFlowMetrics {
                name: q.name.clone(),
                top_keys: q
                    .top_keys
                    .iter()
                    .map(|k| pb::KeyPendingMetrics {
                        key: k.key.clone(),
                        pending: k.pending,
                        running: k.running,
                    })
                    .collect(),
                held_concurrency_limit: q.held_limit,
                held_queue_paused: q.held_paused,
                held_rate_limited: q.held_rate,
                rate_limits: q
                    .rate_limits
                    .iter()
                    .map(|r| pb::QueueRateTokens {
                        pattern: r.pattern.clone(),
                        tokens: r.tokens,
                        rate: r.rate as i32,
                        interval: Some(super::task::pb_duration(r.interval)),
                        burst: r.burst as i32,
                        per_key: r.per_key,
                    })
                    .collect(),
            })
            .collect(),
        held: m
            .held
            .iter()
            .map(|(rule, n)| (rule.to_string(), *n))
            .collect(),
    }
}
