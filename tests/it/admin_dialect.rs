//! One JSON dialect (issue 19, item 5) against a real server: the admin
//! HTTP API, its events and the CLI's `--json` write camelCase names,
//! lower-case enum words and numbers as numbers; the filters take the
//! clients' names; `GET …/logs` without a task id is the execution log;
//! `switchyard --json` prints what the HTTP API answers for the same task;
//! `GET /openapi.json` describes what the routes write.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use switchyard::pb;

use crate::common::*;

const API: &str = "/internal/execution-manager";

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::builder()
        .timeout(SHORT)
        .build()
        .expect("an HTTP client")
        .get(format!("{}{path}", server.admin_url()))
        .send()
        .await
        .expect("the admin server answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("a body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn owned(name: &str, user: &str) -> pb::ScheduleTaskRequest {
    simple_with(
        name,
        json!({ "n": 1 }),
        pb::TaskOptions {
            user_id: user.into(),
            priority: 7,
            ..Default::default()
        },
    )
}

async fn cancel(c: &mut Client, id: &str, reason: &str) {
    c.cancel_task(pb::CancelTaskRequest {
        task_id: id.into(),
        reason: reason.into(),
        force: false,
    })
    .await
    .expect("CancelTask");
}

#[tokio::test]
async fn the_admin_api_speaks_lower_case_words_numbers_and_the_clients_filter_names() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mine = schedule(&mut c, owned("dialect-task", "dialect-user")).await;
    let _other = schedule(&mut c, owned("dialect-task", "someone-else")).await;

    let (st, list) = get(&server, &format!("{API}/tasks?userId=dialect-user")).await;
    assert_eq!(st, 200, "{list}");
    let tasks = list["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 1, "userId filters: {list}");
    let t = &tasks[0];
    assert_eq!(t["id"], mine.as_str());
    assert_eq!(t["state"], "pending", "{t}");
    assert_eq!(t["source"], "embedded", "{t}");
    assert_eq!(t["taskType"], "simple", "{t}");
    assert_eq!(t["waitingReason"], "no_worker", "{t}");
    assert_eq!(t["priority"], 7);
    assert!(t["sequence"].is_u64(), "a 64-bit number is a number: {t}");
    assert!(t["userId"] == "dialect-user" && t.get("user_id").is_none());
    let created = t["createdAt"].as_str().expect("a timestamp");
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok() && created.ends_with('Z'),
        "RFC 3339 in UTC: {created}"
    );
    assert_eq!(t["startedAt"], Value::Null, "an unset timestamp is null");

    for q in [
        "sessionId=nobody",
        "scheduleId=no-such-schedule",
        "state=running",
        "source=bullmq",
        "type=complex",
    ] {
        let (st, none) = get(&server, &format!("{API}/tasks?userId=dialect-user&{q}")).await;
        assert_eq!(st, 200, "{q}: {none}");
        assert_eq!(none["tasks"], json!([]), "{q}");
    }
    let (_, by_id) = get(&server, &format!("{API}/tasks?taskId={mine}")).await;
    assert_eq!(by_id["tasks"][0]["id"], mine.as_str());

    cancel(&mut c, &mine, "done with it").await;
    let (_, m) = get(&server, &format!("{API}/metrics")).await;
    assert!(m["lastSequence"].is_u64(), "{m}");
    assert!(m["total"]["cancelled"].is_u64(), "{m}");
    let (_, d) = get(&server, &format!("{API}/tasks/{mine}")).await;
    assert_eq!(d["status"]["state"], "cancelled");
    server.stop().await;
}

