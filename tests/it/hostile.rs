//! Hostile input: what a client, a worker or an operator can send that once
//! hurt the server, and the kinds of case behind each. Every case asserts
//! the code, the field named, that the answer stays small, that the server
//! still serves, and (where the store was written) that SQLite's
//! `PRAGMA integrity_check` passes afterwards.
//!
//! Raw bytes go through [`RawCodec`], so nothing here depends on the
//! generated encoder being well-behaved.

use std::path::Path;
use std::time::Duration;

use bytes::{Buf, BufMut};
use prost::Message;
use rand::{Rng, SeedableRng};
use serde_json::json;
use switchyard::pb;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::common::*;

/// The largest gRPC answer (message and details) a refusal may take: far
/// below the 16 KiB of metadata standard clients accept.
const MAX_ANSWER: usize = 4096;

/// Sends and receives messages as bytes, unchanged.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let v = buf.chunk().to_vec();
        buf.advance(v.len());
        Ok(Some(v))
    }
}

const SCHEDULE: &str = "/switchyard.v1.OrchestratorService/ScheduleTask";
const WORK: &str = "/switchyard.v1.WorkerService/Work";

async fn raw_unary(ch: &Channel, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

/// The size of a refusal as a client receives it.
fn answer_size(s: &Status) -> usize {
    s.message().len() + s.details().len()
}

#[track_caller]
fn assert_small(case: &str, s: &Status) {
    assert!(
        answer_size(s) <= MAX_ANSWER,
        "{case}: the answer takes {} bytes ({:?}…)",
        answer_size(s),
        switchyard::domain::text::prefix(s.message(), 200)
    );
}

/// Asserts INVALID_ARGUMENT naming `field`, with a small answer.
#[track_caller]
fn refused<T: std::fmt::Debug>(case: &str, r: Result<T, Status>, field: &str) {
    if let Err(s) = &r {
        assert_small(case, s);
    }
    assert_invalid(case, r, field);
}

fn integrity_ok(data_dir: &Path) {
    store_integrity_ok(data_dir);
}

async fn still_serves(client: &mut Client) {
    let id = schedule(client, simple("still-serving", json!({"ok": true}))).await;
    status(client, &id).await;
    client
        .get_metrics(pb::GetMetricsRequest {})
        .await
        .expect("GetMetrics after the hostile input");
}

fn schedule_bytes() -> Vec<u8> {
    simple_with(
        "mutated",
        json!({"user": {"id": 7, "tags": ["a", "b"]}, "note": "hé"}),
        pb::TaskOptions {
            priority: 5,
            attempts: 3,
            user_id: "u-1".into(),
            idempotency_key: "k-1".into(),
            labels: [("team".to_string(), "x".to_string())].into(),
            ..Default::default()
        },
    )
    .encode_to_vec()
}

// ---------------------------------------------------------------------------
// Decoding.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn undecodable_requests_are_invalid_argument_never_internal() {
    let server = TestServer::start().await;
    let ch = channel(&server.url).await;
    // Invalid UTF-8 in `name` (field 1) and in a payload string.
    let mut bad_name = vec![0x0a, 0x03, b'a', 0xc3, 0x28];
    bad_name.extend(&schedule_bytes()[..0]);
    let mut bad_payload = schedule_bytes();
    let at = bad_payload
        .windows(3)
        .position(|w| w == b"h\xc3\xa9")
        .expect("the payload's string");
    bad_payload[at + 2] = 0x28; // é becomes an invalid sequence
    for (case, body) in [
        ("invalid UTF-8 in name", bad_name),
        ("invalid UTF-8 in a payload string", bad_payload),
        ("garbage", vec![0xff; 64]),
        ("a truncated field", vec![0x0a, 0x40, b'a']),
    ] {
        let e = raw_unary(&ch, SCHEDULE, body).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{case}: {e:?}");
        assert!(e.message().contains("decoded"), "{case}: {}", e.message());
        assert_small(case, &e);
    }
    // An RPC whose request has no field refuses garbage the same way.
    let e = raw_unary(
        &ch,
        "/switchyard.v1.OrchestratorService/GetClusterStatus",
        vec![0xff; 64],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "GetClusterStatus: {e:?}");
    assert_small("GetClusterStatus", &e);

    // Random mutations of a valid request: each is accepted or refused as
    // the client's fault, never INTERNAL, never a large answer.
    let valid = schedule_bytes();
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let (mut ok, mut invalid) = (0, 0);
    for i in 0..300 {
        let mut m = valid.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..m.len());
            match rng.random_range(0..4) {
                0 => m[at] = rng.random(),
                1 => m[at] ^= 1 << rng.random_range(0..8),
                2 => m.insert(at, rng.random()),
                _ => m.truncate(at.max(1)),
            }
        }
        match raw_unary(&ch, SCHEDULE, m.clone()).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(
                    matches!(
                        e.code(),
                        Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound
                    ),
                    "mutation {i} ({m:02x?}): {e:?}"
                );
                assert_small(&format!("mutation {i}"), &e);
                invalid += 1;
            }
        }
    }
    assert!(ok > 0 && invalid > 0, "{ok} accepted, {invalid} refused");
    let mut client = server.client().await;
    still_serves(&mut client).await;
    integrity_ok(server.data_dir());
}

#[tokio::test]
async fn garbage_as_a_workers_first_message_is_invalid_argument() {
    let server = TestServer::start().await;
    let ch = channel(&server.url).await;
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.expect("ready");
    let msgs = tokio_stream::iter(vec![vec![0xffu8; 32]]);
    let r = grpc
        .streaming(
            tonic::Request::new(msgs),
            http::uri::PathAndQuery::from_static(WORK),
            RawCodec,
        )
        .await;
    let e = match r {
        Err(e) => e,
        Ok(resp) => {
            let mut s = resp.into_inner();
            match s.next().await {
                Some(Err(e)) => e,
                other => panic!("expected an error, got {other:?}"),
            }
        }
    };
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_small("garbage first message", &e);
}

#[tokio::test]
async fn payloads_nest_sixty_four_levels_deep_and_no_deeper_than_the_limit() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let nested = |levels: usize| {
        let mut v = json!({"leaf": 1});
        for _ in 1..levels {
            v = json!({ "a": v });
        }
        v
    };
    let id = schedule(&mut client, simple("deep", nested(64))).await;
    let got = client
        .get_task_status(pb::GetTaskStatusRequest {
            task_id: id.clone(),
        })
        .await
        .expect("GetTaskStatus of a deep payload")
        .into_inner();
    assert_eq!(
        got.payload.map(|p| struct_json(&p)),
        Some(nested(64)),
        "the payload round-trips"
    );
    let e = client
        .schedule_task(simple("deep", nested(80)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("64 levels"), "{}", e.message());
    still_serves(&mut client).await;
}

