//! Scoped API keys and the audit log (issue 23, items 3 and 4), on the
//! store the suite runs on (SQLite, or PostgreSQL with
//! `SWITCHYARD_TEST_STORE=postgres`): every gRPC method × no key, a wrong,
//! an expired and a revoked key, each role, answers the code the roles
//! say, and the refused calls change nothing; user-bound and scheduler keys
//! see only their tasks (another's is NOT_FOUND); a worker key registers
//! only its names and its stream closes when it is revoked; the audit log
//! names the key of a cancel; bad CreateKey requests name the field.

use std::time::Duration;

use bytes::{Buf, BufMut};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use switchyard::pb;
use switchyard::pb::keys_service_client::KeysServiceClient;
use switchyard::pb::worker_service_client::WorkerServiceClient;

use crate::common::*;

const ROOT: &str = "root-token";

fn with<T>(msg: T, secret: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(s) = secret {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {s}").parse().unwrap());
    }
    r
}

async fn keys_client(server: &TestServer) -> KeysServiceClient<Channel> {
    KeysServiceClient::new(channel(&server.url).await)
}

/// Creates a key with the root token: (id, secret).
async fn create(
    server: &TestServer,
    role: pb::KeyRole,
    user: &str,
    names: &[&str],
    expires_in: Option<Duration>,
) -> (String, String) {
    let r = keys_client(server)
        .await
        .create_key(with(
            pb::CreateKeyRequest {
                role: role as i32,
                user_id: user.into(),
                names: names.iter().map(|s| s.to_string()).collect(),
                expires_in: expires_in.map(dur),
                ..Default::default()
            },
            Some(ROOT),
        ))
        .await
        .expect("CreateKey with the root token")
        .into_inner();
    (r.key.expect("the key").id, r.secret)
}

async fn audit(server: &TestServer) -> Vec<pb::AuditEvent> {
    keys_client(server)
        .await
        .list_audit_events(with(
            pb::ListAuditEventsRequest {
                page_size: 1000,
                before: 0,
            },
            Some(ROOT),
        ))
        .await
        .expect("ListAuditEvents")
        .into_inner()
        .events
}

// A codec that sends a request already encoded and ignores the answer's
// content: one caller for every method of the table.
#[derive(Default, Clone)]
struct Raw;
struct RawEnc;
struct RawDec;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

impl Encoder for RawEnc {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDec {
    type Item = ();
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        let n = src.remaining();
        src.advance(n);
        Ok(Some(()))
    }
}

