//! The admin HTTP server against a real server: every route with its filters
//! and pages, errors with their field, cancel by DELETE, the event stream
//! with resume and heartbeats, Prometheus metrics that follow what tasks do,
//! bearer tokens on both transports, and the dashboard page.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use switchyard::pb;
use switchyard::worker::{TaskContext, Worker};
use tonic::Code;

use crate::common::*;

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

const API: &str = "/internal/execution-manager";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(SHORT)
        .build()
        .expect("an HTTP client")
}

/// GET `path` on the admin server: status and JSON body.
async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    send(http().get(format!("{}{path}", server.admin_url()))).await
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("the admin server answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Asserts a 400 naming `field`.
#[track_caller]
fn assert_bad(case: &str, (status, body): &(u16, Value), field: &str) {
    assert_eq!(*status, 400, "{case}: {body}");
    assert_eq!(body["code"], "INVALID_ARGUMENT", "{case}: {body}");
    assert_eq!(body["field"], field, "{case}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: {body}"
    );
}

fn ids(list: &Value) -> Vec<String> {
    list["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("a task list: {list}"))
        .iter()
        .map(|t| t["id"].as_str().expect("an id").to_string())
        .collect()
}

fn with_user(name: &str, user: &str, p: Value) -> pb::ScheduleTaskRequest {
    simple_with(
        name,
        p,
        pb::TaskOptions {
            user_id: user.into(),
            ..Default::default()
        },
    )
}

/// One server-sent event (or comment).
#[derive(Debug, Default, Clone)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
    comment: Option<String>,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }

    /// The task id of a `task` event.
    fn task_id(&self) -> String {
        self.json()["status"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("a task event: {self:?}"))
            .to_string()
    }
}

