//! Flow control through BullMQ (issue 21): a rate limit paces the jobs
//! handed to BullMQ, measured from the Node worker's own start times; a
//! queue paused through `FlowService` is paused in BullMQ too (BullMQ 5's
//! `meta.paused` and `paused` list), across a restart of Switchyard, and
//! resumed with it.

use switchyard::config::FlowRateConfig;
use switchyard::pb::flow_service_client::FlowServiceClient;

use super::*;
use crate::common::assert_paced_20_a_second;

impl Prefix {
    async fn llen(&self, queue: &str, list: &str) -> i64 {
        let mut c = self.conn().await;
        redis::cmd("LLEN")
            .arg(self.key(queue, list))
            .query_async(&mut c)
            .await
            .expect("LLEN")
    }

    async fn zcard(&self, queue: &str, set: &str) -> i64 {
        let mut c = self.conn().await;
        redis::cmd("ZCARD")
            .arg(self.key(queue, set))
            .query_async(&mut c)
            .await
            .expect("ZCARD")
    }

    /// (wait, paused, prioritized): the jobs waiting in BullMQ, by list.
    /// Switchyard gives its jobs a BullMQ priority: they wait in
    /// `prioritized`, which BullMQ's pause leaves as it is (no worker
    /// takes a job of a paused queue, from any list).
    async fn waiting(&self, queue: &str) -> (i64, i64, i64) {
        (
            self.llen(queue, "wait").await,
            self.llen(queue, "paused").await,
            self.zcard(queue, "prioritized").await,
        )
    }

    /// The queues Switchyard lists as paused by it.
    async fn switchyard_paused(&self) -> Vec<String> {
        let mut c = self.conn().await;
        redis::cmd("SMEMBERS")
            .arg(format!("{}:switchyard:paused", self.name))
            .query_async(&mut c)
            .await
            .expect("SMEMBERS")
    }
}

/// Rate 20 a second, burst 2, for a BullMQ-routed queue: over any second
/// at most 20 + 2 jobs start on a Node worker with 10 slots, and 60 take
/// about the (60 - 2) / 20 s the rate allows.
#[tokio::test]
async fn a_rate_limit_paces_the_jobs_a_node_worker_starts() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    let p = Prefix::new(&url);
    let s = server_with(&url, &p.name, &["rl-bull"], |cfg| {
        cfg.flow.rate_limit = vec![FlowRateConfig {
            pattern: "rl-bull".into(),
            rate: 20,
            interval: Duration::from_secs(1),
            burst: 2,
            per_key: false,
        }];
    })
    .await;
    let mut c = s.client().await;
    let worker = NodeWorker::start(&url, &p.name, "rl-bull", 10).await;
    const N: usize = 60;
    // In one call: scheduled one by one, the 60 calls can take as long as
    // the rate's 2.9 s on a slow machine (PostgreSQL in CI), and the last
    // task is then already released when it is read.
    let items = (0..N)
        .map(|n| task("rl-bull", json!({ "n": n }), pb::TaskOptions::default()))
        .collect();
    let results = crate::bulk::bulk(&mut c, items).await;
    let (ids, errors) = crate::bulk::split(&results, N);
    assert!(errors.is_empty(), "{errors:?}");
    let held = status(&mut c, &ids[N - 1]).await;
    assert_eq!(
        held.waiting_reason,
        pb::WaitingReason::RateLimited as i32,
        "{held:?}"
    );
    assert!(
        !p.exists("rl-bull", &ids[N - 1]).await,
        "a task the rate holds is not in BullMQ"
    );
    for id in &ids {
        wait_state(&mut c, id, pb::TaskState::Completed, LONG_WAIT).await;
    }
    let starts: Vec<f64> = worker
        .said("start")
        .iter()
        .map(|v| v["at"].as_f64().expect("at"))
        .collect();
    assert_eq!(starts.len(), N, "each job started once");
    assert_paced_20_a_second(&starts, "jobs");
    worker.stop().await;
    p.clean().await;
}

