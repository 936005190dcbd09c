//! Debounce, throttle and deduplication windows over the network (issue 21,
//! item 4): a burst of one debounce key runs only its last task, with the
//! last payload, and the others end CANCELLED as superseded; a throttle
//! key keeps its first task for the period; an idempotency key with a
//! window matches within it and creates a new task after it; the answer
//! says which happened; a quiet period and a throttle period survive a
//! kill -9; bad input names its field. On SQLite, and on PostgreSQL with
//! `SWITCHYARD_TEST_STORE=postgres`.

use std::time::Duration;

use serde_json::json;
use switchyard::pb;
use switchyard::pb::schedule_tasks_result::Outcome;
use switchyard::worker::{TaskContext, Worker};

use crate::common::*;

fn debounced(name: &str, key: &str, period: Duration, n: usize) -> pb::ScheduleTaskRequest {
    with_debounce(name, key, period, pb::DebounceMode::Debounce, n)
}

fn throttled(name: &str, key: &str, period: Duration, n: usize) -> pb::ScheduleTaskRequest {
    with_debounce(name, key, period, pb::DebounceMode::Throttle, n)
}

fn with_debounce(
    name: &str,
    key: &str,
    period: Duration,
    mode: pb::DebounceMode,
    n: usize,
) -> pb::ScheduleTaskRequest {
    simple_with(
        name,
        json!({ "n": n }),
        pb::TaskOptions {
            debounce: Some(pb::Debounce {
                key: key.into(),
                period: Some(dur(period)),
                mode: mode as i32,
            }),
            ..Default::default()
        },
    )
}

fn keyed(name: &str, key: &str, ttl: Option<Duration>, n: usize) -> pb::ScheduleTaskRequest {
    simple_with(
        name,
        json!({ "n": n }),
        pb::TaskOptions {
            idempotency_key: key.into(),
            idempotency_ttl: ttl.map(dur),
            ..Default::default()
        },
    )
}

async fn schedule_full(
    client: &mut Client,
    req: pb::ScheduleTaskRequest,
) -> pb::ScheduleTaskResponse {
    client
        .schedule_task(req)
        .await
        .unwrap_or_else(|e| panic!("ScheduleTask: {e:?}"))
        .into_inner()
}

fn outcome(r: &pb::ScheduleTaskResponse) -> pb::ScheduleOutcome {
    pb::ScheduleOutcome::try_from(r.outcome).unwrap_or(pb::ScheduleOutcome::Unspecified)
}

/// A worker for `name` that records every call in `journal`.
async fn recording_worker(
    url: &str,
    name: &str,
    journal: &Journal,
) -> switchyard::worker::WorkerHandle {
    let j = journal.clone();
    let worker = Worker::builder(url)
        .name("debounce-worker")
        .concurrency(4)
        .immediate_slots(0)
        .handler(name, move |ctx: TaskContext| {
            let j = j.clone();
            async move {
                j.record(&ctx);
                Ok(json!({ "n": ctx.payload()["n"].clone() }))
            }
        })
        .build();
    spawn_worker(worker).await.0
}