/// A reader of an event stream.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(url: &str, headers: &[(&str, &str)]) -> Sse {
        let mut req = reqwest::Client::new().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = within("the event stream to open", SHORT, req.send())
            .await
            .expect("the admin server answers");
        assert_eq!(resp.status().as_u16(), 200, "{url}");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// The next event or comment.
    async fn next(&mut self, what: &str) -> SseEvent {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut e = SseEvent::default();
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        e.comment = Some(c.trim().to_string());
                    } else if let Some((k, v)) = line.split_once(':') {
                        let v = v.strip_prefix(' ').unwrap_or(v);
                        match k {
                            "event" => e.event = v.to_string(),
                            "id" => e.id = Some(v.to_string()),
                            "data" => e.data.push_str(v),
                            _ => {}
                        }
                    }
                }
                return e;
            }
            let chunk = within(what, SHORT, self.resp.chunk())
                .await
                .expect("the event stream reads")
                .unwrap_or_else(|| panic!("the event stream ended while waiting for {what}"));
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events until the first of `kind`, which is returned last.
    async fn until(&mut self, kind: &str) -> Vec<SseEvent> {
        let mut out = Vec::new();
        loop {
            let e = self.next(&format!("a `{kind}` event")).await;
            let done = e.event == kind;
            out.push(e);
            if done {
                return out;
            }
        }
    }

    /// `task` events until one for each of `ids` has arrived.
    async fn tasks_for(&mut self, ids: &[&str]) -> Vec<SseEvent> {
        let mut want: HashSet<&str> = ids.iter().copied().collect();
        let mut out = Vec::new();
        while !want.is_empty() {
            let e = self.next(&format!("events for {want:?}")).await;
            if e.event == "task" {
                want.remove(e.task_id().as_str());
                out.push(e);
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Routes.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn task_list_filters_pages_and_detail() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut a = Vec::new();
    for i in 0..5 {
        a.push(schedule(&mut c, with_user("adm-a", "u1", json!({ "i": i }))).await);
    }
    let mut b = Vec::new();
    for i in 0..3 {
        b.push(schedule(&mut c, with_user("adm-b", "u2", json!({ "i": i }))).await);
    }

    let (st, list) = get(&server, &format!("{API}/tasks?userId=u1")).await;
    assert_eq!(st, 200, "{list}");
    let got: HashSet<_> = ids(&list).into_iter().collect();
    assert_eq!(got, a.iter().cloned().collect::<HashSet<_>>());
    assert_eq!(list["nextPageToken"], "");
    let t = &list["tasks"][0];
    assert_eq!(t["name"], "adm-a");
    assert_eq!(t["userId"], "u1");
    assert_eq!(t["state"], "pending");
    assert_eq!(t["taskType"], "simple");
    assert_eq!(t["source"], "embedded");
    assert!(t["sequence"].is_u64(), "numbers are numbers: {t}");

    // Every filter, in short and proto spellings, repeated or as a list,
    // under the clients' names and the old ones.
    for q in [
        "name=adm-b",
        "userId=u2&state=pending",
        "user_id=u2&state=pending",
        "name=adm-b&state=pending&state=completed",
        "name=adm-b&state=TASK_STATE_PENDING&type=simple&source=embedded",
        "name=nope,adm-b&type=TASK_TYPE_SIMPLE",
        "state=completed,pending&name=adm-b",
    ] {
        let (st, list) = get(&server, &format!("{API}/tasks?{q}")).await;
        assert_eq!(st, 200, "{q}: {list}");
        let got: HashSet<_> = ids(&list).into_iter().collect();
        assert_eq!(got, b.iter().cloned().collect::<HashSet<_>>(), "{q}");
    }
    for q in [
        "name=adm-b&state=running",
        "name=adm-b&type=complex",
        "user=u1&name=adm-b",
        "userId=u1&name=adm-b",
        "name=adm-b&source=bullmq",
    ] {
        let (st, list) = get(&server, &format!("{API}/tasks?{q}")).await;
        assert_eq!(st, 200, "{q}: {list}");
        assert!(ids(&list).is_empty(), "{q}: {list}");
    }
    let (_, list) = get(&server, &format!("{API}/tasks?taskId={},{}", a[0], b[0])).await;
    assert_eq!(ids(&list).len(), 2, "{list}");

    // Pages of 3, newest first, until the token runs out.
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let (st, page) = get(
            &server,
            &format!("{API}/tasks?name=adm-a,adm-b&limit=3&pageToken={token}"),
        )
        .await;
        assert_eq!(st, 200, "{page}");
        let page_ids = ids(&page);
        assert!(page_ids.len() <= 3);
        seen.extend(page_ids);
        token = page["nextPageToken"].as_str().expect("a token").to_string();
        if token.is_empty() {
            break;
        }
    }
    let all: HashSet<_> = a.iter().chain(&b).cloned().collect();
    assert_eq!(seen.len(), 8, "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), all);
    let mut sorted = seen.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(seen, sorted, "newest first");
    // `cursor` (and `page_token`) is the same as `pageToken`.
    let (_, p1) = get(&server, &format!("{API}/tasks?name=adm-a&limit=2")).await;
    let tok = p1["nextPageToken"].as_str().unwrap().to_string();
    let (_, p2) = get(
        &server,
        &format!("{API}/tasks?name=adm-a&limit=2&cursor={tok}"),
    )
    .await;
    assert_eq!(ids(&p2), seen_after(&ids(&p1), &a));

    // Detail: status and payload.
    let (st, d) = get(&server, &format!("{API}/tasks/{}", b[1])).await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["status"]["id"], b[1].as_str());
    assert_eq!(d["status"]["name"], "adm-b");
    assert_eq!(
        d["payload"],
        json!({ "i": 1 }),
        "integral numbers print as integers"
    );
    assert!(d["status"]["createdAt"].as_str().is_some(), "{d}");

    // Errors name the field.
    assert_bad(
        "unknown parameter",
        &get(&server, &format!("{API}/tasks?colour=red")).await,
        "colour",
    );
    assert_bad(
        "limit",
        &get(&server, &format!("{API}/tasks?limit=5000")).await,
        "limit",
    );
    assert_bad(
        "limit",
        &get(&server, &format!("{API}/tasks?limit=ten")).await,
        "limit",
    );
    assert_bad(
        "state",
        &get(&server, &format!("{API}/tasks?state=sleeping")).await,
        "state",
    );
    assert_bad(
        "type",
        &get(&server, &format!("{API}/tasks?type=huge")).await,
        "type",
    );
    assert_bad(
        "source",
        &get(&server, &format!("{API}/tasks?source=cron")).await,
        "source",
    );
    assert_bad(
        "name",
        &get(&server, &format!("{API}/tasks?name=a%20b")).await,
        "name",
    );
    assert_bad(
        "token",
        &get(&server, &format!("{API}/tasks?pageToken=xyz")).await,
        "pageToken",
    );
    assert_bad(
        "token under its old name",
        &get(&server, &format!("{API}/tasks?page_token=xyz")).await,
        "page_token",
    );
    assert_bad(
        "id",
        &get(&server, &format!("{API}/tasks/not-an-id")).await,
        "id",
    );
    let (st, body) = get(
        &server,
        &format!("{API}/tasks/01937c2e-0000-7000-8000-000000000000"),
    )
    .await;
    assert_eq!(st, 404, "{body}");
    assert_eq!(body["code"], "NOT_FOUND");
    assert!(body.get("field").is_none(), "{body}");
    let (st, body) = get(&server, &format!("{API}/nothing")).await;
    assert_eq!((st, body["code"].as_str()), (404, Some("NOT_FOUND")));
    server.stop().await;
}

/// The ids of `all` (newest first) after the page `first`.
fn seen_after(first: &[String], all: &[String]) -> Vec<String> {
    let mut sorted = all.to_vec();
    sorted.sort_by(|x, y| y.cmp(x));
    sorted
        .into_iter()
        .filter(|i| !first.contains(i))
        .take(2)
        .collect()
}

#[tokio::test]
async fn delete_cancels_and_logs_tell_why() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let id = schedule(&mut c, simple("adm-cancel", json!({}))).await;

    let url = format!(
        "{}{API}/tasks/{id}?reason=no%20longer%20needed",
        server.admin_url()
    );
    let (st, body) = send(http().delete(&url)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["outcome"], "cancelled");
    assert_eq!(body["status"]["state"], "cancelled");
    assert_eq!(
        state(&status(&mut c, &id).await),
        pb::TaskState::Cancelled,
        "gRPC sees the cancel"
    );
    let (st, again) = send(http().delete(&url)).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["outcome"], "already_finished");

    // Logs, by either route, with paging.
    let (st, logs) = get(&server, &format!("{API}/tasks/{id}/logs")).await;
    assert_eq!(st, 200, "{logs}");
    let lines = logs["lines"].as_array().expect("lines");
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .unwrap_or("")
            .contains("no longer needed")),
        "{logs}"
    );
    // `…/logs` with one task id: the same lines, each naming its task.
    for q in [format!("taskId={id}"), format!("task_id={id}")] {
        let (_, by_query) = get(&server, &format!("{API}/logs?{q}")).await;
        let mut stripped = by_query.clone();
        for l in stripped["lines"].as_array_mut().expect("lines") {
            assert_eq!(l["taskId"], id.as_str(), "{by_query}");
            l.as_object_mut().unwrap().remove("taskId");
        }
        assert_eq!(stripped, logs, "{q}");
    }
    let (_, first) = get(&server, &format!("{API}/logs?taskId={id}&limit=1")).await;
    assert_eq!(first["lines"].as_array().unwrap().len(), 1);
    assert_eq!(first["hasMore"], lines.len() > 1);
    let after = first["lines"][0]["line"].as_u64().expect("a line number");
    for q in ["afterLine", "after_line"] {
        let (_, rest) = get(&server, &format!("{API}/logs?taskId={id}&{q}={after}")).await;
        assert_eq!(
            rest["lines"].as_array().unwrap().len(),
            lines.len() - 1,
            "{q}"
        );
    }
    assert_bad(
        "bad force",
        &send(http().delete(format!(
            "{}{API}/tasks/{id}?force=maybe",
            server.admin_url()
        )))
        .await,
        "force",
    );
    let long = "x".repeat(1100);
    assert_bad(
        "long reason",
        &send(http().delete(format!(
            "{}{API}/tasks/{id}?reason={long}",
            server.admin_url()
        )))
        .await,
        "reason",
    );
    let (st, _) = send(http().delete(format!(
        "{}{API}/tasks/01937c2e-0000-7000-8000-000000000000",
        server.admin_url()
    )))
    .await;
    assert_eq!(st, 404);
    server.stop().await;
}

