//! Flow rules per namespace, on the store the suite runs on (SQLite, or
//! PostgreSQL with `SWITCHYARD_TEST_STORE=postgres`): a key of a namespace
//! sets, lists, deletes, pauses and resumes its namespace's rules only; a
//! rule of one namespace never holds another's tasks of the same name (nor
//! counts them: the same concurrency key in two namespaces is two keys);
//! the rules of each namespace survive a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use switchyard::pb;
use switchyard::pb::flow_service_client::FlowServiceClient;
use switchyard_client::worker::{TaskContext, Worker};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::common::*;

const ROOT: &str = "root-token";

type Flow = FlowServiceClient<Channel>;

fn with<T>(msg: T, secret: Option<&str>, ns: Option<&str>) -> Request<T> {
    with_ns(msg, secret, ns)
}

/// A key of `role` in namespace `ns`, made with the root token: its secret.
async fn key_in(server: &TestServer, ns: &str, role: pb::KeyRole, names: &[&str]) -> String {
    crate::common::key_in(&server.url, ROOT, ns, role, names)
        .await
        .1
}

fn policy(pattern: &str, limit: i32) -> pb::SetConcurrencyPolicyRequest {
    pb::SetConcurrencyPolicyRequest {
        policy: Some(pb::ConcurrencyPolicy {
            pattern: pattern.into(),
            limit,
            ..Default::default()
        }),
    }
}

async fn rules(
    flow: &mut Flow,
    secret: Option<&str>,
    ns: Option<&str>,
) -> pb::ListFlowRulesResponse {
    flow.list_flow_rules(with(pb::ListFlowRulesRequest {}, secret, ns))
        .await
        .expect("ListFlowRules")
        .into_inner()
}

fn patterns(r: &pb::ListFlowRulesResponse) -> Vec<(String, i32)> {
    r.policies
        .iter()
        .map(|p| (p.pattern.clone(), p.limit))
        .collect()
}

/// One namespace's handlers: running now, the most at once, ended.
type Counts = (usize, usize, usize);

/// How many handlers of each namespace run now, and the most that ran at
/// once.
#[derive(Clone, Default)]
struct Overlap(Arc<Mutex<HashMap<&'static str, Counts>>>);

impl Overlap {
    fn start(&self, tag: &'static str) {
        let mut m = self.0.lock();
        let e = m.entry(tag).or_default();
        e.0 += 1;
        e.1 = e.1.max(e.0);
    }

    fn end(&self, tag: &'static str) {
        let mut m = self.0.lock();
        let e = m.entry(tag).or_default();
        e.0 -= 1;
        e.2 += 1;
    }

    /// (most at once, ended) of `tag`.
    fn of(&self, tag: &'static str) -> (usize, usize) {
        let m = self.0.lock();
        m.get(tag).map_or((0, 0), |e| (e.1, e.2))
    }
}

/// A worker of the namespace of `token` for `ns.flow`, 10 slots, whose
/// handler takes 300 ms.
fn flow_worker(url: &str, token: &str, tag: &'static str, seen: &Overlap) -> Worker {
    let seen = seen.clone();
    Worker::builder(url.to_string())
        .token(token)
        .concurrency(10)
        .handler("ns.flow", move |ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                seen.start(tag);
                tokio::time::sleep(Duration::from_millis(300)).await;
                seen.end(tag);
                Ok(ctx.payload().clone())
            }
        })
        .build()
}

/// Schedules `n` tasks of `ns.flow` of concurrency key `k` with `secret`.
async fn send(c: &mut Client, secret: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = simple_with(
            "ns.flow",
            json!({ "n": i }),
            pb::TaskOptions {
                concurrency_key: "k".into(),
                ..Default::default()
            },
        );
        ids.push(
            c.schedule_task(with(r, Some(secret), None))
                .await
                .expect("ScheduleTask")
                .into_inner()
                .task_id,
        );
    }
    ids
}

async fn state_of(c: &mut Client, id: &str, secret: &str) -> pb::TaskStatus {
    c.get_task_status(with(
        pb::GetTaskStatusRequest { task_id: id.into() },
        Some(secret),
        None,
    ))
    .await
    .expect("GetTaskStatus")
    .into_inner()
    .status
    .expect("a status")
}

