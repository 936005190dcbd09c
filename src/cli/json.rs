//! The `--json` form of what the CLI prints: Switchyard's one JSON dialect
//! ([`crate::pb::dialect`]), the admin HTTP API's too, so `switchyard task
//! status --json` and `GET …/tasks/{id}` write the same document for the
//! same task: camelCase field names, lower-case enum words (`pending`,
//! `simple`, `embedded`), numbers as JSON numbers, RFC 3339 timestamps,
//! durations as `…Ms` milliseconds, every field written (`null` for an
//! unset message). A `google.protobuf.Value` is in its display form: a NaN
//! or infinite number prints as `null` (the CLI shows what the server sent;
//! it never fails to print it). The enum words of the tables come from the
//! same place. Private to the CLI.
pub(crate) use crate::pb::dialect::{duration_ms, to_json};
pub(crate) use crate::pb::json::{
    struct_to_display_json as struct_to_json, value_to_display_json as value_to_json,
};

macro_rules! enum_names {
    ($($(#[$doc:meta])* $fn:ident: $full:literal;)*) => {$(
        $(#[$doc])*
        pub(crate) fn $fn(value: i32) -> String {
            crate::pb::dialect::enum_word_of($full, value)
        }
    )*};
}

enum_names! {
    /// `simple`, `complex`, `integration`.
    task_type_name: "switchyard.v1.TaskType";
    /// `embedded`, `bullmq`, `temporal`, `n8n`.
    task_source_name: "switchyard.v1.TaskSource";
    /// `pending`, `running`, `completed`, ...
    task_state_name: "switchyard.v1.TaskState";
    /// `queued`, `no_worker`, `delayed`, ...
    waiting_reason_name: "switchyard.v1.WaitingReason";
    /// `cancelled`, `cancel_requested`, `already_finished`.
    cancel_outcome_name: "switchyard.v1.CancelOutcome";
    /// `scheduled`, `started`, `progress`, ...
    event_kind_name: "switchyard.v1.TaskEventKind";
    /// `system`, `worker`, `engine`.
    log_source_name: "switchyard.v1.LogSource";
    /// `pending`, `running`, `completed`, ..., `compensation_failed`.
    step_state_name: "switchyard.v1.StepState";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use prost_types::Timestamp;
    use serde_json::{json, Value as Json};

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
        assert_eq!(
            step_state_name(pb::StepState::CompensationFailed as i32),
            "compensation_failed"
        );
        assert_eq!(task_state_name(0), "unspecified");
        assert_eq!(task_state_name(99), "unknown(99)");
    }

    #[test]
    fn task_status_is_the_dialect() {
        let status = pb::TaskStatus {
            id: "0190".into(),
            name: "send-email".into(),
            task_type: pb::TaskType::Simple as i32,
            source: pb::TaskSource::Bullmq as i32,
            state: pb::TaskState::Failed as i32,
            attempt: 2,
            max_attempts: 3,
            priority: -5,
            sequence: 12,
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
        let j = to_json(&status);
        assert_eq!(j["taskType"], "simple");
        assert_eq!(j["source"], "bullmq");
        assert_eq!(j["state"], "failed");
        assert_eq!(j["priority"], -5);
        assert_eq!(j["maxAttempts"], 3);
        assert_eq!(j["sequence"], 12);
        assert_eq!(j["createdAt"], "2023-11-14T22:13:20.123Z");
        assert_eq!(j["startedAt"], Json::Null);
        assert_eq!(j["result"], json!({"ok": 1}));
        assert_eq!(j["lastError"]["kind"], "TimeoutError");
        assert_eq!(j["labels"], json!({"team": "mail"}));
        assert_eq!(j["waitingReason"], "unspecified");
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
        let j = to_json(&status);
        assert_eq!(j["workflowVersion"], 2);
        assert_eq!(j["steps"][0]["state"], "compensation_failed");
        assert_eq!(j["steps"][0]["dependsOn"], json!(["reserve"]));
        assert_eq!(j["steps"][0]["output"], "ok");
        assert_eq!(j["steps"][0]["error"], Json::Null);
    }

    #[test]
    fn watch_items_are_tagged_by_their_oneof_name() {
        use pb::watch_tasks_response::Item;
        let gap = pb::WatchTasksResponse {
            item: Some(Item::Gap(pb::WatchGap { oldest_kept: 42 })),
        };
        assert_eq!(to_json(&gap), json!({"gap": {"oldestKept": 42}}));
        let live = pb::WatchTasksResponse {
            item: Some(Item::Live(pb::WatchLive { sequence: 7 })),
        };
        assert_eq!(to_json(&live), json!({"live": {"sequence": 7}}));
        let event = pb::WatchTasksResponse {
            item: Some(Item::Event(pb::TaskEvent {
                sequence: 9,
                kind: pb::TaskEventKind::Progress as i32,
                time: None,
                status: Some(pb::TaskStatus::default()),
            })),
        };
        let j = to_json(&event);
        assert_eq!(j["event"]["kind"], "progress");
        assert_eq!(j["event"]["sequence"], 9);
    }
}