/// `POST …/flow/pause` and `…/flow/resume` pause and resume a task name as
/// `PauseQueue`/`ResumeQueue` do (the gRPC listing and the task's waiting
/// reason agree), `GET …/flow` lists the rules, and bad input is a 400
/// naming its parameter.
#[tokio::test]
async fn flow_pause_and_resume_by_http() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut flow = pb::flow_service_client::FlowServiceClient::new(channel(&server.url).await);
    let url = |route: &str, q: &str| format!("{}{API}/flow/{route}?{q}", server.admin_url());

    let (st, body) = send(http().post(url("pause", "name=adm-paused"))).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body, json!({"already": false}));
    let (_, again) = send(http().post(url("pause", "name=adm-paused"))).await;
    assert_eq!(again, json!({"already": true}));
    let (st, rules) = get(&server, &format!("{API}/flow")).await;
    assert_eq!(st, 200, "{rules}");
    assert_eq!(rules["paused"], json!(["adm-paused"]), "{rules}");
    let listed = flow
        .list_flow_rules(pb::ListFlowRulesRequest {})
        .await
        .expect("ListFlowRules")
        .into_inner();
    assert_eq!(
        listed.paused,
        vec!["adm-paused".to_string()],
        "gRPC sees it"
    );

    // A task of the paused name waits, saying why.
    let id = schedule(&mut c, simple("adm-paused", json!({}))).await;
    let (_, t) = get(&server, &format!("{API}/tasks/{id}")).await;
    assert_eq!(t["status"]["state"], "pending", "{t}");
    assert_eq!(t["status"]["waitingReason"], "queue_paused", "{t}");

    let (st, body) = send(http().post(url("resume", "name=adm-paused"))).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body, json!({"wasPaused": true}));
    let (_, again) = send(http().post(url("resume", "name=adm-paused"))).await;
    assert_eq!(again, json!({"wasPaused": false}));
    let (_, rules) = get(&server, &format!("{API}/flow")).await;
    assert_eq!(rules["paused"], json!([]), "{rules}");
    wait_until("the task is no longer held", SHORT, || {
        let server = &server;
        let id = id.clone();
        async move {
            let (_, t) = get(server, &format!("{API}/tasks/{id}")).await;
            t["status"]["waitingReason"] != "queue_paused"
        }
    })
    .await;

    let long = "n".repeat(switchyard::domain::rules::MAX_NAME_BYTES + 1);
    for route in ["pause", "resume"] {
        for (case, q, field) in [
            ("no name", String::new(), "name"),
            ("an empty name", "name=".to_string(), "name"),
            ("a space", "name=a%20b".to_string(), "name"),
            ("too long", format!("name={long}"), "name"),
            (
                "an unknown parameter",
                "name=x&bogus=1".to_string(),
                "bogus",
            ),
        ] {
            assert_bad(
                &format!("{route}: {case}"),
                &send(http().post(url(route, &q))).await,
                field,
            );
        }
    }
    let (_, rules) = get(&server, &format!("{API}/flow")).await;
    assert_eq!(
        rules["paused"],
        json!([]),
        "nothing bad was paused: {rules}"
    );
    assert_bad(
        "flow takes no parameter",
        &get(&server, &format!("{API}/flow?name=x")).await,
        "name",
    );
    server.stop().await;
}

