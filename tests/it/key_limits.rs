//! Limits per API key (issue 23, item 5), on the store the suite runs on
//! (SQLite, or PostgreSQL with `SWITCHYARD_TEST_STORE=postgres`): a key's
//! rate answers RESOURCE_EXHAUSTED with `google.rpc.RetryInfo` once its
//! burst is spent (429 with `Retry-After` on the admin API), and a call
//! fits again after the delay; a payload over a key's limit is
//! RESOURCE_EXHAUSTED naming it (ScheduleTasks refuses that item alone);
//! other keys are not held back; the limits are listed, stored and hold
//! again after a restart.

use std::time::Duration;

use serde_json::json;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use switchyard::pb;
use switchyard::pb::keys_service_client::KeysServiceClient;

use crate::common::*;

const ROOT: &str = "root-token";

fn with<T>(msg: T, secret: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    r
}

async fn keys_client(url: &str) -> KeysServiceClient<Channel> {
    KeysServiceClient::new(channel(url).await)
}

/// Creates a key with limits: (id, secret).
async fn create(url: &str, role: pb::KeyRole, rps: f64, payload: i64) -> (String, String) {
    let r = keys_client(url)
        .await
        .create_key(with(
            pb::CreateKeyRequest {
                role: role as i32,
                max_requests_per_second: rps,
                max_payload_bytes: payload,
                ..Default::default()
            },
            ROOT,
        ))
        .await
        .expect("CreateKey with the root token")
        .into_inner();
    let key = r.key.expect("the key");
    assert_eq!(key.max_requests_per_second, rps);
    assert_eq!(key.max_payload_bytes, payload);
    (key.id, r.secret)
}

/// The retry delay of a rate refusal, after checking its code, message and
/// details.
fn over_rate(s: &Status, key: &str) -> Duration {
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("max_requests_per_second"), "{s:?}");
    let q = s.get_details_quota_failure().expect("QuotaFailure details");
    assert_eq!(q.violations[0].subject, format!("key:{key}"));
    assert_eq!(q.violations[0].description, "max_requests_per_second");
    s.get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo with a delay")
}

#[tokio::test]
async fn a_keys_rate_is_resource_exhausted_with_a_retry_delay() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    // Two a second: a burst of two, then one every half second.
    let (id, slow) = create(&server.url, pb::KeyRole::Reader, 2.0, 0).await;
    let (_, other) = create(&server.url, pb::KeyRole::Reader, 0.0, 0).await;
    let mut c = server.client().await;
    let metrics = |s: &str| with(pb::GetMetricsRequest {}, s);
    c.get_metrics(metrics(&slow)).await.expect("the first call");
    c.get_metrics(metrics(&slow))
        .await
        .expect("the burst's second");
    let err = c.get_metrics(metrics(&slow)).await.unwrap_err();
    let delay = over_rate(&err, &id);
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_millis(500),
        "{delay:?}"
    );
    // Another key, and the static token, are not held back.
    for _ in 0..20 {
        c.get_metrics(metrics(&other))
            .await
            .expect("an unlimited key");
        c.get_metrics(metrics(ROOT)).await.expect("the token");
    }
    // After the delay the next call fits. (The delay is what is under
    // test: waiting it out is the check, not a synchronisation.)
    tokio::time::sleep(delay + Duration::from_millis(20)).await;
    c.get_metrics(metrics(&slow))
        .await
        .expect("after the delay");
    // A stream counts once, when it opens.
    let err = c
        .watch_tasks(with(pb::WatchTasksRequest::default(), &slow))
        .await
        .unwrap_err();
    over_rate(&err, &id);

    // The admin API: 429 with Retry-After, in whole seconds.
    let (_, http_key) = create(&server.url, pb::KeyRole::Reader, 0.5, 0).await;
    let http = reqwest::Client::new();
    let tasks = format!("{}/internal/execution-manager/tasks", server.admin_url());
    let first = http
        .get(&tasks)
        .bearer_auth(&http_key)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let second = http
        .get(&tasks)
        .bearer_auth(&http_key)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status().as_u16(), 429);
    assert_eq!(
        second
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["code"], "RESOURCE_EXHAUSTED");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_requests_per_second"),
        "{body}"
    );
}