/// A request body for a method: valid enough that an allowed caller gets
/// past the access check, aimed at nothing that exists (an unknown task id)
/// where the method changes something.
fn body(method: &str) -> Vec<u8> {
    use prost::Message;
    let nobody = uuid::Uuid::now_v7().to_string();
    match method {
        "ScheduleTask" => simple("keys-matrix", json!({})).encode_to_vec(),
        "ScheduleTasks" => pb::ScheduleTasksRequest {
            tasks: vec![simple("keys-matrix", json!({}))],
        }
        .encode_to_vec(),
        "GetTaskStatus" | "GetTaskLogs" | "CancelTask" | "RetryTask" => {
            // Field 1 is `task_id` in each of these requests.
            pb::GetTaskStatusRequest { task_id: nobody }.encode_to_vec()
        }
        "ReplayWorkflow" => pb::ReplayWorkflowRequest {
            task_id: nobody,
            from_step: "s".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "SignalTask" => pb::SignalTaskRequest {
            task_id: nobody,
            signal: "s".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "Disconnect" => pb::DisconnectRequest {
            user_id: "nobody-at-all".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "Work" => pb::WorkerMessage {
            msg: Some(pb::worker_message::Msg::Register(pb::Register {
                worker_name: "matrix".into(),
                task_names: vec!["a".into()],
                slots: 1,
                immediate_slots: 0,
            })),
        }
        .encode_to_vec(),
        "RevokeKey" => pb::RevokeKeyRequest {
            id: "key_nope".into(),
        }
        .encode_to_vec(),
        "GetSchedule" | "UpdateSchedule" | "DeleteSchedule" | "PauseSchedule"
        | "ResumeSchedule" | "TriggerSchedule" => {
            // Field 1 is `schedule_id` in each.
            pb::GetScheduleRequest {
                schedule_id: "nope".into(),
            }
            .encode_to_vec()
        }
        "PauseQueue" | "ResumeQueue" => pb::PauseQueueRequest {
            name: "keys-matrix-queue-that-is-not".into(),
        }
        .encode_to_vec(),
        // Every other request at its defaults: refused by validation (an
        // empty CreateKey, CreateSchedule, policy, definition) or a read.
        _ => Vec::new(),
    }
}

/// Calls `path` as `secret` and answers the code (OK when the call, or the
/// stream's opening, succeeded).
async fn call(ch: &Channel, path: &str, secret: Option<&str>) -> Code {
    let method = path.rsplit('/').next().unwrap_or_default().to_string();
    let mut g = tonic::client::Grpc::new(ch.clone());
    if let Err(e) = g.ready().await {
        panic!("channel not ready: {e}");
    }
    let p = http::uri::PathAndQuery::try_from(path.to_string()).unwrap();
    let code = |r: Result<(), Status>| r.err().map_or(Code::Ok, |s| s.code());
    match method.as_str() {
        "WatchTasks" => code(
            g.server_streaming(with(body(&method), secret), p, Raw)
                .await
                .map(drop),
        ),
        "Work" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
            tx.send(body(&method)).await.unwrap();
            let r = within(
                "the Work call to answer",
                SHORT,
                g.streaming(
                    with(tokio_stream::wrappers::ReceiverStream::new(rx), secret),
                    p,
                    Raw,
                ),
            )
            .await;
            drop(tx);
            code(r.map(drop))
        }
        _ => code(g.unary(with(body(&method), secret), p, Raw).await.map(drop)),
    }
}

/// Which callers each method admits: A an admin key, T the static token,
/// O operator, S scheduler, R reader, W worker (names a,b), U a reader bound
/// to a user, N an admin key of namespace `acme` (a tenant: no server-wide
/// call). Written out here, not read from the server's table.
const ADMITS: &[(&str, &str)] = &[
    ("ScheduleTask", "ATOSN"),
    ("ScheduleTasks", "ATOSN"),
    ("GetTaskStatus", "ATOSRUN"),
    ("GetTaskLogs", "ATOSRUN"),
    ("CancelTask", "ATOSN"),
    ("RetryTask", "ATON"),
    ("ReplayWorkflow", "ATON"),
    ("SignalTask", "ATON"),
    ("ListTasks", "ATORUN"),
    ("WatchTasks", "ATORUN"),
    ("Disconnect", "ATON"),
    ("GetMetrics", "ATOR"),
    ("ListWorkflows", "ATOR"),
    ("GetClusterStatus", "ATOR"),
    ("RegisterWorkflow", "AT"),
    ("Work", "ATWN"),
    ("CreateSchedule", "ATN"),
    ("UpdateSchedule", "ATN"),
    ("DeleteSchedule", "ATN"),
    ("GetSchedule", "ATORN"),
    ("ListSchedules", "ATORN"),
    ("PauseSchedule", "ATON"),
    ("ResumeSchedule", "ATON"),
    ("TriggerSchedule", "ATON"),
    ("SetConcurrencyPolicy", "ATN"),
    ("DeleteConcurrencyPolicy", "ATN"),
    ("SetRateLimit", "ATN"),
    ("DeleteRateLimit", "ATN"),
    ("ListFlowRules", "ATORN"),
    ("PauseQueue", "ATON"),
    ("ResumeQueue", "ATON"),
    ("CreateKey", "ATN"),
    ("ListKeys", "ATN"),
    ("RevokeKey", "ATN"),
    ("ListAuditEvents", "ATN"),
];

/// What the store holds that a call could change: tasks, audit events,
/// keys, schedules, flow rules.
async fn snapshot(server: &TestServer) -> (usize, usize, usize, usize, String) {
    let mut c = server.client().await;
    let tasks = c
        .list_tasks(with(
            pb::ListTasksRequest {
                page_size: 1000,
                ..Default::default()
            },
            Some(ROOT),
        ))
        .await
        .unwrap()
        .into_inner()
        .tasks
        .len();
    let keys = keys_client(server)
        .await
        .list_keys(with(pb::ListKeysRequest {}, Some(ROOT)))
        .await
        .unwrap()
        .into_inner()
        .keys
        .len();
    let ch = channel(&server.url).await;
    let schedules = pb::schedule_service_client::ScheduleServiceClient::new(ch.clone())
        .list_schedules(with(pb::ListSchedulesRequest::default(), Some(ROOT)))
        .await
        .unwrap()
        .into_inner()
        .schedules
        .len();
    let rules = pb::flow_service_client::FlowServiceClient::new(ch)
        .list_flow_rules(with(pb::ListFlowRulesRequest {}, Some(ROOT)))
        .await
        .unwrap()
        .into_inner();
    (
        tasks,
        audit(server).await.len(),
        keys,
        schedules,
        format!("{rules:?}"),
    )
}

#[tokio::test]
async fn every_method_answers_each_caller_as_its_role_says_and_refusals_change_nothing() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    // The test's list covers the server's table exactly.
    let mut table: Vec<String> = switchyard::keys::table::grpc_methods()
        .map(|(p, _, _)| p.rsplit('/').next().unwrap().to_string())
        .collect();
    let mut listed: Vec<String> = ADMITS.iter().map(|(m, _)| m.to_string()).collect();
    table.sort();
    listed.sort();
    assert_eq!(table, listed, "every method of the table is in the matrix");

    let (_, admin) = create(&server, pb::KeyRole::Admin, "", &[], None).await;
    let (_, operator) = create(&server, pb::KeyRole::Operator, "", &[], None).await;
    let (_, scheduler) = create(&server, pb::KeyRole::Scheduler, "", &[], None).await;
    let (_, reader) = create(&server, pb::KeyRole::Reader, "", &[], None).await;
    let (_, worker) = create(&server, pb::KeyRole::Worker, "", &["a", "b"], None).await;
    let (_, user_reader) = create(&server, pb::KeyRole::Reader, "u1", &[], None).await;
    let (_, tenant) = key_in(&server.url, ROOT, "acme", pb::KeyRole::Admin, &[]).await;
    let (_, expired) = create(
        &server,
        pb::KeyRole::Admin,
        "",
        &[],
        Some(Duration::from_secs(1)),
    )
    .await;
    let (revoked_id, revoked) = create(&server, pb::KeyRole::Admin, "", &[], None).await;
    keys_client(&server)
        .await
        .revoke_key(with(
            pb::RevokeKeyRequest {
                id: revoked_id.clone(),
            },
            Some(ROOT),
        ))
        .await
        .expect("RevokeKey");
    let ch = channel(&server.url).await;
    wait_until("the 1-second key to expire", SHORT, || {
        let ch = ch.clone();
        let expired = expired.clone();
        async move {
            call(
                &ch,
                "/switchyard.v1.OrchestratorService/GetMetrics",
                Some(&expired),
            )
            .await
                == Code::Unauthenticated
        }
    })
    .await;

    let callers: [(char, Option<&str>); 12] = [
        ('A', Some(&admin)),
        ('N', Some(&tenant)),
        ('T', Some(ROOT)),
        ('O', Some(&operator)),
        ('S', Some(&scheduler)),
        ('R', Some(&reader)),
        ('W', Some(&worker)),
        ('U', Some(&user_reader)),
        ('-', None),
        ('x', Some("sy_not-a-key")),
        ('e', Some(&expired)),
        ('r', Some(&revoked)),
    ];
    let path = |m: &str| {
        switchyard::keys::table::grpc_methods()
            .find(|(p, _, _)| p.ends_with(&format!("/{m}")))
            .map(|(p, _, _)| p)
            .unwrap()
    };

    // Pass 1: every refused pair, then the store is as it was.
    let before = snapshot(&server).await;
    for (method, admits) in ADMITS {
        for (who, secret) in &callers {
            if admits.contains(*who) {
                continue;
            }
            let got = call(&ch, path(method), *secret).await;
            let want = if "AOTSRWUN".contains(*who) {
                Code::PermissionDenied
            } else {
                Code::Unauthenticated
            };
            assert_eq!(got, want, "{method} as {who}");
        }
    }
    assert_eq!(
        snapshot(&server).await,
        before,
        "refused calls changed the store"
    );

    // Pass 2: every admitted pair gets past the check (the call itself may
    // fail: an unknown task is NOT_FOUND, an empty request INVALID_ARGUMENT).
    for (method, admits) in ADMITS {
        for (who, secret) in &callers {
            if !admits.contains(*who) {
                continue;
            }
            let got = call(&ch, path(method), *secret).await;
            assert!(
                !matches!(got, Code::PermissionDenied | Code::Unauthenticated),
                "{method} as {who}: {got:?}"
            );
        }
    }
    // Health and reflection stay open.
    assert!(health_serving(&server.url).await);
}

/// Which callers each admin route admits (the letters of [`ADMITS`];
/// `*`: every caller, no key needed). Written out here, not read from the
/// server's table.
const ADMIN_ADMITS: &[(&str, &str, &str)] = &[
    ("GET", "/internal/execution-manager/tasks", "ATORUN"),
    ("GET", "/internal/execution-manager/tasks/{id}", "ATOSRUN"),
    ("DELETE", "/internal/execution-manager/tasks/{id}", "ATOSN"),
    (
        "POST",
        "/internal/execution-manager/tasks/{id}/retry",
        "ATON",
    ),
    (
        "POST",
        "/internal/execution-manager/tasks/{id}/replay",
        "ATON",
    ),
    (
        "GET",
        "/internal/execution-manager/tasks/{id}/logs",
        "ATOSRUN",
    ),
    ("GET", "/internal/execution-manager/logs", "ATORUN"),
    ("GET", "/internal/execution-manager/events", "ATORUN"),
    ("GET", "/internal/execution-manager/caller", "ATOSRUN"),
    ("GET", "/internal/execution-manager/metrics", "ATOR"),
    ("GET", "/internal/execution-manager/workers", "ATOR"),
    ("GET", "/internal/execution-manager/cluster", "ATOR"),
    ("GET", "/internal/execution-manager/schedules", "ATOR"),
    ("GET", "/internal/execution-manager/flow", "ATOR"),
    (
        "POST",
        "/internal/execution-manager/flow/pause?name=q",
        "ATO",
    ),
    (
        "POST",
        "/internal/execution-manager/flow/resume?name=q",
        "ATO",
    ),
    ("GET", "/", "ATORUN"),
    ("GET", "/dashboard", "ATORUN"),
    ("GET", "/openapi.json", "ATOR"),
    ("GET", "/metrics", "ATOR"),
    ("GET", "/healthz", "*"),
    ("GET", "/readyz", "*"),
];

/// The admin HTTP API's matrix: every route × no key, a wrong, an expired
/// and a revoked key, each role, a user-bound key and a key of another
/// namespace answers 401 or 403 where the table refuses (and the refusals
/// change nothing), and gets past the check where it admits (an unknown
/// task is then 404).
#[tokio::test]
async fn every_admin_route_answers_each_caller_as_its_role_says_and_refusals_change_nothing() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let (_, admin) = create(&server, pb::KeyRole::Admin, "", &[], None).await;
    let (_, operator) = create(&server, pb::KeyRole::Operator, "", &[], None).await;
    let (_, scheduler) = create(&server, pb::KeyRole::Scheduler, "", &[], None).await;
    let (_, reader) = create(&server, pb::KeyRole::Reader, "", &[], None).await;
    let (_, worker) = create(&server, pb::KeyRole::Worker, "", &["a"], None).await;
    let (_, user_reader) = create(&server, pb::KeyRole::Reader, "u1", &[], None).await;
    let (_, tenant) = key_in(&server.url, ROOT, "acme", pb::KeyRole::Admin, &[]).await;
    let (_, expired) = create(
        &server,
        pb::KeyRole::Admin,
        "",
        &[],
        Some(Duration::from_secs(1)),
    )
    .await;
    let (revoked_id, revoked) = create(&server, pb::KeyRole::Admin, "", &[], None).await;
    keys_client(&server)
        .await
        .revoke_key(with(pb::RevokeKeyRequest { id: revoked_id }, Some(ROOT)))
        .await
        .expect("RevokeKey");
    let http = reqwest::Client::new();
    let base = server.admin_url();
    let status = |method: &str, path: &str, secret: Option<&str>| {
        let id = uuid::Uuid::now_v7().to_string();
        let url = format!("{base}{}", path.replace("{id}", &id));
        let mut r = http.request(method.parse().unwrap(), url);
        if let Some(s) = secret {
            r = r.bearer_auth(s);
        }
        async move {
            r.send()
                .await
                .expect("the admin server answers")
                .status()
                .as_u16()
        }
    };
    wait_until("the 1-second key to expire", SHORT, || {
        let f = status("GET", "/internal/execution-manager/metrics", Some(&expired));
        async move { f.await == 401 }
    })
    .await;
    let callers: [(char, Option<&str>); 12] = [
        ('A', Some(&admin)),
        ('N', Some(&tenant)),
        ('T', Some(ROOT)),
        ('O', Some(&operator)),
        ('S', Some(&scheduler)),
        ('R', Some(&reader)),
        ('W', Some(&worker)),
        ('U', Some(&user_reader)),
        ('-', None),
        ('x', Some("sy_not-a-key")),
        ('e', Some(&expired)),
        ('r', Some(&revoked)),
    ];
    let before = snapshot(&server).await;
    for (method, path, admits) in ADMIN_ADMITS {
        for (who, secret) in &callers {
            let got = status(method, path, *secret).await;
            if *admits == "*" || admits.contains(*who) {
                assert!(!matches!(got, 401 | 403), "{method} {path} as {who}: {got}");
            } else {
                let want = if "AOTSRWUN".contains(*who) { 403 } else { 401 };
                assert_eq!(got, want, "{method} {path} as {who}");
            }
        }
    }
    // The admitted calls named unknown tasks or a pause of an unused name;
    // the refused ones changed nothing at all.
    let after = snapshot(&server).await;
    assert_eq!(
        (after.0, after.2, after.3),
        (before.0, before.2, before.3),
        "tasks, keys and schedules unchanged"
    );
}

