//! Namespaces (issue 23, item 2), on the store the suite runs on (SQLite,
//! or PostgreSQL with `SWITCHYARD_TEST_STORE=postgres`): nothing crosses
//! them. A task of another namespace is NOT_FOUND to every call that names
//! it; lists and watches show the caller's namespace only; `Disconnect`
//! reaches only it; the same idempotency key makes one task per namespace;
//! a worker takes only its namespace's tasks; schedules of the same id live
//! side by side; a key acts in its own namespace only, manages only its
//! namespace's keys and makes no server-wide call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request};

use switchyard::pb;
use switchyard::pb::keys_service_client::KeysServiceClient;
use switchyard::pb::schedule_service_client::ScheduleServiceClient;

use crate::common::*;

const ROOT: &str = "root-token";

fn with<T>(msg: T, secret: &str, ns: Option<&str>) -> Request<T> {
    with_ns(msg, Some(secret), ns)
}

async fn keys_client(server: &TestServer) -> KeysServiceClient<Channel> {
    KeysServiceClient::new(channel(&server.url).await)
}

/// A key of `role` in namespace `ns`, made with the root token: (id, secret).
async fn key_in(
    server: &TestServer,
    ns: &str,
    role: pb::KeyRole,
    names: &[&str],
) -> (String, String) {
    crate::common::key_in(&server.url, ROOT, ns, role, names).await
}

/// A task owned by `user` in `session` with idempotency key `key`.
fn owned(name: &str, user: &str, key: &str) -> pb::ScheduleTaskRequest {
    let mut r = simple(name, json!({ "user": user }));
    let o = r.options.get_or_insert_with(Default::default);
    o.user_id = user.into();
    o.session_id = format!("session-{user}");
    o.idempotency_key = key.into();
    r
}

async fn status(
    c: &mut Client,
    id: &str,
    secret: &str,
    ns: Option<&str>,
) -> Result<pb::TaskStatus, Code> {
    c.get_task_status(with(
        pb::GetTaskStatusRequest { task_id: id.into() },
        secret,
        ns,
    ))
    .await
    .map(|r| r.into_inner().status.expect("a status"))
    .map_err(|s| s.code())
}

async fn list(c: &mut Client, secret: &str, filter: pb::TaskFilter) -> Vec<String> {
    c.list_tasks(with(
        pb::ListTasksRequest {
            filter: Some(filter),
            page_size: 100,
            ..Default::default()
        },
        secret,
        None,
    ))
    .await
    .expect("ListTasks")
    .into_inner()
    .tasks
    .into_iter()
    .map(|t| t.id)
    .collect()
}