#[tokio::test]
async fn a_payload_over_a_keys_limit_is_resource_exhausted_naming_it() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let (id, key) = create(&server.url, pb::KeyRole::Scheduler, 0.0, 100).await;
    let mut c = server.client().await;
    let small = simple("limits-small", json!({"n": 1}));
    let big = simple("limits-big", json!({"blob": "x".repeat(200)}));
    c.schedule_task(with(small.clone(), &key))
        .await
        .expect("a payload under the limit");
    let err = c.schedule_task(with(big.clone(), &key)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_payload_bytes = 100"), "{err:?}");
    let q = err.get_details_quota_failure().expect("QuotaFailure");
    assert_eq!(q.violations[0].subject, format!("key:{id}"));
    assert_eq!(q.violations[0].description, "max_payload_bytes");
    assert!(
        err.get_details_retry_info().is_none(),
        "retrying the same payload never helps: no RetryInfo"
    );
    // In a bulk, only the item over the limit is refused.
    let r = c
        .schedule_tasks(with(
            pb::ScheduleTasksRequest {
                tasks: vec![small.clone(), big.clone()],
            },
            &key,
        ))
        .await
        .expect("ScheduleTasks answers per item")
        .into_inner();
    use pb::schedule_tasks_result::Outcome;
    assert!(matches!(r.results[0].outcome, Some(Outcome::Scheduled(_))));
    match &r.results[1].outcome {
        Some(Outcome::Error(e)) => {
            assert_eq!(e.code, Code::ResourceExhausted as i32, "{e:?}");
            assert!(e.message.contains("max_payload_bytes"), "{e:?}");
        }
        other => panic!("the big item: {other:?}"),
    }
    // The refused tasks were not stored: the key sees two tasks.
    let listed = c
        .list_tasks(with(pb::ListTasksRequest::default(), ROOT))
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["limits-small", "limits-small"], "{names:?}");
    // The static token has no such limit.
    c.schedule_task(with(big, ROOT)).await.expect("the token");
}