#[tokio::test]
async fn results_workers_and_metrics_json() {
    let server = TestServer::start().await;
    let (_worker, _) = spawn_worker(
        Worker::builder(&server.url)
            .name("adm-worker")
            .concurrency(3)
            .handler("adm-echo", |ctx: TaskContext| async move {
                Ok(json!({ "echo": ctx.payload().clone() }))
            })
            .handler("adm-fail", |_ctx: TaskContext| async move {
                Err(switchyard::worker::HandlerError::fatal("it broke").with_kind("broken"))
            })
            .build(),
    )
    .await;
    let mut c = server.client().await;
    let ok = schedule(&mut c, simple("adm-echo", json!({ "n": 7 }))).await;
    let bad = schedule(&mut c, simple("adm-fail", json!({}))).await;
    wait_state(&mut c, &ok, pb::TaskState::Completed, SHORT).await;
    wait_state(&mut c, &bad, pb::TaskState::Failed, SHORT).await;

    let (_, d) = get(&server, &format!("{API}/tasks/{ok}")).await;
    assert_eq!(d["status"]["result"], json!({ "echo": { "n": 7 } }));
    assert_eq!(d["status"]["progress"], 100.0);
    let (_, d) = get(&server, &format!("{API}/tasks/{bad}")).await;
    assert_eq!(d["status"]["state"], "failed");
    assert_eq!(d["status"]["lastError"]["kind"], "broken");
    assert!(d["status"]["lastError"]["message"]
        .as_str()
        .unwrap()
        .contains("it broke"));

    let (st, cl) = get(&server, &format!("{API}/cluster")).await;
    assert_eq!(st, 200, "{cl}");
    if postgres_store(server.data_dir()).is_some() {
        assert_eq!(cl["store"], "postgres");
        assert_eq!(cl["leader"]["replica"], cl["replicaId"], "{cl}");
        assert_eq!(cl["leases"][0]["term"], 1, "{cl}");
    } else {
        assert_eq!(cl["store"], "sqlite");
        assert_eq!(
            (cl["replicaId"].as_str(), cl["leader"].is_null()),
            (Some("embedded"), true)
        );
    }
    let (st, e) = get(&server, &format!("{API}/cluster?bogus=1")).await;
    assert_eq!(st, 400, "an unknown parameter: {e}");

    let (st, w) = get(&server, &format!("{API}/workers")).await;
    assert_eq!(st, 200, "{w}");
    let remote: Vec<&Value> = w["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["local"] == false)
        .collect();
    assert_eq!(remote.len(), 1, "{w}");
    assert_eq!(remote[0]["name"], "adm-worker");
    let mut names: Vec<&str> = remote[0]["taskNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["adm-echo", "adm-fail"]);
    assert_eq!(remote[0]["running"], 0);
    assert!(remote[0]["freeSlots"].as_u64().unwrap() >= 3, "{w}");

    // The JSON metrics are GetMetrics'.
    let (st, m) = get(&server, &format!("{API}/metrics")).await;
    assert_eq!(st, 200, "{m}");
    let grpc = c
        .get_metrics(pb::GetMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m["workersConnected"], grpc.workers_connected);
    assert_eq!(m["byName"]["adm-echo"]["completed"], 1);
    assert_eq!(m["byName"]["adm-fail"]["failed"], 1);
    assert_eq!(m["lastSequence"], grpc.last_sequence, "a number");
    assert!(m["queues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["name"] == "adm-echo" && q["workers"] == 1));
    server.stop().await;
}

#[tokio::test]
async fn workflow_detail_lists_its_steps() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    c.register_workflow(pb::RegisterWorkflowRequest {
        definition: "name = \"adm-flow\"\n[[steps]]\nid = \"wait\"\ntimer = \"50ms\"\n\
                     [[steps]]\nid = \"approve\"\nsignal = \"go\"\ntimeout = \"1m\"\n"
            .into(),
        format: "toml".into(),
    })
    .await
    .expect("RegisterWorkflow");
    let id = schedule(
        &mut c,
        pb::ScheduleTaskRequest {
            name: "adm-flow-run".into(),
            payload: Some(payload(json!({}))),
            task_type: pb::TaskType::Complex as i32,
            options: Some(pb::TaskOptions::default()),
            target: Some(pb::schedule_task_request::Target::Complex(
                pb::ComplexTarget {
                    workflow_type: "adm-flow".into(),
                    ..Default::default()
                },
            )),
        },
    )
    .await;
    let d = wait_for("the timer step to complete", SHORT, || {
        let s = &server;
        let id = id.clone();
        async move {
            let (_, d) = get(s, &format!("{API}/tasks/{id}")).await;
            (d["status"]["steps"][0]["state"] == "completed").then_some(d)
        }
    })
    .await;
    let steps = d["status"]["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{d}");
    assert_eq!(steps[0]["id"], "wait");
    assert_eq!(steps[1]["id"], "approve");
    assert_eq!(steps[1]["state"], "running", "{d}");
    assert_eq!(d["status"]["taskType"], "complex");
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Events.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn event_stream_filters_and_resumes() {
    let server = TestServer::start_with(|c| c.admin.heartbeat = Duration::from_millis(200)).await;
    let mut c = server.client().await;
    let url = format!("{}{API}/events?userId=sse-1", server.admin_url());
    let mut sse = Sse::open(&url, &[]).await;
    let live = sse.until("live").await;
    assert_eq!(live.len(), 1, "nothing before live: {live:?}");
    assert!(live[0].id.is_some());

    let other = schedule(&mut c, with_user("adm-sse", "sse-2", json!({}))).await;
    let t1 = schedule(&mut c, with_user("adm-sse", "sse-1", json!({}))).await;
    let t2 = schedule(&mut c, with_user("adm-sse", "sse-1", json!({}))).await;
    let got = sse.tasks_for(&[&t1, &t2]).await;
    assert!(
        got.iter().all(|e| e.task_id() != other),
        "filtered: {got:?}"
    );
    let first = &got[0];
    assert_eq!(first.json()["kind"], "scheduled");
    assert_eq!(first.json()["status"]["userId"], "sse-1");
    assert_eq!(
        first.id.clone(),
        first.json()["sequence"].as_u64().map(|n| n.to_string()),
        "the event id is the sequence, a number in the data"
    );
    let last_id = got.last().unwrap().id.clone().expect("an id");

    // Idle: heartbeat comments keep the connection alive.
    let beat = sse.next("a heartbeat").await;
    assert_eq!(beat.comment.as_deref(), Some("heartbeat"), "{beat:?}");
    drop(sse);

    // Missed while away: a cancel of t1, and a new task.
    c.cancel_task(pb::CancelTaskRequest {
        task_id: t1.clone(),
        reason: String::new(),
        force: false,
    })
    .await
    .expect("cancel");
    let t3 = schedule(&mut c, with_user("adm-sse", "sse-1", json!({}))).await;

    for resume in [
        Sse::open(&url, &[("Last-Event-ID", last_id.as_str())]).await,
        Sse::open(&format!("{url}&after={last_id}"), &[]).await,
    ] {
        let mut resume = resume;
        let events = resume.until("live").await;
        let tasks: Vec<_> = events.iter().filter(|e| e.event == "task").collect();
        let kinds: Vec<(String, String)> = tasks
            .iter()
            .map(|e| (e.task_id(), e.json()["kind"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (t1.clone(), "cancelled".to_string()),
                (t3.clone(), "scheduled".to_string()),
            ],
            "exactly what was missed, in order"
        );
    }

    // A snapshot of the active tasks first, when asked.
    let mut snap = Sse::open(&format!("{url}&snapshot=true"), &[]).await;
    let events = snap.until("live").await;
    let snapshot: HashSet<String> = events
        .iter()
        .filter(|e| e.event == "task")
        .map(|e| {
            assert_eq!(e.json()["kind"], "snapshot");
            assert!(e.id.is_none(), "snapshots are no resume position");
            e.task_id()
        })
        .collect();
    assert_eq!(snapshot, HashSet::from([t2.clone(), t3.clone()]));

    assert_bad(
        "bad Last-Event-ID",
        &send(http().get(&url).header("Last-Event-ID", "abc")).await,
        "Last-Event-ID",
    );
    assert_bad(
        "bad filter",
        &get(&server, &format!("{API}/events?state=asleep")).await,
        "state",
    );
    server.stop().await;
}

#[tokio::test]
async fn event_stream_resumes_past_the_history_with_a_gap() {
    let server = TestServer::start_with(|c| c.scheduler.event_history = 4).await;
    let mut c = server.client().await;
    let url = format!("{}{API}/events?name=adm-gap", server.admin_url());
    let mut sse = Sse::open(&url, &[]).await;
    sse.until("live").await;
    let first = schedule(&mut c, simple("adm-gap", json!({}))).await;
    let got = sse.tasks_for(&[&first]).await;
    let pos = got[0].id.clone().expect("an id");
    drop(sse);
    let mut later = Vec::new();
    for _ in 0..10 {
        later.push(schedule(&mut c, simple("adm-gap", json!({}))).await);
    }
    let mut resume = Sse::open(&url, &[("Last-Event-ID", pos.as_str())]).await;
    let events = resume.until("live").await;
    assert_eq!(events[0].event, "gap", "{events:?}");
    assert!(events[0].json()["oldestKept"].is_u64(), "{:?}", events[0]);
    let replayed: HashSet<String> = events
        .iter()
        .filter(|e| e.event == "task")
        .map(SseEvent::task_id)
        .collect();
    assert_eq!(replayed, later.iter().cloned().collect::<HashSet<_>>());
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Prometheus.
// ---------------------------------------------------------------------------

/// One sample of the exposition: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Checks the OpenMetrics text line by line (every family has one `# TYPE`
/// before its samples; every sample belongs to the family above it, with
/// the suffixes its type allows; label values are quoted; values are
/// numbers; `# EOF` ends it) and returns the samples.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut family: Option<(String, String)> = None;
    let mut seen = HashSet::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" {
            assert!(lines.peek().is_none(), "# EOF is the last line");
            return out;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                [
                    "gauge",
                    "counter",
                    "histogram",
                    "summary",
                    "info",
                    "unknown"
                ]
                .contains(&kind),
                "{line}"
            );
            assert!(seen.insert(name.to_string()), "one TYPE per family: {line}");
            family = Some((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (fam, kind) = family
            .as_ref()
            .unwrap_or_else(|| panic!("a sample before any TYPE: {line}"));
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("not a number: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((n, l)) => {
                let l = l
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let mut labels = Vec::new();
                let mut rest = l;
                while !rest.is_empty() {
                    let (k, v) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("label: {line}"));
                    let end = v
                        .find('"')
                        .unwrap_or_else(|| panic!("unquoted label: {line}"));
                    labels.push((k.to_string(), v[..end].to_string()));
                    rest = v[end + 1..].trim_start_matches(',');
                }
                (n.to_string(), labels)
            }
        };
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        assert!(
            suffixes.iter().any(|s| name == format!("{fam}{s}")),
            "{name} does not belong to the {kind} {fam}: {line}"
        );
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    panic!("no # EOF at the end:\n{text}");
}

async fn scrape(server: &TestServer) -> (String, Vec<Sample>) {
    let resp = http()
        .get(format!("{}/metrics", server.admin_url()))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = resp.text().await.expect("a body");
    let samples = parse_exposition(&text);
    (text, samples)
}

/// The value of the series `name` with (at least) these labels; for a
/// histogram, pass `name_count`.
fn sample(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.iter()
        .find(|x| {
            x.name == name
                && labels
                    .iter()
                    .all(|(k, v)| x.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|x| x.value)
}

/// A tiny webhook target: answers 200, or 503 for `/down`.
async fn webhook_target() -> std::net::SocketAddr {
    use axum::http::StatusCode;
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(|| async { "{\"ok\":true}" }))
        .route(
            "/down",
            axum::routing::post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "later") }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

fn webhook(name: &str, url: String) -> pb::ScheduleTaskRequest {
    pb::ScheduleTaskRequest {
        name: name.into(),
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
    }
}

#[tokio::test]
async fn prometheus_metrics_follow_the_tasks() {
    let server = TestServer::start_with(|c| {
        c.webhook.allow_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    let (text, before) = scrape(&server).await;
    for (name, kind) in [
        ("switchyard_tasks", "gauge"),
        ("switchyard_tasks_by_name", "gauge"),
        ("switchyard_tasks_active_by_source", "gauge"),
        ("switchyard_queue_depth", "gauge"),
        ("switchyard_queue_free_slots", "gauge"),
        ("switchyard_workers_connected", "gauge"),
        ("switchyard_outbox_backlog", "gauge"),
        ("switchyard_schedule_to_start_seconds", "histogram"),
        ("switchyard_run_time_seconds", "histogram"),
        ("switchyard_store_commit_seconds", "histogram"),
        ("switchyard_store_commit_batch_size", "histogram"),
        ("switchyard_tasks_finished", "counter"),
    ] {
        assert!(
            text.lines().any(|l| l == format!("# TYPE {name} {kind}")),
            "# TYPE {name} {kind} in\n{text}"
        );
    }
    let completed = [("type", "simple"), ("state", "completed")];
    assert_eq!(sample(&before, "switchyard_tasks", &completed), Some(0.0));
    assert_eq!(
        sample(&before, "switchyard_workers_connected", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &before,
            "switchyard_outbox_backlog",
            &[("engine", "bullmq")]
        ),
        Some(0.0)
    );

    // Three pending tasks make a queue; a worker then runs them.
    let mut c = server.client().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(schedule(&mut c, simple("adm-prom", json!({ "i": i }))).await);
    }
    let (_, queued) = scrape(&server).await;
    assert_eq!(
        sample(&queued, "switchyard_queue_depth", &[("queue", "adm-prom")]),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &queued,
            "switchyard_tasks_by_name",
            &[("name", "adm-prom"), ("state", "pending")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &queued,
            "switchyard_tasks_active_by_source",
            &[("source", "embedded"), ("state", "pending")]
        ),
        Some(3.0)
    );
    let (_worker, _) = spawn_worker(
        Worker::builder(&server.url)
            .concurrency(2)
            .handler("adm-prom", |_ctx: TaskContext| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(json!(null))
            })
            .build(),
    )
    .await;
    for id in &ids {
        wait_state(&mut c, id, pb::TaskState::Completed, SHORT).await;
    }
    // Webhook calls: one 200, one 503.
    let target = webhook_target().await;
    let ok = schedule(&mut c, webhook("adm-hook", format!("http://{target}/hook"))).await;
    let down = schedule(&mut c, webhook("adm-hook", format!("http://{target}/down"))).await;
    wait_state(&mut c, &ok, pb::TaskState::Completed, SHORT).await;
    wait_state(&mut c, &down, pb::TaskState::Failed, SHORT).await;

    // Histograms come from committed events: wait for them to arrive.
    let after = wait_for("the histograms to count the runs", SHORT, || {
        let s = &server;
        async move {
            let (_, m) = scrape(s).await;
            let runs = sample(
                &m,
                "switchyard_run_time_seconds_count",
                &[("type", "simple")],
            );
            (runs == Some(3.0)).then_some(m)
        }
    })
    .await;
    assert_eq!(sample(&after, "switchyard_tasks", &completed), Some(3.0));
    assert_eq!(
        sample(
            &after,
            "switchyard_tasks_finished_total",
            &[("type", "simple"), ("state", "completed")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &after,
            "switchyard_schedule_to_start_seconds_count",
            &[("type", "simple")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&after, "switchyard_queue_depth", &[("queue", "adm-prom")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&after, "switchyard_workers_connected", &[]),
        Some(1.0)
    );
    let free = sample(
        &after,
        "switchyard_queue_free_slots",
        &[("queue", "adm-prom")],
    );
    assert!(free.is_some_and(|f| f >= 2.0), "free slots: {free:?}");
    assert_eq!(
        sample(
            &after,
            "switchyard_webhook_responses_total",
            &[("class", "2xx"), ("code", "200")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "switchyard_webhook_responses_total",
            &[("class", "5xx"), ("code", "503")]
        ),
        Some(1.0)
    );
    assert!(scrape(&server)
        .await
        .0
        .contains("# TYPE switchyard_webhook_responses counter"));
    let commits = sample(&after, "switchyard_store_commit_seconds_count", &[]).unwrap_or(0.0);
    assert!(commits >= 1.0, "commits counted: {commits}");
    assert_eq!(
        sample(&after, "switchyard_store_commit_batch_size_count", &[]),
        Some(commits),
        "one batch size per commit"
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_registries_are_per_server() {
    let a = TestServer::start().await;
    let b = TestServer::start().await;
    let mut ca = a.client().await;
    schedule(&mut ca, simple("adm-only-a", json!({}))).await;
    let (_, sa) = scrape(&a).await;
    let (_, sb) = scrape(&b).await;
    let q = [("name", "adm-only-a"), ("state", "pending")];
    assert_eq!(sample(&sa, "switchyard_tasks_by_name", &q), Some(1.0));
    assert_eq!(sample(&sb, "switchyard_tasks_by_name", &q), None);
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Authorisation.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bearer_tokens_guard_both_transports() {
    let server = TestServer::start_with(|c| {
        c.auth.tokens = vec!["t-one".into(), "t-two".into()];
    })
    .await;

    // gRPC: the services need the token; health and reflection do not.
    let mut c = server.client().await;
    let err = c
        .get_metrics(pb::GetMetricsRequest {})
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut req = tonic::Request::new(pb::GetMetricsRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        c.get_metrics(req).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut req = tonic::Request::new(simple("adm-auth", json!({})));
    req.metadata_mut()
        .insert("authorization", "Bearer t-two".parse().unwrap());
    let id = c
        .schedule_task(req)
        .await
        .expect("with a token")
        .into_inner()
        .task_id;
    assert!(health_serving(&server.url).await, "health stays open");
    let mut w = server.worker_client().await;
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::WorkerMessage>(1);
    let err = w
        .work(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("the worker service needs the token too");
    assert_eq!(err.code(), Code::Unauthenticated);

    // HTTP: every route but /healthz.
    let admin = server.admin_url();
    let status =
        |r: reqwest::RequestBuilder| async move { r.send().await.unwrap().status().as_u16() };
    assert_eq!(status(http().get(format!("{admin}/healthz"))).await, 200);
    for path in [
        format!("{API}/tasks"),
        format!("{API}/tasks/{id}"),
        format!("{API}/metrics"),
        format!("{API}/workers"),
        format!("{API}/cluster"),
        "/metrics".to_string(),
        "/".to_string(),
    ] {
        let url = format!("{admin}{path}");
        assert_eq!(
            status(http().get(&url)).await,
            401,
            "{path} without a token"
        );
        assert_eq!(
            status(http().get(&url).bearer_auth("t-three")).await,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            status(http().get(&url).bearer_auth("t-one")).await,
            200,
            "{path} with a token"
        );
    }
    let (st, body) = send(http().get(format!("{admin}{API}/tasks"))).await;
    assert_eq!((st, body["code"].as_str()), (401, Some("UNAUTHENTICATED")));
    assert_eq!(
        status(http().delete(format!("{admin}{API}/tasks/{id}"))).await,
        401
    );
    // The query token: only for the event stream and the page.
    assert_eq!(
        status(http().get(format!("{admin}{API}/tasks?access_token=t-one"))).await,
        401
    );
    assert_eq!(
        status(http().get(format!("{admin}/?access_token=t-one"))).await,
        200
    );
    assert_eq!(
        status(http().get(format!("{admin}/?access_token=nope"))).await,
        401
    );
    let mut sse = Sse::open(&format!("{admin}{API}/events?access_token=t-two"), &[]).await;
    sse.until("live").await;
    let (st, cancelled) = send(
        http()
            .delete(format!("{admin}{API}/tasks/{id}"))
            .bearer_auth("t-one"),
    )
    .await;
    assert_eq!(st, 200, "{cancelled}");
    server.stop().await;
}

// ---------------------------------------------------------------------------
// The page.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn dashboard_is_served_from_the_binary() {
    let server = TestServer::start().await;
    let resp = http()
        .get(format!("{}/", server.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let html = resp.text().await.unwrap();
    assert!(html.contains("<canvas"), "charts");
    assert!(html.contains("EventSource"), "live updates");
    assert!(!html.contains("/*SCRIPT*/") && !html.contains("/*STYLE*/"));
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no external assets"
    );
    let (st, _) = get(&server, "/dashboard").await;
    assert_eq!(st, 200);
    server.stop().await;
}