#[tokio::test]
async fn user_bound_and_scheduler_keys_see_and_cancel_only_their_tasks() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let (_, u1_operator) = create(&server, pb::KeyRole::Operator, "u1", &[], None).await;
    let (sched_id, scheduler) = create(&server, pb::KeyRole::Scheduler, "", &[], None).await;
    let mut c = server.client().await;
    let owned = |user: &str, name: &str| {
        let mut r = simple(name, json!({}));
        r.options.get_or_insert_with(Default::default).user_id = user.into();
        r
    };
    let theirs = c
        .schedule_task(with(owned("u2", "keys-scope"), Some(ROOT)))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let mine = c
        .schedule_task(with(owned("u1", "keys-scope"), Some(ROOT)))
        .await
        .unwrap()
        .into_inner()
        .task_id;

    // Another user's task is NOT_FOUND to a user-bound key, read or cancel.
    let err = c
        .get_task_status(with(
            pb::GetTaskStatusRequest {
                task_id: theirs.clone(),
            },
            Some(&u1_operator),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = c
        .cancel_task(with(
            pb::CancelTaskRequest {
                task_id: theirs.clone(),
                ..Default::default()
            },
            Some(&u1_operator),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = c
        .get_task_logs(with(
            pb::GetTaskLogsRequest {
                task_id: theirs.clone(),
                ..Default::default()
            },
            Some(&u1_operator),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // Disconnecting another user is refused.
    let err = c
        .disconnect(with(
            pb::DisconnectRequest {
                user_id: "u2".into(),
                ..Default::default()
            },
            Some(&u1_operator),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Scheduling for another user is refused; for none, the task is u1's.
    let err = c
        .schedule_task(with(owned("u2", "keys-scope"), Some(&u1_operator)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let made = c
        .schedule_task(with(simple("keys-scope", json!({})), Some(&u1_operator)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.status.unwrap().user_id, "u1");
    // Lists show only u1's tasks, even when asking for u2's.
    let list = |filter: Option<pb::TaskFilter>| {
        let mut c = c.clone();
        let key = u1_operator.clone();
        async move {
            c.list_tasks(with(
                pb::ListTasksRequest {
                    filter,
                    page_size: 100,
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner()
            .tasks
        }
    };
    let all = list(None).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().all(|t| t.user_id == "u1"));
    let asked = list(Some(pb::TaskFilter {
        user_id: "u2".into(),
        ..Default::default()
    }))
    .await;
    assert!(asked.is_empty(), "{asked:?}");
    // u2's task is untouched.
    assert_eq!(root_state(&server, &theirs).await, pb::TaskState::Pending);

    // A scheduler key sees and cancels only the tasks it scheduled.
    let err = c
        .get_task_status(with(
            pb::GetTaskStatusRequest {
                task_id: mine.clone(),
            },
            Some(&scheduler),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let own = c
        .schedule_task(with(simple("keys-scope", json!({})), Some(&scheduler)))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    c.get_task_status(with(
        pb::GetTaskStatusRequest {
            task_id: own.clone(),
        },
        Some(&scheduler),
    ))
    .await
    .expect("its own task");
    c.cancel_task(with(
        pb::CancelTaskRequest {
            task_id: own.clone(),
            reason: "no longer needed".into(),
            ..Default::default()
        },
        Some(&scheduler),
    ))
    .await
    .expect("cancels its own task");

    // The audit log and the task's log name the key of the cancel.
    let events = audit(&server).await;
    let cancel = events
        .iter()
        .find(|e| e.action == "cancel" && e.target == own)
        .unwrap_or_else(|| panic!("a cancel event: {events:?}"));
    assert_eq!(cancel.key_id, sched_id);
    assert_eq!(cancel.detail, "no longer needed");
    assert!(
        !events.iter().any(|e| e.key_id.starts_with("sy_")
            || e.detail.contains(&scheduler)
            || e.target.contains(&scheduler)),
        "no secret in the audit log"
    );
    wait_until("the task's log to name the key", SHORT, || {
        let (own, sched_id) = (own.clone(), sched_id.clone());
        let server = &server;
        async move {
            root_log(server, &own)
                .await
                .iter()
                .any(|l| l.contains(&format!("cancel by key {sched_id}")))
        }
    })
    .await;
}

/// A task's state, read with the root token.
async fn root_state(server: &TestServer, id: &str) -> pb::TaskState {
    let s = server
        .client()
        .await
        .get_task_status(with(
            pb::GetTaskStatusRequest {
                task_id: id.to_string(),
            },
            Some(ROOT),
        ))
        .await
        .expect("GetTaskStatus with the root token")
        .into_inner()
        .status
        .expect("a status");
    state(&s)
}

/// A task's log lines, read with the root token.
async fn root_log(server: &TestServer, id: &str) -> Vec<String> {
    server
        .client()
        .await
        .get_task_logs(with(
            pb::GetTaskLogsRequest {
                task_id: id.to_string(),
                ..Default::default()
            },
            Some(ROOT),
        ))
        .await
        .expect("GetTaskLogs with the root token")
        .into_inner()
        .lines
        .into_iter()
        .map(|l| l.message)
        .collect()
}

#[tokio::test]
async fn a_worker_key_registers_only_its_names_and_revocation_closes_its_stream() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let (id, secret) = create(&server, pb::KeyRole::Worker, "", &["a", "b"], None).await;
    let register = |names: &[&str]| {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let url = server.url.clone();
        let secret = secret.clone();
        async move {
            let mut w = WorkerServiceClient::new(channel(&url).await);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(wmsg(pb::worker_message::Msg::Register(pb::Register {
                worker_name: "keyed".into(),
                task_names: names,
                slots: 1,
                immediate_slots: 0,
            })))
            .await
            .unwrap();
            let r = w
                .work(with(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    Some(&secret),
                ))
                .await;
            (tx, r)
        }
    };
    let (_tx, refused) = register(&["a", "c"]).await;
    let err = refused.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("\"c\""), "{err:?}");

    let (_tx, ok) = register(&["a", "b"]).await;
    let mut stream = ok.expect("registers a,b").into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(
        first.msg,
        Some(pb::server_message::Msg::Registered(_))
    ));

    keys_client(&server)
        .await
        .revoke_key(with(pb::RevokeKeyRequest { id: id.clone() }, Some(ROOT)))
        .await
        .unwrap();
    let revoked_at = tokio::time::Instant::now();
    let end = within("the revoked worker's stream to end", SHORT, async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        }
    })
    .await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "closed within a second, took {:?}",
        revoked_at.elapsed()
    );
    let e = end.expect("ends with a status");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // And the key opens no new stream.
    let (_tx, again) = register(&["a"]).await;
    assert_eq!(again.unwrap_err().code(), Code::Unauthenticated);

    let events = audit(&server).await;
    assert!(
        events
            .iter()
            .any(|e| e.action == "worker_register" && e.key_id == id && e.detail.contains("a,b")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.action == "key_revoke" && e.target == id && e.key_id == "token"),
        "{events:?}"
    );
}

#[tokio::test]
async fn bad_key_requests_are_invalid_arguments_naming_the_field() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let mut k = keys_client(&server).await;
    let req =
        |role: i32, user: &str, names: Vec<String>, expires: Option<prost_types::Duration>| {
            with(
                pb::CreateKeyRequest {
                    role,
                    user_id: user.into(),
                    names,
                    expires_in: expires,
                    ..Default::default()
                },
                Some(ROOT),
            )
        };
    let reader = pb::KeyRole::Reader as i32;
    let worker = pb::KeyRole::Worker as i32;
    let cases = [
        ("no role", req(0, "", vec![], None), "role"),
        ("unknown role", req(99, "", vec![], None), "role"),
        ("negative role", req(-1, "", vec![], None), "role"),
        (
            "an expiry in the past",
            req(
                reader,
                "",
                vec![],
                Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
            ),
            "expires_in",
        ),
        (
            "a zero expiry",
            req(reader, "", vec![], Some(prost_types::Duration::default())),
            "expires_in",
        ),
        (
            "an expiry of a century",
            req(
                reader,
                "",
                vec![],
                Some(prost_types::Duration {
                    seconds: 100 * 366 * 86_400,
                    nanos: 0,
                }),
            ),
            "expires_in",
        ),
        (
            "a user over 256 bytes",
            req(reader, &"u".repeat(257), vec![], None),
            "user_id",
        ),
        (
            "a user with a control character",
            req(reader, "a\u{0}b", vec![], None),
            "user_id",
        ),
        (
            "too many names",
            req(
                worker,
                "",
                (0..101).map(|i| format!("n{i}")).collect(),
                None,
            ),
            "names",
        ),
        (
            "a worker key without names",
            req(worker, "", vec![], None),
            "names",
        ),
        (
            "names on a reader key",
            req(reader, "", vec!["a".into()], None),
            "names",
        ),
        (
            "a bad name",
            req(worker, "", vec!["a".into(), "bad name!".into()], None),
            "names[1]",
        ),
        (
            "an over-long name",
            req(worker, "", vec!["n".repeat(10_000)], None),
            "names[0]",
        ),
        (
            "a worker key bound to a user",
            req(worker, "u1", vec!["a".into()], None),
            "user_id",
        ),
    ];
    for (case, r, field) in cases {
        assert_invalid(case, k.create_key(r).await, field);
    }
    assert_invalid(
        "a page of 1001",
        k.list_audit_events(with(
            pb::ListAuditEventsRequest {
                page_size: 1001,
                before: 0,
            },
            Some(ROOT),
        ))
        .await,
        "page_size",
    );
    assert_invalid(
        "an empty id",
        k.revoke_key(with(pb::RevokeKeyRequest { id: String::new() }, Some(ROOT)))
            .await,
        "id",
    );
    assert_invalid(
        "an id of 10 kB",
        k.revoke_key(with(
            pb::RevokeKeyRequest {
                id: "k".repeat(10_000),
            },
            Some(ROOT),
        ))
        .await,
        "id",
    );
    // Odd authorization values: refused, never a crash; the scheme is
    // case-insensitive.
    let ch = channel(&server.url).await;
    let metrics = "/switchyard.v1.OrchestratorService/GetMetrics";
    let long = "k".repeat(8_000);
    for (value, want) in [
        (format!("Basic {ROOT}"), Code::Unauthenticated),
        ("Bearer".to_string(), Code::Unauthenticated),
        ("Bearer    ".to_string(), Code::Unauthenticated),
        (format!("Bearer {long}"), Code::Unauthenticated),
        (format!("Bearer {ROOT}x"), Code::Unauthenticated),
        (format!("bearer   {ROOT}  "), Code::Ok),
    ] {
        let mut g = tonic::client::Grpc::new(ch.clone());
        g.ready().await.unwrap();
        let mut r = Request::new(Vec::<u8>::new());
        r.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        let got = g
            .unary(r, http::uri::PathAndQuery::from_static(metrics), Raw)
            .await
            .err()
            .map_or(Code::Ok, |s| s.code());
        assert_eq!(
            got,
            want,
            "authorization {:?}",
            &value[..value.len().min(40)]
        );
    }

    // A key's own label cannot be forged by a scheduling caller.
    let (_, scheduler) = create(&server, pb::KeyRole::Scheduler, "", &[], None).await;
    let mut forged = simple("keys-forged", json!({}));
    forged
        .options
        .get_or_insert_with(Default::default)
        .labels
        .insert("switchyard.key".into(), "key_someone_else".into());
    let mut c = server.client().await;
    let t = c
        .schedule_task(with(forged.clone(), Some(ROOT)))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !t.status.unwrap().labels.contains_key("switchyard.key"),
        "an unscoped caller's forged label is dropped"
    );
    let err = c
        .get_task_status(with(
            pb::GetTaskStatusRequest { task_id: t.task_id },
            Some(&scheduler),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Nothing was created by the refused requests: one key (the scheduler).
    let keys = k
        .list_keys(with(pb::ListKeysRequest {}, Some(ROOT)))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1, "{keys:?}");
}

#[tokio::test]
async fn an_open_server_closes_with_its_first_key() {
    // An open server (no token, no key) serves everyone, until a key exists.
    let server = TestServer::start().await;
    let mut c = server.client().await;
    c.get_metrics(pb::GetMetricsRequest {}).await.expect("open");
    // Its first key must be an admin's: another role would lock every
    // caller out of key management. Refused, and the server stays open.
    let err = keys_client(&server)
        .await
        .create_key(pb::CreateKeyRequest {
            role: pb::KeyRole::Reader as i32,
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("first key must be an admin key"),
        "{err:?}"
    );
    c.get_metrics(pb::GetMetricsRequest {})
        .await
        .expect("still open after the refusal");
    let r = keys_client(&server)
        .await
        .create_key(pb::CreateKeyRequest {
            role: pb::KeyRole::Admin as i32,
            ..Default::default()
        })
        .await
        .expect("an open server creates its first key")
        .into_inner();
    let err = c.get_metrics(pb::GetMetricsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    c.get_metrics(with(pb::GetMetricsRequest {}, Some(&r.secret)))
        .await
        .expect("with the key");
    let events = audit_with(&server, &r.secret).await;
    assert!(
        events
            .iter()
            .any(|e| e.action == "key_create" && e.key_id == "open"),
        "{events:?}"
    );
}

async fn audit_with(server: &TestServer, secret: &str) -> Vec<pb::AuditEvent> {
    keys_client(server)
        .await
        .list_audit_events(with(pb::ListAuditEventsRequest::default(), Some(secret)))
        .await
        .expect("ListAuditEvents")
        .into_inner()
        .events
}

#[tokio::test]
async fn admin_routes_follow_the_roles() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let (_, reader) = create(&server, pb::KeyRole::Reader, "", &[], None).await;
    let (op_id, operator) = create(&server, pb::KeyRole::Operator, "", &[], None).await;
    let (_, worker) = create(&server, pb::KeyRole::Worker, "", &["a"], None).await;
    let mut c = server.client().await;
    let id = c
        .schedule_task(with(simple("keys-admin", json!({})), Some(ROOT)))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let http = reqwest::Client::new();
    let task = format!(
        "{}/internal/execution-manager/tasks/{id}",
        server.admin_url()
    );
    let code =
        |r: reqwest::RequestBuilder| async move { r.send().await.unwrap().status().as_u16() };
    assert_eq!(code(http.get(&task)).await, 401);
    assert_eq!(code(http.get(&task).bearer_auth("nope")).await, 401);
    assert_eq!(code(http.get(&task).bearer_auth(&worker)).await, 403);
    assert_eq!(code(http.get(&task).bearer_auth(&reader)).await, 200);
    assert_eq!(code(http.delete(&task).bearer_auth(&reader)).await, 403);
    assert_eq!(
        root_state(&server, &id).await,
        pb::TaskState::Pending,
        "a refused cancel changes nothing"
    );
    assert_eq!(code(http.delete(&task).bearer_auth(&operator)).await, 200);
    let events = audit(&server).await;
    assert!(
        events
            .iter()
            .any(|e| e.action == "cancel" && e.target == id && e.key_id == op_id),
        "{events:?}"
    );
    assert_eq!(
        code(http.get(format!("{}/healthz", server.admin_url()))).await,
        200
    );
}

/// The admin API narrows as the gRPC methods do: a user-bound key lists,
/// reads and streams its user's tasks only (another's is 404), a scheduler
/// key reads and cancels the tasks it scheduled and lists nothing, a key of
/// another namespace sees that namespace only; none of them reaches a
/// server-wide route; `…/caller` says what each may do.
#[tokio::test]
async fn admin_routes_narrow_user_bound_scheduler_and_namespace_keys() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let (_, alice) = create(&server, pb::KeyRole::Operator, "alice", &[], None).await;
    let (_, sched) = create(&server, pb::KeyRole::Scheduler, "", &[], None).await;
    let tenant = keys_client(&server)
        .await
        .create_key(with(
            pb::CreateKeyRequest {
                role: pb::KeyRole::Reader as i32,
                namespace: "acme".into(),
                ..Default::default()
            },
            Some(ROOT),
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let c = server.client().await;
    let owned = |user: &str| {
        let mut r = simple("keys-admin-scope", json!({}));
        r.options.get_or_insert_with(Default::default).user_id = user.into();
        r
    };
    let schedule = |r: pb::ScheduleTaskRequest, secret: &str| {
        let mut c = c.clone();
        let secret = secret.to_string();
        async move {
            c.schedule_task(with(r, Some(&secret)))
                .await
                .unwrap()
                .into_inner()
                .task_id
        }
    };
    let of_alice = schedule(owned("alice"), ROOT).await;
    let of_bob = schedule(owned("bob"), ROOT).await;
    let mine = schedule(simple("keys-admin-scope", json!({})), &sched).await;
    let http = reqwest::Client::new();
    let api = format!("{}/internal/execution-manager", server.admin_url());
    let get = |path: String, secret: String| {
        let http = http.clone();
        async move {
            let r = http.get(path).bearer_auth(secret).send().await.unwrap();
            let code = r.status().as_u16();
            (
                code,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["tasks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| t["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    // alice's key: her task only, bob's 404, even when asking for bob's.
    let (code, list) = get(format!("{api}/tasks"), alice.clone()).await;
    assert_eq!((code, ids(&list)), (200, vec![of_alice.clone()]));
    let (code, list) = get(format!("{api}/tasks?userId=bob"), alice.clone()).await;
    assert_eq!((code, ids(&list)), (200, vec![]));
    assert_eq!(
        get(format!("{api}/tasks/{of_bob}"), alice.clone()).await.0,
        404
    );
    assert_eq!(
        get(format!("{api}/tasks/{of_bob}/logs"), alice.clone())
            .await
            .0,
        404
    );
    assert_eq!(
        get(format!("{api}/tasks/{of_alice}"), alice.clone())
            .await
            .0,
        200
    );
    let cancel = |id: String, secret: String| {
        let http = http.clone();
        let api = api.clone();
        async move {
            http.delete(format!("{api}/tasks/{id}"))
                .bearer_auth(secret)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(cancel(of_bob.clone(), alice.clone()).await, 404);
    assert_eq!(root_state(&server, &of_bob).await, pb::TaskState::Pending);
    for route in ["metrics", "workers", "schedules", "flow", "cluster"] {
        assert_eq!(
            get(format!("{api}/{route}"), alice.clone()).await.0,
            403,
            "{route}"
        );
    }
    let (code, me) = get(format!("{api}/caller"), alice.clone()).await;
    assert_eq!(code, 200);
    assert_eq!(
        (
            me["role"].as_str(),
            me["userId"].as_str(),
            me["serverWide"].as_bool(),
            me["canCancel"].as_bool()
        ),
        (Some("operator"), Some("alice"), Some(false), Some(true))
    );
    // The scheduler key: its own task, not another's, and no list.
    assert_eq!(
        get(format!("{api}/tasks/{mine}"), sched.clone()).await.0,
        200
    );
    assert_eq!(
        get(format!("{api}/tasks/{of_alice}"), sched.clone())
            .await
            .0,
        404
    );
    assert_eq!(get(format!("{api}/tasks"), sched.clone()).await.0, 403);
    assert_eq!(cancel(of_alice.clone(), sched.clone()).await, 404);
    assert_eq!(cancel(mine.clone(), sched.clone()).await, 200);
    // A key of namespace acme: acme's tasks only (none), default's 404.
    let (code, list) = get(format!("{api}/tasks"), tenant.clone()).await;
    assert_eq!((code, ids(&list)), (200, vec![]));
    assert_eq!(
        get(format!("{api}/tasks/{of_alice}"), tenant.clone())
            .await
            .0,
        404
    );
    assert_eq!(get(format!("{api}/metrics"), tenant.clone()).await.0, 403);
    let (_, me) = get(format!("{api}/caller"), tenant.clone()).await;
    assert_eq!(me["namespace"].as_str(), Some("acme"));
    assert_eq!(me["canCancel"].as_bool(), Some(false));
}

/// The Rust worker library sends its token (`WorkerBuilder::token`): with
/// a worker key for its name it registers and completes a task; without a
/// token, or with a key for other names, it stops at once, refused.
#[tokio::test]
async fn the_rust_worker_library_serves_with_a_worker_key() {
    use switchyard_client::worker::{TaskContext, Worker, WorkerError};
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let (_, secret) = create(&server, pb::KeyRole::Worker, "", &["keyed.echo"], None).await;
    let worker = |token: Option<&str>, name: &str| {
        let mut b =
            Worker::builder(server.url.clone()).handler(name, |ctx: TaskContext| async move {
                Ok(ctx.payload().clone())
            });
        if let Some(t) = token {
            b = b.token(t);
        }
        b.build()
    };
    for (token, name, want) in [
        (None, "keyed.echo", Code::Unauthenticated),
        (Some(secret.as_str()), "keyed.other", Code::PermissionDenied),
    ] {
        let refused = within("a refused worker to stop", LONG, async {
            worker(token, name).run(std::future::pending()).await
        })
        .await;
        assert!(
            matches!(&refused, Err(WorkerError::Refused(s)) if s.code() == want),
            "{token:?} {name}: {refused:?}"
        );
    }
    let (handle, _) = spawn_worker(worker(Some(&secret), "keyed.echo")).await;
    let mut client = connect(&server.url).await;
    let id = client
        .schedule_task(with(simple("keyed.echo", json!({"n": 3})), Some(ROOT)))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let done = within("the task to complete", LONG, async {
        loop {
            let s = client
                .get_task_status(with(
                    pb::GetTaskStatusRequest {
                        task_id: id.clone(),
                    },
                    Some(ROOT),
                ))
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            if s.state == pb::TaskState::Completed as i32 {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(done.result.is_some(), "{done:?}");
    handle.shutdown();
}