#[tokio::test]
async fn tasks_idempotency_keys_and_disconnects_never_cross_namespaces() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let (_, acme) = key_in(&server, "acme", pb::KeyRole::Operator, &[]).await;
    let (_, beta) = key_in(&server, "beta", pb::KeyRole::Operator, &[]).await;
    let (_, home) = key_in(&server, "default", pb::KeyRole::Operator, &[]).await;
    let mut c = server.client().await;
    let schedule = |secret: String| {
        let mut c = c.clone();
        async move {
            c.schedule_task(with(owned("ns.job", "u1", "same"), &secret, None))
                .await
                .expect("ScheduleTask")
                .into_inner()
        }
    };

    // The same idempotency key: one task per namespace, each showing the
    // key as its caller gave it; again in the same namespace, the same task.
    let a = schedule(acme.clone()).await;
    let b = schedule(beta.clone()).await;
    let d = schedule(home.clone()).await;
    assert!(!a.existing && !b.existing && !d.existing);
    assert!(a.task_id != b.task_id && b.task_id != d.task_id && a.task_id != d.task_id);
    for r in [&a, &b, &d] {
        assert_eq!(r.status.as_ref().unwrap().idempotency_key, "same");
    }
    let again = schedule(acme.clone()).await;
    assert!(again.existing, "{again:?}");
    assert_eq!(again.task_id, a.task_id);

    // Another namespace's task is NOT_FOUND to every call that names it,
    // from a key of another namespace, of `default`, and the root token
    // without a namespace; the root token naming it reads it.
    for (secret, ns) in [(&beta, None), (&home, None), (&ROOT.to_string(), None)] {
        assert_eq!(
            status(&mut c, &a.task_id, secret, ns).await,
            Err(Code::NotFound)
        );
        let id = || a.task_id.clone();
        let refused = [
            c.cancel_task(with(
                pb::CancelTaskRequest {
                    task_id: id(),
                    ..Default::default()
                },
                secret,
                ns,
            ))
            .await
            .map(drop),
            c.get_task_logs(with(
                pb::GetTaskLogsRequest {
                    task_id: id(),
                    ..Default::default()
                },
                secret,
                ns,
            ))
            .await
            .map(drop),
            c.signal_task(with(
                pb::SignalTaskRequest {
                    task_id: id(),
                    signal: "go".into(),
                    ..Default::default()
                },
                secret,
                ns,
            ))
            .await
            .map(drop),
            c.retry_task(with(
                pb::RetryTaskRequest {
                    task_id: id(),
                    ..Default::default()
                },
                secret,
                ns,
            ))
            .await
            .map(drop),
        ];
        for (call, r) in ["cancel", "logs", "signal", "retry"].iter().zip(refused) {
            assert_eq!(r.unwrap_err().code(), Code::NotFound, "{call}");
        }
    }
    // The Rust client names the namespace for a static token.
    let mut rust = switchyard_client::Client::connect(server.url.clone())
        .await
        .unwrap()
        .with_token(ROOT)
        .unwrap();
    assert_eq!(
        rust.status(&a.task_id).await.unwrap_err().code(),
        Code::NotFound
    );
    let mut rust = rust.with_namespace("acme").unwrap();
    assert_eq!(rust.status(&a.task_id).await.unwrap().id, a.task_id);
    let seen = status(&mut c, &a.task_id, ROOT, Some("acme"))
        .await
        .unwrap();
    assert_eq!(
        seen.labels.get("switchyard.namespace").map(String::as_str),
        Some("acme")
    );
    assert_eq!(
        status(&mut c, &d.task_id, ROOT, None).await.unwrap().id,
        d.task_id
    );

    // A key acts in its own namespace only.
    let err = c
        .get_task_status(with(
            pb::GetTaskStatusRequest {
                task_id: a.task_id.clone(),
            },
            &acme,
            Some("beta"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("namespace acme"), "{err:?}");
    // A bad namespace name is refused.
    let err = c
        .list_tasks(with(
            pb::ListTasksRequest::default(),
            ROOT,
            Some("Not A Name"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Lists show the caller's namespace only, whatever the filter asks.
    let by_user = pb::TaskFilter {
        user_id: "u1".into(),
        ..Default::default()
    };
    assert_eq!(
        list(&mut c, &acme, by_user.clone()).await,
        vec![a.task_id.clone()]
    );
    assert_eq!(
        list(&mut c, &beta, by_user.clone()).await,
        vec![b.task_id.clone()]
    );
    assert_eq!(
        list(&mut c, &home, by_user.clone()).await,
        vec![d.task_id.clone()]
    );
    let by_ids = pb::TaskFilter {
        task_ids: vec![a.task_id.clone(), b.task_id.clone(), d.task_id.clone()],
        ..Default::default()
    };
    assert_eq!(list(&mut c, &beta, by_ids).await, vec![b.task_id.clone()]);

    // A watch's snapshot and its live events are of its namespace only.
    let mut watch = c
        .watch_tasks(with(
            pb::WatchTasksRequest {
                include_snapshot: true,
                ..Default::default()
            },
            &beta,
            None,
        ))
        .await
        .expect("WatchTasks")
        .into_inner();
    let late_a = schedule_plain(&mut c, &acme, "ns.late").await;
    let late_b = schedule_plain(&mut c, &beta, "ns.late").await;
    let mut seen = Vec::new();
    within("beta's watch to see its late task", LONG, async {
        while let Some(item) = watch.next().await {
            if let Some(pb::watch_tasks_response::Item::Event(e)) = item.unwrap().item {
                let id = e.status.map(|s| s.id).unwrap_or_default();
                seen.push(id.clone());
                if id == late_b {
                    break;
                }
            }
        }
    })
    .await;
    assert!(
        seen.contains(&b.task_id),
        "the snapshot holds beta's task: {seen:?}"
    );
    assert!(
        !seen.contains(&a.task_id) && !seen.contains(&late_a) && !seen.contains(&d.task_id),
        "nothing of acme or default: {seen:?}"
    );

    // Disconnect reaches the caller's namespace only.
    let receipts = c
        .disconnect(with(
            pb::DisconnectRequest {
                user_id: "u1".into(),
                ..Default::default()
            },
            &beta,
            None,
        ))
        .await
        .expect("Disconnect")
        .into_inner()
        .receipts;
    assert_eq!(
        receipts
            .iter()
            .map(|r| r.task_id.clone())
            .collect::<Vec<_>>(),
        vec![b.task_id.clone()]
    );
    for (id, secret) in [(&a.task_id, &acme), (&d.task_id, &home)] {
        let s = status(&mut c, id, secret, None).await.unwrap();
        assert_eq!(s.state, pb::TaskState::Pending as i32, "{id} untouched");
    }
    let s = status(&mut c, &b.task_id, &beta, None).await.unwrap();
    assert_eq!(s.state, pb::TaskState::Cancelled as i32);

    // A key of a namespace makes no server-wide call; the root token does.
    let err = c
        .get_metrics(with(pb::GetMetricsRequest::default(), &acme, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    c.get_metrics(with(pb::GetMetricsRequest::default(), ROOT, Some("acme")))
        .await
        .expect("the root token reads the metrics");
}

async fn schedule_plain(c: &mut Client, secret: &str, name: &str) -> String {
    c.schedule_task(with(simple(name, json!({})), secret, None))
        .await
        .expect("ScheduleTask")
        .into_inner()
        .task_id
}

#[tokio::test]
async fn a_namespace_admin_manages_its_own_keys_only() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let (_, acme_admin) = key_in(&server, "acme", pb::KeyRole::Admin, &[]).await;
    let (beta_reader, _) = key_in(&server, "beta", pb::KeyRole::Reader, &[]).await;
    let mut k = keys_client(&server).await;
    // Its keys are of its namespace; naming another is refused.
    let made = k
        .create_key(with(
            pb::CreateKeyRequest {
                role: pb::KeyRole::Reader as i32,
                ..Default::default()
            },
            &acme_admin,
            None,
        ))
        .await
        .expect("CreateKey in its namespace")
        .into_inner()
        .key
        .unwrap();
    assert_eq!(made.namespace, "acme");
    let err = k
        .create_key(with(
            pb::CreateKeyRequest {
                role: pb::KeyRole::Reader as i32,
                namespace: "beta".into(),
                ..Default::default()
            },
            &acme_admin,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = k
        .create_key(with(
            pb::CreateKeyRequest {
                role: pb::KeyRole::Reader as i32,
                namespace: "Bad Name".into(),
                ..Default::default()
            },
            ROOT,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("namespace"), "{err:?}");
    // It lists its namespace's keys only; the root token lists them all.
    let kc = k.clone();
    let listed = |secret: String| {
        let mut k = kc.clone();
        async move {
            k.list_keys(with(pb::ListKeysRequest {}, &secret, None))
                .await
                .expect("ListKeys")
                .into_inner()
                .keys
        }
    };
    let mine = listed(acme_admin.clone()).await;
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.iter().all(|k| k.namespace == "acme"));
    let all = listed(ROOT.into()).await;
    assert!(all.iter().any(|k| k.namespace == "beta"), "{all:?}");
    // Another namespace's key is NOT_FOUND to it, and stays valid.
    let err = k
        .revoke_key(with(
            pb::RevokeKeyRequest {
                id: beta_reader.clone(),
            },
            &acme_admin,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let beta = listed(ROOT.into()).await;
    assert!(beta
        .iter()
        .any(|k| k.id == beta_reader && k.revoked_at.is_none()));
    // The audit log: a namespace's admin reads its namespace's events only
    // (the reader it made; not the root token's creations, nor beta's);
    // the root token reads every namespace's, each naming its namespace.
    let audit = |secret: String| {
        let mut k = kc.clone();
        async move {
            k.list_audit_events(with(
                pb::ListAuditEventsRequest {
                    page_size: 100,
                    before: 0,
                },
                &secret,
                None,
            ))
            .await
            .expect("ListAuditEvents")
            .into_inner()
            .events
        }
    };
    let (_, beta_admin) = key_in(&server, "beta", pb::KeyRole::Admin, &[]).await;
    k.create_key(with(
        pb::CreateKeyRequest {
            role: pb::KeyRole::Reader as i32,
            ..Default::default()
        },
        &beta_admin,
        None,
    ))
    .await
    .expect("beta's admin makes a key of beta");
    let of_acme = audit(acme_admin.clone()).await;
    assert_eq!(
        of_acme
            .iter()
            .map(|e| (e.action.as_str(), e.target.as_str(), e.namespace.as_str()))
            .collect::<Vec<_>>(),
        vec![("key_create", made.id.as_str(), "acme")],
        "{of_acme:?}"
    );
    let of_beta = audit(beta_admin).await;
    assert!(
        of_beta.len() == 1 && of_beta[0].namespace == "beta",
        "{of_beta:?}"
    );
    let all = audit(ROOT.into()).await;
    for ns in ["default", "acme", "beta"] {
        assert!(all.iter().any(|e| e.namespace == ns), "{ns}: {all:?}");
    }
}

#[tokio::test]
async fn a_worker_takes_only_its_namespace_tasks() {
    use switchyard_client::worker::{TaskContext, Worker};
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let (_, acme_worker) = key_in(&server, "acme", pb::KeyRole::Worker, &["ns.echo"]).await;
    let (_, beta_worker) = key_in(&server, "beta", pb::KeyRole::Worker, &["ns.echo"]).await;
    let (_, acme) = key_in(&server, "acme", pb::KeyRole::Operator, &[]).await;
    let (_, beta) = key_in(&server, "beta", pb::KeyRole::Operator, &[]).await;
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let worker = |token: &str, tag: &'static str| {
        let got = got.clone();
        Worker::builder(server.url.clone())
            .token(token)
            .handler("ns.echo", move |ctx: TaskContext| {
                let got = got.clone();
                async move {
                    got.lock().unwrap().push(format!(
                        "{tag}:{}",
                        ctx.payload()["from"].as_str().unwrap_or("?")
                    ));
                    Ok(ctx.payload().clone())
                }
            })
            .build()
    };
    let (acme_handle, _) = spawn_worker(worker(&acme_worker, "acme")).await;
    let mut c = server.client().await;
    let send = |secret: String, from: &'static str| {
        let mut c = c.clone();
        async move {
            c.schedule_task(with(
                simple("ns.echo", json!({ "from": from })),
                &secret,
                None,
            ))
            .await
            .expect("ScheduleTask")
            .into_inner()
            .task_id
        }
    };
    let of_beta = send(beta.clone(), "beta").await;
    let of_acme = send(acme.clone(), "acme").await;
    let state = |id: String, secret: String| {
        let mut c = c.clone();
        async move { status(&mut c, &id, &secret, None).await.unwrap().state }
    };
    within("acme's task to complete", LONG, async {
        while state(of_acme.clone(), acme.clone()).await != pb::TaskState::Completed as i32 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Beta's task was scheduled first: had it been acme's worker's to take,
    // it would have been handed over before acme's (queues are FIFO), so it
    // would no longer be pending now that acme's has completed. No wait
    // is needed to see that it was not.
    assert_eq!(
        state(of_beta.clone(), beta.clone()).await,
        pb::TaskState::Pending as i32
    );
    assert_eq!(*got.lock().unwrap(), vec!["acme:acme".to_string()]);
    let (beta_handle, _) = spawn_worker(worker(&beta_worker, "beta")).await;
    within("beta's task to complete on beta's worker", LONG, async {
        while state(of_beta.clone(), beta.clone()).await != pb::TaskState::Completed as i32 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        *got.lock().unwrap(),
        vec!["acme:acme".to_string(), "beta:beta".to_string()]
    );
    drop((acme_handle, beta_handle));
    // A worker key of one namespace naming another is refused.
    let err = c
        .list_tasks(with(
            pb::ListTasksRequest::default(),
            &acme_worker,
            Some("beta"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

#[tokio::test]
async fn schedules_of_one_id_live_side_by_side_in_two_namespaces() {
    let server = TestServer::start_with(|c| c.auth.tokens = vec![ROOT.into()]).await;
    let (_, acme) = key_in(&server, "acme", pb::KeyRole::Admin, &[]).await;
    let (_, beta) = key_in(&server, "beta", pb::KeyRole::Admin, &[]).await;
    let mut sc = ScheduleServiceClient::new(channel(&server.url).await);
    let hourly = |name: &str| pb::ScheduleSpec {
        timing: Some(pb::schedule_spec::Timing::Interval(dur(
            Duration::from_secs(3600),
        ))),
        task: Some(simple(name, json!({}))),
        ..Default::default()
    };
    for (secret, name) in [(&acme, "ns.acme-nightly"), (&beta, "ns.beta-nightly")] {
        let made = sc
            .create_schedule(with(
                pb::CreateScheduleRequest {
                    schedule_id: "nightly".into(),
                    spec: Some(hourly(name)),
                    paused: true,
                },
                secret,
                None,
            ))
            .await
            .expect("CreateSchedule: the same id in another namespace is another schedule")
            .into_inner()
            .schedule
            .unwrap();
        assert_eq!(made.schedule_id, "nightly");
    }
    // Each lists and reads its own, under its bare id.
    for (secret, name) in [(&acme, "ns.acme-nightly"), (&beta, "ns.beta-nightly")] {
        let page = sc
            .list_schedules(with(pb::ListSchedulesRequest::default(), secret, None))
            .await
            .unwrap()
            .into_inner()
            .schedules;
        assert_eq!(page.len(), 1, "{page:?}");
        assert_eq!(page[0].schedule_id, "nightly");
        let got = sc
            .get_schedule(with(
                pb::GetScheduleRequest {
                    schedule_id: "nightly".into(),
                },
                secret,
                None,
            ))
            .await
            .unwrap()
            .into_inner()
            .schedule
            .unwrap();
        let task = got.spec.unwrap().task.unwrap();
        assert_eq!(task.name, name);
    }
    // `default` has none of that id.
    let err = sc
        .get_schedule(with(
            pb::GetScheduleRequest {
                schedule_id: "nightly".into(),
            },
            ROOT,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // A fire is a task of the schedule's namespace, found by the
    // schedule's bare id there and nowhere else.
    let fired = sc
        .trigger_schedule(with(
            pb::TriggerScheduleRequest {
                schedule_id: "nightly".into(),
            },
            &acme,
            None,
        ))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let mut c = server.client().await;
    let s = status(&mut c, &fired, &acme, None).await.unwrap();
    assert_eq!(s.name, "ns.acme-nightly");
    assert_eq!(
        status(&mut c, &fired, &beta, None).await,
        Err(Code::NotFound)
    );
    let of_schedule = pb::TaskFilter {
        schedule_id: "nightly".into(),
        ..Default::default()
    };
    assert_eq!(
        list(&mut c, &acme, of_schedule.clone()).await,
        vec![fired.clone()]
    );
    assert!(list(&mut c, &beta, of_schedule).await.is_empty());
    // Deleting acme's leaves beta's.
    sc.delete_schedule(with(
        pb::DeleteScheduleRequest {
            schedule_id: "nightly".into(),
        },
        &acme,
        None,
    ))
    .await
    .unwrap();
    let left = sc
        .list_schedules(with(pb::ListSchedulesRequest::default(), &beta, None))
        .await
        .unwrap()
        .into_inner()
        .schedules;
    assert_eq!(left.len(), 1);
}
