//! Several replicas over one PostgreSQL store (`DATABASE_URL`): failover
//! under load, and the fence. Always on PostgreSQL; they never skip.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard::pb;
use switchyard::worker::{TaskContext, Worker};
use tonic::Code;

use crate::common::*;

/// A cluster of replica processes in one schema of their own.
struct Cluster {
    schema: String,
    ports: Vec<u16>,
    dirs: Vec<tempfile::TempDir>,
    replicas: Vec<Option<ServerProcess>>,
    lease: &'static str,
    extra: Vec<(String, String)>,
}

const LEASE: &str = "1s";

impl Cluster {
    fn env(&self, i: usize) -> Vec<(String, String)> {
        vec![
            ("SWITCHYARD_STORE__URL".into(), database_url()),
            ("SWITCHYARD_STORE__SCHEMA".into(), self.schema.clone()),
            ("SWITCHYARD_CLUSTER__LEASE_TTL".into(), self.lease.into()),
            ("SWITCHYARD_CLUSTER__REPLICA_ID".into(), format!("r{i}")),
        ]
        .into_iter()
        .chain(self.extra.iter().cloned())
        .collect()
    }

    async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, LEASE, &[]).await
    }

    /// A cluster with its own lease length and more settings.
    async fn start_with(n: usize, lease: &'static str, extra: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster {
            schema: format!("cl_{}", uuid::Uuid::now_v7().simple()),
            ports: (0..n).map(|_| free_port()).collect(),
            dirs: (0..n).map(|_| tempfile::tempdir().unwrap()).collect(),
            replicas: (0..n).map(|_| None).collect(),
            lease,
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for i in 0..n {
            c.restart(i).await;
        }
        c.wait_leader(LONG).await;
        c
    }

    async fn restart(&mut self, i: usize) {
        let env = self.env(i);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.replicas[i] =
            Some(ServerProcess::start_replica(self.ports[i], self.dirs[i].path(), &env).await);
    }

    fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The replica that answers SERVING.
    async fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            for (i, r) in self.replicas.iter().enumerate() {
                if let Some(r) = r {
                    if health_serving(&r.url).await {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no replica leads");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A client over every replica, as users make one: the client library's
/// failover transport (first live replica; the next when one dies).
async fn replicated(urls: &str) -> Replicated {
    let endpoints: Vec<_> = urls
        .split(',')
        .map(|u| {
            tonic::transport::Endpoint::from_shared(u.to_string())
                .unwrap()
                .connect_timeout(Duration::from_millis(500))
        })
        .collect();
    let failover = switchyard_client::failover::Failover::connect(endpoints).await;
    pb::orchestrator_service_client::OrchestratorServiceClient::new(
        switchyard_client::Transport::new(failover),
    )
}

/// An orchestrator client over several replicas.
type Replicated =
    pb::orchestrator_service_client::OrchestratorServiceClient<switchyard_client::Transport>;

/// Schedules with an idempotency key until acknowledged.
async fn schedule_until_acked(client: &mut Replicated, i: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut req = simple("cluster-job", json!({"i": i}));
        req.options
            .get_or_insert_with(Default::default)
            .idempotency_key = format!("job-{i}");
        match client.schedule_task(req).await {
            Ok(r) => return r.into_inner().task_id,
            Err(s) => {
                assert!(
                    matches!(
                        s.code(),
                        Code::Unavailable
                            | Code::Unknown
                            | Code::Cancelled
                            | Code::DeadlineExceeded
                            | Code::Internal
                    ),
                    "schedule {i}: {s:?}"
                );
                assert!(
                    Instant::now() < deadline,
                    "schedule {i} never acknowledged: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Three replicas; a producer and a worker under load; `kill -9` of the
/// leader three times in a row. Every acknowledged task completes, the
/// idempotency keys give one task each, and a watcher that resumes from
/// its last sequence number ends with every task's final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_ride_three_leader_kills() {
    let mut cluster = Cluster::start(3).await;
    let urls = cluster.urls();
    let ran: Arc<parking_lot::Mutex<HashMap<String, u32>>> = Default::default();
    let worker = {
        let ran = ran.clone();
        Worker::builder(&urls)
            .concurrency(16)
            .handler("cluster-job", move |ctx: TaskContext| {
                let ran = ran.clone();
                async move {
                    *ran.lock().entry(ctx.task_id().to_string()).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok(json!({"ok": true}))
                }
            })
            .build()
    };
    let handle = worker.spawn();
    // The watcher: resumes after its last sequence number on any replica.
    let finals: Arc<parking_lot::Mutex<HashMap<String, i32>>> = Default::default();
    let stop_watch = tokio_util::sync::CancellationToken::new();
    let watcher = {
        let (urls, finals, stop) = (urls.clone(), finals.clone(), stop_watch.clone());
        tokio::spawn(async move {
            let mut after = 0u64;
            let mut last_seq_seen = 0u64;
            while !stop.is_cancelled() {
                let mut c = replicated(&urls).await;
                let stream = c
                    .watch_tasks(pb::WatchTasksRequest {
                        filter: None,
                        after_sequence: after,
                        include_snapshot: false,
                    })
                    .await;
                let Ok(stream) = stream else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut stream = stream.into_inner();
                loop {
                    let item = tokio::select! {
                        _ = stop.cancelled() => return last_seq_seen,
                        m = stream.message() => m,
                    };
                    match item {
                        Ok(Some(r)) => {
                            if let Some(pb::watch_tasks_response::Item::Event(e)) = r.item {
                                assert!(
                                    e.sequence > after || e.sequence == 0,
                                    "a duplicate or out-of-order event: {} after {after}",
                                    e.sequence
                                );
                                after = e.sequence;
                                last_seq_seen = after;
                                let st = e.status.unwrap();
                                if is_final(pb::TaskState::try_from(st.state).unwrap()) {
                                    finals.lock().insert(st.id.clone(), st.state);
                                }
                            }
                        }
                        _ => break,
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            last_seq_seen
        })
    };
    // The producer.
    const N: usize = 600;
    let producer = {
        let urls = urls.clone();
        tokio::spawn(async move {
            let mut c = replicated(&urls).await;
            let mut acked = Vec::with_capacity(N);
            for i in 0..N {
                acked.push(schedule_until_acked(&mut c, i).await);
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            acked
        })
    };
    let mut leaders = Vec::new();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let leader = cluster.wait_leader(LONG).await;
        let t0 = Instant::now();
        cluster.replicas[leader].take().unwrap().kill9().await;
        let next = cluster.wait_leader(LONG).await;
        eprintln!(
            "round {round}: killed leader r{leader}; r{next} serves after {} ms",
            t0.elapsed().as_millis()
        );
        assert_ne!(leader, next);
        leaders.push((leader, next));
        cluster.restart(leader).await;
    }
    let acked = within("the producer", Duration::from_secs(120), producer)
        .await
        .unwrap();
    let unique: HashSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), N, "one task per idempotency key");
    // Every acknowledged task completes.
    let mut client = replicated(&urls).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in &acked {
        loop {
            match client
                .get_task_status(pb::GetTaskStatusRequest {
                    task_id: id.clone(),
                })
                .await
            {
                Ok(r) => {
                    let s = r.into_inner().status.unwrap();
                    if s.state == pb::TaskState::Completed as i32 {
                        break;
                    }
                    assert!(
                        !is_final(pb::TaskState::try_from(s.state).unwrap()),
                        "{id}: {s:?}"
                    );
                }
                Err(s) => assert!(
                    s.code() == Code::Unavailable || s.code() == Code::Unknown,
                    "{id}: {s:?}"
                ),
            }
            assert!(Instant::now() < deadline, "{id} never completed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Only tasks in flight at a kill ran twice: a handful, not hundreds.
    let twice = ran.lock().values().filter(|n| **n > 1).count();
    assert!(twice <= 3 * 16 * 2, "{twice} tasks ran more than once");
    for id in &acked {
        assert!(ran.lock().contains_key(id), "{id} never ran");
    }
    // The watcher ends with every task's final state.
    wait_until("the watcher to see every final state", LONG, || {
        let finals = finals.clone();
        let acked = acked.clone();
        async move {
            let f = finals.lock();
            acked
                .iter()
                .all(|id| f.get(id) == Some(&(pb::TaskState::Completed as i32)))
        }
    })
    .await;
    stop_watch.cancel();
    let _ = watcher.await;
    handle.shutdown();
}

/// The fence: a leader stopped (SIGSTOP) past its lease while a standby
/// takes over writes nothing when it wakes up, and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_writes_nothing_after_the_takeover_and_steps_down() {
    let mut cluster = Cluster::start(2).await;
    let old = cluster.wait_leader(LONG).await;
    let mut client = connect(&cluster.replicas[old].as_ref().unwrap().url).await;
    let before = schedule(&mut client, simple("fenced-before", json!({}))).await;
    // A worker on the old leader: it will try to report after waking up.
    cluster.replicas[old].as_ref().unwrap().signal("STOP");
    let new = cluster.wait_leader(LONG).await;
    assert_ne!(old, new);
    let mut client = connect(&cluster.replicas[new].as_ref().unwrap().url).await;
    let after = schedule(&mut client, simple("fenced-after", json!({}))).await;
    cluster.replicas[old].as_ref().unwrap().signal("CONT");
    let exit = cluster.replicas[old]
        .as_mut()
        .unwrap()
        .exited_within(Duration::from_secs(10))
        .await
        .expect("the old leader steps down (stops) once it learns its term is over");
    assert!(!exit.success(), "{exit}");
    // The rows: terms 1 and 2, nothing of term 1 after the takeover.
    let (url, schema) = (database_url(), cluster.schema.clone());
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(&format!("SET search_path = \"{schema}\""))
        .await
        .unwrap();
    let lease = c
        .query_one(
            "SELECT term, holder, (extract(epoch FROM acquired_at) * 1000000)::int8 FROM leases",
            &[],
        )
        .await
        .unwrap();
    let (term, holder, since): (i64, String, i64) = (lease.get(0), lease.get(1), lease.get(2));
    assert_eq!((term, holder.as_str()), (2, format!("r{new}").as_str()));
    let term_of = |id: &str| {
        let id = uuid::Uuid::parse_str(id).unwrap();
        let c = &c;
        async move {
            c.query_one("SELECT term FROM tasks WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(term_of(&before).await, 1);
    assert_eq!(term_of(&after).await, 2);
    let late: i64 = c
        .query_one(
            "SELECT count(*) FROM task_logs WHERE term < $1 AND time >= $2",
            &[&term, &since],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(late, 0, "log lines of the old term after the takeover");
    // The old replica, started again, stands by.
    cluster.restart(old).await;
    assert_eq!(
        health_status(&cluster.replicas[old].as_ref().unwrap().url).await,
        Some(false)
    );
    // And a standby forwards: the new task is visible through it.
    let mut via_standby = connect(&cluster.replicas[old].as_ref().unwrap().url).await;
    status(&mut via_standby, &after).await;
    // Bad input gets the same answer through a standby.
    let e = via_standby
        .get_task_status(pb::GetTaskStatusRequest {
            task_id: "not-a-uuid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(violations(&e).iter().any(|f| f == "task_id"), "{e:?}");
}

/// While no leader answers (killed, its lease not lapsed yet), a standby
/// answers a task's status and log from the database itself, with the
/// leader's checks (token, fields) and codes; what needs the leader's core
/// gets UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_answers_reads_from_the_database_while_no_leader_answers() {
    // A lease far longer than the test: nobody takes over meanwhile.
    let mut cluster =
        Cluster::start_with(2, "120s", &[("SWITCHYARD_AUTH__TOKENS", "s3cret")]).await;
    let leader = cluster.wait_leader(LONG).await;
    let standby = 1 - leader;
    let mut client = connect(&cluster.replicas[leader].as_ref().unwrap().url).await;
    let id = client
        .schedule_task(with_token(simple("read-on-standby", json!({"n": 7}))))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let on_leader = client
        .get_task_status(with_token(pb::GetTaskStatusRequest {
            task_id: id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    cluster.replicas[leader].as_ref().unwrap().signal("KILL");
    cluster.replicas[leader]
        .as_mut()
        .unwrap()
        .exited_within(Duration::from_secs(10))
        .await
        .expect("the leader is gone");
    let mut via = connect(&cluster.replicas[standby].as_ref().unwrap().url).await;
    let got = via
        .get_task_status(with_token(pb::GetTaskStatusRequest {
            task_id: id.clone(),
        }))
        .await
        .expect("a standby answers a status from the database")
        .into_inner();
    // What the database holds: the task as committed, its payload. (The
    // leader adds what only its memory knows, such as why a pending task
    // waits now.)
    let (a, b) = (got.status.unwrap(), on_leader.status.unwrap());
    assert_eq!(
        (&a.id, &a.name, a.state, a.sequence, &a.created_at),
        (&b.id, &b.name, b.state, b.sequence, &b.created_at)
    );
    assert_eq!(got.payload, on_leader.payload);
    assert!(got.payload.is_some());
    let logs = via
        .get_task_logs(with_token(pb::GetTaskLogsRequest {
            task_id: id.clone(),
            after_line: 0,
            limit: 1,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(logs.lines.len(), 1);
    assert!(logs.lines[0].message.starts_with("scheduled"), "{logs:?}");
    // The leader's checks and codes.
    let e = via
        .get_task_status(pb::GetTaskStatusRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = via
        .get_task_status(with_token(pb::GetTaskStatusRequest {
            task_id: "not-a-uuid".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(violations(&e).iter().any(|f| f == "task_id"), "{e:?}");
    // A large id: the field is named, as on the leader (not a size error:
    // a standby decodes as much as the leader does).
    let e = via
        .get_task_status(with_token(pb::GetTaskStatusRequest {
            task_id: "x".repeat(100_000),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(violations(&e).iter().any(|f| f == "task_id"), "{e:?}");
    let e = via
        .get_task_logs(with_token(pb::GetTaskLogsRequest {
            task_id: id.clone(),
            after_line: 0,
            limit: 5001,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(violations(&e).iter().any(|f| f == "limit"), "{e:?}");
    let e = via
        .get_task_status(with_token(pb::GetTaskStatusRequest {
            task_id: uuid::Uuid::now_v7().to_string(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // What needs the leader waits for one.
    let e = via
        .schedule_task(with_token(simple("no-leader", json!({}))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(
        health_status(&cluster.replicas[standby].as_ref().unwrap().url).await,
        Some(false)
    );
}

/// A request with the cluster's token.
fn with_token<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    r
}

/// Prints a server's log if the test fails.
struct ShowLog(std::path::PathBuf);

impl Drop for ShowLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- server log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// PostgreSQL itself crashes and restarts under load: accepted tasks
/// survive, ScheduleTask answers UNAVAILABLE while nothing can commit, and
/// the server recovers by itself (same leader, same term).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crashes_under_load_and_nothing_accepted_is_lost() {
    let pg = OwnPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = pg.url();
    // A single replica leads at once: started as any server.
    let log = dir.path().join("server.log");
    let server = ServerProcess::start_logging_to(
        port,
        dir.path(),
        &[
            ("SWITCHYARD_STORE__URL", url.as_str()),
            ("SWITCHYARD_STORE__SCHEMA", "switchyard"),
            ("SWITCHYARD_CLUSTER__LEASE_TTL", LEASE),
        ],
        &log,
    )
    .await;
    let _show_log_on_failure = ShowLog(log);
    let ran: Arc<parking_lot::Mutex<HashSet<String>>> = Default::default();
    let worker = {
        let ran = ran.clone();
        Worker::builder(&server.url)
            .concurrency(8)
            .handler("outage-job", move |ctx: TaskContext| {
                let ran = ran.clone();
                async move {
                    ran.lock().insert(ctx.task_id().to_string());
                    Ok(json!({}))
                }
            })
            .build()
    };
    let handle = worker.spawn();
    let refused = Arc::new(std::sync::atomic::AtomicU32::new(0));
    const N: usize = 400;
    let producer = {
        let (url, refused) = (server.url.clone(), refused.clone());
        tokio::spawn(async move {
            let mut c = connect(&url).await;
            let mut acked = Vec::new();
            for i in 0..N {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let mut req = simple("outage-job", json!({"i": i}));
                    req.options
                        .get_or_insert_with(Default::default)
                        .idempotency_key = format!("outage-{i}");
                    // A call whose insert waits for the database has an
                    // unknown outcome at the caller's deadline: retried
                    // with the same key, as a client with a deadline does.
                    let call = tokio::time::timeout(Duration::from_secs(2), c.schedule_task(req));
                    let Ok(answer) = call.await else {
                        continue;
                    };
                    match answer {
                        Ok(r) => {
                            acked.push(r.into_inner().task_id);
                            break;
                        }
                        Err(s) => {
                            assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            assert!(Instant::now() < deadline, "never accepted again: {s:?}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    pg.crash();
    // While it is down, new tasks are refused with UNAVAILABLE.
    wait_until("ScheduleTask to answer UNAVAILABLE", LONG, || {
        let refused = refused.clone();
        async move { refused.load(std::sync::atomic::Ordering::Relaxed) > 0 }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.up();
    let acked = within("the producer", Duration::from_secs(120), producer)
        .await
        .unwrap();
    assert_eq!(acked.iter().collect::<HashSet<_>>().len(), N);
    let mut c = connect(&server.url).await;
    for id in &acked {
        wait_state(&mut c, id, pb::TaskState::Completed, LONG).await;
        assert!(ran.lock().contains(id));
    }
    // The same replica still leads, under its first term.
    assert!(health_serving(&server.url).await);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let term: i64 = client
        .query_one("SELECT term FROM switchyard.leases", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(term, 1);
    handle.shutdown();
    assert!(server.terminate().await);
}

/// Workflow definitions live in the shared store: a new leader runs the
/// workflows the old one registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_runs_the_workflows_the_old_one_registered() {
    let mut cluster = Cluster::start(2).await;
    let urls = cluster.urls();
    let old = cluster.wait_leader(LONG).await;
    let mut client = connect(&cluster.replicas[old].as_ref().unwrap().url).await;
    let (name, version, created) = crate::workflow::register(
        &mut client,
        "name = \"failover-flow\"\n[[steps]]\nid = \"only\"\ntask = \"failover-step\"\n",
    )
    .await;
    assert_eq!(
        (name.as_str(), version, created),
        ("failover-flow", 1, true)
    );
    cluster.replicas[old].take().unwrap().kill9().await;
    let new = cluster.wait_leader(LONG).await;
    assert_ne!(old, new);
    let worker = Worker::builder(&urls)
        .handler("failover-step", |_ctx: TaskContext| async {
            Ok(json!({"done": true}))
        })
        .build();
    let handle = worker.spawn();
    let mut client = connect(&cluster.replicas[new].as_ref().unwrap().url).await;
    let id = client
        .schedule_task(crate::workflow::workflow("failover-flow", vec![], ""))
        .await
        .expect("the new leader knows failover-flow")
        .into_inner()
        .task_id;
    wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;
    // Registering the same definition again makes no new version.
    let (_, version, created) = crate::workflow::register(
        &mut client,
        "name = \"failover-flow\"\n[[steps]]\nid = \"only\"\ntask = \"failover-step\"\n",
    )
    .await;
    assert_eq!((version, created), (1, false));
    // Who leads, as the RPC and the CLI say (through any replica's address).
    let c = client
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.store, "postgres");
    assert_eq!(c.replica_id, format!("r{new}"));
    assert_eq!(c.leases.len(), 1);
    assert_eq!(
        (c.leases[0].term, c.leases[0].holder.clone()),
        (2, format!("r{new}"))
    );
    let leader: Vec<&str> = c
        .replicas
        .iter()
        .filter(|r| r.leader)
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(leader, vec![format!("r{new}")]);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--json", "--server", &urls, "cluster", "status"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["leases"][0]["holder"], format!("r{new}"));
    assert_eq!(v["leases"][0]["term"], 2);
    handle.shutdown();
}

/// A replica started while PostgreSQL is down waits for it (instead of
/// exiting) and serves once it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_before_its_database_waits_for_it() {
    let pg = Arc::new(OwnPostgres::start());
    pg.crash();
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url();
    let up = {
        let pg = pg.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::spawn_blocking(move || pg.up()).await.unwrap();
        })
    };
    let server = ServerProcess::start(
        free_port(),
        dir.path(),
        &[
            ("SWITCHYARD_STORE__URL", url.as_str()),
            ("SWITCHYARD_STORE__SCHEMA", "switchyard"),
            ("SWITCHYARD_CLUSTER__LEASE_TTL", LEASE),
        ],
    )
    .await;
    up.await.unwrap();
    let mut c = connect(&server.url).await;
    schedule(&mut c, simple("after-the-wait", json!({}))).await;
    assert!(server.terminate().await);
}

/// Schedules live in the shared store and fire only on the leader: a
/// schedule made through a standby with the CLI fires each tick once, across
/// a kill -9 of the leader (the new leader catches up from the last tick
/// the old one recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_each_tick_once_across_a_leader_kill() {
    let mut cluster = Cluster::start(2).await;
    let old = cluster.wait_leader(LONG).await;
    let standby = 1 - old;
    let second = 1_000_000i64;
    let start = (switchyard::domain::now_micros() / second + 3) * second;
    let end = start + 11 * second;
    let rfc = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap()
            .to_rfc3339()
    };
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "--json",
            "--server",
            &cluster.replicas[standby].as_ref().unwrap().url,
            "schedule",
            "create",
            "failover-every-second",
            "failover-tick",
            "--cron",
            "* * * * * *",
            "--start",
            &rfc(start),
            "--end",
            &rfc(end),
            "--overlap",
            "allow-all",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["scheduleId"], "failover-every-second");
    let list = |url: String| async move {
        let mut c = connect(&url).await;
        c.list_tasks(pb::ListTasksRequest {
            filter: Some(pb::TaskFilter {
                names: vec!["failover-tick".into()],
                ..Default::default()
            }),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .map(|r| r.into_inner().tasks)
        .unwrap_or_default()
    };
    let old_url = cluster.replicas[old].as_ref().unwrap().url.clone();
    wait_until("three fires on the first leader", LONG, || {
        let u = old_url.clone();
        async move { list(u).await.len() >= 3 }
    })
    .await;
    cluster.replicas[old].take().unwrap().kill9().await;
    let new = cluster.wait_leader(LONG).await;
    assert_eq!(new, standby);
    let new_url = cluster.replicas[new].as_ref().unwrap().url.clone();
    let after_end = end + 1_500_000;
    wait_until("the schedule's end to pass", LONG, || async move {
        switchyard::domain::now_micros() > after_end
    })
    .await;
    let tasks = list(new_url).await;
    let mut ticks: Vec<i64> = tasks
        .iter()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(&t.labels["switchyard.schedule_tick"])
                .unwrap()
                .timestamp_micros()
        })
        .collect();
    ticks.sort();
    let expected: Vec<i64> = (0..12).map(|i| start + i * second).collect();
    assert_eq!(ticks, expected, "every tick once, none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_limits_hold_through_a_standby_and_on_a_new_leader() {
    use switchyard::pb::keys_service_client::KeysServiceClient;
    use tonic_types::StatusExt;
    let mut cluster = Cluster::start_with(2, LEASE, &[("SWITCHYARD_AUTH__TOKENS", "s3cret")]).await;
    let leader = cluster.wait_leader(LONG).await;
    let standby = 1 - leader;
    let urls: Vec<String> = (0..2)
        .map(|i| cluster.replicas[i].as_ref().unwrap().url.clone())
        .collect();
    let url = |i: usize| urls[i].clone();
    let created = KeysServiceClient::new(channel(&url(leader)).await)
        .create_key(with_token(pb::CreateKeyRequest {
            role: pb::KeyRole::Scheduler as i32,
            max_requests_per_second: 1.0,
            max_payload_bytes: 50,
            ..Default::default()
        }))
        .await
        .expect("CreateKey on the leader")
        .into_inner();
    let key = created.secret;
    let as_key = |m: pb::ScheduleTaskRequest| {
        let mut r = tonic::Request::new(m);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    let big = || simple("limits-cluster", json!({"blob": "x".repeat(100)}));
    // Through the standby (it forwards to the leader): the payload bound,
    // then the rate (that call spent the burst of one), with its details.
    let mut via = connect(&url(standby)).await;
    let err = via.schedule_task(as_key(big())).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_payload_bytes"), "{err:?}");
    let err = via
        .schedule_task(as_key(simple("limits-cluster", json!({}))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.get_details_retry_info().is_some(), "{err:?}");
    // The leader dies; the new one loads the key, limits included.
    cluster.replicas[leader].as_ref().unwrap().signal("KILL");
    cluster.replicas[leader]
        .as_mut()
        .unwrap()
        .exited_within(Duration::from_secs(10))
        .await
        .expect("the leader is gone");
    let new = cluster.wait_leader(LONG).await;
    assert_eq!(new, standby);
    let mut c = connect(&url(new)).await;
    let err = c.schedule_task(as_key(big())).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_payload_bytes"), "{err:?}");
}

/// A cluster closed by API keys (no static token): while no leader
/// answers, a standby, which cannot check a key, refuses reads
/// (UNAVAILABLE) to everyone instead of answering them unauthenticated.
/// An open cluster's standby answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_of_a_cluster_closed_by_keys_answers_no_read_while_leaderless() {
    use switchyard::pb::keys_service_client::KeysServiceClient;
    let mut cluster = Cluster::start_with(2, "120s", &[]).await;
    let leader = cluster.wait_leader(LONG).await;
    let standby = 1 - leader;
    let urls: Vec<String> = (0..2)
        .map(|i| cluster.replicas[i].as_ref().unwrap().url.clone())
        .collect();
    let mut client = connect(&urls[leader]).await;
    let open_id = client
        .schedule_task(simple("open-read", json!({})))
        .await
        .unwrap()
        .into_inner()
        .task_id;
    // Open so far: a standby answers (forwarded, the leader lives).
    connect(&urls[standby])
        .await
        .get_task_status(pb::GetTaskStatusRequest {
            task_id: open_id.clone(),
        })
        .await
        .expect("an open cluster answers anyone");
    let key = KeysServiceClient::new(channel(&urls[leader]).await)
        .create_key(pb::CreateKeyRequest {
            role: pb::KeyRole::Admin as i32,
            ..Default::default()
        })
        .await
        .expect("the first key, an admin key")
        .into_inner()
        .secret;
    let with_key = |id: &str| {
        let mut r = tonic::Request::new(pb::GetTaskStatusRequest {
            task_id: id.to_string(),
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    cluster.replicas[leader].as_ref().unwrap().signal("KILL");
    cluster.replicas[leader]
        .as_mut()
        .unwrap()
        .exited_within(Duration::from_secs(10))
        .await
        .expect("the leader is gone");
    let mut via = connect(&urls[standby]).await;
    let e = via
        .get_task_status(pb::GetTaskStatusRequest {
            task_id: open_id.clone(),
        })
        .await
        .expect_err("no read without a key");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("static"), "{e:?}");
    let e = via.get_task_status(with_key(&open_id)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = via
        .get_task_logs(pb::GetTaskLogsRequest {
            task_id: open_id,
            after_line: 0,
            limit: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

/// A standby serves its clients' connections itself (it forwards their
/// calls to the leader), with the gRPC port's HTTP/2 limits
/// (`tests/it/http2.rs`), not hyper's defaults: 200 calls cancelled before
/// it took them keep the connection (hyper's 20 sent it away), and a
/// worker's 10,000 heartbeats arriving at once keep its stream (hyper's
/// 1 MiB window sent it away), which still gets its tasks through the
/// standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standbys_connections_have_the_grpc_ports_http2_limits() {
    use crate::http2::{assigned, send_burst, worker_burst, Answer};
    let cluster = Cluster::start(2).await;
    let leader = cluster.wait_leader(LONG).await;
    let standby = cluster.replicas[1 - leader].as_ref().unwrap();
    assert_eq!(send_burst(standby.addr, 200).await, Answer::Pong);
    // The standby forwards once it has read who leads.
    let mut via = connect(&standby.url).await;
    let deadline = Instant::now() + LONG;
    while via
        .schedule_task(simple("h2-standby-ready", json!({})))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the standby never forwarded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut tcp, mut buf, answer) = worker_burst(standby.addr, "h2-standby", 10_000).await;
    assert_eq!(answer, Ok(()));
    let mut client = connect(&cluster.replicas[leader].as_ref().unwrap().url).await;
    let id = schedule(&mut client, simple("h2-standby", json!({}))).await;
    assert_eq!(
        assigned(&mut tcp, &mut buf, &id).await,
        Ok(()),
        "the task reaches the worker through the standby"
    );
}