#[tokio::test]
async fn an_oversized_request_is_resource_exhausted() {
    let server = TestServer::start().await;
    let ch = channel(&server.url).await;
    let mut big = vec![0x0a];
    let name = vec![b'a'; 8 << 20];
    prost::encoding::encode_varint(name.len() as u64, &mut big);
    big.extend(name);
    let e = raw_unary(&ch, SCHEDULE, big).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let mut client = server.client().await;
    still_serves(&mut client).await;
}

/// `ScheduleTasks`: the count is bounded (1,000), checked before any item
/// is parsed; each item is bounded as `ScheduleTask` is; the answer stays
/// small whatever the items hold; the message limit, undecodable bytes and
/// nesting are refused as for `ScheduleTask`, for the whole call.
#[tokio::test]
async fn a_bulk_is_bounded_in_count_size_and_answer() {
    const BULK: &str = "/switchyard.v1.OrchestratorService/ScheduleTasks";
    let server = TestServer::start().await;
    let ch = channel(&server.url).await;
    let mut client = server.client().await;
    let many = |n: usize| pb::ScheduleTasksRequest {
        tasks: vec![simple("hostile-bulk", json!({})); n],
    };
    refused(
        "1,001 items",
        client.schedule_tasks(many(1001)).await,
        "tasks",
    );
    // 100,000 empty items: refused by count before any is validated.
    let r = client
        .schedule_tasks(pb::ScheduleTasksRequest {
            tasks: vec![pb::ScheduleTaskRequest::default(); 100_000],
        })
        .await;
    refused("100,000 items", r, "tasks");

    // 1,000 items with every field wrong: the answer is one short result
    // each, far below the message limit.
    let bad = pb::ScheduleTaskRequest {
        name: "n".repeat(1000),
        payload: None,
        task_type: 99,
        options: Some(pb::TaskOptions {
            priority: 5000,
            attempts: 1000,
            user_id: "u".repeat(300),
            session_id: "s".repeat(300),
            idempotency_key: "k".repeat(300),
            ..Default::default()
        }),
        target: None,
    };
    let req = pb::ScheduleTasksRequest {
        tasks: vec![bad; 1000],
    };
    let asked = req.encoded_len();
    let answer = client
        .schedule_tasks(req)
        .await
        .expect("a bulk of bad items is answered item by item")
        .into_inner();
    assert_eq!(answer.results.len(), 1000);
    for r in &answer.results {
        let Some(pb::schedule_tasks_result::Outcome::Error(e)) = &r.outcome else {
            panic!("accepted: {r:?}");
        };
        assert_eq!(e.code, Code::InvalidArgument as i32);
        assert_eq!(e.field, "name");
        assert_eq!(e.violations.len(), 4, "at most 4 violations: {e:?}");
        assert!(e.message.len() <= 256, "{}", e.message);
        assert!(e.message.contains("violations in all"), "{}", e.message);
    }
    let size = answer.encoded_len();
    assert!(
        size < 1 << 20,
        "the answer to {asked} bytes takes {size} bytes"
    );

    // An item nesting 64 levels is taken; 80 refuse the whole call, as
    // ScheduleTask refuses it.
    let nested = |levels: usize| {
        let mut v = json!({"leaf": 1});
        for _ in 1..levels {
            v = json!({ "a": v });
        }
        v
    };
    let ok = client
        .schedule_tasks(pb::ScheduleTasksRequest {
            tasks: vec![simple("deep-bulk", nested(64))],
        })
        .await
        .expect("64 levels in a bulk item")
        .into_inner();
    assert!(matches!(
        ok.results[0].outcome,
        Some(pb::schedule_tasks_result::Outcome::Scheduled(_))
    ));
    let e = client
        .schedule_tasks(pb::ScheduleTasksRequest {
            tasks: vec![simple("deep-bulk", nested(80))],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_small("80 levels in a bulk item", &e);

    // Over the message limit (4 MiB): RESOURCE_EXHAUSTED; garbage:
    // INVALID_ARGUMENT.
    let big = pb::ScheduleTasksRequest {
        tasks: vec![simple("big", json!({ "p": "p".repeat(600 << 10) })); 8],
    }
    .encode_to_vec();
    let e = raw_unary(&ch, BULK, big).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let e = raw_unary(&ch, BULK, vec![0xff; 64]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_small("garbage to ScheduleTasks", &e);
    still_serves(&mut client).await;
    integrity_ok(server.data_dir());
}

// ---------------------------------------------------------------------------
// Bounded answers and fields.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn errors_quote_a_short_prefix_and_a_bounded_number_of_violations() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let huge = "x".repeat(1 << 20);
    for (case, r) in [
        (
            "GetTaskStatus",
            client
                .get_task_status(pb::GetTaskStatusRequest {
                    task_id: huge.clone(),
                })
                .await
                .map(|_| ()),
        ),
        (
            "CancelTask",
            client
                .cancel_task(pb::CancelTaskRequest {
                    task_id: huge.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ),
        (
            "GetTaskLogs",
            client
                .get_task_logs(pb::GetTaskLogsRequest {
                    task_id: huge.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        ),
        (
            "SignalTask",
            client
                .signal_task(pb::SignalTaskRequest {
                    task_id: huge.clone(),
                    signal: "go".into(),
                    payload: None,
                })
                .await
                .map(|_| ()),
        ),
    ] {
        refused(case, r, "task_id");
    }
    let id = uuid::Uuid::now_v7().to_string();
    refused(
        "SignalTask with a name of 1 MiB",
        client
            .signal_task(pb::SignalTaskRequest {
                task_id: id.clone(),
                signal: huge.clone(),
                payload: None,
            })
            .await,
        "signal",
    );
    refused(
        "SignalTask with a payload over the limit",
        client
            .signal_task(pb::SignalTaskRequest {
                task_id: id,
                signal: "go".into(),
                payload: Some(payload(json!({ "big": "p".repeat(2 << 20) }))),
            })
            .await,
        "payload",
    );
    // 1,000 bad ids: at most 20 violations come back, counted.
    let r = client
        .list_tasks(pb::ListTasksRequest {
            filter: Some(pb::TaskFilter {
                task_ids: (0..1000).map(|i| format!("not-an-id-{i}")).collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let e = r.as_ref().unwrap_err().clone();
    refused("1,000 bad ids", r, "filter.task_ids[0]");
    assert_eq!(violations(&e).len(), 20);
    assert!(e.message().contains("980 more"), "{}", e.message());
    // 100,000 of them: refused by count, before any is parsed.
    let r = client
        .list_tasks(pb::ListTasksRequest {
            filter: Some(pb::TaskFilter {
                task_ids: vec!["x".into(); 100_000],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    refused("100,000 ids", r, "filter.task_ids");
    still_serves(&mut client).await;
}

#[tokio::test]
async fn every_free_text_field_is_bounded() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let long = |n: usize| "r".repeat(n);
    refused(
        "Disconnect.reason of 1 MiB",
        client
            .disconnect(pb::DisconnectRequest {
                user_id: "u".into(),
                reason: long(1 << 20),
                ..Default::default()
            })
            .await,
        "reason",
    );
    refused(
        "Disconnect.user_id of 257 bytes",
        client
            .disconnect(pb::DisconnectRequest {
                user_id: long(257),
                ..Default::default()
            })
            .await,
        "user_id",
    );
    refused(
        "Disconnect.session_id of 257 bytes",
        client
            .disconnect(pb::DisconnectRequest {
                session_id: long(257),
                ..Default::default()
            })
            .await,
        "session_id",
    );
    refused(
        "ListTasks user_id of 257 bytes",
        client
            .list_tasks(pb::ListTasksRequest {
                filter: Some(pb::TaskFilter {
                    user_id: long(257),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        "filter.user_id",
    );
    // WatchTasks validates its filter's names like ListTasks.
    refused(
        "WatchTasks with a bad name",
        client
            .watch_tasks(pb::WatchTasksRequest {
                filter: Some(pb::TaskFilter {
                    names: vec!["no spaces".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        "filter.names[0]",
    );
    // Retry and replay: the reason, the step and the error-kind filter.
    let some_id = uuid::Uuid::now_v7().to_string();
    refused(
        "RetryTask.reason of 1 MiB",
        client
            .retry_task(pb::RetryTaskRequest {
                task_id: some_id.clone(),
                reason: long(1 << 20),
            })
            .await,
        "reason",
    );
    refused(
        "ReplayWorkflow.from_step of 1 MiB",
        client
            .replay_workflow(pb::ReplayWorkflowRequest {
                task_id: some_id.clone(),
                from_step: long(1 << 20),
                ..Default::default()
            })
            .await,
        "from_step",
    );
    refused(
        "ReplayWorkflow.task_id of 1 MiB",
        client
            .replay_workflow(pb::ReplayWorkflowRequest {
                task_id: long(1 << 20),
                from_step: "s1".into(),
                ..Default::default()
            })
            .await,
        "task_id",
    );
    refused(
        "ListTasks error_kind of 1 MiB",
        client
            .list_tasks(pb::ListTasksRequest {
                filter: Some(pb::TaskFilter {
                    error_kind: long(1 << 20),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        "filter.error_kind",
    );
    // A delay with nanos past a second says so.
    let r = client
        .schedule_task(simple_with(
            "n",
            json!({}),
            pb::TaskOptions {
                delay: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 2_000_000_000,
                }),
                ..Default::default()
            },
        ))
        .await;
    let e = r.as_ref().unwrap_err().clone();
    refused("delay nanos 2e9", r, "options.delay");
    assert!(e.message().contains("nanos"), "{}", e.message());
    // A retention of i64::MAX seconds: refused by name, not overflowed.
    let r = client
        .schedule_task(simple_with(
            "n",
            json!({}),
            pb::TaskOptions {
                retention: Some(pb::Retention {
                    completed: Some(prost_types::Duration {
                        seconds: i64::MAX,
                        nanos: 999_999_999,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await;
    refused("retention i64::MAX", r, "options.retention.completed");
    // A definition over the size limit, and one of 120,000 steps (3.5 MiB
    // once took 24 GB): refused at once, with one short error.
    let steps: Vec<String> = (0..120_000)
        .map(|i| format!("{{\"id\":\"s{i}\",\"task\":\"t\"}}"))
        .collect();
    let started = std::time::Instant::now();
    refused(
        "a definition of 120,000 steps",
        client
            .register_workflow(pb::RegisterWorkflowRequest {
                definition: format!("{{\"name\":\"huge\",\"steps\":[{}]}}", steps.join(",")),
                format: "json".into(),
            })
            .await,
        "definition",
    );
    let steps: String = (0..2_000)
        .map(|i| format!("{{\"id\": \"s{i}\", \"task\": \"t\"}},"))
        .collect();
    let json_def = format!(
        "{{\"name\": \"many\", \"steps\": [{}]}}",
        steps.trim_end_matches(',')
    );
    let r = client
        .register_workflow(pb::RegisterWorkflowRequest {
            definition: json_def,
            format: "json".into(),
        })
        .await;
    let e = r.as_ref().unwrap_err().clone();
    refused("2,000 steps", r, "definition");
    assert!(e.message().contains("at most 200 steps"), "{}", e.message());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusing large definitions took {:?}",
        started.elapsed()
    );
    still_serves(&mut client).await;
    integrity_ok(server.data_dir());
}

#[tokio::test]
async fn debounce_keys_and_windows_are_bounded() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let huge = prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    };
    let cases: Vec<(&str, pb::TaskOptions, &str)> = vec![
        (
            "a debounce key of 1 MiB",
            pb::TaskOptions {
                debounce: Some(pb::Debounce {
                    key: "k".repeat(1 << 20),
                    period: Some(dur(Duration::from_secs(1))),
                    mode: 0,
                }),
                ..Default::default()
            },
            "options.debounce.key",
        ),
        (
            "a period of i64::MAX seconds",
            pb::TaskOptions {
                debounce: Some(pb::Debounce {
                    key: "k".into(),
                    period: Some(huge),
                    mode: 2,
                }),
                ..Default::default()
            },
            "options.debounce.period",
        ),
        (
            "a period with nanos past a second",
            pb::TaskOptions {
                debounce: Some(pb::Debounce {
                    key: "k".into(),
                    period: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 2_000_000_000,
                    }),
                    mode: 1,
                }),
                ..Default::default()
            },
            "options.debounce.period",
        ),
        (
            "a ttl of i64::MAX seconds",
            pb::TaskOptions {
                idempotency_key: "k".into(),
                idempotency_ttl: Some(huge),
                ..Default::default()
            },
            "options.idempotency_ttl",
        ),
        (
            "a ttl of i64::MIN seconds",
            pb::TaskOptions {
                idempotency_key: "k".into(),
                idempotency_ttl: Some(prost_types::Duration {
                    seconds: i64::MIN,
                    nanos: -999_999_999,
                }),
                ..Default::default()
            },
            "options.idempotency_ttl",
        ),
        (
            "a debounce key in the server's reserved prefix",
            pb::TaskOptions {
                debounce: Some(pb::Debounce {
                    key: "\u{1}ns:other\u{1f}k".into(),
                    period: Some(dur(Duration::from_secs(1))),
                    mode: 1,
                }),
                ..Default::default()
            },
            "options.debounce.key",
        ),
        (
            "a mode of i32::MIN",
            pb::TaskOptions {
                debounce: Some(pb::Debounce {
                    key: "k".into(),
                    period: Some(dur(Duration::from_secs(1))),
                    mode: i32::MIN,
                }),
                ..Default::default()
            },
            "options.debounce.mode",
        ),
    ];
    for (case, options, field) in cases {
        refused(
            case,
            client
                .schedule_task(simple_with("hostile-deb", json!({}), options))
                .await,
            field,
        );
    }
    // A bulk of 1,000 tasks of one debounce key: one chain of supersedes,
    // each answer naming one id, the whole answer bounded.
    let tasks: Vec<_> = (0..1000)
        .map(|n| {
            simple_with(
                "hostile-deb",
                json!({ "n": n }),
                pb::TaskOptions {
                    debounce: Some(pb::Debounce {
                        key: "one".into(),
                        period: Some(dur(Duration::from_secs(60))),
                        mode: 1,
                    }),
                    ..Default::default()
                },
            )
        })
        .collect();
    let res = client
        .schedule_tasks(pb::ScheduleTasksRequest { tasks })
        .await
        .expect("ScheduleTasks")
        .into_inner();
    assert!(res.encoded_len() < 200_000, "{} bytes", res.encoded_len());
    let pending = all_named(&mut client, "hostile-deb")
        .await
        .into_iter()
        .filter(|s| s.state == pb::TaskState::Pending as i32)
        .count();
    assert_eq!(pending, 1, "one task of the key is left pending");
    still_serves(&mut client).await;
    integrity_ok(server.data_dir());
}

// ---------------------------------------------------------------------------
// Workers.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_nan_progress_is_stored_as_zero_and_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&server.url).await;
    let id = schedule(&mut client, simple("nan", json!({}))).await;
    let mut w = RawWorker::register(&server.url, &["nan"], 1).await;
    let a = w.assignment().await;
    for percent in [f64::NAN, f64::INFINITY, -5.0, 1e308] {
        w.send(pb::worker_message::Msg::Progress(pb::Progress {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            percent,
            message: "m".repeat(100_000),
        }))
        .await;
        wait_until("the progress to be applied", SHORT, || {
            let mut c = client.clone();
            let id = id.clone();
            async move {
                let s = status(&mut c, &id).await;
                s.progress_message.len() == 1024
                    && s.progress == if percent > 50.0 { 100.0 } else { 0.0 }
            }
        })
        .await;
    }
    w.send(pb::worker_message::Msg::Progress(pb::Progress {
        task_id: a.task_id.clone(),
        attempt: a.attempt,
        percent: f64::NAN,
        message: String::new(),
    }))
    .await;
    // Listed while active (this answered INTERNAL), and after a kill -9.
    wait_until("the NaN progress to be listed as 0", SHORT, || {
        let mut c = client.clone();
        async move {
            let l = c
                .list_tasks(pb::ListTasksRequest::default())
                .await
                .expect("ListTasks with a NaN progress")
                .into_inner();
            l.tasks.iter().any(|t| t.progress == 0.0)
        }
    })
    .await;
    server.kill9().await;
    integrity_ok(dir.path());
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&server.url).await;
    let s = status(&mut client, &id).await;
    assert_eq!(s.progress, 0.0);
    still_serves(&mut client).await;
    assert!(server.terminate().await);
}

#[tokio::test]
async fn rows_that_cannot_be_read_are_quarantined_and_the_server_starts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&server.url).await;
    let broken = schedule(&mut client, simple("broken", json!({}))).await;
    let nulled = schedule(&mut client, simple("nulled", json!({}))).await;
    let fine = schedule(&mut client, simple("fine", json!({}))).await;
    assert!(server.terminate().await);
    store_update(
        dir.path(),
        "UPDATE tasks SET rt = '{\"state\": ' WHERE id = ?1",
        "UPDATE tasks SET rt = '{\"state\": ' WHERE id = $1",
        &broken,
    );
    // What the NaN defect wrote: a row of today's format with a null.
    store_update(
        dir.path(),
        "UPDATE tasks SET rt = json_set(rt, '$.progress', json('null')) WHERE id = ?1",
        "UPDATE tasks SET rt = jsonb_set(rt::jsonb, '{progress}', 'null')::text WHERE id = $1",
        &nulled,
    );
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&server.url).await;
    let e = client
        .get_task_status(pb::GetTaskStatusRequest {
            task_id: broken.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(e.message().contains("quarantined"), "{}", e.message());
    assert_eq!(status(&mut client, &nulled).await.progress, 0.0);
    status(&mut client, &fine).await;
    let listed = client
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .expect("ListTasks past a quarantined row")
        .into_inner();
    let ids: Vec<&str> = listed.tasks.iter().map(|t| t.id.as_str()).collect();
    assert!(ids.contains(&fine.as_str()) && !ids.contains(&broken.as_str()));
    // The other tasks still run.
    let worker = switchyard::worker::Worker::builder(&server.url)
        .handler("nulled", |_ctx: switchyard::worker::TaskContext| async {
            Ok(json!({}))
        })
        .handler("fine", |_ctx: switchyard::worker::TaskContext| async {
            Ok(json!({}))
        })
        .build();
    let (_h, _) = spawn_worker(worker).await;
    wait_state(&mut client, &fine, pb::TaskState::Completed, LONG).await;
    wait_state(&mut client, &nulled, pb::TaskState::Completed, LONG).await;
    assert!(server.terminate().await);
    integrity_ok(dir.path());
    let n = store_count(dir.path(), "quarantine");
    assert_eq!(n, 1, "one row quarantined, with its reason");
}

#[tokio::test]
async fn a_worker_stream_that_never_registers_is_closed_within_a_lease() {
    let server = TestServer::start().await;
    let mut client = server.worker_client().await;
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::WorkerMessage>(1);
    let started = std::time::Instant::now();
    let r = within(
        "the server to close a silent stream",
        LONG,
        client.work(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await;
    let e = r.expect_err("a stream without Register is refused");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    // test_config's lease is 2 s.
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn a_retry_after_of_ten_years_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let id = schedule(&mut client, simple("retry-after", json!({}))).await;
    let mut w = RawWorker::register(&server.url, &["retry-after"], 1).await;
    let a = w.assignment().await;
    w.send(pb::worker_message::Msg::Fail(pb::Fail {
        task_id: a.task_id.clone(),
        attempt: a.attempt,
        message: "later".into(),
        retryable: true,
        retry_after: Some(dur(Duration::from_secs(10 * 365 * 86_400))),
        ..Default::default()
    }))
    .await;
    match w.next("the refusal").await {
        pb::server_message::Msg::Rejected(r) => {
            assert_eq!(r.code, "INVALID_ARGUMENT");
            assert!(r.message.contains("fail.retry_after"), "{}", r.message);
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(
        state(&status(&mut client, &id).await),
        pb::TaskState::Running
    );
}

// ---------------------------------------------------------------------------
// Leases and attempts.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_requeued_task_shows_its_last_attempt_and_lease_losses_use_every_attempt() {
    let server = TestServer::start_with(|c| {
        c.scheduler.lease_ttl = Duration::from_millis(600);
        c.scheduler.max_lease_losses = 1;
    })
    .await;
    let mut client = server.client().await;
    let id = schedule(
        &mut client,
        simple_with(
            "lost",
            json!({}),
            pb::TaskOptions {
                attempts: 3,
                backoff: fixed_backoff(Duration::from_millis(10)),
                ..Default::default()
            },
        ),
    )
    .await;
    // Each attempt may lose its worker once (max_lease_losses = 1); the
    // second loss fails the attempt and the next one starts.
    let mut seen = Vec::new();
    for _ in 0..6 {
        let mut w = RawWorker::register(&server.url, &["lost"], 1).await;
        let a = w.assignment().await;
        seen.push(a.attempt);
        drop(w); // the stream ends: the worker is lost
        let s = wait_for("the task to leave its lost worker", SHORT, || {
            let mut c = client.clone();
            let id = id.clone();
            async move {
                let s = status(&mut c, &id).await;
                (state(&s) != pb::TaskState::Running).then_some(s)
            }
        })
        .await;
        if state(&s) == pb::TaskState::Failed {
            break;
        }
        assert_eq!(s.attempt, a.attempt, "while it waits, its last attempt");
    }
    assert_eq!(seen, vec![1, 1, 2, 2, 3, 3], "every attempt used");
    let s = status(&mut client, &id).await;
    assert_eq!(state(&s), pb::TaskState::Failed);
    let err = s.last_error.expect("an error");
    assert_eq!(err.kind, "worker_lost");
    assert_eq!(s.attempt, 3);
}

#[tokio::test]
async fn a_silent_worker_is_found_lost_at_its_lease_not_later() {
    let server = TestServer::start_with(|c| {
        // A long lease, so that checking every quarter of it (as before)
        // is late by up to 1 s, far more than a loaded machine's jitter.
        c.scheduler.lease_ttl = Duration::from_secs(4);
    })
    .await;
    let mut client = server.client().await;
    let id = schedule(&mut client, simple("silent", json!({}))).await;
    let mut w = RawWorker::register(&server.url, &["silent"], 1).await;
    let _a = w.assignment().await;
    let since = std::time::Instant::now();
    // The stream stays open but says nothing.
    let s = wait_for("the lease to run out", LONG, || {
        let mut c = client.clone();
        let id = id.clone();
        async move {
            let s = status(&mut c, &id).await;
            (state(&s) == pb::TaskState::Pending).then_some(s)
        }
    })
    .await;
    let late = since.elapsed();
    assert!(
        late < Duration::from_millis(4_000 + 400),
        "found lost after {late:?} (lease 4 s)"
    );
    assert_eq!(s.attempt, 1);
    drop(w);
}

// ---------------------------------------------------------------------------
// Configuration and the SSRF guard.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_configured_but_empty_token_set_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let comments = dir.path().join("tokens");
    std::fs::write(&comments, "# nobody yet\n\n").unwrap();
    let comments = comments.display().to_string();
    for env in [
        vec![("SWITCHYARD_AUTH__TOKENS", ",")],
        vec![("SWITCHYARD_AUTH__TOKENS", " ")],
        vec![("SWITCHYARD_AUTH__TOKENS_FILE", comments.as_str())],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path())
            .envs(env.iter().copied())
            .env("SWITCHYARD_ADMIN__LISTEN", "127.0.0.1:0")
            .output();
        let out = within("the server to refuse to start", LONG, out)
            .await
            .expect("run switchyard serve");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} started: {text}");
        assert!(text.contains("holds no token"), "{env:?}: {text}");
    }
}

#[tokio::test]
async fn a_webhook_cannot_call_the_servers_own_admin_api() {
    let server = TestServer::start_with(|c| {
        c.webhook.allow_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    let mut client = server.client().await;
    let req = |url: String| pb::ScheduleTaskRequest {
        name: "self-call".into(),
        payload: Some(payload(json!({}))),
        task_type: pb::TaskType::Integration as i32,
        options: Some(pb::TaskOptions {
            attempts: 1,
            ..Default::default()
        }),
        target: Some(pb::schedule_task_request::Target::Integration(
            pb::IntegrationTarget {
                n8n: Some(pb::N8nTarget {
                    webhook_url: url,
                    ..Default::default()
                }),
            },
        )),
    };
    // Refused when scheduled (the guard needs no DNS for these), naming
    // the field.
    for url in [
        format!("{}/api/tasks", server.admin_url()),
        format!("http://localhost:{}/api/metrics", server.admin_addr.port()),
        format!("{}/", server.url),
    ] {
        let e = client
            .schedule_task(req(url.clone()))
            .await
            .expect_err(&format!("{url} was accepted"));
        assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}");
        assert!(
            e.message().contains("integration.n8n.webhook_url")
                && e.message().contains("own listener"),
            "{url}: {}",
            e.message()
        );
    }
}

#[tokio::test]
async fn settings_that_cannot_be_honoured_are_refused_when_scheduled() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let hook = |workflow_id: &str, webhook_url: &str| pb::ScheduleTaskRequest {
        name: "hook".into(),
        payload: Some(payload(json!({}))),
        task_type: pb::TaskType::Integration as i32,
        options: None,
        target: Some(pb::schedule_task_request::Target::Integration(
            pb::IntegrationTarget {
                n8n: Some(pb::N8nTarget {
                    workflow_id: workflow_id.into(),
                    webhook_url: webhook_url.into(),
                    ..Default::default()
                }),
            },
        )),
    };
    let cases = [
        // Loopback and metadata in the spellings a URL parser normalises.
        (
            "octal-ish loopback",
            hook("", "http://0x7f.1/"),
            Code::InvalidArgument,
            "integration.n8n.webhook_url",
        ),
        (
            "decimal loopback",
            hook("", "http://2130706433/"),
            Code::InvalidArgument,
            "integration.n8n.webhook_url",
        ),
        (
            "mapped metadata",
            hook("", "http://[::ffff:169.254.169.254]/"),
            Code::InvalidArgument,
            "integration.n8n.webhook_url",
        ),
        (
            "a localhost subdomain",
            hook("", "http://admin.localhost./"),
            Code::InvalidArgument,
            "integration.n8n.webhook_url",
        ),
        (
            "6to4 private",
            hook("", "http://[2002:a00:1::]/"),
            Code::InvalidArgument,
            "integration.n8n.webhook_url",
        ),
        (
            "no n8n base URL",
            hook(&"w".repeat(200), ""),
            Code::FailedPrecondition,
            "integration.n8n.workflow_id",
        ),
        (
            "tracking on the embedded engine",
            crate::schedule_refusals::complex("any", "", "t"),
            Code::FailedPrecondition,
            "complex.tracking_queue",
        ),
        (
            "a task queue on the embedded engine",
            crate::schedule_refusals::complex("any", &"q".repeat(200), ""),
            Code::FailedPrecondition,
            "complex.task_queue",
        ),
    ];
    for (case, req, code, field) in cases {
        let e = client.schedule_task(req).await.expect_err(case);
        assert_small(case, &e);
        assert_eq!(e.code(), code, "{case}: {e:?}");
        assert!(e.message().contains(field), "{case}: {}", e.message());
    }
    still_serves(&mut client).await;
}

// ---------------------------------------------------------------------------
// The admin HTTP API.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn admin_routes_bound_their_input_and_their_answers() {
    const API: &str = "/internal/execution-manager";
    let server = TestServer::start().await;
    let http = reqwest::Client::builder().timeout(SHORT).build().unwrap();
    let base = server.admin_url();
    let long_id = "x".repeat(10_000);
    let many_ids = (0..1001)
        .map(|i| format!("id=bad-{i}"))
        .collect::<Vec<_>>()
        .join("&");
    let cases = [
        (
            "a 10 KB id",
            http.get(format!("{base}{API}/tasks/{long_id}")),
            "id",
        ),
        (
            "a user of 257 bytes",
            http.get(format!("{base}{API}/tasks?user={}", "u".repeat(257))),
            "user",
        ),
        (
            "1,001 ids",
            http.get(format!("{base}{API}/tasks?{many_ids}")),
            "id",
        ),
        (
            "an id that is not UTF-8",
            http.get(format!("{base}{API}/tasks/%FF%FE/logs")),
            "id",
        ),
        (
            "a userId of 257 bytes",
            http.get(format!("{base}{API}/tasks?userId={}", "u".repeat(257))),
            "userId",
        ),
        (
            "a limit past u64",
            http.get(format!("{base}{API}/tasks?limit={}", "9".repeat(40))),
            "limit",
        ),
        (
            "a page token that is no id",
            http.get(format!("{base}{API}/tasks?pageToken={}", "p".repeat(5000))),
            "pageToken",
        ),
        (
            "a state of another enum",
            http.get(format!("{base}{API}/tasks?state=TASK_SOURCE_BULLMQ")),
            "state",
        ),
        (
            "a negative afterLine",
            http.get(format!(
                "{base}{API}/tasks/{}/logs?afterLine=-1",
                uuid::Uuid::now_v7()
            )),
            "afterLine",
        ),
        (
            "execution logs of 101 tasks",
            http.get(format!("{base}{API}/logs?tasks=101")),
            "tasks",
        ),
        (
            "a snapshot flag that is no flag",
            http.get(format!("{base}{API}/events?snapshot=perhaps")),
            "snapshot",
        ),
        (
            "a schedules cursor that is no id",
            http.get(format!("{base}{API}/schedules?after=a%20b")),
            "after",
        ),
        (
            "a reason of 2 KB",
            http.delete(format!(
                "{base}{API}/tasks/{}?reason={}",
                uuid::Uuid::now_v7(),
                "r".repeat(2048)
            )),
            "reason",
        ),
    ];
    let long_name = "k".repeat(10_000);
    let cases = cases.into_iter().chain([(
        "a parameter name of 10 KB",
        http.get(format!("{base}{API}/tasks?{long_name}=1")),
        "",
    )]);
    for (case, req, field) in cases {
        let resp = req.send().await.expect("the admin server answers");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert!(body.len() <= MAX_ANSWER, "{case}: {} bytes", body.len());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 400, "{case}: {v}");
        if field.is_empty() {
            assert!(
                v["field"].as_str().is_some_and(|f| f.len() < 100),
                "{case}: {v}"
            );
        } else {
            assert_eq!(v["field"], field, "{case}: {v}");
        }
    }
    let ok = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert!(ok.status().is_success());
}

#[tokio::test]
async fn every_schedule_field_is_bounded() {
    use switchyard::pb::schedule_service_client::ScheduleServiceClient;
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let ch = channel(&server.url).await;
    let mut sc = ScheduleServiceClient::new(ch.clone());
    let long = |n: usize| "r".repeat(n);
    let good = || pb::ScheduleSpec {
        timing: Some(pb::schedule_spec::Timing::Cron("*/5 * * * *".into())),
        task: Some(simple("hostile-schedule", json!({}))),
        ..Default::default()
    };
    let secs = |s: i64| prost_types::Duration {
        seconds: s,
        nanos: 0,
    };
    let cases: Vec<(&str, String, pb::ScheduleSpec, &str)> = vec![
        ("schedule_id of 1 MiB", long(1 << 20), good(), "schedule_id"),
        (
            "cron of 1 MiB",
            "a".into(),
            pb::ScheduleSpec {
                timing: Some(pb::schedule_spec::Timing::Cron(long(1 << 20))),
                ..good()
            },
            "spec.cron",
        ),
        (
            "a cron that never matches",
            "a".into(),
            pb::ScheduleSpec {
                timing: Some(pb::schedule_spec::Timing::Cron("0 0 30 2 *".into())),
                ..good()
            },
            "spec.cron",
        ),
        (
            "time_zone of 1 MiB",
            "a".into(),
            pb::ScheduleSpec {
                time_zone: long(1 << 20),
                ..good()
            },
            "spec.time_zone",
        ),
        (
            "an interval of a thousand years",
            "a".into(),
            pb::ScheduleSpec {
                timing: Some(pb::schedule_spec::Timing::Interval(secs(
                    1000 * 366 * 86_400,
                ))),
                ..good()
            },
            "spec.interval",
        ),
        (
            "a negative interval",
            "a".into(),
            pb::ScheduleSpec {
                timing: Some(pb::schedule_spec::Timing::Interval(secs(-1))),
                ..good()
            },
            "spec.interval",
        ),
        (
            "an interval of i64::MAX seconds",
            "a".into(),
            pb::ScheduleSpec {
                timing: Some(pb::schedule_spec::Timing::Interval(secs(i64::MAX))),
                ..good()
            },
            "spec.interval",
        ),
        (
            "jitter of a thousand years",
            "a".into(),
            pb::ScheduleSpec {
                jitter: Some(secs(1000 * 366 * 86_400)),
                ..good()
            },
            "spec.jitter",
        ),
        (
            "a catch-up window with bad nanos",
            "a".into(),
            pb::ScheduleSpec {
                catchup_window: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 2_000_000_000,
                }),
                ..good()
            },
            "spec.catchup_window",
        ),
        (
            "a start past year 9999",
            "a".into(),
            pb::ScheduleSpec {
                start_at: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..good()
            },
            "spec.start_at",
        ),
        (
            "an unknown overlap policy",
            "a".into(),
            pb::ScheduleSpec {
                overlap: 99,
                ..good()
            },
            "spec.overlap",
        ),
        (
            "an unknown catch-up",
            "a".into(),
            pb::ScheduleSpec {
                catchup: -1,
                ..good()
            },
            "spec.catchup",
        ),
        (
            "a template with 1,000 labels",
            "a".into(),
            pb::ScheduleSpec {
                task: Some(simple_with(
                    "hostile-schedule",
                    json!({}),
                    pb::TaskOptions {
                        labels: (0..1000).map(|i| (format!("k{i}"), "v".into())).collect(),
                        ..Default::default()
                    },
                )),
                ..good()
            },
            "spec.task.options.labels",
        ),
    ];
    for (case, id, spec, field) in cases {
        let started = std::time::Instant::now();
        let r = sc
            .create_schedule(pb::CreateScheduleRequest {
                schedule_id: id,
                spec: Some(spec),
                paused: false,
            })
            .await;
        refused(case, r, field);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{case}: answered quickly"
        );
    }
    refused(
        "PauseSchedule note of 1 MiB",
        sc.pause_schedule(pb::PauseScheduleRequest {
            schedule_id: "a".into(),
            note: long(1 << 20),
        })
        .await,
        "note",
    );
    refused(
        "ListSchedules page_token of 1 MiB",
        sc.list_schedules(pb::ListSchedulesRequest {
            page_size: 10,
            page_token: long(1 << 20),
        })
        .await,
        "page_token",
    );
    refused(
        "GetSchedule id of 1 MiB",
        sc.get_schedule(pb::GetScheduleRequest {
            schedule_id: long(1 << 20),
        })
        .await,
        "schedule_id",
    );
    // Undecodable bytes are INVALID_ARGUMENT, as for every service.
    let r = raw_unary(
        &ch,
        "/switchyard.v1.ScheduleService/CreateSchedule",
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
    )
    .await;
    let s = r.expect_err("undecodable");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert_small("undecodable CreateSchedule", &s);
    still_serves(&mut client).await;
    integrity_ok(server.data_dir());
}

// ---------------------------------------------------------------------------
// Flow rules.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn flow_rules_refuse_bad_limits_patterns_names_and_keys_naming_the_field() {
    use switchyard::pb::flow_service_client::FlowServiceClient;
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut flow = FlowServiceClient::new(channel(&server.url).await);
    let policy = |pattern: &str, limit: i32| pb::SetConcurrencyPolicyRequest {
        policy: Some(pb::ConcurrencyPolicy {
            pattern: pattern.into(),
            limit,
            ..Default::default()
        }),
    };
    let weighted = |weights: Vec<(String, i32)>| pb::SetConcurrencyPolicyRequest {
        policy: Some(pb::ConcurrencyPolicy {
            pattern: "a".into(),
            limit: 1,
            weights: weights.into_iter().collect(),
            ..Default::default()
        }),
    };
    for (case, req, field) in [
        ("a zero limit", policy("a", 0), "policy.limit"),
        ("a negative limit", policy("a", -5), "policy.limit"),
        (
            "a limit over the bound",
            policy("a", i32::MAX),
            "policy.limit",
        ),
        ("an empty pattern", policy("", 1), "policy.pattern"),
        ("a bad glob", policy("a[", 1), "policy.pattern"),
        (
            "a pattern holding the namespace separator",
            policy("a@acme", 1),
            "policy.pattern",
        ),
        (
            "a pattern over the bound",
            policy(&"p".repeat(100_000), 1),
            "policy.pattern",
        ),
        (
            "no policy",
            pb::SetConcurrencyPolicyRequest { policy: None },
            "policy",
        ),
        (
            "a zero weight",
            weighted(vec![("k".into(), 0)]),
            "policy.weights",
        ),
        (
            "a weight over the bound",
            weighted(vec![("k".into(), i32::MAX)]),
            "policy.weights",
        ),
        (
            "a weighted key over the length bound",
            weighted(vec![("k".repeat(100_000), 1)]),
            "policy.weights",
        ),
        (
            "an empty weighted key",
            weighted(vec![(String::new(), 2)]),
            "policy.weights",
        ),
        (
            "too many weighted keys",
            weighted((0..10_000).map(|i| (format!("k{i}"), 1)).collect()),
            "policy.weights",
        ),
    ] {
        let r = flow.set_concurrency_policy(req).await;
        if let Err(s) = &r {
            assert!(s.message().len() + s.details().len() < MAX_ANSWER, "{case}");
        }
        assert_invalid(case, r, field);
    }
    assert_invalid(
        "an unknown policy",
        flow.delete_concurrency_policy(pb::DeleteConcurrencyPolicyRequest {
            pattern: "never-set".into(),
        })
        .await,
        "pattern",
    );
    for name in ["", "bad name", &"n".repeat(10_000)] {
        assert_invalid(
            "a bad name to pause",
            flow.pause_queue(pb::PauseQueueRequest { name: name.into() })
                .await,
            "name",
        );
        assert_invalid(
            "a bad name to resume",
            flow.resume_queue(pb::ResumeQueueRequest { name: name.into() })
                .await,
            "name",
        );
    }
    assert_invalid(
        "a concurrency key over 256 bytes",
        client
            .schedule_task(simple_with(
                "keyed",
                json!({}),
                pb::TaskOptions {
                    concurrency_key: "k".repeat(257),
                    ..Default::default()
                },
            ))
            .await,
        "options.concurrency_key",
    );
    assert_invalid(
        "a concurrency key in the server's reserved prefix",
        client
            .schedule_task(simple_with(
                "keyed",
                json!({}),
                pb::TaskOptions {
                    concurrency_key: "\u{1}ns:acme\u{1f}k".into(),
                    ..Default::default()
                },
            ))
            .await,
        "options.concurrency_key",
    );
    // Rate limits: hostile figures are refused by name, not overflowed.
    let rate =
        |pattern: &str, rate: i32, seconds: i64, nanos: i32, burst: i32| pb::SetRateLimitRequest {
            rate_limit: Some(pb::RateLimit {
                pattern: pattern.into(),
                rate,
                interval: Some(prost_types::Duration { seconds, nanos }),
                burst,
                ..Default::default()
            }),
        };
    for (case, req, field) in [
        (
            "a rate of i32::MIN",
            rate("a", i32::MIN, 1, 0, 1),
            "rate_limit.rate",
        ),
        (
            "a rate of i32::MAX",
            rate("a", i32::MAX, 1, 0, 1),
            "rate_limit.rate",
        ),
        (
            "an interval of i64::MAX seconds",
            rate("a", 1, i64::MAX, 0, 1),
            "rate_limit.interval",
        ),
        (
            "an interval of i64::MIN seconds",
            rate("a", 1, i64::MIN, 0, 1),
            "rate_limit.interval",
        ),
        (
            "an interval's nanos out of range",
            rate("a", 1, 0, 1_000_000_000, 1),
            "rate_limit.interval",
        ),
        (
            "an interval of 1 ns",
            rate("a", 1, 0, 1, 1),
            "rate_limit.interval",
        ),
        (
            "a burst of i32::MIN",
            rate("a", 1, 1, 0, i32::MIN),
            "rate_limit.burst",
        ),
        (
            "a burst of i32::MAX",
            rate("a", 1, 1, 0, i32::MAX),
            "rate_limit.burst",
        ),
        (
            "a rate limit pattern of 100,000 bytes",
            rate(&"p".repeat(100_000), 1, 1, 0, 1),
            "rate_limit.pattern",
        ),
        (
            "a rate limit pattern holding the namespace separator",
            rate("*@acme", 1, 1, 0, 1),
            "rate_limit.pattern",
        ),
    ] {
        let r = flow.set_rate_limit(req).await;
        if let Err(s) = &r {
            assert!(s.message().len() + s.details().len() < MAX_ANSWER, "{case}");
        }
        assert_invalid(case, r, field);
    }
    assert_invalid(
        "deleting a rate limit named by 100,000 bytes",
        flow.delete_rate_limit(pb::DeleteRateLimitRequest {
            pattern: "p".repeat(100_000),
        })
        .await,
        "pattern",
    );
    // A namespace header that names no namespace is refused before
    // anything is set.
    let mut bad_ns = tonic::Request::new(policy("a", 1));
    bad_ns
        .metadata_mut()
        .insert("switchyard-namespace", "Bad Name".parse().unwrap());
    let e = flow.set_concurrency_policy(bad_ns).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("switchyard-namespace"), "{e:?}");
    // Nothing was set by the refused calls.
    let rules = flow
        .list_flow_rules(pb::ListFlowRulesRequest {})
        .await
        .expect("ListFlowRules")
        .into_inner();
    assert!(
        rules.policies.is_empty() && rules.paused.is_empty() && rules.rate_limits.is_empty(),
        "{rules:?}"
    );
    still_serves(&mut client).await;
}

/// The bounds on flow rules hold per namespace: a namespace at its most
/// paused names is refused more (RESOURCE_EXHAUSTED naming it), and
/// another namespace still pauses.
#[tokio::test]
async fn a_namespace_at_its_most_paused_names_leaves_others_room() {
    use switchyard::pb::flow_service_client::FlowServiceClient;
    let server = TestServer::start_with(|c| c.store.memory = true).await;
    let mut flow = FlowServiceClient::new(channel(&server.url).await);
    let pause = |name: String, ns: &str| {
        let mut r = tonic::Request::new(pb::PauseQueueRequest { name });
        r.metadata_mut()
            .insert("switchyard-namespace", ns.parse().unwrap());
        r
    };
    for i in 0..switchyard::domain::flow::MAX_PAUSED {
        flow.pause_queue(pause(format!("q{i}"), "acme"))
            .await
            .expect("PauseQueue under the bound");
    }
    let e = flow
        .pause_queue(pause("one-more".into(), "acme"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("acme"), "{e:?}");
    flow.pause_queue(pause("q0".into(), "beta"))
        .await
        .expect("another namespace has room of its own");
    still_serves(&mut server.client().await).await;
}

#[tokio::test]
async fn a_keys_limits_refuse_negative_and_absurd_values_naming_the_field() {
    use switchyard::pb::keys_service_client::KeysServiceClient;
    let server = TestServer::start_with(|c| c.auth.tokens = vec!["root".into()]).await;
    let mut keys = KeysServiceClient::new(channel(&server.url).await);
    let named = |rps: f64, bytes: i64, ns: &str| {
        let mut r = tonic::Request::new(pb::CreateKeyRequest {
            role: pb::KeyRole::Reader as i32,
            max_requests_per_second: rps,
            max_payload_bytes: bytes,
            namespace: ns.into(),
            ..Default::default()
        });
        r.metadata_mut()
            .insert("authorization", "Bearer root".parse().unwrap());
        r
    };
    let req = |rps: f64, bytes: i64| named(rps, bytes, "");
    let rps = "max_requests_per_second";
    let bytes = "max_payload_bytes";
    for (case, r, field) in [
        ("a negative rate", req(-1.0, 0), rps),
        ("a rate of NaN", req(f64::NAN, 0), rps),
        ("an infinite rate", req(f64::INFINITY, 0), rps),
        ("a rate of minus infinity", req(f64::NEG_INFINITY, 0), rps),
        ("a rate under the bound", req(0.001, 0), rps),
        ("a rate over the bound", req(1e12, 0), rps),
        ("the smallest positive rate", req(f64::MIN_POSITIVE, 0), rps),
        ("a negative payload limit", req(0.0, -1), bytes),
        ("the most negative payload limit", req(0.0, i64::MIN), bytes),
        ("a payload limit over 1 GiB", req(0.0, (1 << 30) + 1), bytes),
        ("the largest payload limit", req(0.0, i64::MAX), bytes),
        (
            "a namespace of 65 bytes",
            named(0.0, 0, &"n".repeat(65)),
            "namespace",
        ),
        (
            "a namespace of 1 MiB",
            named(0.0, 0, &"n".repeat(1 << 20)),
            "namespace",
        ),
        (
            "a namespace in capitals",
            named(0.0, 0, "Acme"),
            "namespace",
        ),
        ("a namespace with `@`", named(0.0, 0, "a@b"), "namespace"),
        (
            "a namespace with a NUL",
            named(0.0, 0, "a\u{0}b"),
            "namespace",
        ),
        (
            "a namespace starting with `-`",
            named(0.0, 0, "-a"),
            "namespace",
        ),
    ] {
        let r = keys.create_key(r).await;
        if let Err(s) = &r {
            assert!(s.message().len() + s.details().len() < MAX_ANSWER, "{case}");
        }
        assert_invalid(case, r, field);
    }
    // Nothing was created; the bounds themselves are accepted.
    let mut list = tonic::Request::new(pb::ListKeysRequest {});
    list.metadata_mut()
        .insert("authorization", "Bearer root".parse().unwrap());
    assert!(keys
        .list_keys(list)
        .await
        .unwrap()
        .into_inner()
        .keys
        .is_empty());
    keys.create_key(req(0.01, 1 << 30))
        .await
        .expect("the bounds");
    keys.create_key(req(100_000.0, 1))
        .await
        .expect("the bounds");
    keys.create_key(named(0.0, 0, &"n".repeat(64)))
        .await
        .expect("a namespace of 64 bytes");

    // The namespace header: a bad name is PERMISSION_DENIED naming the
    // header, and changes nothing.
    let mut client = server.client().await;
    for (case, v) in [
        ("65 bytes", "n".repeat(65)),
        ("capitals", "Acme".to_string()),
        ("an `@`", "a@b".to_string()),
        ("a space", "a b".to_string()),
        ("8 KiB", "n".repeat(8 << 10)),
    ] {
        let mut r = tonic::Request::new(simple("hostile-ns", json!({})));
        r.metadata_mut()
            .insert("authorization", "Bearer root".parse().unwrap());
        r.metadata_mut()
            .insert("switchyard-namespace", v.parse().unwrap());
        let err = client.schedule_task(r).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{case}: {err:?}");
        assert!(
            err.message().contains("switchyard-namespace"),
            "{case}: {err:?}"
        );
        assert!(err.message().len() < 300, "{case}: bounded");
    }
    let mut r = tonic::Request::new(pb::ListTasksRequest::default());
    r.metadata_mut()
        .insert("authorization", "Bearer root".parse().unwrap());
    assert!(client
        .list_tasks(r)
        .await
        .unwrap()
        .into_inner()
        .tasks
        .is_empty());
}
