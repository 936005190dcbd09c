//! Traces end to end: a server process exporting to an OTLP collector that
//! runs in the test (a tonic `TraceService` on an ephemeral port), a client
//! that schedules with a W3C `traceparent`, a Rust worker, a webhook
//! receiver and a one-step workflow. The server runs as a separate process
//! because its global tracing subscriber cannot be installed per in-process
//! test server.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use parking_lot::Mutex;
use serde_json::json;
use switchyard::pb;
use switchyard::worker::Worker;
use tokio_stream::wrappers::TcpListenerStream;

use crate::common::*;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attrs: HashMap<String, String>,
}

/// The collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Got>>>,
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock();
        for rs in req.into_inner().resource_spans {
            let res = rs
                .resource
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            let service = res.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Got {
                        service: service.clone(),
                        name: s.name,
                        kind: s.kind,
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent_span_id: hex::encode(&s.parent_span_id),
                        attrs: attrs(&s.attributes),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start(&self) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = l.local_addr().expect("collector address");
        let svc = TraceServiceServer::new(self.clone());
        // Policy on shutdown: aborted with the test's runtime.
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(l)),
        );
        format!("http://{addr}")
    }

    fn all(&self) -> Vec<Got> {
        self.spans.lock().clone()
    }

    /// Waits for the span `pick` finds among those exported.
    async fn wait(&self, what: &str, pick: impl Fn(&Got) -> bool) -> Got {
        wait_for(what, LONG, || {
            let found = self.spans.lock().iter().find(|s| pick(s)).cloned();
            async move { found }
        })
        .await
    }
}

/// A W3C traceparent's (trace id, parent id).
fn parts(tp: &str) -> (String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "a traceparent has four parts: {tp}");
    assert_eq!(p[0], "00", "version 00: {tp}");
    (p[1].to_string(), p[2].to_string())
}

/// A webhook receiver that records the `traceparent` header of each call.
async fn webhook_receiver(seen: Arc<Mutex<Vec<Option<String>>>>) -> String {
    use axum::http::HeaderMap;
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                seen.lock().push(
                    headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                );
                axum::Json(json!({"ok": true}))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the webhook receiver");
    let addr = l.local_addr().expect("receiver address");
    // Policy on shutdown: aborted with the test's runtime.
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}/hook")
}

