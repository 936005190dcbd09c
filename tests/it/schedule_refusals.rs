//! Settings that cannot be honoured where a task goes are refused by
//! ScheduleTask (FAILED_PRECONDITION when the server's configuration lacks
//! what they need, INVALID_ARGUMENT when the value itself cannot be used),
//! naming the setting, instead of being accepted and failing later or
//! being dropped without a word. Each case against a real server on an
//! ephemeral port; nothing is stored for a refused task.

use serde_json::json;
use switchyard::pb;
use tonic::Code;

use crate::common::*;

fn integration(workflow_id: &str, webhook_url: &str) -> pb::ScheduleTaskRequest {
    pb::ScheduleTaskRequest {
        name: "notify".into(),
        payload: Some(payload(json!({}))),
        task_type: pb::TaskType::Integration as i32,
        options: Some(pb::TaskOptions::default()),
        target: Some(pb::schedule_task_request::Target::Integration(
            pb::IntegrationTarget {
                n8n: Some(pb::N8nTarget {
                    workflow_id: workflow_id.into(),
                    webhook_url: webhook_url.into(),
                    ..Default::default()
                }),
            },
        )),
    }
}

pub(crate) fn complex(
    workflow_type: &str,
    task_queue: &str,
    tracking_queue: &str,
) -> pb::ScheduleTaskRequest {
    pb::ScheduleTaskRequest {
        name: workflow_type.into(),
        payload: Some(payload(json!({}))),
        task_type: pb::TaskType::Complex as i32,
        options: Some(pb::TaskOptions::default()),
        target: Some(pb::schedule_task_request::Target::Complex(
            pb::ComplexTarget {
                workflow_type: workflow_type.into(),
                task_queue: task_queue.into(),
                tracking_queue: tracking_queue.into(),
                ..Default::default()
            },
        )),
    }
}

/// ScheduleTask's refusal: its code, and a message naming `field`.
async fn refused(
    client: &mut Client,
    req: pb::ScheduleTaskRequest,
    code: Code,
    field: &str,
) -> String {
    let case = format!("{:?}", req.target);
    let e = client
        .schedule_task(req)
        .await
        .expect_err(&format!("{case} was accepted"));
    assert_eq!(e.code(), code, "{case}: {e:?}");
    assert!(e.message().contains(field), "{case}: {}", e.message());
    e.message().to_string()
}

async fn no_tasks(client: &mut Client) {
    let page = client
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .expect("ListTasks")
        .into_inner();
    assert!(
        page.tasks.is_empty(),
        "a refused task was stored: {:?}",
        page.tasks
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_n8n_workflow_id_without_a_base_url_is_a_failed_precondition() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let m = refused(
        &mut client,
        integration("wf-1", ""),
        Code::FailedPrecondition,
        "integration.n8n.workflow_id",
    )
    .await;
    assert!(m.contains("webhook.n8n_base_url"), "{m}");
    no_tasks(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_n8n_base_url_the_guard_refuses_is_a_failed_precondition() {
    let server = TestServer::start_with(|c| {
        c.webhook.n8n_base_url = Some("http://10.0.0.7:5678".into());
    })
    .await;
    let mut client = server.client().await;
    let m = refused(
        &mut client,
        integration("wf-1", ""),
        Code::FailedPrecondition,
        "integration.n8n.workflow_id",
    )
    .await;
    assert!(m.contains("private") && m.contains("allow_hosts"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_url_the_guard_refuses_is_an_invalid_argument() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for (url, why) in [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ] {
        let m = refused(
            &mut client,
            integration("", url),
            Code::InvalidArgument,
            "integration.n8n.webhook_url",
        )
        .await;
        assert!(m.contains(why) && m.contains("allow_hosts"), "{url}: {m}");
    }
    no_tasks(&mut client).await;
    // Names are not resolved when scheduling (the call's resolver checks
    // them): a public-looking name is accepted.
    let id = schedule(&mut client, integration("", "https://hooks.invalid/x")).await;
    assert!(!id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_settings_on_a_task_that_stays_embedded_are_refused() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    crate::workflow::register(
        &mut client,
        "name = \"order\"\n[[steps]]\nid = \"a\"\ntask = \"reserve\"\n",
    )
    .await;
    let m = refused(
        &mut client,
        complex("order", "", "order-tracking"),
        Code::FailedPrecondition,
        "complex.tracking_queue",
    )
    .await;
    assert!(
        m.contains("embedded workflow engine") && m.contains("temporal"),
        "{m}"
    );
    let m = refused(
        &mut client,
        complex("order", "orders", ""),
        Code::FailedPrecondition,
        "complex.task_queue",
    )
    .await;
    assert!(m.contains("embedded workflow engine"), "{m}");
    no_tasks(&mut client).await;
    // Without them it is taken.
    schedule(&mut client, complex("order", "", "")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_queue_bullmq_takes_is_where_an_embedded_workflows_steps_go() {
    // BullMQ routing is configured but never reached: the task is only
    // accepted here (its step would go to BullMQ's `orders` queue).
    let server = TestServer::start_with(|c| {
        c.bullmq.enabled = true;
        c.bullmq.url = "redis://127.0.0.1:1".into();
        c.bullmq.queues = vec!["orders".into()];
    })
    .await;
    let mut client = server.client().await;
    crate::workflow::register(
        &mut client,
        "name = \"order\"\n[[steps]]\nid = \"a\"\ntask = \"reserve\"\n",
    )
    .await;
    schedule(&mut client, complex("order", "orders", "")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_settings_temporal_cannot_honour_here_are_refused() {
    // Temporal need not be up for the backend to check what it is given.
    let server = TestServer::start_with(|c| {
        c.temporal.enabled = true;
        c.temporal.address = "http://127.0.0.1:1".into();
        c.temporal.workflow_types = vec!["Payment".into()];
    })
    .await;
    let mut client = server.client().await;
    let m = refused(
        &mut client,
        complex("Payment", "payments", "payment-tracking"),
        Code::FailedPrecondition,
        "complex.tracking_queue",
    )
    .await;
    assert!(m.contains("BullMQ"), "{m}");
    let m = refused(
        &mut client,
        complex("Payment", "", ""),
        Code::FailedPrecondition,
        "complex.task_queue",
    )
    .await;
    assert!(m.contains("temporal.default_task_queue"), "{m}");
    no_tasks(&mut client).await;
    // A type Temporal does not take stays embedded, and says so.
    let m = refused(
        &mut client,
        complex("order", "", "t"),
        Code::FailedPrecondition,
        "complex.tracking_queue",
    )
    .await;
    assert!(m.contains("not in temporal.workflow_types"), "{m}");
}