/// A schedule's template sends its payload at every fire: an admin key's
/// payload limit holds for CreateSchedule and UpdateSchedule too.
#[tokio::test]
async fn a_schedules_template_over_a_keys_payload_limit_is_resource_exhausted() {
    use switchyard::pb::schedule_service_client::ScheduleServiceClient;
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let (id, key) = create(&server.url, pb::KeyRole::Admin, 0.0, 100).await;
    let mut sc = ScheduleServiceClient::new(channel(&server.url).await);
    let spec = |payload: serde_json::Value| pb::ScheduleSpec {
        timing: Some(pb::schedule_spec::Timing::Interval(dur(
            Duration::from_secs(3600),
        ))),
        task: Some(simple("limits-sched", payload)),
        ..Default::default()
    };
    let big = json!({"blob": "x".repeat(200)});
    let err = sc
        .create_schedule(with(
            pb::CreateScheduleRequest {
                schedule_id: "limits-a".into(),
                spec: Some(spec(big.clone())),
                paused: true,
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_payload_bytes = 100"), "{err:?}");
    let q = err.get_details_quota_failure().expect("QuotaFailure");
    assert_eq!(q.violations[0].subject, format!("key:{id}"));
    // Nothing was created; a small template is.
    let err = sc
        .get_schedule(with(
            pb::GetScheduleRequest {
                schedule_id: "limits-a".into(),
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    sc.create_schedule(with(
        pb::CreateScheduleRequest {
            schedule_id: "limits-a".into(),
            spec: Some(spec(json!({"n": 1}))),
            paused: true,
        },
        &key,
    ))
    .await
    .expect("a template under the limit");
    let err = sc
        .update_schedule(with(
            pb::UpdateScheduleRequest {
                schedule_id: "limits-a".into(),
                spec: Some(spec(big.clone())),
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // The static token has no such limit.
    sc.update_schedule(with(
        pb::UpdateScheduleRequest {
            schedule_id: "limits-a".into(),
            spec: Some(spec(big)),
            ..Default::default()
        },
        ROOT,
    ))
    .await
    .expect("the token");
}

#[tokio::test]
async fn a_keys_limits_are_stored_and_hold_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [("SWITCHYARD_AUTH__TOKENS", ROOT)];
    let server = ServerProcess::start(port, dir.path(), &env).await;
    let (id, key) = create(&server.url, pb::KeyRole::Scheduler, 1.0, 64).await;
    assert!(server.terminate().await, "a clean stop");

    let server = ServerProcess::start(port, dir.path(), &env).await;
    let listed = keys_client(&server.url)
        .await
        .list_keys(with(pb::ListKeysRequest {}, ROOT))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let k = listed.iter().find(|k| k.id == id).expect("the key");
    assert_eq!((k.max_requests_per_second, k.max_payload_bytes), (1.0, 64));
    let mut c = connect(&server.url).await;
    let err = c
        .schedule_task(with(
            simple("limits-restart", json!({"blob": "x".repeat(100)})),
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_payload_bytes"), "{err:?}");
    // That call spent the burst of one: the next is over the rate.
    let err = c
        .schedule_task(with(simple("limits-restart", json!({})), &key))
        .await
        .unwrap_err();
    over_rate(&err, &id);
    assert!(server.terminate().await);
}

/// Runs the CLI against `url` with `args` and the extra environment `env`:
/// (success, stdout, stderr).
async fn cli(url: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = within(
        "the CLI",
        LONG,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .args(["--server", url])
            .env_remove("SWITCHYARD_SERVER")
            .env_remove("SWITCHYARD_TOKEN")
            .envs(env.iter().copied())
            .output(),
    )
    .await
    .expect("run the CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn every_cli_command_sends_the_global_token() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let url = server.url.as_str();
    let (_, scheduler) = create(url, pb::KeyRole::Scheduler, 0.0, 0).await;
    let schedule = ["task", "schedule", "cli-auth", "--json"];
    let (ok, _, err) = cli(url, &schedule, &[]).await;
    assert!(!ok, "no token: refused");
    assert!(err.to_lowercase().contains("authorization"), "{err}");
    // `--token` anywhere on the line.
    let (ok, out, err) = cli(
        url,
        &[&schedule[..], &["--token", &scheduler]].concat(),
        &[],
    )
    .await;
    assert!(ok, "{err}");
    let scheduled: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let id = scheduled["taskId"].as_str().expect("a task id").to_string();
    // SWITCHYARD_TOKEN, for a read of the task the key scheduled.
    let (ok, out, err) = cli(
        url,
        &["task", "status", &id, "--json"],
        &[("SWITCHYARD_TOKEN", &scheduler)],
    )
    .await;
    assert!(ok && out.contains(&id), "{out} {err}");
    // A wrong token is refused as the server says.
    let (ok, _, err) = cli(url, &["task", "status", &id, "--token", "nope"], &[]).await;
    assert!(!ok && err.contains("not valid"), "{err}");
    // The keys commands take the same flag, before or after the
    // subcommand, and the new limit flags.
    let (ok, out, err) = cli(
        url,
        &[
            "--token",
            ROOT,
            "keys",
            "create",
            "--role",
            "reader",
            "--rps",
            "2.5",
            "--max-payload",
            "1000",
            "--json",
        ],
        &[],
    )
    .await;
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(created["key"]["maxRequestsPerSecond"], 2.5, "{created}");
    assert_eq!(created["key"]["maxPayloadBytes"], 1000, "{created}");
    let (ok, out, err) = cli(url, &["keys", "list", "--token", ROOT], &[]).await;
    assert!(
        ok && out.contains("rps 2.5") && out.contains("max payload 1000 B"),
        "{out} {err}"
    );
    let (ok, _, err) = cli(
        url,
        &["keys", "create", "--role", "reader", "--rps", "-1"],
        &[("SWITCHYARD_TOKEN", ROOT)],
    )
    .await;
    assert!(!ok && err.contains("max_requests_per_second"), "{err}");
    let (ok, out, err) = cli(url, &["audit", "--json"], &[("SWITCHYARD_TOKEN", ROOT)]).await;
    assert!(ok && out.contains("key_create"), "{out} {err}");
}
