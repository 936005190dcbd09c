//! `WatchTasks`: live events with sequence numbers and whole statuses,
//! filters, snapshots, and resuming after a reconnect (from history, or
//! across a gap in it).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::json;
use switchyard::pb;
use switchyard::pb::watch_tasks_response::Item;
use switchyard::worker::{TaskContext, Worker};
use tokio_stream::StreamExt;
use tonic::Streaming;

use crate::common::*;

type Watch = Streaming<pb::WatchTasksResponse>;

async fn watch(client: &mut Client, filter: pb::TaskFilter, after: u64, snapshot: bool) -> Watch {
    client
        .watch_tasks(pb::WatchTasksRequest {
            filter: Some(filter),
            after_sequence: after,
            include_snapshot: snapshot,
        })
        .await
        .expect("WatchTasks")
        .into_inner()
}

async fn next_item(w: &mut Watch) -> Item {
    within("a watch item", SHORT, w.next())
        .await
        .expect("the watch ended")
        .expect("a watch error")
        .item
        .expect("a non-empty item")
}

async fn next_event(w: &mut Watch) -> pb::TaskEvent {
    match next_item(w).await {
        Item::Event(e) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Opens a live watch and consumes its `live` marker.
async fn live_watch(client: &mut Client, filter: pb::TaskFilter) -> Watch {
    let mut w = watch(client, filter, 0, false).await;
    match next_item(&mut w).await {
        Item::Live(_) => w,
        other => panic!("a live-only watch starts with its live marker, got {other:?}"),
    }
}

/// Reads events until one for `id` of `kind`; returns them all.
async fn events_until(w: &mut Watch, id: &str, kind: pb::TaskEventKind) -> Vec<pb::TaskEvent> {
    let mut out = Vec::new();
    loop {
        let e = next_event(w).await;
        let done = e.kind == kind as i32 && e.status.as_ref().is_some_and(|s| s.id == id);
        out.push(e);
        if done {
            return out;
        }
    }
}

fn kind(e: &pb::TaskEvent) -> pb::TaskEventKind {
    pb::TaskEventKind::try_from(e.kind).unwrap_or(pb::TaskEventKind::Unspecified)
}

fn st(e: &pb::TaskEvent) -> &pb::TaskStatus {
    e.status.as_ref().expect("every event carries a status")
}

fn ids(events: &[pb::TaskEvent]) -> BTreeSet<String> {
    events.iter().map(|e| st(e).id.clone()).collect()
}

#[track_caller]
fn assert_increasing(events: &[pb::TaskEvent]) {
    for w in events.windows(2) {
        assert!(
            w[0].sequence < w[1].sequence,
            "sequences must strictly increase: {} then {}",
            w[0].sequence,
            w[1].sequence
        );
    }
}

fn quick_worker(url: &str, names: &[&str]) -> Worker {
    let mut b = Worker::builder(url).concurrency(4);
    for name in names {
        b = b.handler(*name, |ctx: TaskContext| async move {
            ctx.progress(50.0, "half");
            Ok(json!({ "echo": ctx.payload().clone() }))
        });
    }
    b.build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_each_transition_with_an_increasing_sequence_and_the_whole_status() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut w = live_watch(&mut client, pb::TaskFilter::default()).await;
    let (_worker, worker_id) = spawn_worker(quick_worker(&server.url, &["echo"])).await;
    let id = schedule(
        &mut client,
        simple_with(
            "echo",
            json!({ "x": 1 }),
            pb::TaskOptions {
                user_id: "u1".into(),
                labels: [("k".to_string(), "v".to_string())].into(),
                ..Default::default()
            },
        ),
    )
    .await;
    let events = events_until(&mut w, &id, pb::TaskEventKind::Completed).await;
    assert_increasing(&events);
    let kinds: Vec<pb::TaskEventKind> = events.iter().map(kind).collect();
    assert_eq!(
        kinds.first(),
        Some(&pb::TaskEventKind::Scheduled),
        "{kinds:?}"
    );
    assert_eq!(kinds.get(1), Some(&pb::TaskEventKind::Started), "{kinds:?}");
    assert_eq!(
        kinds.last(),
        Some(&pb::TaskEventKind::Completed),
        "{kinds:?}"
    );
    assert!(
        kinds[2..kinds.len() - 1]
            .iter()
            .all(|k| *k == pb::TaskEventKind::Progress),
        "{kinds:?}"
    );
    for e in &events {
        let s = st(e);
        assert_eq!(s.id, id);
        assert_eq!(s.name, "echo");
        assert_eq!(s.user_id, "u1");
        assert_eq!(s.labels.get("k").map(String::as_str), Some("v"));
        assert_eq!(
            s.sequence, e.sequence,
            "the status carries its event's sequence"
        );
        assert!(e.time.is_some());
        let want = match kind(e) {
            pb::TaskEventKind::Scheduled => pb::TaskState::Pending,
            pb::TaskEventKind::Started | pb::TaskEventKind::Progress => pb::TaskState::Running,
            pb::TaskEventKind::Completed => pb::TaskState::Completed,
            other => panic!("unexpected kind {other:?}"),
        };
        assert_eq!(state(s), want, "{e:?}");
    }
    let started = st(&events[1]);
    assert_eq!(started.worker_id, worker_id);
    assert_eq!(started.attempt, 1);
    let done = st(events.last().expect("events"));
    assert_eq!(
        done.result.as_ref().map(to_json),
        Some(json!({ "echo": { "x": 1 } }))
    );
    // The sequence is the one GetTaskStatus and GetMetrics report.
    assert_eq!(
        status(&mut client, &id).await.sequence,
        events.last().map(|e| e.sequence).unwrap_or(0)
    );
    let m = client
        .get_metrics(pb::GetMetricsRequest {})
        .await
        .expect("metrics")
        .into_inner();
    assert!(m.last_sequence >= done.sequence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_with_snapshot_first_sends_the_active_tasks_that_match() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mine = schedule(
        &mut client,
        simple_with(
            "parked",
            json!({}),
            pb::TaskOptions {
                session_id: "sess".into(),
                ..Default::default()
            },
        ),
    )
    .await;
    let _other = schedule(&mut client, simple("parked", json!({}))).await;
    let gone = schedule(
        &mut client,
        simple_with(
            "parked",
            json!({}),
            pb::TaskOptions {
                session_id: "sess".into(),
                ..Default::default()
            },
        ),
    )
    .await;
    client
        .cancel_task(pb::CancelTaskRequest {
            task_id: gone,
            ..Default::default()
        })
        .await
        .expect("cancel");
    let mut w = watch(
        &mut client,
        pb::TaskFilter {
            session_id: "sess".into(),
            ..Default::default()
        },
        0,
        true,
    )
    .await;
    let e = next_event(&mut w).await;
    assert_eq!(kind(&e), pb::TaskEventKind::Snapshot);
    assert_eq!(st(&e).id, mine, "only the active task of the session");
    assert_eq!(state(st(&e)), pb::TaskState::Pending);
    match next_item(&mut w).await {
        Item::Live(_) => {}
        other => panic!("expected the live marker after the snapshot, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_filters_by_user_session_name_type_state_and_id() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // Pending before the watches open: its cancel is the id watcher's event.
    let parked = schedule(&mut client, simple("parked", json!({}))).await;

    let mut by_user = live_watch(
        &mut client,
        pb::TaskFilter {
            user_id: "u1".into(),
            ..Default::default()
        },
    )
    .await;
    let mut by_name = live_watch(
        &mut client,
        pb::TaskFilter {
            names: vec!["beta".into()],
            ..Default::default()
        },
    )
    .await;
    let mut by_type_and_session = live_watch(
        &mut client,
        pb::TaskFilter {
            task_types: vec![pb::TaskType::Simple as i32],
            session_id: "s2".into(),
            ..Default::default()
        },
    )
    .await;
    let mut by_state = live_watch(
        &mut client,
        pb::TaskFilter {
            states: vec![pb::TaskState::Completed as i32],
            ..Default::default()
        },
    )
    .await;
    let mut by_id = live_watch(
        &mut client,
        pb::TaskFilter {
            task_ids: vec![parked.clone()],
            ..Default::default()
        },
    )
    .await;
    let mut none_match = live_watch(
        &mut client,
        pb::TaskFilter {
            task_types: vec![pb::TaskType::Integration as i32],
            ..Default::default()
        },
    )
    .await;

    let (_worker, _) = spawn_worker(quick_worker(&server.url, &["alpha", "beta"])).await;
    let opts = |u: &str, s: &str| pb::TaskOptions {
        user_id: u.into(),
        session_id: s.into(),
        ..Default::default()
    };
    let t1 = schedule(
        &mut client,
        simple_with("alpha", json!({}), opts("u1", "s1")),
    )
    .await;
    let t2 = schedule(
        &mut client,
        simple_with("beta", json!({}), opts("u2", "s2")),
    )
    .await;
    let t3 = schedule(
        &mut client,
        simple_with("alpha", json!({}), opts("u2", "s2")),
    )
    .await;
    let t4 = schedule(&mut client, simple_with("gamma", json!({}), opts("u1", ""))).await;
    for id in [&t1, &t2, &t3] {
        wait_state(&mut client, id, pb::TaskState::Completed, SHORT).await;
    }
    client
        .cancel_task(pb::CancelTaskRequest {
            task_id: parked.clone(),
            ..Default::default()
        })
        .await
        .expect("cancel");
    // The barrier matches every filter but the id's and the type's: once a
    // watcher has its completion, it has everything before it.
    let barrier = schedule(
        &mut client,
        simple_with("beta", json!({}), opts("u1", "s2")),
    )
    .await;

    let user_events = events_until(&mut by_user, &barrier, pb::TaskEventKind::Completed).await;
    assert_increasing(&user_events);
    assert!(user_events.iter().all(|e| st(e).user_id == "u1"));
    assert_eq!(
        ids(&user_events),
        BTreeSet::from([t1.clone(), t4.clone(), barrier.clone()])
    );

    let name_events = events_until(&mut by_name, &barrier, pb::TaskEventKind::Completed).await;
    assert_increasing(&name_events);
    assert!(name_events.iter().all(|e| st(e).name == "beta"));
    assert_eq!(
        ids(&name_events),
        BTreeSet::from([t2.clone(), barrier.clone()])
    );

    let ts_events = events_until(
        &mut by_type_and_session,
        &barrier,
        pb::TaskEventKind::Completed,
    )
    .await;
    assert_increasing(&ts_events);
    assert_eq!(
        ids(&ts_events),
        BTreeSet::from([t2.clone(), t3.clone(), barrier.clone()])
    );

    let state_events = events_until(&mut by_state, &barrier, pb::TaskEventKind::Completed).await;
    assert_increasing(&state_events);
    assert!(state_events.iter().all(
        |e| kind(e) == pb::TaskEventKind::Completed && state(st(e)) == pb::TaskState::Completed
    ));
    assert_eq!(
        ids(&state_events),
        BTreeSet::from([t1.clone(), t2.clone(), t3.clone(), barrier.clone()])
    );
    assert_eq!(state_events.len(), 4, "one completion each");

    let id_event = next_event(&mut by_id).await;
    assert_eq!(st(&id_event).id, parked);
    assert_eq!(kind(&id_event), pb::TaskEventKind::Cancelled);

    // Nothing for a filter nothing matches; a later matching-nothing check is
    // bounded by the barrier having reached every other watcher.
    let nothing = tokio::time::timeout(Duration::from_millis(200), none_match.next()).await;
    assert!(
        nothing.is_err(),
        "an INTEGRATION-only watch saw {nothing:?}"
    );
    let extra = tokio::time::timeout(Duration::from_millis(100), by_id.next()).await;
    assert!(extra.is_err(), "the id watch saw another task: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumed_after_a_reconnect_replays_exactly_what_was_missed_then_goes_live() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut full = live_watch(&mut client, pb::TaskFilter::default()).await;
    let mut dropped = live_watch(&mut client, pb::TaskFilter::default()).await;

    let mut first = Vec::new();
    for n in 0..5 {
        first.push(schedule(&mut client, simple("resume", json!({ "n": n }))).await);
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next_event(&mut dropped).await);
    }
    assert_eq!(ids(&seen), first.iter().cloned().collect());
    let last_seen = seen.last().map(|e| e.sequence).expect("events");
    drop(dropped);

    // What the dropped watcher misses: five new tasks, two cancels.
    let mut second = Vec::new();
    for n in 5..10 {
        second.push(schedule(&mut client, simple("resume", json!({ "n": n }))).await);
    }
    for id in &first[..2] {
        client
            .cancel_task(pb::CancelTaskRequest {
                task_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("cancel");
    }

    // CancelTask answers before its event is committed (and so published);
    // wait until the full watcher has all 12 so the history holds them.
    let mut reference = Vec::new();
    for _ in 0..12 {
        reference.push(next_event(&mut full).await);
    }

    let mut resumed = watch(&mut client, pb::TaskFilter::default(), last_seen, false).await;
    let mut replay = Vec::new();
    let live_at = loop {
        match next_item(&mut resumed).await {
            Item::Event(e) => replay.push(e),
            Item::Live(l) => break l.sequence,
            Item::Gap(g) => panic!("no gap expected with the default history: {g:?}"),
        }
    };
    assert_increasing(&replay);
    assert!(
        replay.iter().all(|e| e.sequence > last_seen),
        "no duplicate of what was seen"
    );
    assert_eq!(replay.len(), 7, "5 scheduled + 2 cancelled: {replay:?}");
    assert_eq!(
        live_at,
        replay.last().map(|e| e.sequence).unwrap_or(last_seen)
    );

    // The full watcher, which never disconnected, saw the same events in
    // (last_seen, live_at]: no holes, no extras.
    while reference
        .last()
        .map(|e: &pb::TaskEvent| e.sequence)
        .unwrap_or(0)
        < live_at
    {
        reference.push(next_event(&mut full).await);
    }
    let window: Vec<(u64, i32, String)> = reference
        .iter()
        .filter(|e| e.sequence > last_seen)
        .map(|e| (e.sequence, e.kind, st(e).id.clone()))
        .collect();
    let got: Vec<(u64, i32, String)> = replay
        .iter()
        .map(|e| (e.sequence, e.kind, st(e).id.clone()))
        .collect();
    assert_eq!(got, window);

    // Then live: the next change arrives on both.
    let later = schedule(&mut client, simple("resume", json!({ "n": 10 }))).await;
    let a = next_event(&mut resumed).await;
    let b = next_event(&mut full).await;
    assert_eq!(st(&a).id, later);
    assert_eq!(a.sequence, b.sequence);
    assert!(a.sequence > live_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumed_from_before_the_history_gets_a_gap_then_the_latest_state_of_each_changed_task(
) {
    let server = TestServer::start_with(|c| c.scheduler.event_history = 10).await;
    let mut client = server.client().await;
    let mut w = live_watch(&mut client, pb::TaskFilter::default()).await;
    let mut old = Vec::new();
    for n in 0..3 {
        old.push(schedule(&mut client, simple("gap", json!({ "n": n }))).await);
    }
    let mut last_seen = 0;
    for _ in 0..3 {
        last_seen = next_event(&mut w).await.sequence;
    }
    drop(w);

    // 17 events, more than the 10 kept: the first ones fall out.
    let cancel = |id: String| pb::CancelTaskRequest {
        task_id: id,
        ..Default::default()
    };
    client
        .cancel_task(cancel(old[0].clone()))
        .await
        .expect("cancel");
    let mut fresh = Vec::new();
    for n in 0..15 {
        fresh.push(schedule(&mut client, simple("gap", json!({ "n": 100 + n }))).await);
    }
    let cancelled_at = client
        .cancel_task(cancel(fresh[0].clone()))
        .await
        .expect("cancel")
        .into_inner()
        .status
        .expect("status")
        .sequence;
    // CancelTask answers before its event is committed and published: wait
    // for it, so the resume below starts after every change.
    let last = wait_for("the cancel's event to be published", SHORT, || {
        let mut c = client.clone();
        async move {
            let m = c
                .get_metrics(pb::GetMetricsRequest {})
                .await
                .ok()?
                .into_inner();
            (m.last_sequence >= cancelled_at).then_some(m.last_sequence)
        }
    })
    .await;

    let mut resumed = watch(&mut client, pb::TaskFilter::default(), last_seen, false).await;
    let oldest_kept = match next_item(&mut resumed).await {
        Item::Gap(g) => g.oldest_kept,
        other => panic!("expected a gap first, got {other:?}"),
    };
    assert!(
        oldest_kept > last_seen + 1,
        "oldest kept {oldest_kept}, client at {last_seen}"
    );
    let mut snaps = Vec::new();
    let live_at = loop {
        match next_item(&mut resumed).await {
            Item::Event(e) => snaps.push(e),
            Item::Live(l) => break l.sequence,
            Item::Gap(g) => panic!("a second gap: {g:?}"),
        }
    };
    assert_eq!(live_at, last);
    assert!(
        snaps.iter().all(|e| kind(e) == pb::TaskEventKind::Snapshot),
        "{snaps:?}"
    );
    let mut count: HashMap<String, usize> = HashMap::new();
    for e in &snaps {
        *count.entry(st(e).id.clone()).or_default() += 1;
        assert!(e.sequence > last_seen && e.sequence <= last);
    }
    assert!(
        count.values().all(|n| *n == 1),
        "each changed task once: {count:?}"
    );
    let want: BTreeSet<String> = fresh.iter().cloned().chain([old[0].clone()]).collect();
    assert_eq!(
        count.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "exactly the tasks changed since the client's sequence"
    );
    let by_id: HashMap<String, &pb::TaskStatus> =
        snaps.iter().map(|e| (st(e).id.clone(), st(e))).collect();
    assert_eq!(
        state(by_id[&old[0]]),
        pb::TaskState::Cancelled,
        "latest state, not the first"
    );
    assert_eq!(
        state(by_id[&fresh[0]]),
        pb::TaskState::Cancelled,
        "latest state, not the first"
    );
    assert_eq!(state(by_id[&fresh[1]]), pb::TaskState::Pending);

    // Live afterwards.
    client
        .cancel_task(cancel(old[1].clone()))
        .await
        .expect("cancel");
    let e = next_event(&mut resumed).await;
    assert_eq!(st(&e).id, old[1]);
    assert_eq!(kind(&e), pb::TaskEventKind::Cancelled);
    assert!(e.sequence > last);
}
