//! Property tests: the fuzz suite of what reaches the server from outside.
//! (cargo-fuzz needs a nightly toolchain, which this project does not
//! use; proptest runs on stable, shrinks failures and keeps them in
//! `tests/props.proptest-regressions`.)
//!
//! - request conversions: mutated encodings of valid requests (the seeds
//!   are requests from the integration tests) and arbitrary bytes;
//! - the workflow definition parser: generated definitions and arbitrary
//!   text;
//! - the worker stream's messages: decoded and converted like the server
//!   does;
//! - the store's row codec: every task the core can produce from any
//!   sequence of worker reports is committed, read back equal, and loads
//!   after a restart with nothing quarantined.
//!
//! A short run is part of `make test` (`PROPTEST_CASES`, 256 by default
//! here); a long one: `PROPTEST_CASES=100000 cargo test --release --test props`.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use prost::Message;
use switchyard::app::convert;
use switchyard::core::{Core, CoreConfig, Push, Report};
use switchyard::domain::{LogSource, TaskError, TaskState, WaitingReason};
use switchyard::pb;
use switchyard::store::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use switchyard::store::Store;

/// The largest refusal a client may receive (message and details).
const MAX_ANSWER: usize = 4096;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/props.proptest-regressions",
            ),
        )),
        ..ProptestConfig::default()
    }
}

fn limits() -> convert::Limits {
    convert::Limits {
        max_payload_bytes: 1 << 20,
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let payload = |v: serde_json::Value| switchyard::worker::convert::json_to_struct(&v).ok();
    vec![
        pb::ScheduleTaskRequest {
            name: "send-email".into(),
            payload: payload(serde_json::json!({"to": "a@b.c", "n": [1, 2.5, null]})),
            task_type: pb::TaskType::Simple as i32,
            options: Some(pb::TaskOptions {
                priority: 10,
                attempts: 3,
                user_id: "u-1".into(),
                idempotency_key: "k".into(),
                labels: [("team".to_string(), "x".to_string())].into(),
                delay: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 5,
                }),
                ..Default::default()
            }),
            target: None,
        }
        .encode_to_vec(),
        pb::ScheduleTaskRequest {
            name: "notify".into(),
            payload: payload(serde_json::json!({"repo": "acme/api"})),
            task_type: pb::TaskType::Integration as i32,
            options: None,
            target: Some(pb::schedule_task_request::Target::Integration(
                pb::IntegrationTarget {
                    n8n: Some(pb::N8nTarget {
                        webhook_url: "https://n8n.example.com/webhook/x".into(),
                        ..Default::default()
                    }),
                },
            )),
        }
        .encode_to_vec(),
    ]
}

/// A seed with up to four byte-level edits.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec((any::<usize>(), 0u8..4, any::<u8>()), 1..5);
    (0..seeds().len(), edits).prop_map(|(i, edits)| {
        let mut m = seeds()[i].clone();
        for (at, kind, byte) in edits {
            if m.is_empty() {
                break;
            }
            let at = at % m.len();
            match kind {
                0 => m[at] = byte,
                1 => m[at] ^= 1 << (byte % 8),
                2 => m.insert(at, byte),
                _ => m.truncate(at.max(1)),
            }
        }
        m
    })
}

#[track_caller]
fn small(s: &tonic::Status) {
    assert!(
        s.message().len() + s.details().len() <= MAX_ANSWER,
        "{} bytes: {}",
        s.message().len() + s.details().len(),
        switchyard::domain::text::prefix(s.message(), 200)
    );
}

fn schedule_request_holds(bytes: &[u8]) {
    let Ok(req) = pb::ScheduleTaskRequest::decode(bytes) else {
        return;
    };
    if let Err(e) = convert::new_task(req, &limits(), None) {
        let s = tonic::Status::from(e);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        small(&s);
    }
}

