//! Schedules end to end: a cron of every second fires each tick exactly
//! once across a `kill -9`; each overlap policy against a slow worker;
//! catch-up after the server was down for five fires, with each setting;
//! next fire times across a DST change (computed, not waited for); the
//! operations (create, get, list, pause, resume, trigger, update, delete)
//! and their bad input. On SQLite, and on PostgreSQL with
//! `SWITCHYARD_TEST_STORE=postgres`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use switchyard::pb;
use switchyard::pb::schedule_service_client::ScheduleServiceClient;
use switchyard::worker::{TaskContext, Worker};
use tonic::transport::Channel;
use tonic::Code;

use crate::common::*;

type Schedules = ScheduleServiceClient<Channel>;

async fn schedules(url: &str) -> Schedules {
    ScheduleServiceClient::new(channel(url).await)
}

fn now_micros() -> i64 {
    switchyard::domain::now_micros()
}

fn ts(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// The next whole second at least `ahead` from now, in µs.
fn whole_second_after(ahead: Duration) -> i64 {
    let t = now_micros() + ahead.as_micros() as i64;
    (t / 1_000_000 + 1) * 1_000_000
}

/// A spec firing `task` every second from `start` to `end` (µs).
fn every_second(task: &str, start: i64, end: i64) -> pb::ScheduleSpec {
    pb::ScheduleSpec {
        timing: Some(pb::schedule_spec::Timing::Cron("* * * * * *".into())),
        start_at: Some(ts(start)),
        end_at: Some(ts(end)),
        overlap: pb::ScheduleOverlapPolicy::AllowAll as i32,
        task: Some(simple(task, json!({ "from": "schedule" }))),
        ..Default::default()
    }
}

async fn create(
    c: &mut Schedules,
    id: &str,
    spec: pb::ScheduleSpec,
) -> Result<pb::ScheduleInfo, tonic::Status> {
    c.create_schedule(pb::CreateScheduleRequest {
        schedule_id: id.into(),
        spec: Some(spec),
        paused: false,
    })
    .await
    .map(|r| r.into_inner().schedule.expect("a schedule"))
}

async fn get(c: &mut Schedules, id: &str) -> pb::ScheduleInfo {
    c.get_schedule(pb::GetScheduleRequest {
        schedule_id: id.into(),
    })
    .await
    .expect("GetSchedule")
    .into_inner()
    .schedule
    .expect("a schedule")
}

/// Every task named `name`, newest first.
async fn fires(client: &mut Client, name: &str) -> Vec<pb::TaskStatus> {
    client
        .list_tasks(pb::ListTasksRequest {
            filter: Some(pb::TaskFilter {
                names: vec![name.into()],
                ..Default::default()
            }),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("ListTasks")
        .into_inner()
        .tasks
}

/// The ticks (µs) the fires name in their labels, in order.
fn ticks(fires: &[pb::TaskStatus], schedule: &str) -> Vec<i64> {
    let mut out: Vec<i64> = fires
        .iter()
        .map(|t| {
            assert_eq!(
                t.labels.get("switchyard.schedule").map(String::as_str),
                Some(schedule),
                "a fire names its schedule"
            );
            let tick = t
                .labels
                .get("switchyard.schedule_tick")
                .expect("a fire names its tick");
            chrono::DateTime::parse_from_rfc3339(tick)
                .expect("an RFC 3339 tick")
                .timestamp_micros()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_cron_of_every_second_fires_each_tick_once_across_a_kill_9() {
    init_tracing();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let url = server.url.clone();
    let client = connect(&url).await;
    let mut sc = schedules(&url).await;
    let start = whole_second_after(Duration::from_secs(1));
    let end = start + 9_000_000;
    create(
        &mut sc,
        "every-second",
        every_second("sched-kill", start, end),
    )
    .await
    .expect("CreateSchedule");
    wait_until("four fires before the kill", LONG, || {
        let mut c = client.clone();
        async move { fires(&mut c, "sched-kill").await.len() >= 4 }
    })
    .await;
    server.kill9().await;
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut client = connect(&server.url).await;
    wait_until("the ticks after the restart", LONG, || {
        let mut c = client.clone();
        async move { fires(&mut c, "sched-kill").await.len() >= 10 }
    })
    .await;
    // Past the end, and a little more: nothing else fires.
    let after_end = end + 1_500_000;
    wait_until("the schedule's end to pass", LONG, || async move {
        now_micros() > after_end
    })
    .await;
    let all = fires(&mut client, "sched-kill").await;
    let got = ticks(&all, "every-second");
    let distinct: BTreeSet<_> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "each tick fired once: {got:?}");
    let expected: Vec<i64> = (0..10).map(|i| start + i * 1_000_000).collect();
    assert_eq!(got, expected, "every tick from start to end, once");
    let info = get(&mut schedules(&server.url).await, "every-second").await;
    assert!(info.next_fires.is_empty(), "past its end");
    assert!(server.terminate().await);
}

/// A worker for `name` that takes `work` per task, or stops at a cancel.
async fn slow_worker(url: &str, name: &str, work: Duration) -> switchyard::worker::WorkerHandle {
    let worker = Worker::builder(url)
        .name("slow")
        .concurrency(8)
        .handler(name, move |ctx: TaskContext| async move {
            tokio::select! {
                _ = tokio::time::sleep(work) => Ok(json!({ "done": true })),
                _ = ctx.cancelled() => Err(switchyard::worker::HandlerError::retryable("stopped on request")),
            }
        })
        .build();
    spawn_worker(worker).await.0
}

/// Four ticks two seconds apart against a worker that takes five seconds
/// a task; answers the fires' final states (oldest first) and the
/// schedule's counters once every fire has ended.
async fn overlap_run(policy: pb::ScheduleOverlapPolicy, expect_fires: usize) -> (Vec<i32>, u64) {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut sc = schedules(&server.url).await;
    let name = format!("overlap-{}", policy.as_str_name().to_lowercase());
    let _worker = slow_worker(&server.url, &name, Duration::from_secs(5)).await;
    let start = whole_second_after(Duration::from_millis(500));
    let spec = pb::ScheduleSpec {
        timing: Some(pb::schedule_spec::Timing::Interval(dur(
            Duration::from_secs(2),
        ))),
        start_at: Some(ts(start)),
        end_at: Some(ts(start + 6_000_000)),
        overlap: policy as i32,
        task: Some(simple(&name, json!({}))),
        ..Default::default()
    };
    create(&mut sc, "overlap", spec)
        .await
        .expect("CreateSchedule");
    let done = wait_for(
        &format!("{name}: {expect_fires} fires, all ended"),
        Duration::from_secs(40),
        || {
            let mut c = client.clone();
            let name = name.clone();
            async move {
                let all = fires(&mut c, &name).await;
                let ended = all.iter().all(|t| is_final(state(t)));
                (all.len() >= expect_fires && ended && now_micros() > start + 7_000_000)
                    .then_some(all)
            }
        },
    )
    .await;
    let mut done = done;
    done.sort_by_key(|t| micros(&t.created_at));
    let info = get(&mut sc, "overlap").await;
    assert_eq!(
        info.fires as usize,
        done.len(),
        "the schedule counts its fires"
    );
    server.stop().await;
    (done.iter().map(|t| t.state).collect(), info.skipped)
}

const COMPLETED: i32 = pb::TaskState::Completed as i32;
const CANCELLED: i32 = pb::TaskState::Cancelled as i32;

#[tokio::test]
async fn overlap_skip_drops_ticks_while_the_previous_fire_runs() {
    let (states, skipped) = overlap_run(pb::ScheduleOverlapPolicy::Skip, 2).await;
    assert_eq!(states, [COMPLETED, COMPLETED]);
    assert_eq!(skipped, 2);
}

#[tokio::test]
async fn overlap_buffer_one_keeps_one_tick_for_when_the_previous_ends() {
    let (states, skipped) = overlap_run(pb::ScheduleOverlapPolicy::BufferOne, 3).await;
    assert_eq!(states, [COMPLETED, COMPLETED, COMPLETED]);
    assert_eq!(skipped, 1);
}

#[tokio::test]
async fn overlap_allow_all_fires_every_tick() {
    let (states, skipped) = overlap_run(pb::ScheduleOverlapPolicy::AllowAll, 4).await;
    assert_eq!(states, [COMPLETED; 4]);
    assert_eq!(skipped, 0);
}

#[tokio::test]
async fn overlap_cancel_other_cancels_the_previous_fire() {
    let (states, skipped) = overlap_run(pb::ScheduleOverlapPolicy::CancelOther, 4).await;
    assert_eq!(states, [CANCELLED, CANCELLED, CANCELLED, COMPLETED]);
    assert_eq!(skipped, 0);
}

/// Fires every second, is stopped for about five fires, restarts; answers
/// the ticks fired, the moment the server stopped and the one it started
/// again, and the schedule's missed count.
async fn catch_up_run(
    name: &str,
    catchup: pb::ScheduleCatchUp,
    window: Duration,
) -> (Vec<i64>, i64, i64, u64) {
    init_tracing();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let client = connect(&server.url).await;
    let start = whole_second_after(Duration::from_millis(500));
    let mut spec = every_second(name, start, start + 60_000_000);
    spec.catchup = catchup as i32;
    spec.catchup_window = Some(dur(window));
    create(&mut schedules(&server.url).await, name, spec)
        .await
        .expect("CreateSchedule");
    wait_until("two fires", LONG, || {
        let mut c = client.clone();
        async move { fires(&mut c, name).await.len() >= 2 }
    })
    .await;
    assert!(server.terminate().await, "a clean stop");
    let stopped = now_micros();
    // The outage itself: five ticks pass while no server runs.
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    let restarted = now_micros();
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let client = connect(&server.url).await;
    let got = wait_for("fires after the restart", LONG, || {
        let mut c = client.clone();
        async move {
            let t = ticks(&fires(&mut c, name).await, name);
            (t.iter().filter(|&&t| t > restarted + 2_000_000).count() >= 1).then_some(t)
        }
    })
    .await;
    let info = get(&mut schedules(&server.url).await, name).await;
    assert!(server.terminate().await);
    let distinct: BTreeSet<_> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "each tick once: {got:?}");
    (got, stopped, restarted, info.missed)
}

/// The ticks that fell while no server ran.
fn in_outage(ticks: &[i64], stopped: i64, restarted: i64) -> usize {
    ticks
        .iter()
        .filter(|&&t| t > stopped && t < restarted)
        .count()
}

#[tokio::test]
async fn catch_up_all_fires_every_missed_tick_in_the_window() {
    let (ticks, stopped, restarted, missed) = catch_up_run(
        "catchup-all",
        pb::ScheduleCatchUp::All,
        Duration::from_secs(60),
    )
    .await;
    // Every second from the first tick to the last, none left out.
    let first = ticks[0];
    let last = *ticks.last().expect("ticks");
    assert_eq!(
        ticks.len() as i64,
        (last - first) / 1_000_000 + 1,
        "no gap: {ticks:?}"
    );
    assert!(in_outage(&ticks, stopped, restarted) >= 4, "{ticks:?}");
    assert_eq!(missed, 0);
}

#[tokio::test]
async fn catch_up_one_fires_only_the_latest_missed_tick() {
    let (ticks, stopped, restarted, missed) = catch_up_run(
        "catchup-one",
        pb::ScheduleCatchUp::One,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(in_outage(&ticks, stopped, restarted), 1, "{ticks:?}");
    assert!(missed >= 4, "the others count as missed: {missed}");
}

#[tokio::test]
async fn catch_up_drops_ticks_older_than_the_window() {
    let (ticks, stopped, restarted, missed) = catch_up_run(
        "catchup-window",
        pb::ScheduleCatchUp::All,
        Duration::from_secs(1),
    )
    .await;
    // Of the five or more that fell in the outage, only those within a
    // second of the restart's first pass fire.
    assert!(in_outage(&ticks, stopped, restarted) <= 2, "{ticks:?}");
    assert!(missed >= 1, "{missed}");
}

#[tokio::test]
async fn next_fires_follow_the_time_zone_across_dst() {
    let server = TestServer::start().await;
    let mut sc = schedules(&server.url).await;
    // Paris springs forward on 2027-03-28 (02:00 → 03:00): 02:30 does not
    // exist that day and fires at 03:00 CEST.
    let start = chrono::DateTime::parse_from_rfc3339("2027-03-26T12:00:00Z")
        .expect("a time")
        .timestamp_micros();
    let spec = pb::ScheduleSpec {
        timing: Some(pb::schedule_spec::Timing::Cron("30 2 * * *".into())),
        time_zone: "Europe/Paris".into(),
        start_at: Some(ts(start)),
        task: Some(simple("dst", json!({}))),
        ..Default::default()
    };
    let info = create(&mut sc, "dst", spec).await.expect("CreateSchedule");
    let next: Vec<String> = info
        .next_fires
        .iter()
        .take(3)
        .map(|t| {
            chrono::DateTime::from_timestamp(t.seconds, 0)
                .expect("a time")
                .to_rfc3339()
        })
        .collect();
    assert_eq!(
        next,
        [
            "2027-03-27T01:30:00+00:00", // 02:30 CET
            "2027-03-28T01:00:00+00:00", // 03:00 CEST, the gap's end
            "2027-03-29T00:30:00+00:00", // 02:30 CEST
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn operations_create_get_list_pause_resume_trigger_update_delete() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut sc = schedules(&server.url).await;
    let hourly = |name: &str| pb::ScheduleSpec {
        timing: Some(pb::schedule_spec::Timing::Interval(dur(
            Duration::from_secs(3600),
        ))),
        task: Some(simple(name, json!({ "n": 1 }))),
        ..Default::default()
    };
    let made = sc
        .create_schedule(pb::CreateScheduleRequest {
            schedule_id: "ops-a".into(),
            spec: Some(hourly("ops-task")),
            paused: true,
        })
        .await
        .expect("CreateSchedule")
        .into_inner()
        .schedule
        .expect("a schedule");
    assert!(
        made.paused && made.next_fires.is_empty(),
        "paused: no next fires"
    );
    let again = create(&mut sc, "ops-a", hourly("ops-task")).await;
    assert_eq!(again.expect_err("taken").code(), Code::AlreadyExists);
    create(&mut sc, "ops-b", hourly("ops-task"))
        .await
        .expect("CreateSchedule");

    // Trigger fires a paused schedule at once, as an ordinary task.
    let id = sc
        .trigger_schedule(pb::TriggerScheduleRequest {
            schedule_id: "ops-a".into(),
        })
        .await
        .expect("TriggerSchedule")
        .into_inner()
        .task_id;
    let t = status(&mut client, &id).await;
    assert_eq!(t.name, "ops-task");
    assert_eq!(t.labels["switchyard.schedule"], "ops-a");
    assert_eq!(t.labels["switchyard.schedule_tick"], "trigger");
    let info = get(&mut sc, "ops-a").await;
    assert_eq!((info.fires, info.last_task_id.as_str()), (1, id.as_str()));

    // Resume: next fires on the hour.
    let resumed = sc
        .resume_schedule(pb::ResumeScheduleRequest {
            schedule_id: "ops-a".into(),
            note: "back".into(),
        })
        .await
        .expect("ResumeSchedule")
        .into_inner()
        .schedule
        .expect("a schedule");
    assert!(!resumed.paused);
    assert_eq!(resumed.next_fires.len(), 5);
    assert!(resumed.next_fires.iter().all(|t| t.seconds % 3600 == 0));

    // A page of one, then the rest.
    let page = sc
        .list_schedules(pb::ListSchedulesRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("ListSchedules")
        .into_inner();
    assert_eq!(page.schedules[0].schedule_id, "ops-a");
    let rest = sc
        .list_schedules(pb::ListSchedulesRequest {
            page_size: 10,
            page_token: page.next_page_token,
        })
        .await
        .expect("ListSchedules")
        .into_inner();
    assert_eq!(rest.schedules.len(), 1);
    assert_eq!(rest.schedules[0].schedule_id, "ops-b");
    assert!(rest.next_page_token.is_empty());

    // Update replaces the spec; with create_if_missing it upserts.
    let up = sc
        .update_schedule(pb::UpdateScheduleRequest {
            schedule_id: "ops-b".into(),
            spec: Some(hourly("ops-other")),
            create_if_missing: false,
        })
        .await
        .expect("UpdateSchedule")
        .into_inner();
    assert!(!up.created);
    let task = up.schedule.and_then(|s| s.spec).and_then(|s| s.task);
    assert_eq!(task.map(|t| t.name).as_deref(), Some("ops-other"));
    let missing = sc
        .update_schedule(pb::UpdateScheduleRequest {
            schedule_id: "ops-c".into(),
            spec: Some(hourly("ops-task")),
            create_if_missing: false,
        })
        .await;
    assert_eq!(missing.expect_err("unknown").code(), Code::NotFound);
    let upserted = sc
        .update_schedule(pb::UpdateScheduleRequest {
            schedule_id: "ops-c".into(),
            spec: Some(hourly("ops-task")),
            create_if_missing: true,
        })
        .await
        .expect("UpdateSchedule")
        .into_inner();
    assert!(upserted.created);

    // Delete: gone; its fire stays.
    sc.delete_schedule(pb::DeleteScheduleRequest {
        schedule_id: "ops-a".into(),
    })
    .await
    .expect("DeleteSchedule");
    let gone = sc
        .get_schedule(pb::GetScheduleRequest {
            schedule_id: "ops-a".into(),
        })
        .await;
    assert_eq!(gone.expect_err("deleted").code(), Code::NotFound);
    status(&mut client, &id).await;
    server.stop().await;
}

#[tokio::test]
async fn schedules_survive_a_restart() {
    init_tracing();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let mut sc = schedules(&server.url).await;
    let spec = pb::ScheduleSpec {
        timing: Some(pb::schedule_spec::Timing::Cron("0 9 * * MON-FRI".into())),
        time_zone: "America/New_York".into(),
        task: Some(simple("kept", json!({ "a": 1 }))),
        ..Default::default()
    };
    let before = create(&mut sc, "kept", spec).await.expect("CreateSchedule");
    assert!(server.terminate().await);
    let server = ServerProcess::start(port, dir.path(), &[]).await;
    let after = get(&mut schedules(&server.url).await, "kept").await;
    assert_eq!(after.spec, before.spec);
    assert_eq!(after.next_fires, before.next_fires);
    assert!(server.terminate().await);
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let server = TestServer::start().await;
    let mut sc = schedules(&server.url).await;
    let good = || pb::ScheduleSpec {
        timing: Some(pb::schedule_spec::Timing::Cron("*/5 * * * *".into())),
        task: Some(simple("bad-input", json!({}))),
        ..Default::default()
    };
    let cases: Vec<(&str, &str, pb::ScheduleSpec, &str)> = vec![
        (
            "a cron that does not parse",
            "x",
            pb::ScheduleSpec {
                timing: Some(pb::schedule_spec::Timing::Cron("61 * * * *".into())),
                ..good()
            },
            "spec.cron",
        ),
        (
            "an unknown time zone",
            "x",
            pb::ScheduleSpec {
                time_zone: "Mars/Olympus_Mons".into(),
                ..good()
            },
            "spec.time_zone",
        ),
        (
            "an interval of zero",
            "x",
            pb::ScheduleSpec {
                timing: Some(pb::schedule_spec::Timing::Interval(dur(Duration::ZERO))),
                ..good()
            },
            "spec.interval",
        ),
        (
            "no timing",
            "x",
            pb::ScheduleSpec {
                timing: None,
                ..good()
            },
            "spec.cron",
        ),
        (
            "no task",
            "x",
            pb::ScheduleSpec {
                task: None,
                ..good()
            },
            "spec.task",
        ),
        (
            "a bad task",
            "x",
            pb::ScheduleSpec {
                task: Some(simple("bad name!", json!({}))),
                ..good()
            },
            "spec.task.name",
        ),
        (
            "an end before the start",
            "x",
            pb::ScheduleSpec {
                start_at: Some(ts(2_000_000)),
                end_at: Some(ts(1_000_000)),
                ..good()
            },
            "spec.end_at",
        ),
        ("a bad id", "no spaces", good(), "schedule_id"),
        ("an empty id", "", good(), "schedule_id"),
    ];
    for (case, id, spec, field) in cases {
        assert_invalid(case, create(&mut sc, id, spec).await, field);
    }
    let r = sc
        .list_schedules(pb::ListSchedulesRequest {
            page_size: 1001,
            page_token: String::new(),
        })
        .await;
    assert_invalid("a page of 1,001", r, "page_size");
    let r = sc
        .pause_schedule(pb::PauseScheduleRequest {
            schedule_id: "x".into(),
            note: "n".repeat(1025),
        })
        .await;
    assert_invalid("a long note", r, "note");
    let r = sc
        .trigger_schedule(pb::TriggerScheduleRequest {
            schedule_id: "nobody".into(),
        })
        .await;
    assert_eq!(r.expect_err("unknown").code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn the_admin_api_lists_schedules_with_their_next_fire_times() {
    let server = TestServer::start().await;
    let mut sc = schedules(&server.url).await;
    for id in ["adm-a", "adm-b"] {
        let spec = pb::ScheduleSpec {
            timing: Some(pb::schedule_spec::Timing::Cron("0 * * * *".into())),
            task: Some(simple("adm", json!({}))),
            ..Default::default()
        };
        create(&mut sc, id, spec).await.expect("CreateSchedule");
    }
    let get = |q: &'static str| {
        let url = format!(
            "{}/internal/execution-manager/schedules{q}",
            server.admin_url()
        );
        async move {
            let r = reqwest::get(url).await.expect("the admin server answers");
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.expect("JSON"))
        }
    };
    let (status, page) = get("?limit=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["schedules"][0]["scheduleId"], "adm-a");
    assert_eq!(page["next"], "adm-a");
    let next = page["schedules"][0]["nextFires"][0]
        .as_str()
        .expect("a next fire");
    assert!(next.ends_with(":00:00Z"), "on the hour: {next}");
    let (_, rest) = get("?after=adm-a").await;
    assert_eq!(rest["schedules"][0]["scheduleId"], "adm-b");
    assert_eq!(rest["next"], "");
    let (status, bad) = get("?limit=5000").await;
    assert_eq!((status, bad["field"].as_str()), (400, Some("limit")));
    server.stop().await;
}

#[tokio::test]
async fn list_and_watch_filter_the_fires_of_one_schedule() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut sc = schedules(&server.url).await;
    let hourly = pb::ScheduleSpec {
        timing: Some(pb::schedule_spec::Timing::Interval(dur(
            Duration::from_secs(3600),
        ))),
        task: Some(simple("filtered", json!({}))),
        ..Default::default()
    };
    create(&mut sc, "filter-a", hourly.clone())
        .await
        .expect("CreateSchedule");
    create(&mut sc, "filter-b", hourly)
        .await
        .expect("CreateSchedule");
    let by = |id: &str| pb::TaskFilter {
        schedule_id: id.into(),
        ..Default::default()
    };
    let mut watch = client
        .watch_tasks(pb::WatchTasksRequest {
            filter: Some(by("filter-b")),
            ..Default::default()
        })
        .await
        .expect("WatchTasks")
        .into_inner();
    let trigger = |id: &'static str| {
        let mut sc = sc.clone();
        async move {
            sc.trigger_schedule(pb::TriggerScheduleRequest {
                schedule_id: id.into(),
            })
            .await
            .expect("TriggerSchedule")
            .into_inner()
            .task_id
        }
    };
    let a1 = trigger("filter-a").await;
    let a2 = trigger("filter-a").await;
    let b1 = trigger("filter-b").await;
    // An ordinary task of the same name is no schedule's fire.
    schedule(&mut client, simple("filtered", json!({}))).await;
    let list = |f: pb::TaskFilter| {
        let mut c = client.clone();
        async move {
            c.list_tasks(pb::ListTasksRequest {
                filter: Some(f),
                page_size: 100,
                page_token: String::new(),
            })
            .await
            .expect("ListTasks")
            .into_inner()
            .tasks
            .into_iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(by("filter-a")).await, [a2, a1], "newest first");
    assert_eq!(list(by("filter-b")).await, std::slice::from_ref(&b1));
    let pending = pb::TaskFilter {
        states: vec![pb::TaskState::Pending as i32, pb::TaskState::Running as i32],
        ..by("filter-a")
    };
    assert_eq!(list(pending).await.len(), 2);
    // The first event (after the stream's live marker) is filter-b's fire.
    let first = within("the watch's first event", SHORT, async {
        loop {
            let item = watch.message().await.expect("the stream").expect("an item");
            if let Some(pb::watch_tasks_response::Item::Event(e)) = item.item {
                return e;
            }
        }
    })
    .await;
    assert_eq!(
        first.status.expect("a status").id,
        b1,
        "only filter-b's fire"
    );
    let bad = client
        .list_tasks(pb::ListTasksRequest {
            filter: Some(by("no spaces")),
            ..Default::default()
        })
        .await;
    assert_invalid("a bad schedule id", bad, "filter.schedule_id");
    server.stop().await;
}

/// A thousand schedules on the same second: the runner takes the due ones
/// side by side and writes their states together, and each schedule still
/// fires each of its three ticks exactly once.
#[tokio::test]
async fn a_thousand_schedules_on_one_second_each_fire_every_tick_once() {
    const N: usize = 1000;
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let sc = schedules(&server.url).await;
    // Room for the 1,000 creates before the first tick on a loaded
    // machine (they took over 4 s on PostgreSQL once under CI's load).
    let start = whole_second_after(Duration::from_secs(10));
    let end = start + 2_000_000;
    use futures::StreamExt as _;
    let created = futures::stream::iter(0..N)
        .map(|i| {
            let mut sc = sc.clone();
            async move {
                create(
                    &mut sc,
                    &format!("many-{i:04}"),
                    every_second("sched-many", start, end),
                )
                .await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(created.iter().all(Result::is_ok), "every CreateSchedule");
    assert!(now_micros() < start, "created before the first tick");
    let after_end = end + 2_000_000;
    wait_until("the schedules' end to pass", LONG, || async move {
        now_micros() > after_end
    })
    .await;
    let all = wait_for("three fires of each schedule", LONG, || {
        let mut c = client.clone();
        async move {
            let all = all_named(&mut c, "sched-many").await;
            (all.len() >= 3 * N).then_some(all)
        }
    })
    .await;
    assert_eq!(all.len(), 3 * N, "nothing fired twice");
    let mut per: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
    for t in &all {
        let id = t
            .labels
            .get("switchyard.schedule")
            .expect("a schedule label");
        let tick = t
            .labels
            .get("switchyard.schedule_tick")
            .expect("a tick label");
        let tick = chrono::DateTime::parse_from_rfc3339(tick)
            .expect("an RFC 3339 tick")
            .timestamp_micros();
        per.entry(id.as_str()).or_default().push(tick);
    }
    assert_eq!(per.len(), N, "every schedule fired");
    let expected: Vec<i64> = (0..3).map(|i| start + i * 1_000_000).collect();
    for (id, mut ticks) in per {
        ticks.sort();
        assert_eq!(ticks, expected, "{id}: each tick once");
    }
    let info = get(&mut schedules(&server.url).await, "many-0500").await;
    assert_eq!(info.fires, 3, "its count of fires is written");
    // Seen once more after a list: no fire after the end.
    assert_eq!(all_named(&mut client, "sched-many").await.len(), 3 * N);
}
