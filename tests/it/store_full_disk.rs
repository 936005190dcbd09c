//! A full disk loses nothing. The server's data directory is a small tmpfs
//! of the test's own; producers schedule tasks until the disk is full.
//! Then `ScheduleTask` answers RESOURCE_EXHAUSTED naming the full disk,
//! reads still answer, and health says NOT_SERVING; once space returns
//! (the tmpfs grows) new tasks are accepted again and health is SERVING;
//! the admin server's `/readyz`, `/healthz` and gauge say so too;
//! after a `kill -9` and a restart every acknowledged task is there.
//!
//! It needs `mount` (root). Without it the test is skipped, except under
//! `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::json;
use switchyard::pb;
use tonic::Code;

use crate::common::*;

/// A tmpfs mounted for the test, unmounted when dropped (lazily if a
/// process still holds a file in it).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `dir`; `None` (with the reason
    /// printed) when this machine does not let the test mount, which fails
    /// the test under `CI=true`.
    fn mount(dir: &Path, mib: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => {
                return Some(Tmpfs {
                    dir: dir.to_path_buf(),
                })
            }
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the full-disk test needs to mount a tmpfs (root): {why}");
        }
        eprintln!("skipping the full-disk test: cannot mount a tmpfs ({why})");
        None
    }

    /// Gives the file system `mib` MiB in all.
    fn resize(&self, mib: u32) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "remount {} to {mib} MiB", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // A killed server may not be reaped yet.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// What the producers saw.
#[derive(Default)]
struct Seen {
    /// Every acknowledged task id.
    acked: Mutex<Vec<String>>,
    /// The first RESOURCE_EXHAUSTED.
    exhausted: Mutex<Option<tonic::Status>>,
    /// Any other error.
    other: Mutex<Vec<tonic::Status>>,
    /// Calls left waiting (more than a second without an answer).
    held: AtomicUsize,
}

fn request(n: u64) -> pb::ScheduleTaskRequest {
    simple("fill", json!({ "n": n, "pad": "f".repeat(1024) }))
}

/// Fills what is left of the file system with a file of zeros.
fn ballast(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).expect("create the ballast");
    let chunk = vec![0u8; 64 << 10];
    // Until the file system says it is full (then in smaller steps).
    for size in [64 << 10, 4 << 10, 512, 1] {
        while f.write_all(&chunk[..size]).is_ok() {}
    }
    let _ = f.sync_all();
    path
}