proptest! {
    #![proptest_config(config(cases()))]

    #[test]
    fn schedule_requests_convert_or_are_refused_briefly(bytes in mutated()) {
        schedule_request_holds(&bytes);
    }

    #[test]
    fn arbitrary_bytes_never_hurt_the_conversions(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        schedule_request_holds(&bytes);
        if let Ok(r) = pb::ListTasksRequest::decode(&bytes[..]) {
            if let Err(e) = convert::filter(r.filter, "filter") {
                small(&tonic::Status::from(e));
            }
        }
        if let Ok(m) = pb::WorkerMessage::decode(&bytes[..]) {
            match m.msg {
                Some(pb::worker_message::Msg::Register(r)) => {
                    if let Err(e) = convert::registration(r) {
                        small(&tonic::Status::from(e));
                    }
                }
                Some(pb::worker_message::Msg::Fail(f)) => {
                    if let Err(e) = convert::fail_report(&f) {
                        small(&tonic::Status::from(e));
                    }
                }
                Some(pb::worker_message::Msg::Complete(c)) => {
                    if let Some(v) = c.result.as_ref() {
                        let _ = switchyard::worker::convert::value_to_json(v);
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn workflow_definitions_compile_or_give_a_few_short_errors(
        steps in prop::collection::vec(
            ("[a-z]{1,3}", prop::collection::vec("[a-z]{1,3}", 0..3), 0u8..5),
            0..30,
        ),
        name in "[a-z!]{0,6}",
    ) {
        let steps: Vec<serde_json::Value> = steps
            .into_iter()
            .map(|(id, deps, kind)| {
                let mut s = serde_json::json!({"id": id, "depends_on": deps});
                match kind {
                    0 => s["task"] = "t".into(),
                    1 => s["timer"] = "1s".into(),
                    2 => s["signal"] = "go".into(),
                    3 => s["webhook"] = serde_json::json!({"url": "https://x.example/h"}),
                    _ => s["input"] = serde_json::json!({"a": "{{ steps.a.output }}"}),
                }
                s
            })
            .collect();
        let text = serde_json::json!({"name": name, "steps": steps}).to_string();
        if let Err(errors) = switchyard::executor::workflow::definition::compile_text(&text, "json") {
            prop_assert!(errors.len() <= 20);
            for e in errors {
                prop_assert!(e.message.len() <= 260 && e.location.len() <= 132);
            }
        }
    }

    #[test]
    fn arbitrary_text_never_hurts_the_definition_parser(text in ".{0,400}", toml in any::<bool>()) {
        let _ = switchyard::executor::workflow::definition::compile_text(
            &text,
            if toml { "toml" } else { "json" },
        );
    }
}

// ---------------------------------------------------------------------------
// The store's codec, through the core.
// ---------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,40}", "\\PC{0,10}", Just(String::new())]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from), // NaN becomes null
        text().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        -200.0f64..200.0,
    ]
}

fn report() -> impl Strategy<Value = Report> {
    prop_oneof![
        (any_f64(), text()).prop_map(|(percent, message)| Report::Progress { percent, message }),
        (text(), text()).prop_map(|(level, message)| Report::Log {
            level,
            message,
            source: LogSource::Worker,
        }),
        text().prop_map(Report::ExternalId),
        (
            prop_oneof![Just(TaskState::Pending), Just(TaskState::Running)],
            prop::option::of(any_f64()),
            prop::option::of(any::<u32>()),
            prop::option::of(text()),
        )
            .prop_map(|(state, progress, attempt, message)| Report::Mirror {
                state,
                waiting_reason: Some(WaitingReason::Queued),
                progress,
                attempt,
                message,
            }),
        (text(), text(), any::<bool>(), prop::option::of(0u64..10)).prop_map(
            |(message, kind, retryable, secs)| Report::Fail {
                error: TaskError {
                    message,
                    kind,
                    details: String::new(),
                    retryable,
                    attempt: 0,
                },
                retry_after: secs.map(Duration::from_millis),
            }
        ),
        json_value().prop_map(Report::Complete),
    ]
}

fn open(dir: &std::path::Path) -> Arc<SqliteStore> {
    SqliteStore::open(SqliteOptions {
        path: Some(dir.join("switchyard.db")),
        synchronous: Synchronous::Normal,
        ..Default::default()
    })
    .expect("open the store")
}

/// Schedules a task, hands it to a worker, applies `reports`, restarts the
/// core on the same file and compares.
async fn round_trip(reports: Vec<Report>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let core = Core::start(store.clone() as Arc<dyn Store>, CoreConfig::default())
        .await
        .unwrap();
    let req = pb::ScheduleTaskRequest::decode(&seeds()[0][..]).unwrap();
    let mut new = convert::new_task(req, &limits(), None).unwrap();
    new.spec.idempotency_key = None;
    new.delay = Duration::ZERO;
    let id = core.schedule(new).await.unwrap().task.id;
    let mut link = core
        .register_worker("props", &["send-email".to_string()], 1, 0)
        .unwrap();
    let attempt = loop {
        match tokio::time::timeout(Duration::from_secs(5), link.rx.recv())
            .await
            .expect("an assignment")
            .expect("the link is open")
        {
            Push::Assign(a) => break a.task.rt.attempt,
            _ => continue,
        }
    };
    for r in reports {
        // A report the core refuses (the task moved on) is fine; one it
        // takes must be storable.
        let _ = core.report(&link.id, id, attempt, r);
    }
    store.flush().await.unwrap();
    let live = core.status(id).await.unwrap();
    let (stored, _) = store.get(id).await.unwrap().expect("the row");
    assert_eq!(stored.rt.state, live.rt.state);
    assert_eq!(stored.rt.progress, live.rt.progress);
    assert!(stored.rt.progress.is_finite() && (0.0..=100.0).contains(&stored.rt.progress));
    assert_eq!(stored.rt.result, live.rt.result);
    assert_eq!(stored.rt.last_error, live.rt.last_error);
    core.shutdown(Duration::from_millis(10)).await;
    drop(core);
    store.close();
    drop(store);

    let store = open(dir.path());
    let core = Core::start(store.clone() as Arc<dyn Store>, CoreConfig::default())
        .await
        .expect("a restart loads every row");
    assert_eq!(
        store
            .stats
            .quarantined
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing the core wrote is unreadable"
    );
    core.status(id).await.expect("the task after a restart");
    core.shutdown(Duration::from_millis(10)).await;
    store.close();
}

proptest! {
    #![proptest_config(config(cases() / 4 + 1))]

    #[test]
    fn every_task_the_core_produces_is_stored_and_read_back(
        reports in prop::collection::vec(report(), 0..8)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(round_trip(reports));
    }
}