/// Asserts a task ended CANCELLED as superseded.
async fn assert_superseded(client: &mut Client, id: &str) {
    let s = status(client, id).await;
    assert_eq!(state(&s), pb::TaskState::Cancelled, "task {id}: {s:#?}");
    let e = s
        .last_error
        .as_ref()
        .expect("a superseded task has an error");
    assert_eq!(e.kind, "superseded", "task {id}: {s:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_one_debounce_key_runs_only_its_last_task_with_the_last_payload() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let journal = Journal::default();
    let _worker = recording_worker(&server.url, "deb-burst", &journal).await;
    let period = Duration::from_secs(3);
    let mut ids: Vec<String> = Vec::new();
    for n in 0..100 {
        let r = schedule_full(&mut client, debounced("deb-burst", "doc-1", period, n)).await;
        assert!(!r.existing);
        if n == 0 {
            assert_eq!(outcome(&r), pb::ScheduleOutcome::Created);
            assert!(r.superseded_task_ids.is_empty());
        } else {
            assert_eq!(
                outcome(&r),
                pb::ScheduleOutcome::SupersededOthers,
                "item {n}"
            );
            assert_eq!(r.superseded_task_ids, vec![ids[n - 1].clone()], "item {n}");
        }
        let s = r.status.expect("a status");
        assert_eq!(state(&s), pb::TaskState::Pending);
        let d = s.debounce.expect("the debounce key shows in the status");
        assert_eq!(d.key, "doc-1");
        ids.push(r.task_id);
    }
    assert!(
        journal.is_empty(),
        "a task of the burst ran within the quiet period: {:?}",
        journal.entries()
    );
    let last = ids.last().expect("100 ids").clone();
    let done = wait_state(&mut client, &last, pb::TaskState::Completed, LONG).await;
    // It waited the quiet period after it was scheduled.
    let waited = micros(&done.started_at) - micros(&done.created_at);
    assert!(
        waited >= period.as_micros() as i64,
        "the last task started {waited} µs after it was scheduled"
    );
    for id in &ids[..99] {
        assert_superseded(&mut client, id).await;
    }
    let calls = journal.entries();
    assert_eq!(calls.len(), 1, "exactly one task ran: {calls:?}");
    assert_eq!(calls[0].task_id, last);
    assert_eq!(calls[0].payload["n"], json!(99));
    // The superseded tasks can be found by their error kind.
    let page = client
        .list_tasks(pb::ListTasksRequest {
            filter: Some(pb::TaskFilter {
                names: vec!["deb-burst".into()],
                error_kind: "superseded".into(),
                ..Default::default()
            }),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("ListTasks")
        .into_inner();
    assert_eq!(page.tasks.len(), 99);

    // A task of the key scheduled after the last one started is a new
    // burst: nothing pending to supersede.
    let r = schedule_full(
        &mut client,
        debounced("deb-burst", "doc-1", Duration::from_millis(50), 100),
    )
    .await;
    assert_eq!(outcome(&r), pb::ScheduleOutcome::Created);
    wait_state(&mut client, &r.task_id, pb::TaskState::Completed, LONG).await;
    assert_eq!(journal.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_of_one_bulk_supersede_each_other_in_order() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let period = Duration::from_secs(60);
    let tasks: Vec<_> = (0..3)
        .map(|n| debounced("deb-bulk", "bulk-key", period, n))
        .collect();
    let results = client
        .schedule_tasks(pb::ScheduleTasksRequest { tasks })
        .await
        .expect("ScheduleTasks")
        .into_inner()
        .results;
    let scheduled: Vec<pb::ScheduledTask> = results
        .into_iter()
        .map(|r| match r.outcome {
            Some(Outcome::Scheduled(s)) => s,
            other => panic!("an item was refused: {other:?}"),
        })
        .collect();
    let outcomes: Vec<_> = scheduled
        .iter()
        .map(|s| pb::ScheduleOutcome::try_from(s.outcome).unwrap_or_default())
        .collect();
    assert_eq!(
        outcomes,
        [
            pb::ScheduleOutcome::Created,
            pb::ScheduleOutcome::SupersededOthers,
            pb::ScheduleOutcome::SupersededOthers
        ]
    );
    assert_eq!(
        scheduled[1].superseded_task_ids,
        vec![scheduled[0].task_id.clone()]
    );
    assert_eq!(
        scheduled[2].superseded_task_ids,
        vec![scheduled[1].task_id.clone()]
    );
    assert_superseded(&mut client, &scheduled[0].task_id).await;
    assert_superseded(&mut client, &scheduled[1].task_id).await;
    let kept = status(&mut client, &scheduled[2].task_id).await;
    assert_eq!(state(&kept), pb::TaskState::Pending);
    // Another key is untouched.
    let other = schedule_full(&mut client, debounced("deb-bulk", "other-key", period, 9)).await;
    assert_eq!(outcome(&other), pb::ScheduleOutcome::Created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_key_keeps_its_first_task_for_the_period() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let journal = Journal::default();
    let _worker = recording_worker(&server.url, "thr-job", &journal).await;
    let period = Duration::from_secs(2);
    let first = schedule_full(&mut client, throttled("thr-job", "t-1", period, 0)).await;
    assert_eq!(outcome(&first), pb::ScheduleOutcome::Created);
    assert!(!first.existing);
    let first_status = first.status.clone().expect("a status");
    // The throttle key is Switchyard's, not an idempotency key of the caller's.
    assert_eq!(first_status.idempotency_key, "");
    for n in 1..10 {
        let r = schedule_full(&mut client, throttled("thr-job", "t-1", period, n)).await;
        assert_eq!(outcome(&r), pb::ScheduleOutcome::Throttled, "item {n}");
        assert!(r.existing);
        assert_eq!(r.task_id, first.task_id, "item {n}");
    }
    // The first runs at once (a throttle adds no delay).
    wait_state(&mut client, &first.task_id, pb::TaskState::Completed, LONG).await;
    assert_eq!(journal.len(), 1);
    assert_eq!(journal.entries()[0].payload["n"], json!(0));
    // After the period the key opens a new period with a new task.
    let opens = micros(&first_status.created_at) + period.as_micros() as i64;
    wait_until("the throttle period to pass", LONG, || async move {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        now > opens + 50_000
    })
    .await;
    let next = schedule_full(&mut client, throttled("thr-job", "t-1", period, 10)).await;
    assert_eq!(outcome(&next), pb::ScheduleOutcome::Created);
    assert_ne!(next.task_id, first.task_id);
    let again = schedule_full(&mut client, throttled("thr-job", "t-1", period, 11)).await;
    assert_eq!(outcome(&again), pb::ScheduleOutcome::Throttled);
    assert_eq!(again.task_id, next.task_id);
    wait_state(&mut client, &next.task_id, pb::TaskState::Completed, LONG).await;
    let payloads: Vec<_> = journal
        .entries()
        .iter()
        .map(|e| e.payload["n"].clone())
        .collect();
    assert_eq!(payloads, [json!(0), json!(10)]);
    // The first task keeps its history.
    let old = status(&mut client, &first.task_id).await;
    assert_eq!(state(&old), pb::TaskState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_matches_within_its_window_and_creates_a_new_task_after_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let ttl = Duration::from_secs(1);
    let first = schedule_full(&mut client, keyed("ttl-job", "order-7", Some(ttl), 0)).await;
    assert_eq!(outcome(&first), pb::ScheduleOutcome::Created);
    let created = micros(&first.status.as_ref().expect("a status").created_at);
    let within = schedule_full(&mut client, keyed("ttl-job", "order-7", Some(ttl), 1)).await;
    assert_eq!(outcome(&within), pb::ScheduleOutcome::Existing);
    assert!(within.existing);
    assert_eq!(within.task_id, first.task_id);
    // A bulk within the window matches too.
    let results = client
        .schedule_tasks(pb::ScheduleTasksRequest {
            tasks: vec![keyed("ttl-job", "order-7", Some(ttl), 2)],
        })
        .await
        .expect("ScheduleTasks")
        .into_inner()
        .results;
    match &results[0].outcome {
        Some(Outcome::Scheduled(s)) => {
            assert_eq!(s.task_id, first.task_id);
            assert_eq!(s.outcome, pb::ScheduleOutcome::Existing as i32);
        }
        other => panic!("refused: {other:?}"),
    }
    let opens = created + ttl.as_micros() as i64;
    wait_until("the key's window to pass", LONG, || async move {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        now > opens + 50_000
    })
    .await;
    let after = schedule_full(
        &mut client,
        keyed("ttl-job", "order-7", Some(Duration::from_secs(600)), 3),
    )
    .await;
    assert_eq!(outcome(&after), pb::ScheduleOutcome::Created);
    assert!(!after.existing);
    assert_ne!(after.task_id, first.task_id);
    // Its first line says why it is new, once (that line is stored, not
    // derived: the first attempt's task derived a plain one).
    let lines = log_messages(&mut client, &after.task_id).await;
    let scheduled: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("scheduled"))
        .collect();
    assert_eq!(
        scheduled,
        [&format!(
            "scheduled (SIMPLE); the key window of task {} had passed",
            first.task_id
        )],
        "{lines:?}"
    );
    assert_eq!(
        log_messages(&mut client, &first.task_id).await[0],
        "scheduled (SIMPLE)"
    );
    // The new task holds the key now, for its own window.
    let again = schedule_full(&mut client, keyed("ttl-job", "order-7", None, 4)).await;
    assert_eq!(outcome(&again), pb::ScheduleOutcome::Existing);
    assert_eq!(again.task_id, after.task_id);
    // The old one keeps its history, and its key and window still show.
    let old = status(&mut client, &first.task_id).await;
    assert_eq!(old.idempotency_key, "order-7");
    assert_eq!(old.idempotency_ttl, Some(dur(ttl)));
    assert_eq!(state(&old), pb::TaskState::Pending);

    // A key without a window keeps matching.
    let plain = schedule_full(&mut client, keyed("ttl-job", "plain", None, 0)).await;
    let plain_again = schedule_full(&mut client, keyed("ttl-job", "plain", Some(ttl), 1)).await;
    assert_eq!(outcome(&plain), pb::ScheduleOutcome::Created);
    assert_eq!(outcome(&plain_again), pb::ScheduleOutcome::Existing);
    assert_eq!(plain_again.task_id, plain.task_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_period_and_a_throttle_period_survive_a_kill_9() {
    init_tracing();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&server.url).await;
    let period = Duration::from_secs(3);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(schedule_full(&mut client, debounced("deb-crash", "crash-key", period, n)).await);
    }
    let throttle = schedule_full(
        &mut client,
        throttled("deb-crash", "crash-throttle", Duration::from_secs(120), 0),
    )
    .await;
    let dedup = schedule_full(
        &mut client,
        keyed(
            "deb-crash",
            "crash-dedup",
            Some(Duration::from_secs(120)),
            0,
        ),
    )
    .await;
    server.kill9().await;

    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&server.url).await;
    // The answered supersedes were durable.
    assert_superseded(&mut client, &ids[0].task_id).await;
    assert_superseded(&mut client, &ids[1].task_id).await;
    // The throttle period and the dedup window hold across the restart.
    let t = schedule_full(
        &mut client,
        throttled("deb-crash", "crash-throttle", Duration::from_secs(120), 1),
    )
    .await;
    assert_eq!(outcome(&t), pb::ScheduleOutcome::Throttled);
    assert_eq!(t.task_id, throttle.task_id);
    let d = schedule_full(
        &mut client,
        keyed(
            "deb-crash",
            "crash-dedup",
            Some(Duration::from_secs(120)),
            1,
        ),
    )
    .await;
    assert_eq!(outcome(&d), pb::ScheduleOutcome::Existing);
    assert_eq!(d.task_id, dedup.task_id);
    // The debounce key's index is rebuilt: a newer task supersedes the
    // pending one read back at start-up.
    let newest = schedule_full(&mut client, debounced("deb-crash", "crash-key", period, 3)).await;
    assert_eq!(outcome(&newest), pb::ScheduleOutcome::SupersededOthers);
    assert_eq!(newest.superseded_task_ids, vec![ids[2].task_id.clone()]);

    let journal = Journal::default();
    let _worker = recording_worker(&server.url, "deb-crash", &journal).await;
    let done = wait_state(&mut client, &newest.task_id, pb::TaskState::Completed, LONG).await;
    let waited = micros(&done.started_at) - micros(&done.created_at);
    assert!(
        waited >= period.as_micros() as i64,
        "started {waited} µs after it was scheduled"
    );
    assert_superseded(&mut client, &ids[2].task_id).await;
    wait_state(
        &mut client,
        &throttle.task_id,
        pb::TaskState::Completed,
        LONG,
    )
    .await;
    wait_state(&mut client, &dedup.task_id, pb::TaskState::Completed, LONG).await;
    let mut ran: Vec<String> = journal.entries().into_iter().map(|e| e.task_id).collect();
    ran.sort();
    let mut want = vec![
        newest.task_id.clone(),
        throttle.task_id.clone(),
        dedup.task_id.clone(),
    ];
    want.sort();
    assert_eq!(ran, want, "only the kept tasks ran");
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_period_in_progress_at_a_kill_9_still_starts_its_task_after_it() {
    init_tracing();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&server.url).await;
    let period = Duration::from_secs(4);
    let a = schedule_full(&mut client, debounced("deb-mid", "mid-key", period, 0)).await;
    let b = schedule_full(&mut client, debounced("deb-mid", "mid-key", period, 1)).await;
    assert_eq!(b.superseded_task_ids, vec![a.task_id.clone()]);
    server.kill9().await;
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&server.url).await;
    let journal = Journal::default();
    let _worker = recording_worker(&server.url, "deb-mid", &journal).await;
    let done = wait_state(&mut client, &b.task_id, pb::TaskState::Completed, LONG).await;
    let waited = micros(&done.started_at) - micros(&done.created_at);
    assert!(
        waited >= period.as_micros() as i64,
        "started {waited} µs after it was scheduled"
    );
    assert_superseded(&mut client, &a.task_id).await;
    let calls = journal.entries();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].payload["n"], json!(1));
    server.terminate().await;
}

#[tokio::test]
async fn bad_debounce_and_window_options_are_invalid_argument_naming_the_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let d = |key: &str, period: Option<prost_types::Duration>, mode: i32| pb::TaskOptions {
        debounce: Some(pb::Debounce {
            key: key.into(),
            period,
            mode,
        }),
        ..Default::default()
    };
    let secs = |s: i64| {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    let cases: Vec<(&str, pb::TaskOptions, &str)> = vec![
        ("period 0", d("k", secs(0), 1), "options.debounce.period"),
        ("no period", d("k", None, 1), "options.debounce.period"),
        (
            "period over 30 days",
            d("k", secs(31 * 86_400), 1),
            "options.debounce.period",
        ),
        (
            "negative period",
            d("k", secs(-1), 1),
            "options.debounce.period",
        ),
        (
            "key of 257 bytes",
            d(&"k".repeat(257), secs(1), 1),
            "options.debounce.key",
        ),
        (
            "debounce without a key",
            d("", secs(1), 1),
            "options.debounce.key",
        ),
        ("unknown mode", d("k", secs(1), 7), "options.debounce.mode"),
        (
            "debounce with an idempotency key",
            pb::TaskOptions {
                idempotency_key: "i".into(),
                ..d("k", secs(1), 2)
            },
            "options.debounce",
        ),
        (
            "negative ttl",
            pb::TaskOptions {
                idempotency_key: "i".into(),
                idempotency_ttl: secs(-5),
                ..Default::default()
            },
            "options.idempotency_ttl",
        ),
        (
            "ttl 0",
            pb::TaskOptions {
                idempotency_key: "i".into(),
                idempotency_ttl: secs(0),
                ..Default::default()
            },
            "options.idempotency_ttl",
        ),
        (
            "ttl over 365 days",
            pb::TaskOptions {
                idempotency_key: "i".into(),
                idempotency_ttl: secs(366 * 86_400),
                ..Default::default()
            },
            "options.idempotency_ttl",
        ),
        (
            "ttl without a key",
            pb::TaskOptions {
                idempotency_ttl: secs(5),
                ..Default::default()
            },
            "options.idempotency_ttl",
        ),
        (
            "an idempotency key in the throttle keys' space",
            pb::TaskOptions {
                idempotency_key: "\u{1}throttle:k".into(),
                ..Default::default()
            },
            "options.idempotency_key",
        ),
    ];
    for (case, options, field) in cases {
        let r = client
            .schedule_task(simple_with("bad-deb", json!({}), options.clone()))
            .await;
        assert_invalid(case, r, field);
        // The same item in a bulk is refused alone, naming the field.
        let results = client
            .schedule_tasks(pb::ScheduleTasksRequest {
                tasks: vec![simple_with("bad-deb", json!({}), options)],
            })
            .await
            .expect("ScheduleTasks")
            .into_inner()
            .results;
        match &results[0].outcome {
            Some(Outcome::Error(e)) => {
                assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{case}");
                assert_eq!(e.field, field, "{case}");
            }
            other => panic!("{case}: expected a refusal, got {other:?}"),
        }
    }
    assert!(
        all_named(&mut client, "bad-deb").await.is_empty(),
        "nothing was stored"
    );
}