async fn wait_done(c: &mut Client, ids: &[String], secret: &str) {
    for id in ids {
        within("a task to complete", LONG, async {
            while state_of(c, id, secret).await.state != pb::TaskState::Completed as i32 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_s_limit_and_pause_hold_only_its_own_tasks() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let acme = key_in(&server, "acme", pb::KeyRole::Admin, &[]).await;
    let beta = key_in(&server, "beta", pb::KeyRole::Admin, &[]).await;
    let acme_reader = key_in(&server, "acme", pb::KeyRole::Reader, &[]).await;
    let acme_worker = key_in(&server, "acme", pb::KeyRole::Worker, &["ns.flow"]).await;
    let beta_worker = key_in(&server, "beta", pb::KeyRole::Worker, &["ns.flow"]).await;
    let mut flow = FlowServiceClient::new(channel(&server.url).await);
    let mut c = server.client().await;

    // A key of a namespace sets its namespace's rule (no longer refused).
    flow.set_concurrency_policy(with(policy("ns.flow", 1), Some(&acme), None))
        .await
        .expect("acme's admin sets a policy of acme");

    // acme's limit 1 holds acme's tasks of ns.flow, one at a time; beta's
    // of the same name and key run several at once.
    let seen = Overlap::default();
    let (wa, _) = spawn_worker(flow_worker(&server.url, &acme_worker, "acme", &seen)).await;
    let (wb, _) = spawn_worker(flow_worker(&server.url, &beta_worker, "beta", &seen)).await;
    let of_acme = send(&mut c, &acme, 4).await;
    let of_beta = send(&mut c, &beta, 4).await;
    wait_done(&mut c, &of_beta, &beta).await;
    wait_done(&mut c, &of_acme, &acme).await;
    assert_eq!(seen.of("acme"), (1, 4), "acme's run one at a time");
    let (most, ended) = seen.of("beta");
    assert_eq!(ended, 4);
    assert!(
        most >= 2,
        "beta's are not held by acme's limit: {most} at most"
    );

    // acme pauses ns.flow: acme's wait, saying why; beta's still run.
    let r = flow
        .pause_queue(with(
            pb::PauseQueueRequest {
                name: "ns.flow".into(),
            },
            Some(&acme),
            None,
        ))
        .await
        .expect("acme's admin pauses a name of acme")
        .into_inner();
    assert!(!r.already);
    let paused = send(&mut c, &acme, 2).await;
    let of_beta = send(&mut c, &beta, 2).await;
    wait_done(&mut c, &of_beta, &beta).await;
    for id in &paused {
        let s = state_of(&mut c, id, &acme).await;
        assert_eq!(s.state, pb::TaskState::Pending as i32);
        assert_eq!(s.waiting_reason, pb::WaitingReason::QueuePaused as i32);
        assert_eq!(s.concurrency_key, "k", "the key as acme gave it");
    }
    // beta's resume of the name it never paused changes nothing of acme's.
    let r = flow
        .resume_queue(with(
            pb::ResumeQueueRequest {
                name: "ns.flow".into(),
            },
            Some(&beta),
            None,
        ))
        .await
        .expect("ResumeQueue")
        .into_inner();
    assert!(!r.was_paused);
    let s = state_of(&mut c, &paused[0], &acme).await;
    assert_eq!(s.waiting_reason, pb::WaitingReason::QueuePaused as i32);

    // Each namespace lists its own rules, with bare patterns.
    let mine = rules(&mut flow, Some(&acme_reader), None).await;
    assert_eq!(patterns(&mine), [("ns.flow".to_string(), 1)]);
    assert_eq!(mine.paused, ["ns.flow".to_string()]);
    let theirs = rules(&mut flow, Some(&beta), None).await;
    assert!(
        theirs.policies.is_empty() && theirs.paused.is_empty(),
        "{theirs:?}"
    );
    let home = rules(&mut flow, Some(ROOT), None).await;
    assert!(
        home.policies.is_empty() && home.paused.is_empty(),
        "{home:?}"
    );
    // The root token acts in the namespace its header names.
    let via_root = rules(&mut flow, Some(ROOT), Some("acme")).await;
    assert_eq!(via_root, mine);

    // The admin API's GET …/flow serves the namespace the header names.
    let admin_flow = |ns: Option<&'static str>| {
        let url = format!("{}/internal/execution-manager/flow", server.admin_url());
        async move {
            let mut req = reqwest::Client::new().get(url).bearer_auth(ROOT);
            if let Some(ns) = ns {
                req = req.header("switchyard-namespace", ns);
            }
            let resp = req.send().await.expect("GET …/flow");
            assert_eq!(resp.status(), 200);
            resp.json::<serde_json::Value>().await.expect("JSON")
        }
    };
    let of_acme = admin_flow(Some("acme")).await;
    assert_eq!(of_acme["paused"], json!(["ns.flow"]), "{of_acme}");
    let of_default = admin_flow(None).await;
    assert!(
        of_default["paused"].as_array().is_none_or(|a| a.is_empty()),
        "{of_default}"
    );

    // beta's policy of the same pattern is beta's; deleting it leaves
    // acme's, and beta cannot delete acme's.
    flow.set_concurrency_policy(with(policy("ns.flow", 5), Some(&beta), None))
        .await
        .expect("beta sets its own");
    assert_eq!(
        patterns(&rules(&mut flow, Some(&beta), None).await),
        [("ns.flow".to_string(), 5)]
    );
    flow.delete_concurrency_policy(with(
        pb::DeleteConcurrencyPolicyRequest {
            pattern: "ns.flow".into(),
        },
        Some(&beta),
        None,
    ))
    .await
    .expect("beta deletes its own");
    let err = flow
        .delete_concurrency_policy(with(
            pb::DeleteConcurrencyPolicyRequest {
                pattern: "ns.flow".into(),
            },
            Some(&beta),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        patterns(&rules(&mut flow, Some(&acme), None).await),
        [("ns.flow".to_string(), 1)]
    );

    // A reader of acme may not change acme's rules (its role, not its
    // namespace, refuses it).
    let err = flow
        .set_concurrency_policy(with(policy("ns.other", 1), Some(&acme_reader), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // acme resumes: its held tasks run.
    flow.resume_queue(with(
        pb::ResumeQueueRequest {
            name: "ns.flow".into(),
        },
        Some(&acme),
        None,
    ))
    .await
    .expect("ResumeQueue");
    wait_done(&mut c, &paused, &acme).await;
    wa.shutdown();
    wb.shutdown();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_s_rules_survive_a_restart() {
    init_tracing();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut flow = FlowServiceClient::new(channel(&server.url).await);
    // An open server: the caller acts in the namespace its header names.
    for (ns, limit) in [(Some("acme"), 2), (None, 7)] {
        flow.set_concurrency_policy(with(policy("ns.keep", limit), None, ns))
            .await
            .expect("SetConcurrencyPolicy");
    }
    flow.set_rate_limit(with(
        pb::SetRateLimitRequest {
            rate_limit: Some(pb::RateLimit {
                pattern: "ns.rate".into(),
                rate: 5,
                interval: Some(dur(Duration::from_secs(1))),
                burst: 1,
                ..Default::default()
            }),
        },
        None,
        Some("acme"),
    ))
    .await
    .expect("SetRateLimit");
    flow.pause_queue(with(
        pb::PauseQueueRequest {
            name: "ns.held".into(),
        },
        None,
        Some("acme"),
    ))
    .await
    .expect("PauseQueue");
    let before: Vec<_> = {
        let mut v = Vec::new();
        for ns in [Some("acme"), None, Some("beta")] {
            v.push(rules(&mut flow, None, ns).await);
        }
        v
    };
    assert_eq!(patterns(&before[0]), [("ns.keep".to_string(), 2)]);
    assert_eq!(before[0].rate_limits.len(), 1);
    assert_eq!(before[0].paused, ["ns.held".to_string()]);
    assert_eq!(patterns(&before[1]), [("ns.keep".to_string(), 7)]);
    assert!(before[1].rate_limits.is_empty() && before[1].paused.is_empty());
    assert_eq!(before[2], pb::ListFlowRulesResponse::default());

    assert!(server.terminate().await);
    let mut server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut flow = FlowServiceClient::new(channel(&server.url).await);
    for (ns, was) in [Some("acme"), None, Some("beta")].into_iter().zip(&before) {
        let now = rules(&mut flow, None, ns).await;
        assert_eq!(&now, was, "the rules of {ns:?} are kept");
    }
    // acme's pause holds acme's task of the name after the restart, not
    // beta's.
    let mut c = connect(&server.url).await;
    for (ns, held) in [("acme", true), ("beta", false)] {
        let id = c
            .schedule_task(with(simple("ns.held", json!({})), None, Some(ns)))
            .await
            .expect("ScheduleTask")
            .into_inner()
            .task_id;
        let s = c
            .get_task_status(with(
                pb::GetTaskStatusRequest { task_id: id },
                None,
                Some(ns),
            ))
            .await
            .expect("GetTaskStatus")
            .into_inner()
            .status
            .expect("a status");
        assert_eq!(
            s.waiting_reason == pb::WaitingReason::QueuePaused as i32,
            held,
            "{ns}: {s:?}"
        );
    }
    server.wait_serving().await;
    assert!(server.terminate().await);
}