/// Jobs in BullMQ, then a pause through Switchyard: BullMQ's queue is
/// paused (`meta.paused`; the `wait` list, if any, becomes `paused`), a
/// Node worker starts none of its jobs, a restart of Switchyard keeps it paused, and a resume after the
/// restart resumes BullMQ: every job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_bullmq_routed_queue_is_paused_in_bullmq_too_across_a_restart() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    init_tracing();
    let p = Prefix::new(&url);
    const Q: &str = "fp-q";
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let queues = format!("[\"{Q}\"]");
    let env = [
        ("SWITCHYARD_BULLMQ__ENABLED", "true"),
        ("SWITCHYARD_BULLMQ__URL", url.as_str()),
        ("SWITCHYARD_BULLMQ__PREFIX", p.name.as_str()),
        ("SWITCHYARD_BULLMQ__QUEUES", queues.as_str()),
    ];
    let server = ServerProcess::start(port, dir.path(), &env).await;
    let mut c = connect(&server.url).await;
    let mut flow = FlowServiceClient::new(channel(&server.url).await);

    // Six jobs wait in BullMQ (no worker yet).
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(schedule(&mut c, task(Q, json!({ "n": n }), Default::default())).await);
    }
    wait_for("the 6 jobs to wait in BullMQ", LONG_WAIT, || {
        let p = &p;
        async move {
            let (w, _, pr) = p.waiting(Q).await;
            (w + pr == 6).then_some(())
        }
    })
    .await;

    let already = flow
        .pause_queue(pb::PauseQueueRequest { name: Q.into() })
        .await
        .expect("PauseQueue")
        .into_inner()
        .already;
    assert!(!already);
    wait_for("BullMQ's queue to be paused", LONG_WAIT, || {
        let p = &p;
        async move {
            let paused = p.hget(Q, "meta", "paused").await;
            (paused.as_deref() == Some("1")).then_some(())
        }
    })
    .await;
    let (w, pa, pr) = p.waiting(Q).await;
    assert_eq!(w, 0, "BullMQ 5's pause: nothing is left in the wait list");
    assert_eq!(pa + pr, 6, "the jobs wait in BullMQ");
    assert_eq!(p.switchyard_paused().await, vec![Q.to_string()]);
    // Scheduled while paused: held by Switchyard, not in BullMQ.
    for n in 6..8 {
        ids.push(schedule(&mut c, task(Q, json!({ "n": n }), Default::default())).await);
    }
    let held = status(&mut c, &ids[7]).await;
    assert_eq!(
        held.waiting_reason,
        pb::WaitingReason::QueuePaused as i32,
        "{held:?}"
    );
    assert!(!p.exists(Q, &ids[7]).await);

    // A worker with room: it starts nothing while BullMQ's queue is paused.
    // Nothing can be waited on for "nothing started": the worker is given
    // a second to prove it wrong.
    let worker = NodeWorker::start(&url, &p.name, Q, 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        worker.said("start").is_empty(),
        "{:?}",
        worker.said("start")
    );

    // A restart keeps BullMQ's queue paused.
    assert!(server.terminate().await, "a clean stop");
    let server = ServerProcess::start(port, dir.path(), &env).await;
    let mut c = connect(&server.url).await;
    let mut flow = FlowServiceClient::new(channel(&server.url).await);
    assert_eq!(
        p.hget(Q, "meta", "paused").await.as_deref(),
        Some("1"),
        "still paused in BullMQ after the restart"
    );
    let st = status(&mut c, &ids[0]).await;
    assert_eq!(state(&st), pb::TaskState::Pending, "{st:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        worker.said("start").is_empty(),
        "{:?}",
        worker.said("start")
    );
    let (w, pa, pr) = p.waiting(Q).await;
    assert_eq!((w, pa + pr), (0, 6), "the jobs still wait in BullMQ");

    // A resume after the restart resumes BullMQ: every job runs.
    let was = flow
        .resume_queue(pb::ResumeQueueRequest { name: Q.into() })
        .await
        .expect("ResumeQueue")
        .into_inner()
        .was_paused;
    assert!(was);
    for id in &ids {
        let st = wait_state(&mut c, id, pb::TaskState::Completed, LONG_WAIT).await;
        assert_eq!(st.source, pb::TaskSource::Bullmq as i32);
    }
    assert_eq!(worker.said("processed").len(), 8);
    assert_eq!(p.hget(Q, "meta", "paused").await, None);
    assert_eq!(p.hget(Q, "meta", "switchyard:paused").await, None);
    wait_for(
        "the queue to leave Switchyard's list of pauses",
        LONG_WAIT,
        || {
            let p = &p;
            async move { p.switchyard_paused().await.is_empty().then_some(()) }
        },
    )
    .await;
    worker.stop().await;
    assert!(server.terminate().await, "a clean stop");
    p.clean().await;
}

/// A queue paused in BullMQ by someone else (Bull Board, `Queue.pause()`)
/// is not resumed by a Switchyard that never paused it, at start-up or on
/// a resume of that name.
#[tokio::test]
async fn a_queue_paused_by_someone_else_stays_paused() {
    let url = redis_url();
    if !prerequisites(&url).await {
        return;
    }
    let p = Prefix::new(&url);
    const Q: &str = "fp-theirs";
    {
        let mut c = p.conn().await;
        let _: () = redis::cmd("HSET")
            .arg(p.key(Q, "meta"))
            .arg("paused")
            .arg(1)
            .query_async(&mut c)
            .await
            .expect("HSET");
    }
    let s = server_with(&url, &p.name, &[Q], |_| {}).await;
    let mut flow = FlowServiceClient::new(channel(&s.url).await);
    // Pause and resume through Switchyard: it did not pause BullMQ's queue
    // (it was paused), so its resume leaves it paused.
    flow.pause_queue(pb::PauseQueueRequest { name: Q.into() })
        .await
        .expect("PauseQueue");
    wait_for("Switchyard's mark on the queue", LONG_WAIT, || {
        let p = &p;
        async move {
            p.hget(Q, "meta", "switchyard:paused")
                .await
                .is_some()
                .then_some(())
        }
    })
    .await;
    flow.resume_queue(pb::ResumeQueueRequest { name: Q.into() })
        .await
        .expect("ResumeQueue");
    wait_for("Switchyard's mark to go", LONG_WAIT, || {
        let p = &p;
        async move {
            p.hget(Q, "meta", "switchyard:paused")
                .await
                .is_none()
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        p.hget(Q, "meta", "paused").await.as_deref(),
        Some("1"),
        "paused by someone else: still paused"
    );
    s.stop().await;
    p.clean().await;
}