/// GET `path` on the admin server at `addr`: status and JSON body.
async fn admin_get(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(SHORT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// GET `path` on the admin server at `addr`, as text.
async fn admin_text(addr: &str, path: &str) -> String {
    reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(SHORT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .text()
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_tasks_and_loses_none() {
    if postgres_store(Path::new("/")).is_some() {
        eprintln!("skipped: the servers of this run are on PostgreSQL");
        return;
    }
    init_tracing();
    let base = tempfile::tempdir().expect("a temporary directory");
    let Some(disk) = Tmpfs::mount(&base.path().join("disk"), 12) else {
        return;
    };
    let data = disk.dir.join("data");
    let log = base.path().join("server.log");
    let port = free_port();
    let admin = format!("127.0.0.1:{}", free_port());
    let server = ServerProcess::start_logging_to(
        port,
        &data,
        &[
            ("SWITCHYARD_LOG__FILTER", "switchyard=info"),
            ("SWITCHYARD_ADMIN__LISTEN", &admin),
        ],
        &log,
    )
    .await;
    let url = server.url.clone();
    let client = connect(&url).await;

    // Producers schedule until told to stop. A call whose commit the full
    // disk holds up waits until there is room again: a producer leaves it
    // waiting after a second and goes on, and the test collects it later.
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..8u64)
        .map(|p| {
            let (seen, stop, c) = (seen.clone(), stop.clone(), client.clone());
            tokio::spawn(async move {
                let mut held = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (seen2, mut c) = (seen.clone(), c.clone());
                    let mut call = tokio::spawn(async move {
                        match c.schedule_task(request(p * 1_000_000 + n)).await {
                            Ok(r) => {
                                seen2.acked.lock().push(r.into_inner().task_id);
                                true
                            }
                            Err(s) if s.code() == Code::ResourceExhausted => {
                                seen2.exhausted.lock().get_or_insert(s);
                                false
                            }
                            Err(s) => {
                                seen2.other.lock().push(s);
                                false
                            }
                        }
                    });
                    match tokio::time::timeout(Duration::from_secs(1), &mut call).await {
                        Ok(Ok(true)) => {}
                        // Refused: not in a tight loop.
                        Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        Err(_) => {
                            seen.held.fetch_add(1, Ordering::Relaxed);
                            held.push(call);
                        }
                    }
                    n += 1;
                }
                held
            })
        })
        .collect();
    wait_until(
        "ScheduleTask to answer RESOURCE_EXHAUSTED",
        Duration::from_secs(90),
        || {
            let full = seen.exhausted.lock().is_some() || !seen.other.lock().is_empty();
            async move { full }
        },
    )
    .await;
    let acked_when_full = seen.acked.lock().len();
    // SQLite may find room again (a WAL that starts over reuses its file):
    // what is left of the file system goes to a file of zeros, so the disk
    // stays full until the test frees it.
    let ballast = ballast(&disk.dir);
    wait_until("health to say NOT_SERVING", SHORT, || {
        let url = url.clone();
        async move { health_status(&url).await == Some(false) }
    })
    .await;
    wait_until(
        "a ScheduleTask to be held up by the full disk",
        LONG,
        || {
            let n = seen.held.load(Ordering::Relaxed);
            async move { n > 0 }
        },
    )
    .await;
    assert!(
        seen.other.lock().is_empty(),
        "other errors than RESOURCE_EXHAUSTED: {:?}",
        seen.other.lock()
    );
    let refused = seen.exhausted.lock().clone().expect("a refusal");
    assert!(
        refused.message().contains("disk is full"),
        "the refusal does not name the full disk: {refused:?}"
    );
    assert!(
        acked_when_full > 100,
        "only {acked_when_full} tasks filled the disk"
    );

    // Meanwhile: new tasks are refused at once, reads answer, health still
    // says NOT_SERVING.
    let mut c = client.clone();
    let s = within(
        "ScheduleTask while full",
        SHORT,
        c.schedule_task(request(9)),
    )
    .await
    .expect_err("accepted while the disk is full");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("disk is full"), "{s:?}");
    // A bulk is refused whole, as ScheduleTask is, with nothing of it
    // scheduled (a bad item does not turn the call into item results).
    let s = within(
        "ScheduleTasks while full",
        SHORT,
        c.schedule_tasks(pb::ScheduleTasksRequest {
            tasks: vec![request(10), request(11), simple("not a name", json!({}))],
        }),
    )
    .await
    .expect_err("a bulk accepted while the disk is full");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("disk is full"), "{s:?}");
    let first = seen.acked.lock()[0].clone();
    assert_eq!(status(&mut c, &first).await.id, first);
    // Reads that first wait for the queued writes (ListTasks and the logs
    // flush the store) answer from what is committed.
    let listed = within(
        "ListTasks while the disk is full",
        SHORT,
        c.list_tasks(pb::ListTasksRequest {
            filter: Some(pb::TaskFilter {
                names: vec!["fill".into()],
                ..Default::default()
            }),
            page_size: 10,
            page_token: String::new(),
        }),
    )
    .await
    .expect("ListTasks answers while the disk is full");
    assert!(!listed.into_inner().tasks.is_empty());
    let lines = within(
        "GetTaskLogs while the disk is full",
        SHORT,
        c.get_task_logs(pb::GetTaskLogsRequest {
            task_id: first.clone(),
            after_line: 0,
            limit: 10,
        }),
    )
    .await
    .expect("GetTaskLogs answers while the disk is full");
    assert!(!lines.into_inner().lines.is_empty());
    // A cancel is a write: refused at once, and the task is untouched.
    let before = status(&mut c, &first).await;
    let s = within(
        "CancelTask while full",
        SHORT,
        c.cancel_task(pb::CancelTaskRequest {
            task_id: first.clone(),
            reason: "full".into(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("a cancel while the disk is full");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert_eq!(status(&mut c, &first).await.state, before.state);
    assert_eq!(health_status(&url).await, Some(false));
    // The admin server says why.
    let (code, body) = admin_get(&admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["status"], "store_cannot_commit", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("disk is full"),
        "{body}"
    );
    let (code, body) = admin_get(&admin, "/healthz").await;
    assert_eq!(
        (code, &body["status"]),
        (200, &json!("store_cannot_commit"))
    );
    assert!(
        admin_text(&admin, "/metrics")
            .await
            .contains("switchyard_store_cannot_commit 1"),
        "the gauge does not say so"
    );

    // Space returns.
    stop.store(true, Ordering::Relaxed);
    std::fs::remove_file(&ballast).expect("remove the ballast");
    disk.resize(64);
    let accepted = wait_for("ScheduleTask to be accepted again", SHORT, || {
        let mut c = client.clone();
        async move {
            match c.schedule_task(request(10)).await {
                Ok(r) => Some(r.into_inner().task_id),
                Err(s) if s.code() == Code::ResourceExhausted => None,
                Err(s) => panic!("ScheduleTask after space returned: {s:?}"),
            }
        }
    })
    .await;
    seen.acked.lock().push(accepted);
    wait_until("health to say SERVING again", SHORT, || {
        let url = url.clone();
        async move { health_serving(&url).await }
    })
    .await;
    wait_until("/readyz to say ready again", SHORT, || {
        let admin = admin.clone();
        async move { admin_get(&admin, "/readyz").await.0 == 200 }
    })
    .await;
    // The calls the full disk held up are answered, and accepted: their
    // writes were kept, not lost.
    let mut held = 0;
    for p in producers {
        for call in within("a producer", LONG, p).await.expect("a producer") {
            let accepted = within("a held ScheduleTask to be answered", LONG, call)
                .await
                .expect("a held call");
            assert!(accepted, "a held call was refused: {:?}", seen.other.lock());
            held += 1;
        }
    }
    assert!(seen.other.lock().is_empty(), "{:?}", seen.other.lock());
    assert!(held > 0);

    // Nothing acknowledged is lost, even to a kill -9.
    server.kill9().await;
    let server = ServerProcess::start(port, &data, &[]).await;
    let acked = seen.acked.lock().clone();
    let c = connect(&server.url).await;
    let missing: Vec<String> = futures::stream::iter(acked.iter().cloned())
        .map(|id| {
            let mut c = c.clone();
            async move {
                match c
                    .get_task_status(pb::GetTaskStatusRequest {
                        task_id: id.clone(),
                    })
                    .await
                {
                    Ok(_) => None,
                    Err(s) if s.code() == Code::NotFound => Some(id),
                    Err(s) => panic!("GetTaskStatus {id}: {s:?}"),
                }
            }
        })
        .buffered(16)
        .filter_map(|m| async move { m })
        .collect()
        .await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged tasks are lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );

    // The server said so once per spell of a full disk, not at every
    // retry (every 250 ms for seconds).
    let text = std::fs::read_to_string(&log).expect("the server's log");
    let warned = text.matches("the store cannot commit").count();
    let recovered = text.matches("the store commits again").count();
    assert!(
        (1..=3).contains(&warned) && warned == recovered,
        "warned {warned} times, recovered {recovered} times:\n{text}"
    );
    eprintln!(
        "full disk: {acked_when_full} tasks acknowledged when the disk filled, {held} calls held \
         until space returned, {} acknowledged in all, none lost",
        acked.len()
    );
    server.kill9().await;
}
