//! A smoke test with grpcurl 1.8 (which speaks reflection v1alpha): list,
//! describe, schedule, status and health, as a person would try the server.
//!
//! grpcurl comes from `make test` (mk/test-core.mk installs it into .venv).
//! Without it the test fails in CI and is skipped, loudly, elsewhere.

use std::path::PathBuf;

use serde_json::Value;

use crate::common::*;

pub(crate) fn grpcurl() -> Option<PathBuf> {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/grpcurl");
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("grpcurl"))
            .find(|p| p.is_file())
    })
}

/// Runs grpcurl with `args` against `addr`; returns stdout, failing the test
/// on a non-zero exit.
async fn run(bin: &PathBuf, addr: &str, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("-plaintext");
    let (flags, rest): (Vec<&str>, Vec<&str>) = match args.iter().position(|a| *a == "--") {
        Some(i) => (args[..i].to_vec(), args[i + 1..].to_vec()),
        None => (Vec::new(), args.to_vec()),
    };
    cmd.args(&flags).arg(addr).args(&rest).kill_on_drop(true);
    let out = within(&format!("grpcurl {args:?}"), LONG, cmd.output())
        .await
        .expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_schedules_reads_status_and_checks_health() {
    let Some(bin) = grpcurl() else {
        let msg = "grpcurl not found in .venv/bin or on PATH (`make venv-grpcurl` installs it)";
        if in_ci() {
            panic!("{msg}");
        }
        eprintln!("\n*** SKIPPED grpcurl smoke test: {msg} ***\n");
        return;
    };
    let server = TestServer::start().await;
    let addr = server.addr.to_string();

    let services = run(&bin, &addr, &["list"]).await;
    for s in [
        "switchyard.v1.OrchestratorService",
        "switchyard.v1.WorkerService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|l| l.trim() == s),
            "{s} missing from `list`:\n{services}"
        );
    }

    let described = run(
        &bin,
        &addr,
        &["describe", "switchyard.v1.OrchestratorService"],
    )
    .await;
    for rpc in [
        "rpc ScheduleTask",
        "rpc GetTaskStatus",
        "rpc CancelTask",
        "rpc WatchTasks",
        "rpc Disconnect",
        "rpc ListTasks",
        "rpc GetTaskLogs",
        "rpc GetMetrics",
    ] {
        assert!(
            described.contains(rpc),
            "{rpc} missing from `describe`:\n{described}"
        );
    }
    let message = run(
        &bin,
        &addr,
        &["describe", "switchyard.v1.ScheduleTaskRequest"],
    )
    .await;
    assert!(message.contains("task_type"), "{message}");

    let scheduled = run(
        &bin,
        &addr,
        &[
            "-d",
            r#"{"name":"x","task_type":"TASK_TYPE_SIMPLE","payload":{"a":1}}"#,
            "--",
            "switchyard.v1.OrchestratorService/ScheduleTask",
        ],
    )
    .await;
    let v: Value = serde_json::from_str(&scheduled).expect("JSON from ScheduleTask");
    let id = v["taskId"].as_str().expect("taskId").to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{scheduled}");

    let req = format!(r#"{{"task_id":"{id}"}}"#);
    let status = run(
        &bin,
        &addr,
        &[
            "-d",
            &req,
            "--",
            "switchyard.v1.OrchestratorService/GetTaskStatus",
        ],
    )
    .await;
    let v: Value = serde_json::from_str(&status).expect("JSON from GetTaskStatus");
    assert_eq!(v["status"]["id"], id.as_str(), "{status}");
    assert_eq!(v["status"]["name"], "x");
    assert_eq!(v["status"]["state"], "TASK_STATE_PENDING");
    assert_eq!(v["status"]["taskType"], "TASK_TYPE_SIMPLE");
    assert_eq!(v["payload"], serde_json::json!({ "a": 1 }));

    let health = run(&bin, &addr, &["grpc.health.v1.Health/Check"]).await;
    let v: Value = serde_json::from_str(&health).expect("JSON from Health/Check");
    assert_eq!(v["status"], "SERVING", "{health}");
    let health = run(
        &bin,
        &addr,
        &[
            "-d",
            r#"{"service":"switchyard.v1.OrchestratorService"}"#,
            "--",
            "grpc.health.v1.Health/Check",
        ],
    )
    .await;
    assert!(health.contains("SERVING"), "{health}");

    // A bad request through grpcurl is an error, not a crash.
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(["-plaintext", "-d", r#"{"name":""}"#, &addr])
        .arg("switchyard.v1.OrchestratorService/ScheduleTask");
    let out = within("grpcurl with a bad request", LONG, cmd.output())
        .await
        .expect("run grpcurl");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("InvalidArgument"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}
