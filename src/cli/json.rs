//! The `--json` form of every message the CLI prints.
//!
//! The JSON form uses the proto field names (snake_case), enum values as their
//! proto names without the type prefix in lower case (`pending`, `simple`,
//! `embedded`), timestamps as RFC 3339 strings (null when unset), and includes
//! fields at their default value so scripts see a stable shape. A
//! `google.protobuf.Value` is converted by the client crate's `pb::json`, in
//! its display form: a NaN or infinite number prints as `null` (the CLI shows
//! what the server sent; it never fails to print it). Private to the CLI.
use prost_types::Timestamp;
use serde_json::{json, Value as Json};

use crate::pb;
pub(crate) use crate::pb::json::{
    struct_to_display_json as struct_to_json, value_to_display_json as value_to_json,
};

/// A timestamp as RFC 3339 (`2025-01-02T03:04:05.123Z`), or null.
pub(crate) fn timestamp_json(ts: Option<&Timestamp>) -> Json {
    ts.map_or(Json::Null, |ts| Json::String(ts.to_string()))
}

/// The proto name of an enum value without its prefix, in lower case.
fn short_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

macro_rules! enum_names {
    ($($(#[$doc:meta])* $fn:ident: $ty:ty => $prefix:literal;)*) => {$(
        $(#[$doc])*
        pub(crate) fn $fn(value: i32) -> String {
            match <$ty>::try_from(value) {
                Ok(v) => short_name(v.as_str_name(), $prefix),
                Err(_) => format!("unknown({value})"),
            }
        }
    )*};
}

enum_names! {
    /// `simple`, `complex`, `integration`.
    task_type_name: pb::TaskType => "TASK_TYPE_";
    /// `embedded`, `bullmq`, `temporal`, `n8n`.
    task_source_name: pb::TaskSource => "TASK_SOURCE_";
    /// `pending`, `running`, `completed`, ...
    task_state_name: pb::TaskState => "TASK_STATE_";
    /// `queued`, `no_worker`, `delayed`, ...
    waiting_reason_name: pb::WaitingReason => "WAITING_REASON_";
    /// `cancelled`, `cancel_requested`, `already_finished`.
    cancel_outcome_name: pb::CancelOutcome => "CANCEL_OUTCOME_";
    /// `scheduled`, `started`, `progress`, ...
    event_kind_name: pb::TaskEventKind => "TASK_EVENT_KIND_";
    /// `system`, `worker`, `engine`.
    log_source_name: pb::LogSource => "LOG_SOURCE_";
    /// `pending`, `running`, `completed`, ..., `compensation_failed`.
    step_state_name: pb::StepState => "STEP_STATE_";
}

fn labels_json(labels: &std::collections::HashMap<String, String>) -> Json {
    Json::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect(),
    )
}

/// A `TaskError`.
pub(crate) fn task_error(e: &pb::TaskError) -> Json {
    json!({
        "message": e.message,
        "kind": e.kind,
        "details": e.details,
        "retryable": e.retryable,
        "attempt": e.attempt,
    })
}

/// A workflow's `StepStatus`.
pub(crate) fn step_status(s: &pb::StepStatus) -> Json {
    json!({
        "id": s.id,
        "kind": s.kind,
        "state": step_state_name(s.state),
        "attempt": s.attempt,
        "output": s.output.as_ref().map_or(Json::Null, value_to_json),
        "error": s.error.as_ref().map_or(Json::Null, task_error),
        "started_at": timestamp_json(s.started_at.as_ref()),
        "finished_at": timestamp_json(s.finished_at.as_ref()),
        "task_id": s.task_id,
        "compensation_task_id": s.compensation_task_id,
        "depends_on": s.depends_on,
    })
}

/// A `TaskStatus`, every field.
pub(crate) fn task_status(s: &pb::TaskStatus) -> Json {
    json!({
        "id": s.id,
        "name": s.name,
        "task_type": task_type_name(s.task_type),
        "source": task_source_name(s.source),
        "state": task_state_name(s.state),
        "attempt": s.attempt,
        "max_attempts": s.max_attempts,
        "priority": s.priority,
        "immediate": s.immediate,
        "user_id": s.user_id,
        "session_id": s.session_id,
        "progress": s.progress,
        "progress_message": s.progress_message,
        "result": s.result.as_ref().map_or(Json::Null, value_to_json),
        "last_error": s.last_error.as_ref().map_or(Json::Null, task_error),
        "created_at": timestamp_json(s.created_at.as_ref()),
        "run_at": timestamp_json(s.run_at.as_ref()),
        "started_at": timestamp_json(s.started_at.as_ref()),
        "finished_at": timestamp_json(s.finished_at.as_ref()),
        "external_id": s.external_id,
        "waiting_reason": waiting_reason_name(s.waiting_reason),
        "cancel_requested": s.cancel_requested,
        "labels": labels_json(&s.labels),
        "worker_id": s.worker_id,
        "idempotency_key": s.idempotency_key,
        "target": s.target,
        "sequence": s.sequence,
        "steps": s.steps.iter().map(step_status).collect::<Vec<_>>(),
        "workflow_version": s.workflow_version,
        "parent_id": s.parent_id,
    })
}

fn opt_status(s: Option<&pb::TaskStatus>) -> Json {
    s.map_or(Json::Null, task_status)
}

/// A `ScheduleTaskResponse`.
pub(crate) fn schedule_response(r: &pb::ScheduleTaskResponse) -> Json {
    json!({
        "task_id": r.task_id,
        "existing": r.existing,
        "status": opt_status(r.status.as_ref()),
    })
}

/// A `GetTaskStatusResponse`.
pub(crate) fn status_response(r: &pb::GetTaskStatusResponse) -> Json {
    json!({
        "status": opt_status(r.status.as_ref()),
        "payload": r.payload.as_ref().map_or(Json::Null, struct_to_json),
    })
}

/// A `CancelTaskResponse`.
pub(crate) fn cancel_response(r: &pb::CancelTaskResponse) -> Json {
    json!({
        "outcome": cancel_outcome_name(r.outcome),
        "status": opt_status(r.status.as_ref()),
    })
}

/// A `TaskEvent`.
pub(crate) fn task_event(e: &pb::TaskEvent) -> Json {
    json!({
        "sequence": e.sequence,
        "kind": event_kind_name(e.kind),
        "time": timestamp_json(e.time.as_ref()),
        "status": opt_status(e.status.as_ref()),
    })
}

/// A `WatchTasksResponse`: `{"event": ...}`, `{"gap": ...}` or `{"live": ...}`.
pub(crate) fn watch_item(r: &pb::WatchTasksResponse) -> Json {
    use pb::watch_tasks_response::Item;
    match &r.item {
        Some(Item::Event(e)) => json!({ "event": task_event(e) }),
        Some(Item::Gap(g)) => json!({ "gap": { "oldest_kept": g.oldest_kept } }),
        Some(Item::Live(l)) => json!({ "live": { "sequence": l.sequence } }),
        None => json!({}),
    }
}

/// A `ListTasksResponse`.
pub(crate) fn list_response(r: &pb::ListTasksResponse) -> Json {
    json!({
        "tasks": r.tasks.iter().map(task_status).collect::<Vec<_>>(),
        "next_page_token": r.next_page_token,
    })
}

/// A `LogLine`.
pub(crate) fn log_line(l: &pb::LogLine) -> Json {
    json!({
        "line": l.line,
        "time": timestamp_json(l.time.as_ref()),
        "source": log_source_name(l.source),
        "level": l.level,
        "message": l.message,
        "attempt": l.attempt,
    })
}

/// A `DisconnectResponse`.
pub(crate) fn disconnect_response(r: &pb::DisconnectResponse) -> Json {
    json!({
        "receipts": r.receipts.iter().map(|x| json!({
            "task_id": x.task_id,
            "name": x.name,
            "outcome": cancel_outcome_name(x.outcome),
        })).collect::<Vec<_>>(),
    })
}

/// A `StateCounts`.
pub(crate) fn state_counts(c: &pb::StateCounts) -> Json {
    json!({
        "pending": c.pending,
        "running": c.running,
        "completed": c.completed,
        "failed": c.failed,
        "cancelled": c.cancelled,
        "compensating": c.compensating,
        "compensated": c.compensated,
    })
}

fn latency(l: Option<&pb::LatencySummary>) -> Json {
    l.map_or(Json::Null, |l| {
        json!({
            "count": l.count,
            "p50_ms": l.p50_ms,
            "p90_ms": l.p90_ms,
            "p99_ms": l.p99_ms,
            "p999_ms": l.p999_ms,
            "max_ms": l.max_ms,
        })
    })
}

fn counts_map(map: &std::collections::HashMap<String, pb::StateCounts>) -> Json {
    Json::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), state_counts(v)))
            .collect(),
    )
}

