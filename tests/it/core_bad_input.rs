//! Bad input: every RPC refuses what it cannot take with INVALID_ARGUMENT and
//! `google.rpc.BadRequest` details naming the field, unknown ids get
//! NOT_FOUND, and none of it hurts the server or its store.

use std::time::Duration;

use serde_json::json;
use switchyard::pb;
use switchyard::pb::schedule_task_request::Target;

use crate::common::*;

const MAX_PAYLOAD: usize = 1024;

fn neg(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

fn days(n: u64) -> Option<prost_types::Duration> {
    Some(dur(Duration::from_secs(n * 86_400)))
}

/// Each case: a name, the request, and the field its violation must name.
fn bad_schedule_requests() -> Vec<(&'static str, pb::ScheduleTaskRequest, &'static str)> {
    let ok = || simple("valid-name", json!({ "a": 1 }));
    let with = |o: pb::TaskOptions| pb::ScheduleTaskRequest {
        options: Some(o),
        ..ok()
    };
    let big = "x".repeat(MAX_PAYLOAD + 1);
    vec![
        (
            "empty name",
            pb::ScheduleTaskRequest {
                name: String::new(),
                ..ok()
            },
            "name",
        ),
        (
            "oversized name",
            pb::ScheduleTaskRequest {
                name: "n".repeat(201),
                ..ok()
            },
            "name",
        ),
        (
            "name with a space",
            pb::ScheduleTaskRequest {
                name: "send email".into(),
                ..ok()
            },
            "name",
        ),
        (
            "name with a bang",
            pb::ScheduleTaskRequest {
                name: "boom!".into(),
                ..ok()
            },
            "name",
        ),
        (
            "name with a newline",
            pb::ScheduleTaskRequest {
                name: "a\nb".into(),
                ..ok()
            },
            "name",
        ),
        (
            "name not ascii",
            pb::ScheduleTaskRequest {
                name: "tâche".into(),
                ..ok()
            },
            "name",
        ),
        (
            "unspecified task type",
            pb::ScheduleTaskRequest {
                task_type: 0,
                ..ok()
            },
            "task_type",
        ),
        (
            "unknown task type",
            pb::ScheduleTaskRequest {
                task_type: 99,
                ..ok()
            },
            "task_type",
        ),
        (
            "SIMPLE with a COMPLEX target",
            pb::ScheduleTaskRequest {
                target: Some(Target::Complex(pb::ComplexTarget {
                    workflow_type: "wf".into(),
                    ..Default::default()
                })),
                ..ok()
            },
            "complex",
        ),
        (
            "SIMPLE with an INTEGRATION target",
            pb::ScheduleTaskRequest {
                target: Some(Target::Integration(pb::IntegrationTarget {
                    n8n: Some(pb::N8nTarget {
                        webhook_url: "http://127.0.0.1:9/hook".into(),
                        ..Default::default()
                    }),
                })),
                ..ok()
            },
            "integration",
        ),
        (
            "COMPLEX without a target",
            pb::ScheduleTaskRequest {
                task_type: pb::TaskType::Complex as i32,
                ..ok()
            },
            "complex",
        ),
        (
            "COMPLEX with a SIMPLE target",
            pb::ScheduleTaskRequest {
                task_type: pb::TaskType::Complex as i32,
                target: Some(Target::Simple(pb::SimpleTarget { queue: "q".into() })),
                ..ok()
            },
            "simple",
        ),
        (
            "INTEGRATION without a target",
            pb::ScheduleTaskRequest {
                task_type: pb::TaskType::Integration as i32,
                ..ok()
            },
            "integration",
        ),
        (
            "INTEGRATION with neither url nor workflow",
            pb::ScheduleTaskRequest {
                task_type: pb::TaskType::Integration as i32,
                target: Some(Target::Integration(pb::IntegrationTarget { n8n: None })),
                ..ok()
            },
            "integration.n8n",
        ),
        (
            "INTEGRATION with a non-http url",
            pb::ScheduleTaskRequest {
                task_type: pb::TaskType::Integration as i32,
                target: Some(Target::Integration(pb::IntegrationTarget {
                    n8n: Some(pb::N8nTarget {
                        webhook_url: "ftp://example.invalid/x".into(),
                        ..Default::default()
                    }),
                })),
                ..ok()
            },
            "integration.n8n.webhook_url",
        ),
        (
            "bad queue name",
            pb::ScheduleTaskRequest {
                target: Some(Target::Simple(pb::SimpleTarget {
                    queue: "bad queue".into(),
                })),
                ..ok()
            },
            "simple.queue",
        ),
        (
            "absurd attempts",
            with(pb::TaskOptions {
                attempts: 1000,
                ..Default::default()
            }),
            "options.attempts",
        ),
        (
            "attempts at u32::MAX",
            with(pb::TaskOptions {
                attempts: u32::MAX,
                ..Default::default()
            }),
            "options.attempts",
        ),
        (
            "priority too high",
            with(pb::TaskOptions {
                priority: 1001,
                ..Default::default()
            }),
            "options.priority",
        ),
        (
            "priority too low",
            with(pb::TaskOptions {
                priority: -5000,
                ..Default::default()
            }),
            "options.priority",
        ),
        (
            "negative delay",
            with(pb::TaskOptions {
                delay: neg(-1),
                ..Default::default()
            }),
            "options.delay",
        ),
        (
            "negative delay nanos",
            with(pb::TaskOptions {
                delay: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: -5,
                }),
                ..Default::default()
            }),
            "options.delay",
        ),
        (
            "absurd delay",
            with(pb::TaskOptions {
                delay: days(366),
                ..Default::default()
            }),
            "options.delay",
        ),
        (
            "delay of i64::MAX seconds",
            with(pb::TaskOptions {
                delay: neg(i64::MAX),
                ..Default::default()
            }),
            "options.delay",
        ),
        (
            "negative timeout",
            with(pb::TaskOptions {
                execution_timeout: neg(-30),
                ..Default::default()
            }),
            "options.execution_timeout",
        ),
        (
            "absurd timeout",
            with(pb::TaskOptions {
                execution_timeout: days(8),
                ..Default::default()
            }),
            "options.execution_timeout",
        ),
        (
            "negative retention",
            with(pb::TaskOptions {
                retention: Some(pb::Retention {
                    completed: neg(-1),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            "options.retention.completed",
        ),
        (
            "retention over ten years",
            with(pb::TaskOptions {
                retention: Some(pb::Retention {
                    failed: days(3651),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            "options.retention.failed",
        ),
        (
            "retention nanos out of range",
            with(pb::TaskOptions {
                retention: Some(pb::Retention {
                    cancelled: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 1_000_000_000,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            "options.retention.cancelled",
        ),
        (
            "negative backoff",
            with(pb::TaskOptions {
                backoff: Some(pb::Backoff {
                    kind: 1,
                    base: neg(-1),
                    max: None,
                }),
                ..Default::default()
            }),
            "options.backoff.base",
        ),
        (
            "absurd backoff base",
            with(pb::TaskOptions {
                backoff: Some(pb::Backoff {
                    kind: 2,
                    base: days(2),
                    max: None,
                }),
                ..Default::default()
            }),
            "options.backoff.base",
        ),
        (
            "absurd backoff max",
            with(pb::TaskOptions {
                backoff: Some(pb::Backoff {
                    kind: 2,
                    base: None,
                    max: days(8),
                }),
                ..Default::default()
            }),
            "options.backoff.max",
        ),
        (
            "unknown backoff kind",
            with(pb::TaskOptions {
                backoff: Some(pb::Backoff {
                    kind: 42,
                    base: None,
                    max: None,
                }),
                ..Default::default()
            }),
            "options.backoff.kind",
        ),
        (
            "oversized user id",
            with(pb::TaskOptions {
                user_id: "u".repeat(257),
                ..Default::default()
            }),
            "options.user_id",
        ),
        (
            "oversized session id",
            with(pb::TaskOptions {
                session_id: "s".repeat(257),
                ..Default::default()
            }),
            "options.session_id",
        ),
        (
            "oversized idempotency key",
            with(pb::TaskOptions {
                idempotency_key: "k".repeat(257),
                ..Default::default()
            }),
            "options.idempotency_key",
        ),
        (
            "too many labels",
            with(pb::TaskOptions {
                labels: (0..65)
                    .map(|i| (format!("k{i}"), "v".to_string()))
                    .collect(),
                ..Default::default()
            }),
            "options.labels",
        ),
        (
            "oversized label value",
            with(pb::TaskOptions {
                labels: [("k".to_string(), "v".repeat(1025))].into(),
                ..Default::default()
            }),
            "options.labels",
        ),
        (
            "bad cleanup name",
            with(pb::TaskOptions {
                cleanup: Some(pb::CleanupTask { name: "".into() }),
                ..Default::default()
            }),
            "options.cleanup.name",
        ),
        (
            "payload over the limit",
            pb::ScheduleTaskRequest {
                payload: Some(payload(json!({ "blob": big }))),
                ..ok()
            },
            "payload",
        ),
        (
            "payload with a NaN",
            pb::ScheduleTaskRequest {
                payload: Some(prost_types::Struct {
                    fields: [(
                        "x".to_string(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)),
                        },
                    )]
                    .into(),
                }),
                ..ok()
            },
            "payload",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_schedule_request_is_refused_with_the_field_named_and_nothing_is_stored() {
    let server = TestServer::start_with(|c| c.limits.max_payload_bytes = MAX_PAYLOAD).await;
    let mut client = server.client().await;
    let before = schedule(&mut client, simple("valid-name", json!({ "a": 1 }))).await;

    for (case, req, field) in bad_schedule_requests() {
        let r = client.schedule_task(req).await;
        assert_invalid(case, r, field);
    }
    // The same requests as the items of one ScheduleTasks: each item is
    // refused on its own, naming the same field.
    let cases = bad_schedule_requests();
    let results = client
        .schedule_tasks(pb::ScheduleTasksRequest {
            tasks: cases.iter().map(|c| c.1.clone()).collect(),
        })
        .await
        .expect("ScheduleTasks answers item by item")
        .into_inner()
        .results;
    assert_eq!(results.len(), cases.len());
    for ((case, _, field), r) in cases.iter().zip(&results) {
        let Some(pb::schedule_tasks_result::Outcome::Error(e)) = &r.outcome else {
            panic!("{case}: accepted in a bulk: {r:?}");
        };
        assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{case}: {e:?}");
        assert!(
            e.violations.iter().any(|v| v.field == *field),
            "{case}: expected {field:?} in a bulk, got {e:?}"
        );
    }
    // 1,001 items: refused whole, naming `tasks`.
    let r = client
        .schedule_tasks(pb::ScheduleTasksRequest {
            tasks: vec![simple("valid-name", json!({})); 1001],
        })
        .await;
    assert_invalid("1,001 items", r, "tasks");
    // Several faults at once: each is named.
    let r = client
        .schedule_task(pb::ScheduleTaskRequest {
            name: String::new(),
            task_type: 0,
            payload: None,
            options: Some(pb::TaskOptions {
                attempts: 500,
                delay: neg(-1),
                ..Default::default()
            }),
            target: None,
        })
        .await;
    let e = r.expect_err("refused");
    let fields = violations(&e);
    for f in ["name", "task_type", "options.attempts", "options.delay"] {
        assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
    }
    // A payload just under the limit is fine.
    let fits = "x".repeat(MAX_PAYLOAD - 20);
    let fine = schedule(&mut client, simple("valid-name", json!({ "b": fits }))).await;

    // The server still serves, and the store holds only the two good tasks.
    let all = client
        .list_tasks(pb::ListTasksRequest {
            filter: None,
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("ListTasks")
        .into_inner()
        .tasks;
    let mut listed: Vec<String> = all.iter().map(|t| t.id.clone()).collect();
    listed.sort();
    let mut want = vec![before.clone(), fine.clone()];
    want.sort();
    assert_eq!(listed, want, "refused requests leave nothing behind");
    let m = client
        .get_metrics(pb::GetMetricsRequest {})
        .await
        .expect("GetMetrics")
        .into_inner();
    assert_eq!(m.total.map(|t| t.pending), Some(2));
    let full = client
        .get_task_status(pb::GetTaskStatusRequest { task_id: before })
        .await
        .expect("GetTaskStatus")
        .into_inner();
    assert_eq!(
        full.payload.as_ref().map(struct_json),
        Some(json!({ "a": 1 }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_not_found_and_malformed_ids_are_invalid_arguments() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let unknown = uuid::Uuid::now_v7().to_string();

    let e = client
        .get_task_status(pb::GetTaskStatusRequest {
            task_id: unknown.clone(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = client
        .cancel_task(pb::CancelTaskRequest {
            task_id: unknown.clone(),
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = client
        .get_task_logs(pb::GetTaskLogsRequest {
            task_id: unknown.clone(),
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    for bad in [
        "",
        "not-a-uuid",
        "01234567-89ab-cdef-0123-456789abcdeX",
        "'; DROP TABLE tasks; --",
    ] {
        let case = format!("GetTaskStatus {bad:?}");
        assert_invalid(
            &case,
            client
                .get_task_status(pb::GetTaskStatusRequest {
                    task_id: bad.into(),
                })
                .await,
            "task_id",
        );
        let case = format!("CancelTask {bad:?}");
        assert_invalid(
            &case,
            client
                .cancel_task(pb::CancelTaskRequest {
                    task_id: bad.into(),
                    ..Default::default()
                })
                .await,
            "task_id",
        );
        let case = format!("GetTaskLogs {bad:?}");
        assert_invalid(
            &case,
            client
                .get_task_logs(pb::GetTaskLogsRequest {
                    task_id: bad.into(),
                    ..Default::default()
                })
                .await,
            "task_id",
        );
    }
    let id = schedule(&mut client, simple("kept", json!({}))).await;
    assert_eq!(status(&mut client, &id).await.name, "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_list_watch_log_and_cancel_requests_are_invalid_arguments() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = schedule(&mut client, simple("kept", json!({}))).await;

    assert_invalid(
        "page size over 1000",
        client
            .list_tasks(pb::ListTasksRequest {
                page_size: 1001,
                ..Default::default()
            })
            .await,
        "page_size",
    );
    assert_invalid(
        "garbage page token",
        client
            .list_tasks(pb::ListTasksRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        "page_token",
    );
    let bad_filter = || pb::TaskFilter {
        task_ids: vec!["nope".into()],
        ..Default::default()
    };
    assert_invalid(
        "list filter with a bad id",
        client
            .list_tasks(pb::ListTasksRequest {
                filter: Some(bad_filter()),
                ..Default::default()
            })
            .await,
        "filter.task_ids[0]",
    );
    assert_invalid(
        "list filter with an unknown state",
        client
            .list_tasks(pb::ListTasksRequest {
                filter: Some(pb::TaskFilter {
                    states: vec![77],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        "filter.states[0]",
    );
    assert_invalid(
        "watch filter with a bad id",
        client
            .watch_tasks(pb::WatchTasksRequest {
                filter: Some(bad_filter()),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "filter.task_ids[0]",
    );
    assert_invalid(
        "watch filter with an unknown type",
        client
            .watch_tasks(pb::WatchTasksRequest {
                filter: Some(pb::TaskFilter {
                    task_types: vec![0],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "filter.task_types[0]",
    );
    assert_invalid(
        "log limit over 5000",
        client
            .get_task_logs(pb::GetTaskLogsRequest {
                task_id: id.clone(),
                after_line: 0,
                limit: 5001,
            })
            .await,
        "limit",
    );
    assert_invalid(
        "oversized cancel reason",
        client
            .cancel_task(pb::CancelTaskRequest {
                task_id: id.clone(),
                reason: "r".repeat(1025),
                force: false,
            })
            .await,
        "reason",
    );
    // None of it touched the task.
    assert_eq!(
        status(&mut client, &id).await.state,
        pb::TaskState::Pending as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_transport_limit_is_refused_and_the_server_keeps_serving() {
    let server = TestServer::start_with(|c| c.limits.max_payload_bytes = MAX_PAYLOAD).await;
    let mut client = server.client().await;
    // 8 MiB: over the gRPC message limit (4 MiB at this payload limit).
    let huge = "x".repeat(8 << 20);
    let r = client
        .schedule_task(simple("valid-name", json!({ "blob": huge })))
        .await;
    let e = r.expect_err("refused");
    assert!(
        matches!(
            e.code(),
            tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument | tonic::Code::OutOfRange
        ),
        "{e:?}"
    );
    let mut client = server.client().await;
    let id = schedule(&mut client, simple("valid-name", json!({}))).await;
    assert_eq!(
        status(&mut client, &id).await.state,
        pb::TaskState::Pending as i32
    );
}