fn with_traceparent<T>(msg: T, tp: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("traceparent", tp.parse().expect("ASCII"));
    req.metadata_mut()
        .insert("tracestate", "it=1".parse().expect("ASCII"));
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_client_server_worker_webhook_and_workflow() {
    init_tracing();
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let hook_seen = Arc::new(Mutex::new(Vec::new()));
    let hook_url = webhook_receiver(hook_seen.clone()).await;

    let dir = tempfile::tempdir().expect("a temp dir");
    let log_path = dir.path().join("server.log");
    let port = free_port();
    let server = ServerProcess::start_logging_to(
        port,
        dir.path(),
        &[
            ("SWITCHYARD_OTEL__ENDPOINT", endpoint.as_str()),
            ("SWITCHYARD_OTEL__SERVICE_NAME", "switchyard-it"),
            ("SWITCHYARD_WEBHOOK__ALLOW_HOSTS", r#"["127.0.0.1"]"#),
            // The log level does not gate traces (warn hides our info
            // spans from the log only). The transport libraries' spans are
            // on in this process (see the log check below), so their absence
            // from the export is the OpenTelemetry layer's filter at work.
            (
                "RUST_LOG",
                "warn,h2=debug,hyper=debug,tower=debug,tonic=debug",
            ),
            // Export every 100 ms instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("NO_COLOR", "1"),
        ],
        &log_path,
    )
    .await;
    let mut client = connect(&server.url).await;

    // The client's own span, in a trace of its own.
    let trace_id = uuid::Uuid::now_v7().simple().to_string();
    let client_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let client_tp = format!("00-{trace_id}-{client_span}-01");

    // A SIMPLE task run by a Rust worker.
    let worker_tp: Arc<Mutex<Option<String>>> = Arc::default();
    let (worker, _) = spawn_worker(
        Worker::builder(&server.url)
            .handler("traced-job", {
                let worker_tp = worker_tp.clone();
                move |ctx| {
                    let worker_tp = worker_tp.clone();
                    async move {
                        *worker_tp.lock() = ctx.traceparent().map(str::to_string);
                        Ok(json!({"done": true}))
                    }
                }
            })
            .handler(
                "traced-step",
                |_ctx| async move { Ok(json!({"step": "ok"})) },
            )
            .build(),
    )
    .await;
    let simple_id = client
        .schedule_task(with_traceparent(
            simple("traced-job", json!({"n": 1})),
            &client_tp,
        ))
        .await
        .expect("ScheduleTask")
        .into_inner()
        .task_id;
    wait_state(&mut client, &simple_id, pb::TaskState::Completed, SHORT).await;

    // An INTEGRATION task calling the receiver.
    let hook_id = client
        .schedule_task(with_traceparent(
            pb::ScheduleTaskRequest {
                name: "traced-hook".into(),
                payload: Some(payload(json!({"n": 2}))),
                task_type: pb::TaskType::Integration as i32,
                options: Some(pb::TaskOptions::default()),
                target: Some(pb::schedule_task_request::Target::Integration(
                    pb::IntegrationTarget {
                        n8n: Some(pb::N8nTarget {
                            webhook_url: hook_url.clone(),
                            ..Default::default()
                        }),
                    },
                )),
            },
            &client_tp,
        ))
        .await
        .expect("ScheduleTask (webhook)")
        .into_inner()
        .task_id;
    wait_state(&mut client, &hook_id, pb::TaskState::Completed, SHORT).await;

    // A one-step workflow whose step a worker runs.
    client
        .register_workflow(pb::RegisterWorkflowRequest {
            definition:
                "name = \"traced-flow\"\n[[steps]]\nid = \"work\"\ntask = \"traced-step\"\n".into(),
            format: "toml".into(),
        })
        .await
        .expect("RegisterWorkflow");
    let flow_id = client
        .schedule_task(with_traceparent(
            pb::ScheduleTaskRequest {
                name: "traced-flow".into(),
                payload: Some(payload(json!({}))),
                task_type: pb::TaskType::Complex as i32,
                options: Some(pb::TaskOptions::default()),
                target: Some(pb::schedule_task_request::Target::Complex(
                    pb::ComplexTarget {
                        workflow_type: "traced-flow".into(),
                        ..Default::default()
                    },
                )),
            },
            &client_tp,
        ))
        .await
        .expect("ScheduleTask (workflow)")
        .into_inner()
        .task_id;
    wait_state(&mut client, &flow_id, pb::TaskState::Completed, LONG).await;

    // --- The RPC: a server span whose parent is the client's span. ---
    let rpc = collector
        .wait("the ScheduleTask server span", |s| {
            s.name == "switchyard.v1.OrchestratorService/ScheduleTask" && s.trace_id == trace_id
        })
        .await;
    assert_eq!(
        rpc.parent_span_id, client_span,
        "RPC span's parent: {rpc:?}"
    );
    assert_eq!(rpc.kind, SpanKind::Server as i32, "{rpc:?}");
    assert_eq!(rpc.service, "switchyard-it");
    assert_eq!(
        rpc.attrs.get("rpc.method").map(String::as_str),
        Some("ScheduleTask")
    );

    // --- The worker: its traceparent's parent is our `task.run` span. ---
    let tp = worker_tp
        .lock()
        .clone()
        .expect("the worker got a traceparent");
    let (t, parent) = parts(&tp);
    assert_eq!(t, trace_id, "the worker's trace: {tp}");
    let run = collector
        .wait("the SIMPLE task's task.run span", |s| {
            s.name == "task.run" && s.attrs.get("task.id") == Some(&simple_id)
        })
        .await;
    assert_eq!(
        run.span_id, parent,
        "the worker's parent is task.run: {run:?}"
    );
    assert_eq!(run.trace_id, trace_id);
    assert_eq!(
        run.attrs.get("task.name").map(String::as_str),
        Some("traced-job")
    );
    assert_eq!(
        run.attrs.get("task.type").map(String::as_str),
        Some("SIMPLE")
    );
    assert_eq!(run.attrs.get("task.attempt").map(String::as_str), Some("1"));
    assert_eq!(
        run.attrs.get("task.outcome").map(String::as_str),
        Some("completed")
    );
    // task.run hangs under the handler span of that ScheduleTask, which
    // hangs under its RPC span.
    let all = collector.all();
    let by_id: HashMap<&str, &Got> = all.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut chain = Vec::new();
    let mut id = run.span_id.clone();
    while let Some(s) = by_id.get(id.as_str()) {
        chain.push(s.name.clone());
        id = s.parent_span_id.clone();
    }
    assert_eq!(
        chain,
        [
            "task.run",
            "schedule_task",
            "switchyard.v1.OrchestratorService/ScheduleTask"
        ],
        "the task's spans chain up to the RPC"
    );

    // --- The webhook: the header's parent is our `webhook.call` span. ---
    let seen = hook_seen.lock().clone();
    assert_eq!(seen.len(), 1, "one call: {seen:?}");
    let tp = seen[0].clone().expect("a traceparent header");
    let (t, parent) = parts(&tp);
    assert_eq!(t, trace_id, "the webhook's trace: {tp}");
    let call = collector
        .wait("the webhook.call span", |s| {
            s.name == "webhook.call" && s.attrs.get("task.id") == Some(&hook_id)
        })
        .await;
    assert_eq!(call.span_id, parent, "the header's parent is webhook.call");
    assert_eq!(call.kind, SpanKind::Client as i32);
    assert_eq!(
        call.attrs
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    let hook_run = collector
        .wait("the INTEGRATION task's task.run span", |s| {
            s.name == "task.run" && s.attrs.get("task.id") == Some(&hook_id)
        })
        .await;
    assert_eq!(call.parent_span_id, hook_run.span_id);

    // --- The workflow: step task under workflow.step under the workflow's run. ---
    let step_run = collector
        .wait("the workflow step's task.run span", |s| {
            s.name == "task.run"
                && s.attrs.get("task.name").map(String::as_str) == Some("traced-step")
        })
        .await;
    collector
        .wait("the workflow's task.run span", |s| {
            s.name == "task.run" && s.attrs.get("task.id") == Some(&flow_id)
        })
        .await;
    let all = collector.all();
    let by_id: HashMap<&str, &Got> = all.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let step = by_id
        .get(step_run.parent_span_id.as_str())
        .expect("the step task's parent span was exported");
    assert_eq!(step.name, "workflow.step");
    assert_eq!(
        step.attrs.get("workflow.step").map(String::as_str),
        Some("work")
    );
    let flow_run = by_id
        .get(step.parent_span_id.as_str())
        .expect("the step's parent span was exported");
    assert_eq!(flow_run.name, "task.run");
    assert_eq!(flow_run.attrs.get("task.id"), Some(&flow_id));
    assert_eq!(step_run.trace_id, trace_id);

    // --- Only Switchyard's own spans. ---
    for s in &all {
        let target = s.attrs.get("target").map(String::as_str).unwrap_or("");
        assert!(
            target.starts_with("switchyard"),
            "a span from outside Switchyard was exported: {s:?}"
        );
        assert!(
            !["Connection", "poll", "poll_ready"].contains(&s.name.as_str())
                && !s.name.starts_with("FramedRead")
                && !s.name.starts_with("FramedWrite"),
            "an HTTP/2 span was exported: {s:?}"
        );
    }
    worker.shutdown();
    let _ = within("the worker to stop", SHORT, worker.join()).await;
    assert!(server.terminate().await, "the server exits cleanly");
    // h2's connection span was live in the server, so its absence above is
    // the filter's doing.
    let log = std::fs::read_to_string(&log_path).expect("the server's log");
    assert!(
        log.contains("Connection{peer=Server}"),
        "h2's spans were not enabled in the server; the log:\n{}",
        &log[..log.len().min(4000)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_the_callers_traceparent_goes_through_unchanged() {
    init_tracing();
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut raw = RawWorker::register(&server.url, &["plain-job"], 1).await;
    let id = client
        .schedule_task(with_traceparent(simple("plain-job", json!({})), tp))
        .await
        .expect("ScheduleTask")
        .into_inner()
        .task_id;
    let a = raw.assignment().await;
    assert_eq!(a.task_id, id);
    assert_eq!(a.traceparent, tp);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_buffered_are_flushed_when_the_server_stops() {
    init_tracing();
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = ServerProcess::start(
        free_port(),
        dir.path(),
        &[
            ("SWITCHYARD_OTEL__ENDPOINT", endpoint.as_str()),
            // No periodic export during the test: only the shutdown flush
            // can deliver the span.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    )
    .await;
    let mut client = connect(&server.url).await;
    let trace_id = uuid::Uuid::now_v7().simple().to_string();
    let tp = format!("00-{trace_id}-00f067aa0ba902b7-01");
    client
        .schedule_task(with_traceparent(simple("never-run", json!({})), &tp))
        .await
        .expect("ScheduleTask");
    assert!(
        !collector.all().iter().any(|s| s.trace_id == trace_id),
        "nothing is exported before the flush"
    );
    assert!(server.terminate().await, "the server exits cleanly");
    let got = collector
        .wait("the flushed RPC span", |s| {
            s.trace_id == trace_id && s.name.ends_with("/ScheduleTask")
        })
        .await;
    assert_eq!(got.service, "switchyard");
}