/// A protobuf duration in milliseconds (negative stays negative), for the
/// JSON and the table of `cluster status`.
pub(crate) fn duration_ms(d: &prost_types::Duration) -> f64 {
    d.seconds as f64 * 1000.0 + f64::from(d.nanos) / 1_000_000.0
}

fn millis(d: Option<&prost_types::Duration>) -> Json {
    d.map_or(Json::Null, |d| json!(duration_ms(d)))
}

/// `cluster status --json`.
pub(crate) fn cluster_status(c: &pb::GetClusterStatusResponse) -> Json {
    json!({
        "store": c.store,
        "replica_id": c.replica_id,
        "leases": c.leases.iter().map(|l| json!({
            "partition": l.partition,
            "term": l.term,
            "holder": l.holder,
            "address": l.address,
            "since_renewal_ms": millis(l.since_renewal.as_ref()),
            "expires_in_ms": millis(l.expires_in.as_ref()),
            "held_for_ms": millis(l.held_for.as_ref()),
        })).collect::<Vec<_>>(),
        "replicas": c.replicas.iter().map(|r| json!({
            "id": r.id,
            "address": r.address,
            "leader": r.leader,
            "since_seen_ms": millis(r.since_seen.as_ref()),
            "up_ms": millis(r.up.as_ref()),
        })).collect::<Vec<_>>(),
    })
}