#[tokio::test]
async fn execution_logs_without_a_task_id_are_the_newest_tasks_lines() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let a = schedule(&mut c, owned("logs-a", "log-user")).await;
    let b = schedule(&mut c, owned("logs-b", "log-user")).await;
    let other = schedule(&mut c, owned("logs-c", "log-other")).await;
    for id in [&a, &b, &other] {
        cancel(&mut c, id, &format!("reason for {id}")).await;
    }

    let (st, log) = get(&server, &format!("{API}/logs")).await;
    assert_eq!(st, 200, "the guide's execution logs: {log}");
    let lines = log["lines"].as_array().expect("lines");
    let ids: BTreeSet<&str> = lines.iter().filter_map(|l| l["taskId"].as_str()).collect();
    assert_eq!(
        ids,
        BTreeSet::from([a.as_str(), b.as_str(), other.as_str()]),
        "{log}"
    );
    for l in lines {
        assert!(l["line"].is_u64() && l["time"].is_string(), "{l}");
    }
    let times: Vec<&str> = lines.iter().filter_map(|l| l["time"].as_str()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first");
    assert!(lines.iter().any(|l| l["message"]
        .as_str()
        .unwrap_or("")
        .contains(&format!("reason for {b}"))));

    let (_, mine) = get(&server, &format!("{API}/logs?userId=log-user")).await;
    let ids: BTreeSet<&str> = mine["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["taskId"].as_str())
        .collect();
    assert_eq!(ids, BTreeSet::from([a.as_str(), b.as_str()]));

    let (_, newest) = get(&server, &format!("{API}/logs?tasks=1")).await;
    let ids: BTreeSet<&str> = newest["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["taskId"].as_str())
        .collect();
    assert_eq!(ids, BTreeSet::from([other.as_str()]), "the newest task");

    let (_, two) = get(&server, &format!("{API}/logs?limit=2")).await;
    assert_eq!(two["lines"].as_array().unwrap().len(), 2, "{two}");
    assert_eq!(two["hasMore"], true);
    assert_eq!(
        two["lines"][1],
        lines[lines.len() - 1],
        "the newest lines are kept"
    );

    let (st, later) = get(&server, &format!("{API}/logs?afterLine=1")).await;
    assert_eq!(st, 200, "{later}");
    assert!(
        later["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["line"].as_u64() > Some(1)),
        "each task's lines after 1: {later}"
    );
    let (st, bad) = get(&server, &format!("{API}/logs?tasks=101")).await;
    assert_eq!((st, bad["field"].as_str()), (400, Some("tasks")), "{bad}");
    server.stop().await;
}

/// `switchyard --json --server URL args…`'s output as JSON documents (one,
/// or one per line).
async fn cli(server: &TestServer, args: &[&str]) -> Vec<Value> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--json", "--server", &server.url])
        .args(args)
        .output()
        .await
        .expect("the CLI runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => vec![v],
        Err(_) => text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect(),
    }
}

#[tokio::test]
async fn the_cli_json_is_what_the_http_api_answers_for_the_same_task() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let id = schedule(&mut c, owned("cli-dialect", "cli-user")).await;
    cancel(&mut c, &id, "compare the two").await;

    let (_, http) = get(&server, &format!("{API}/tasks/{id}")).await;
    let shown = cli(&server, &["task", "status", &id]).await;
    assert_eq!(shown, vec![http.clone()], "task status --json");
    assert_eq!(shown[0]["status"]["state"], "cancelled");
    assert!(shown[0]["status"]["sequence"].is_u64());

    let (_, http) = get(&server, &format!("{API}/tasks?name=cli-dialect")).await;
    let listed = cli(&server, &["task", "list", "--name", "cli-dialect"]).await;
    assert_eq!(listed, vec![http], "task list --json");

    let (_, http) = get(&server, &format!("{API}/tasks/{id}/logs")).await;
    let lines = cli(&server, &["task", "logs", &id]).await;
    assert_eq!(
        Value::Array(lines),
        http["lines"],
        "task logs --json, one line each"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_what_the_routes_write() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let id = schedule(&mut c, owned("openapi-task", "openapi-user")).await;
    let (st, doc) = get(&server, "/openapi.json").await;
    assert_eq!(st, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/tasks",
        "/tasks/{id}",
        "/tasks/{id}/logs",
        "/logs",
        "/metrics",
        "/workers",
        "/cluster",
        "/schedules",
        "/flow",
        "/events",
    ] {
        assert!(
            doc["paths"][format!("{API}{path}")]["get"].is_object(),
            "{path} is described"
        );
    }
    assert!(doc["paths"][format!("{API}/tasks/{{id}}")]["delete"].is_object());
    for path in ["/flow/pause", "/flow/resume"] {
        let post = &doc["paths"][format!("{API}{path}")]["post"];
        assert!(
            post["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "name")),
            "{path} takes name: {post}"
        );
    }
    let (_, rules) = get(&server, &format!("{API}/flow")).await;
    assert_eq!(
        rules.as_object().map(|o| o.keys().collect::<BTreeSet<_>>()),
        doc["components"]["schemas"]["ListFlowRulesResponse"]["properties"]
            .as_object()
            .map(|o| o.keys().collect::<BTreeSet<_>>()),
        "{rules}"
    );
    let schemas = &doc["components"]["schemas"];
    // The keys a real answer has are the schema's, every one required.
    let (_, list) = get(&server, &format!("{API}/tasks?taskId={id}")).await;
    let task = list["tasks"][0].as_object().expect("a task");
    let props = schemas["TaskStatus"]["properties"]
        .as_object()
        .expect("TaskStatus");
    assert_eq!(
        task.keys().collect::<BTreeSet<_>>(),
        props.keys().collect::<BTreeSet<_>>()
    );
    assert_eq!(
        schemas["TaskStatus"]["properties"]["state"]["enum"]
            .as_array()
            .map(|a| a.contains(&json!("pending"))),
        Some(true)
    );
    let params = doc["paths"][format!("{API}/tasks")]["get"]["parameters"]
        .as_array()
        .expect("parameters");
    let limit = params.iter().find(|p| p["name"] == "limit").expect("limit");
    assert_eq!(limit["schema"]["maximum"], 1000, "bounds are stated");
    server.stop().await;
}
