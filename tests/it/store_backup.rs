//! `switchyard backup` against a running server: a producer schedules and a
//! worker completes tasks while the copy is taken; a new server started on
//! the copy has every task acknowledged before the backup began, at least
//! as far along as it was acknowledged, and serves. Also: an existing file
//! is refused without `--force`, and a PostgreSQL store is refused with the
//! pg_dump command that does it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::json;
use switchyard::pb;
use switchyard::pb::watch_tasks_response::Item;
use switchyard::worker::{TaskContext, Worker};
use tokio::time::Instant;
use tonic::Code;

use crate::common::*;

/// Whether this run's servers are on PostgreSQL (`make test-postgres`):
/// the SQLite backup does not apply then.
fn on_postgres(test: &str) -> bool {
    let pg = postgres_store(Path::new("/")).is_some();
    if pg {
        eprintln!("{test}: skipped, the servers of this run are on PostgreSQL");
    }
    pg
}

/// `switchyard backup ARGS` with the data directory `data`; its exit code,
/// stdout and stderr.
async fn run_backup(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("backup")
        .args(args)
        .env_remove("SWITCHYARD_STORE__URL")
        .env_remove("SWITCHYARD_CONFIG")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = within("switchyard backup", LONG, cmd.output())
        .await
        .expect("run switchyard backup");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn padded(n: u64) -> serde_json::Value {
    json!({ "n": n, "pad": "p".repeat(2000) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_acknowledged_task() {
    if on_postgres("a_backup_taken_under_load_restores_every_acknowledged_task") {
        return;
    }
    init_tracing();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("live");
    let port = free_port();
    let server = ServerProcess::start(port, &data, &[]).await;
    let url = server.url.clone();
    let mut client = connect(&url).await;

    // Tasks that completed, as committed: WatchTasks publishes an event only
    // once its write is durable.
    let completed: Arc<Mutex<HashSet<String>>> = Default::default();
    let mut watch = client
        .watch_tasks(pb::WatchTasksRequest {
            filter: Some(pb::TaskFilter {
                names: vec!["backup-job".into()],
                states: vec![pb::TaskState::Completed as i32],
                ..Default::default()
            }),
            after_sequence: 0,
            include_snapshot: false,
        })
        .await
        .expect("WatchTasks")
        .into_inner();
    let watcher = {
        let completed = completed.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = watch.next().await {
                if let Some(Item::Event(e)) = r.item {
                    if let Some(s) = e.status {
                        if s.state == pb::TaskState::Completed as i32 {
                            completed.lock().insert(s.id);
                        }
                    }
                }
            }
        })
    };

    // A store of a few megabytes, so the copy takes a while.
    let first: Vec<String> = futures::stream::iter(0..1500u64)
        .map(|n| {
            let mut c = client.clone();
            async move { schedule(&mut c, simple("backup-job", padded(n))).await }
        })
        .buffered(16)
        .collect()
        .await;

    // Every acknowledged ScheduleTask, in order.
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (acked, stop, mut c) = (acked.clone(), stop.clone(), client.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id =
                        schedule(&mut c, simple("backup-job", padded(p * 1_000_000 + n))).await;
                    acked.lock().push(id);
                    n += 1;
                }
            })
        })
        .collect();
    let worker = Worker::builder(&url)
        .name("backup-worker")
        .concurrency(8)
        .handler("backup-job", |ctx: TaskContext| async move {
            Ok(json!({ "n": ctx.payload()["n"].clone() }))
        })
        .build();
    let (worker, _) = spawn_worker(worker).await;
    wait_until("the worker to complete 200 tasks", LONG, || {
        let n = completed.lock().len();
        async move { n >= 200 }
    })
    .await;

    // What was acknowledged before the backup starts.
    let acked_before: Vec<String> = acked.lock().clone();
    let completed_before: HashSet<String> = completed.lock().clone();
    let copy = dir.path().join("copy.db");
    let data_arg = data.to_str().expect("a UTF-8 path");
    let copy_arg = copy.to_str().expect("a UTF-8 path");
    let started = Instant::now();
    let (code, out, err) = run_backup(&[copy_arg, "--data-dir", data_arg], &[]).await;
    let took = started.elapsed();
    let acked_during = acked.lock().len() - acked_before.len();
    assert_eq!(code, 0, "backup failed: {out}{err}");
    assert!(out.contains(copy_arg) && out.contains("tasks"), "{out}");
    let completed_during = completed.lock().len() - completed_before.len();
    eprintln!(
        "backup of {} acknowledged tasks ({} completed) took {took:?}; meanwhile {acked_during} \
         were acknowledged and {completed_during} completed",
        acked_before.len(),
        completed_before.len()
    );
    // The server committed while the copy was taken (it took {took:?}).
    assert!(
        acked_during > 0 || completed_during > 0,
        "nothing was committed during the backup ({took:?}): the test tests nothing"
    );

    stop.store(true, Ordering::Relaxed);
    for p in producers {
        within("a producer to stop", LONG, p)
            .await
            .expect("a producer");
    }
    worker.shutdown();
    let _ = within("the worker to stop", LONG, worker.join()).await;
    watcher.abort();
    server.kill9().await;

    // Restore: a new data directory with the copy as its store.
    let restored = dir.path().join("restored");
    std::fs::create_dir_all(&restored).expect("create the directory");
    std::fs::copy(&copy, restored.join("switchyard.db")).expect("copy the backup in place");
    let registry = copy.with_extension("workflows.db");
    if registry.exists() {
        std::fs::copy(&registry, restored.join("workflows.db")).expect("copy the registry");
    }
    let port = free_port();
    let mut server = ServerProcess::start(port, &restored, &[]).await;
    let mut client = connect(&server.url).await;
    let states: Vec<(String, Result<pb::TaskStatus, tonic::Status>)> =
        futures::stream::iter(acked_before.iter().cloned())
            .map(|id| {
                let mut c = client.clone();
                async move {
                    let r = c
                        .get_task_status(pb::GetTaskStatusRequest {
                            task_id: id.clone(),
                        })
                        .await
                        .map(|r| r.into_inner().status.expect("a status"));
                    (id, r)
                }
            })
            .buffered(16)
            .collect()
            .await;
    let mut missing = Vec::new();
    let mut went_back = Vec::new();
    for (id, r) in states {
        match r {
            Ok(s) => {
                if completed_before.contains(&id) && s.state != pb::TaskState::Completed as i32 {
                    went_back.push((id, state(&s)));
                }
            }
            Err(e) if e.code() == Code::NotFound => missing.push(id),
            Err(e) => panic!("GetTaskStatus {id}: {e:?}"),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged tasks are not in the backup: {:?}",
        missing.len(),
        acked_before.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        went_back.is_empty(),
        "{} tasks completed before the backup are not completed in it: {:?}",
        went_back.len(),
        &went_back[..went_back.len().min(5)]
    );

    // The restored server serves: a new task runs to completion.
    let worker = Worker::builder(&server.url)
        .name("after-restore")
        .handler("backup-after", |_ctx: TaskContext| async move {
            Ok(json!("restored"))
        })
        .build();
    let (worker, _) = spawn_worker(worker).await;
    let id = schedule(&mut client, simple("backup-after", json!({}))).await;
    wait_state(&mut client, &id, pb::TaskState::Completed, LONG).await;
    worker.shutdown();
    let _ = within("the worker to stop", LONG, worker.join()).await;
    server.wait_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_refuses_an_existing_file_without_force_and_a_postgresql_store() {
    init_tracing();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let copy = dir.path().join("copy.db");
    let copy_arg = copy.to_str().expect("a UTF-8 path");

    // PostgreSQL: refused, with the pg_dump command; nothing is written and
    // the password is not printed.
    let (code, out, err) = run_backup(
        &[copy_arg],
        &[
            (
                "SWITCHYARD_STORE__URL",
                "postgres://app:s3cret@127.0.0.1:1/app",
            ),
            ("SWITCHYARD_STORE__SCHEMA", "sy_prod"),
        ],
    )
    .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("pg_dump") && err.contains("--schema=sy_prod") && err.contains(copy_arg),
        "{err}"
    );
    assert!(!err.contains("s3cret") && !out.contains("s3cret"), "{err}");
    assert!(!copy.exists());

    if on_postgres("a_backup_refuses_an_existing_file_without_force") {
        return;
    }
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("a UTF-8 path");
    let mut server = ServerProcess::start(free_port(), &data, &[]).await;
    let mut client = connect(&server.url).await;
    schedule(&mut client, simple("bk", json!({}))).await;
    let (code, out, err) = run_backup(&[copy_arg, "--data-dir", data_arg], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 tasks"), "{out}");
    let first = std::fs::read(&copy).expect("the copy");

    // Again: refused, and the first copy is untouched.
    schedule(&mut client, simple("bk", json!({}))).await;
    let (code, out, err) = run_backup(&[copy_arg, "--data-dir", data_arg], &[]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&copy).expect("the copy"), first);

    // With --force: replaced by a newer snapshot.
    let (code, out, err) = run_backup(&[copy_arg, "--force", "--data-dir", data_arg], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 tasks"), "{out}");
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list the directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    server.wait_serving().await;
}