/// A `GetMetricsResponse`.
pub(crate) fn metrics_response(m: &pb::GetMetricsResponse) -> Json {
    json!({
        "total": m.total.as_ref().map_or(Json::Null, state_counts),
        "by_type": counts_map(&m.by_type),
        "by_name": counts_map(&m.by_name),
        "queues": m.queues.iter().map(|q| json!({
            "name": q.name,
            "ready": q.ready,
            "scheduled": q.scheduled,
            "running": q.running,
            "workers": q.workers,
            "free_slots": q.free_slots,
        })).collect::<Vec<_>>(),
        "throughput_per_sec": m.throughput_per_sec,
        "schedule_to_start": latency(m.schedule_to_start.as_ref()),
        "run_time": latency(m.run_time.as_ref()),
        "workers_connected": m.workers_connected,
        "started_at": timestamp_json(m.started_at.as_ref()),
        "last_sequence": m.last_sequence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_round_trips_through_json() {
        let original = json!({
            "n": 3,
            "half": 0.5,
            "neg": -7,
            "s": "x",
            "b": true,
            "nil": null,
            "list": [1, "two", [3], {"four": 4}],
            "nested": {"deep": {"er": false}},
        });
        let Json::Object(map) = original.clone() else {
            unreachable!()
        };
        let s = pb::json::map_to_struct(&map);
        assert_eq!(struct_to_json(&s), original);
    }

    /// A protobuf number as the CLI prints it.
    fn number_to_json(n: f64) -> Json {
        value_to_json(&prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(n)),
        })
    }

    #[test]
    fn numbers_print_without_needless_fractions() {
        assert_eq!(number_to_json(3.0), json!(3));
        assert_eq!(number_to_json(-0.25), json!(-0.25));
        assert_eq!(number_to_json(1e300), json!(1e300));
        assert_eq!(number_to_json(f64::NAN), Json::Null);
        assert_eq!(number_to_json(f64::INFINITY), Json::Null);
    }

    #[test]
    fn enums_use_short_lower_case_names() {
        assert_eq!(task_state_name(pb::TaskState::Pending as i32), "pending");
        assert_eq!(
            task_type_name(pb::TaskType::Integration as i32),
            "integration"
        );
        assert_eq!(
            task_source_name(pb::TaskSource::Embedded as i32),
            "embedded"
        );
        assert_eq!(
            waiting_reason_name(pb::WaitingReason::NoWorker as i32),
            "no_worker"
        );
        assert_eq!(
            cancel_outcome_name(pb::CancelOutcome::CancelRequested as i32),
            "cancel_requested"
        );
        assert_eq!(task_state_name(0), "unspecified");
        assert_eq!(task_state_name(99), "unknown(99)");
    }

    #[test]
    fn task_status_uses_proto_field_names_and_rfc3339() {
        let status = pb::TaskStatus {
            id: "0190".into(),
            name: "send-email".into(),
            task_type: pb::TaskType::Simple as i32,
            source: pb::TaskSource::Bullmq as i32,
            state: pb::TaskState::Failed as i32,
            attempt: 2,
            max_attempts: 3,
            priority: -5,
            created_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000_000,
            }),
            result: Some(pb::json::json_to_value(&json!({"ok": 1}))),
            last_error: Some(pb::TaskError {
                message: "boom".into(),
                kind: "TimeoutError".into(),
                attempt: 2,
                retryable: true,
                ..Default::default()
            }),
            labels: [("team".to_string(), "mail".to_string())].into(),
            ..Default::default()
        };
        let j = task_status(&status);
        assert_eq!(j["task_type"], "simple");
        assert_eq!(j["source"], "bullmq");
        assert_eq!(j["state"], "failed");
        assert_eq!(j["priority"], -5);
        assert_eq!(j["max_attempts"], 3);
        assert_eq!(j["created_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(j["started_at"], Json::Null);
        assert_eq!(j["result"], json!({"ok": 1}));
        assert_eq!(j["last_error"]["kind"], "TimeoutError");
        assert_eq!(j["labels"], json!({"team": "mail"}));
        assert_eq!(j["waiting_reason"], "unspecified");
        assert_eq!(j["steps"], json!([]));
    }

    #[test]
    fn workflow_steps_are_included() {
        let status = pb::TaskStatus {
            workflow_version: 2,
            steps: vec![pb::StepStatus {
                id: "charge".into(),
                kind: "task".into(),
                state: pb::StepState::CompensationFailed as i32,
                depends_on: vec!["reserve".into()],
                output: Some(pb::json::json_to_value(&json!("ok"))),
                ..Default::default()
            }],
            ..Default::default()
        };
        let j = task_status(&status);
        assert_eq!(j["workflow_version"], 2);
        assert_eq!(j["steps"][0]["state"], "compensation_failed");
        assert_eq!(j["steps"][0]["depends_on"], json!(["reserve"]));
        assert_eq!(j["steps"][0]["output"], "ok");
        assert_eq!(j["steps"][0]["error"], Json::Null);
    }

    #[test]
    fn watch_items_are_tagged_by_their_oneof_name() {
        use pb::watch_tasks_response::Item;
        let gap = pb::WatchTasksResponse {
            item: Some(Item::Gap(pb::WatchGap { oldest_kept: 42 })),
        };
        assert_eq!(watch_item(&gap), json!({"gap": {"oldest_kept": 42}}));
        let live = pb::WatchTasksResponse {
            item: Some(Item::Live(pb::WatchLive { sequence: 7 })),
        };
        assert_eq!(watch_item(&live), json!({"live": {"sequence": 7}}));
        let event = pb::WatchTasksResponse {
            item: Some(Item::Event(pb::TaskEvent {
                sequence: 9,
                kind: pb::TaskEventKind::Progress as i32,
                time: None,
                status: Some(pb::TaskStatus::default()),
            })),
        };
        let j = watch_item(&event);
        assert_eq!(j["event"]["kind"], "progress");
        assert_eq!(j["event"]["sequence"], 9);
    }
}
