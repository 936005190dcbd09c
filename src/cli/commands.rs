//! The client subcommands themselves: each opens (or is given) a gRPC client,
//! sends its request and writes the answer to an [`Output`]. Output goes to a
//! writer so tests can read it; notes about the connection go to stderr.
use std::future::Future;
use std::io::Write;
use std::time::Duration;

use serde_json::Value as Json;
use switchyard_client::TlsFiles;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use super::args::{
    CancelArgs, DisconnectArgs, ListArgs, LogsArgs, MetricsArgs, ReplayArgs, RetryArgs, StatusArgs,
    WatchArgs,
};
use super::error::{describe_status, CliError};
use super::{json, render};
use crate::pb;
use crate::pb::orchestrator_service_client::OrchestratorServiceClient;

/// The generated client over a tonic channel.
pub(crate) type Client = OrchestratorServiceClient<switchyard_client::Transport>;

/// How often `task logs --follow` polls.
pub(crate) const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);
/// The first and the largest pause before `task watch` reconnects.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Responses can carry a page of up to 1000 full statuses.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Where a command writes its answer, and in which form.
pub(crate) struct Output<W: Write> {
    writer: W,
    json: bool,
}

impl<W: Write> Output<W> {
    /// Output to `writer`; JSON when `json`.
    pub(crate) fn new(writer: W, json: bool) -> Self {
        Self { writer, json }
    }

    /// Whether to print JSON.
    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// Writes one line (or a multi-line block) and flushes it.
    pub(crate) fn line(&mut self, text: impl std::fmt::Display) -> Result<(), CliError> {
        writeln!(self.writer, "{text}")
            .and_then(|()| self.writer.flush())
            .map_err(CliError::output)
    }

    /// Writes a JSON document, indented.
    pub(crate) fn document(&mut self, value: &Json) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        self.line(text)
    }

    /// Writes a JSON value on one line (for streams: one object per line).
    fn json_line(&mut self, value: &Json) -> Result<(), CliError> {
        self.line(value)
    }

    /// The writer, for tests.
    #[cfg(test)]
    pub(crate) fn into_inner(self) -> W {
        self.writer
    }
}

/// How the CLI connects: TLS files and the bearer token every call sends
/// (`--token`, `SWITCHYARD_TOKEN`).
#[derive(Clone, Default)]
pub struct Conn {
    /// `--ca-file`, `--cert-file`, `--key-file`.
    pub tls: TlsFiles,
    /// `--token`.
    pub token: Option<String>,
    /// `--namespace`.
    pub namespace: Option<String>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Conn {
    /// The headers every call sends: `authorization` of `--token`, and
    /// the namespace of `--namespace`; a value that is no valid header
    /// value is a usage error.
    fn headers(&self) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, CliError> {
        let mut out = Vec::new();
        if let Some(t) = &self.token {
            let mut v = http::HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                .map_err(|_| CliError::usage("--token: not a valid header value"))?;
            v.set_sensitive(true);
            out.push((http::header::AUTHORIZATION, v));
        }
        if let Some(ns) = &self.namespace {
            let v = http::HeaderValue::from_str(ns.trim())
                .map_err(|_| CliError::usage("--namespace: not a valid header value"))?;
            out.push((
                // The server's `switchyard-namespace` (the CLI uses only the protos).
                http::HeaderName::from_static("switchyard-namespace"),
                v,
            ));
        }
        Ok(out)
    }
}

/// `inner`, sending `headers` (the token, the namespace) with every call
/// (of every service: the one place they are added).
fn with_headers<S>(
    inner: S,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
) -> switchyard_client::Transport
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = tonic::transport::Error,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    if headers.is_empty() {
        return switchyard_client::Transport::new(inner);
    }
    switchyard_client::Transport::new(tower::util::MapRequest::new(
        inner,
        move |mut r: http::Request<tonic::body::Body>| {
            for (k, v) in &headers {
                r.headers_mut().insert(k.clone(), v.clone());
            }
            r
        },
    ))
}

/// `host:port` means `http://host:port`.
pub(crate) fn server_uri(server: &str) -> String {
    if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    }
}

/// Connects to the server at `server`; several replicas' addresses,
/// comma-separated (or a name with several records), use the first live
/// one and move to the next when a call fails at the transport (a standby
/// forwards to the leader).
/// `https://` addresses use TLS with `tls`'s CA and client certificate.
pub(crate) async fn connect(server: &str, tls: &Conn) -> Result<Client, CliError> {
    Ok(
        OrchestratorServiceClient::new(transport(server, tls).await?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
}

/// The transport to `server` every service's client uses (see [`connect`]).
pub(crate) async fn transport(
    server: &str,
    conn: &Conn,
) -> Result<switchyard_client::Transport, CliError> {
    let tls = &conn.tls;
    let auth = conn.headers()?;
    let parts: Vec<&str> = server
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let endpoints = parts
        .iter()
        .map(|p| {
            let e = Endpoint::from_shared(server_uri(p))
                .map(|e| e.connect_timeout(Duration::from_secs(5)))
                .map_err(|e| CliError::usage(format!("--server {p}: {e}")))?;
            tls.apply(e).map_err(CliError::usage)
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A name with several address records is several replicas.
    let endpoints = switchyard_client::failover::expand_dns(endpoints).await;
    if endpoints.len() > 1 {
        let failover = switchyard_client::failover::Failover::connect(endpoints).await;
        return Ok(with_headers(failover, auth));
    }
    let uri = server_uri(server);
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| CliError::usage(format!("--server {server}: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    let endpoint = tls.apply(endpoint).map_err(CliError::usage)?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CliError::connect(&uri, &e))?;
    Ok(with_headers(channel, auth))
}

fn rpc(status: Status) -> CliError {
    CliError::status(&status)
}

/// Whether a task in this state never changes again.
fn is_final(state: i32) -> bool {
    matches!(
        pb::TaskState::try_from(state),
        Ok(pb::TaskState::Completed
            | pb::TaskState::Failed
            | pb::TaskState::Cancelled
            | pb::TaskState::Compensated)
    )
}

/// `task schedule`.
/// The request is built (and its flags checked) before connecting.
pub(crate) async fn schedule<W: Write>(
    client: &mut Client,
    request: pb::ScheduleTaskRequest,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let name = request.name.clone();
    let response = client
        .schedule_task(request)
        .await
        .map_err(rpc)?
        .into_inner();
    if out.json() {
        return out.document(&json::to_json(&response));
    }
    if response.outcome == pb::ScheduleOutcome::Throttled as i32 {
        out.line(format!(
            "task {} holds this throttle key for its period; nothing new was scheduled",
            response.task_id
        ))?;
    } else if response.existing {
        out.line(format!(
            "task {} already exists with this idempotency key; nothing new was scheduled",
            response.task_id
        ))?;
    } else {
        out.line(format!("scheduled {name} as task {}", response.task_id))?;
    }
    if !response.superseded_task_ids.is_empty() {
        out.line(format!(
            "superseded (cancelled): {}",
            response.superseded_task_ids.join(", ")
        ))?;
    }
    if let Some(status) = &response.status {
        out.line(render::status_table(status))?;
    }
    Ok(())
}

/// The most tasks one `ScheduleTasks` call takes (the proto's limit on
/// `ScheduleTasksRequest.tasks`).
const MAX_PER_CALL: usize = 1000;

/// One line of a `schedule-many` file: its number (from 1) and its task,
/// or why the line cannot be one.
pub(crate) type Line = (usize, Result<pb::ScheduleTaskRequest, String>);

/// Reads a `schedule-many` file (`-`: stdin) into its tasks, each line
/// parsed as `task schedule` parses its arguments.
pub(crate) fn read_lines(path: &std::path::Path) -> Result<Vec<Line>, CliError> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            (
                i + 1,
                super::args::schedule_line(l).map_err(|e| e.message().to_string()),
            )
        })
        .collect())
}

/// `task schedule-many`: the lines' tasks in calls of up to 1,000
/// (`ScheduleTasks`), one result printed per line in file order. Fails
/// (after printing every result) when any line was not scheduled.
pub(crate) async fn schedule_many<W: Write>(
    client: &mut Client,
    lines: Vec<Line>,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let total = lines.len();
    let mut refused = 0usize;
    let mut lines = lines.into_iter().peekable();
    while lines.peek().is_some() {
        // Up to 1,000 tasks per call; lines that are not tasks are
        // answered here, in their place.
        let mut chunk: Vec<(usize, Option<String>)> = Vec::new();
        let mut tasks = Vec::new();
        while tasks.len() < MAX_PER_CALL {
            let Some((n, line)) = lines.next() else {
                break;
            };
            match line {
                Ok(t) => {
                    tasks.push(t);
                    chunk.push((n, None));
                }
                Err(e) => chunk.push((n, Some(e))),
            }
        }
        let mut results = if tasks.is_empty() {
            Vec::new()
        } else {
            client
                .schedule_tasks(pb::ScheduleTasksRequest { tasks })
                .await
                .map_err(rpc)?
                .into_inner()
                .results
        }
        .into_iter();
        for (n, local) in chunk {
            let outcome = match local {
                Some(e) => Err(("INVALID_ARGUMENT".to_string(), String::new(), e)),
                None => match results.next().and_then(|r| r.outcome) {
                    Some(pb::schedule_tasks_result::Outcome::Scheduled(s)) => Ok(s),
                    Some(pb::schedule_tasks_result::Outcome::Error(e)) => Err((
                        super::error::code_name(Code::from(e.code)).to_string(),
                        e.field,
                        e.message,
                    )),
                    None => Err((
                        "INTERNAL".to_string(),
                        String::new(),
                        "the server gave no result for this task".to_string(),
                    )),
                },
            };
            refused += usize::from(outcome.is_err());
            if out.json() {
                let v = match outcome {
                    Ok(s) => serde_json::json!({
                        "line": n,
                        "taskId": s.task_id,
                        "existing": s.existing,
                        "state": json::task_state_name(s.state),
                    }),
                    Err((code, field, message)) => serde_json::json!({
                        "line": n,
                        "error": { "code": code, "field": field, "message": message },
                    }),
                };
                out.json_line(&v)?;
            } else {
                out.line(match outcome {
                    Ok(s) if s.existing => format!(
                        "line {n}: task {} already exists with this idempotency key",
                        s.task_id
                    ),
                    Ok(s) => format!("line {n}: scheduled as task {}", s.task_id),
                    Err((code, _, message)) => format!("line {n}: {code}: {message}"),
                })?;
            }
        }
    }
    if refused > 0 {
        return Err(CliError::new(
            CliError::FAILURE,
            format!("{refused} of {total} tasks were not scheduled"),
        ));
    }
    Ok(())
}

/// `task status`.
pub(crate) async fn status<W: Write>(
    client: &mut Client,
    args: &StatusArgs,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let request = pb::GetTaskStatusRequest {
        task_id: args.id.clone(),
    };
    let response = client
        .get_task_status(request)
        .await
        .map_err(rpc)?
        .into_inner();
    if out.json() {
        return out.document(&json::to_json(&response));
    }
    if let Some(status) = &response.status {
        out.line(render::status_table(status))?;
        if let Some(steps) = render::steps_table(status) {
            out.line(format!("steps:\n{steps}"))?;
        }
    }
    out.line(format!(
        "payload:\n{}",
        render::payload(response.payload.as_ref())
    ))
}

/// `task cancel`.
pub(crate) async fn cancel<W: Write>(
    client: &mut Client,
    args: &CancelArgs,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let request = pb::CancelTaskRequest {
        task_id: args.id.clone(),
        reason: args.reason.clone().unwrap_or_default(),
        force: args.force,
    };
    let response = client.cancel_task(request).await.map_err(rpc)?.into_inner();
    if out.json() {
        return out.document(&json::to_json(&response));
    }
    out.line(render::cancel_outcome(&args.id, &response))
}

/// `task retry`: each id in turn, one line (or JSON object) per task; a
/// refusal is that task's line, and the command fails once all are tried.
pub(crate) async fn retry<W: Write>(
    client: &mut Client,
    args: &RetryArgs,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let mut failed = 0usize;
    for id in &args.ids {
        let request = pb::RetryTaskRequest {
            task_id: id.clone(),
            reason: args.reason.clone().unwrap_or_default(),
        };
        match client.retry_task(request).await {
            Ok(r) => {
                let status = r.into_inner().status.unwrap_or_default();
                if out.json() {
                    out.line(serde_json::json!({"taskId": id, "status": json::to_json(&status)}))?;
                } else {
                    out.line(format!(
                        "retried {id}: run {}, {}",
                        status.run,
                        json::task_state_name(status.state)
                    ))?;
                }
            }
            Err(e) if e.code() == tonic::Code::Unavailable => return Err(rpc(e)),
            Err(e) => {
                failed += 1;
                let err = rpc(e);
                if out.json() {
                    out.line(serde_json::json!({"taskId": id, "error": err.message()}))?;
                } else {
                    out.line(format!("not retried {id}: {}", err.message()))?;
                }
            }
        }
    }
    if failed > 0 {
        return Err(CliError::new(
            CliError::FAILURE,
            format!("{failed} of {} tasks not retried", args.ids.len()),
        ));
    }
    Ok(())
}

/// `task replay`.
pub(crate) async fn replay<W: Write>(
    client: &mut Client,
    args: &ReplayArgs,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let request = pb::ReplayWorkflowRequest {
        task_id: args.id.clone(),
        from_step: args.from_step.clone(),
        reason: args.reason.clone().unwrap_or_default(),
    };
    let status = client
        .replay_workflow(request)
        .await
        .map_err(rpc)?
        .into_inner()
        .status
        .unwrap_or_default();
    if out.json() {
        return out.document(&json::to_json(&status));
    }
    out.line(format!(
        "replayed {} from step {}: run {}, {}",
        args.id,
        args.from_step,
        status.run,
        json::task_state_name(status.state)
    ))
}

/// `task list`.
pub(crate) async fn list<W: Write>(
    client: &mut Client,
    args: &ListArgs,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let mut token = args.page_token.clone().unwrap_or_default();
    let mut tasks = Vec::new();
    loop {
        let response = client
            .list_tasks(args.to_request(token.clone()))
            .await
            .map_err(rpc)?
            .into_inner();
        if !args.all {
            if out.json() {
                return out.document(&json::to_json(&response));
            }
            print_task_page(out, &response.tasks)?;
            if !response.next_page_token.is_empty() {
                out.line(format!(
                    "more tasks: --page-token {}",
                    response.next_page_token
                ))?;
            }
            return Ok(());
        }
        tasks.extend(response.tasks);
        if response.next_page_token.is_empty() {
            break;
        }
        if response.next_page_token == token {
            return Err(CliError::new(
                CliError::FAILURE,
                format!(
                    "the server returned page token {token} twice; stopping after {} tasks",
                    tasks.len()
                ),
            ));
        }
        token = response.next_page_token;
    }
    if out.json() {
        let all = pb::ListTasksResponse {
            tasks,
            next_page_token: String::new(),
        };
        return out.document(&json::to_json(&all));
    }
    print_task_page(out, &tasks)
}

fn print_task_page<W: Write>(
    out: &mut Output<W>,
    tasks: &[pb::TaskStatus],
) -> Result<(), CliError> {
    if tasks.is_empty() {
        return out.line("no tasks");
    }
    out.line(render::task_list_table(tasks))
}

/// `task logs`: one page with `--limit`, every page without it, and with
/// `--follow` new pages every [`FOLLOW_INTERVAL`] until the task is final.
/// `stop` ends a follow early (Ctrl-C).
pub(crate) async fn logs<W: Write>(
    client: &mut Client,
    args: &LogsArgs,
    out: &mut Output<W>,
    stop: impl Future<Output = ()>,
) -> Result<(), CliError> {
    tokio::pin!(stop);
    let mut after = args.after;
    let mut task_finished = false;
    loop {
        // Drain what is there.
        loop {
            let request = pb::GetTaskLogsRequest {
                task_id: args.id.clone(),
                after_line: after,
                limit: args.limit.unwrap_or(0),
            };
            let response = client
                .get_task_logs(request)
                .await
                .map_err(rpc)?
                .into_inner();
            for line in &response.lines {
                if out.json() {
                    out.json_line(&json::to_json(line))?;
                } else {
                    out.line(render::log_line(line))?;
                }
                after = after.max(line.line);
            }
            if !response.has_more || response.lines.is_empty() {
                break;
            }
            if args.limit.is_some() && !args.follow {
                eprintln!("more lines follow: --after {after}");
                return Ok(());
            }
        }
        if !args.follow || task_finished {
            return Ok(());
        }
        let status = client
            .get_task_status(pb::GetTaskStatusRequest {
                task_id: args.id.clone(),
            })
            .await
            .map_err(rpc)?
            .into_inner()
            .status
            .unwrap_or_default();
        if is_final(status.state) {
            // One more drain for the lines written as it finished.
            task_finished = true;
            if !out.json() {
                eprintln!(
                    "task {} is {}",
                    args.id,
                    json::task_state_name(status.state)
                );
            }
            continue;
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
        }
    }
}

/// Whether a watch that failed with this code is worth reopening.
fn watch_retryable(code: Code) -> bool {
    !matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::FailedPrecondition
            | Code::OutOfRange
    )
}

/// `task watch`: prints events until `stop` resolves (Ctrl-C). When the
/// stream breaks, it reconnects with the last sequence seen, so nothing is
/// missed or printed twice. The first connection must succeed.
pub(crate) async fn watch<W: Write>(
    server: &str,
    tls: &Conn,
    args: &WatchArgs,
    out: &mut Output<W>,
    stop: impl Future<Output = ()>,
) -> Result<(), CliError> {
    use pb::watch_tasks_response::Item;

    tokio::pin!(stop);
    let mut last = args.after;
    let mut first = true;
    let mut pause = RECONNECT_MIN;
    loop {
        // Open (or reopen) the stream.
        let request = args.to_request(last);
        let opened = async move {
            let mut client = connect(server, tls).await?;
            client
                .watch_tasks(request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(rpc)
        };
        let opened = tokio::select! {
            () = &mut stop => return Ok(()),
            opened = opened => opened,
        };
        let why = match opened {
            Err(e) if first => return Err(e),
            Err(e) => e.message().to_string(),
            Ok(mut stream) => {
                if !first {
                    eprintln!("reconnected; resuming after sequence {last}");
                }
                first = false;
                pause = RECONNECT_MIN;
                loop {
                    let item = tokio::select! {
                        () = &mut stop => return Ok(()),
                        item = stream.message() => item,
                    };
                    let response = match item {
                        Ok(Some(response)) => response,
                        Ok(None) => break "the server closed the stream".to_string(),
                        Err(status) if !watch_retryable(status.code()) => return Err(rpc(status)),
                        Err(status) => break describe_status(&status),
                    };
                    match &response.item {
                        Some(Item::Event(e)) => last = last.max(e.sequence),
                        Some(Item::Live(l)) => last = last.max(l.sequence),
                        Some(Item::Gap(_)) | None => {}
                    }
                    if out.json() {
                        out.json_line(&json::to_json(&response))?;
                        continue;
                    }
                    match &response.item {
                        Some(Item::Event(e)) => out.line(render::event_line(e))?,
                        Some(Item::Gap(g)) => out.line(render::gap_line(g))?,
                        Some(Item::Live(l)) => out.line(render::live_line(l))?,
                        None => {}
                    }
                }
            }
        };
        eprintln!(
            "watch stream broke ({why}); reconnecting after sequence {last} in {}",
            humantime::format_duration(pause)
        );
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(RECONNECT_MAX);
    }
}

/// `disconnect`.
pub(crate) async fn disconnect<W: Write>(
    client: &mut Client,
    args: &DisconnectArgs,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let response = client
        .disconnect(args.to_request())
        .await
        .map_err(rpc)?
        .into_inner();
    if out.json() {
        return out.document(&json::to_json(&response));
    }
    if response.receipts.is_empty() {
        let owner = match (&args.user, &args.session) {
            (Some(user), _) => format!("user {user}"),
            (None, Some(session)) => format!("session {session}"),
            (None, None) => "this owner".to_string(),
        };
        return out.line(format!("no active tasks for {owner}"));
    }
    out.line(render::receipts_table(&response))?;
    out.line(render::receipts_summary(&response))
}

/// `metrics`.
pub(crate) async fn metrics<W: Write>(
    client: &mut Client,
    args: &MetricsArgs,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let response = client
        .get_metrics(pb::GetMetricsRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    if out.json() {
        return out.document(&json::to_json(&response));
    }
    out.line(render::metrics(&response, args.by_name))
}

/// `cluster status`.
pub(crate) async fn cluster_status<W: Write>(
    client: &mut Client,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let response = client
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    if out.json() {
        return out.document(&json::to_json(&response));
    }
    out.line(render::cluster_status(&response))
}

#[cfg(test)]
mod tests {
    //! The commands against `MockOrchestrator`, a scripted in-process server
    //! on an ephemeral port: it checks what goes over the wire and what the
    //! CLI prints, not the real server's behaviour (that is for `tests/`).
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use clap::Parser;
    use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
    use tonic::{Request, Response};
    use tonic_types::{ErrorDetails, StatusExt};

    use super::*;
    use crate::cli::args::{ClientArgs, TaskCommand};
    use crate::pb::orchestrator_service_server::{OrchestratorService, OrchestratorServiceServer};
    use crate::pb::watch_tasks_response::Item;

    /// What the mock saw and what it serves.
    #[derive(Default)]
    struct MockState {
        /// `after_sequence` of every WatchTasks call.
        watch_calls: Vec<u64>,
        /// The log lines of every task.
        log_lines: Vec<pb::LogLine>,
        /// GetTaskStatus calls so far.
        status_calls: u32,
        /// Page tokens ListTasks was called with.
        list_tokens: Vec<String>,
    }

    #[derive(Clone, Default)]
    struct MockOrchestrator(Arc<Mutex<MockState>>);

    impl MockOrchestrator {
        fn state(&self) -> std::sync::MutexGuard<'_, MockState> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    fn task(id: &str, state: pb::TaskState) -> pb::TaskStatus {
        pb::TaskStatus {
            id: id.into(),
            name: "send-email".into(),
            task_type: pb::TaskType::Simple as i32,
            state: state as i32,
            max_attempts: 1,
            ..Default::default()
        }
    }

    fn event(sequence: u64) -> Result<pb::WatchTasksResponse, Status> {
        Ok(pb::WatchTasksResponse {
            item: Some(Item::Event(pb::TaskEvent {
                sequence,
                kind: pb::TaskEventKind::Updated as i32,
                time: None,
                status: Some(task(&format!("t-{sequence}"), pb::TaskState::Pending)),
            })),
        })
    }

    fn log(line: u64, message: &str) -> pb::LogLine {
        pb::LogLine {
            line,
            source: pb::LogSource::Worker as i32,
            level: "info".into(),
            message: message.into(),
            attempt: 1,
            time: None,
        }
    }

    type WatchStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchTasksResponse, Status>> + Send>>;

    #[tonic::async_trait]
    impl OrchestratorService for MockOrchestrator {
        async fn schedule_tasks(
            &self,
            request: Request<pb::ScheduleTasksRequest>,
        ) -> Result<Response<pb::ScheduleTasksResponse>, Status> {
            use pb::schedule_tasks_result::Outcome;
            let results = request
                .into_inner()
                .tasks
                .into_iter()
                .enumerate()
                .map(|(i, t)| pb::ScheduleTasksResult {
                    index: i as u32,
                    outcome: Some(if t.name == "bad" {
                        Outcome::Error(pb::ScheduleTaskError {
                            code: Code::InvalidArgument as i32,
                            message: "name: `bad` is a reserved name".into(),
                            field: "name".into(),
                            violations: vec![],
                        })
                    } else {
                        Outcome::Scheduled(pb::ScheduledTask {
                            task_id: format!("t-{i}"),
                            existing: false,
                            state: pb::TaskState::Pending as i32,
                            ..Default::default()
                        })
                    }),
                })
                .collect();
            Ok(Response::new(pb::ScheduleTasksResponse { results }))
        }

        async fn schedule_task(
            &self,
            request: Request<pb::ScheduleTaskRequest>,
        ) -> Result<Response<pb::ScheduleTaskResponse>, Status> {
            let request = request.into_inner();
            if request.name == "bad" {
                return Err(Status::with_error_details(
                    Code::InvalidArgument,
                    "the request has invalid fields",
                    ErrorDetails::with_bad_request_violation("name", "`bad` is a reserved name"),
                ));
            }
            Ok(Response::new(pb::ScheduleTaskResponse {
                task_id: "t-1".into(),
                existing: false,
                status: Some(task("t-1", pb::TaskState::Pending)),
                ..Default::default()
            }))
        }

        async fn get_task_status(
            &self,
            request: Request<pb::GetTaskStatusRequest>,
        ) -> Result<Response<pb::GetTaskStatusResponse>, Status> {
            let id = request.into_inner().task_id;
            if id == "missing" {
                return Err(Status::not_found("no task missing"));
            }
            let mut state = self.state();
            state.status_calls += 1;
            // The task finishes on the second look, writing one last line.
            let task_state = if state.status_calls >= 2 {
                let next = state.log_lines.len() as u64 * 10 + 10;
                state.log_lines.push(log(next, "done"));
                pb::TaskState::Completed
            } else {
                pb::TaskState::Running
            };
            Ok(Response::new(pb::GetTaskStatusResponse {
                status: Some(task(&id, task_state)),
                payload: None,
            }))
        }

        async fn cancel_task(
            &self,
            request: Request<pb::CancelTaskRequest>,
        ) -> Result<Response<pb::CancelTaskResponse>, Status> {
            let id = request.into_inner().task_id;
            Ok(Response::new(pb::CancelTaskResponse {
                outcome: pb::CancelOutcome::AlreadyFinished as i32,
                status: Some(task(&id, pb::TaskState::Completed)),
            }))
        }

        async fn retry_task(
            &self,
            request: Request<pb::RetryTaskRequest>,
        ) -> Result<Response<pb::RetryTaskResponse>, Status> {
            let id = request.into_inner().task_id;
            if id == "missing" {
                return Err(Status::not_found("no task missing"));
            }
            let mut status = task(&id, pb::TaskState::Pending);
            status.run = 1;
            Ok(Response::new(pb::RetryTaskResponse {
                status: Some(status),
            }))
        }

        async fn replay_workflow(
            &self,
            _request: Request<pb::ReplayWorkflowRequest>,
        ) -> Result<Response<pb::ReplayWorkflowResponse>, Status> {
            Err(Status::unimplemented("not in this mock"))
        }

        type WatchTasksStream = WatchStream;

        async fn watch_tasks(
            &self,
            request: Request<pb::WatchTasksRequest>,
        ) -> Result<Response<WatchStream>, Status> {
            let after = request.into_inner().after_sequence;
            let first = {
                let mut state = self.state();
                state.watch_calls.push(after);
                state.watch_calls.len() == 1
            };
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            tokio::spawn(async move {
                if first {
                    // Two events, then the stream breaks.
                    for item in [event(5), event(6), Err(Status::unavailable("restarting"))] {
                        let _ = tx.send(item).await;
                    }
                } else {
                    let live = pb::WatchTasksResponse {
                        item: Some(Item::Live(pb::WatchLive { sequence: after })),
                    };
                    let _ = tx.send(Ok(live)).await;
                    let _ = tx.send(event(7)).await;
                    // Stay open until the client goes away.
                    tx.closed().await;
                }
            });
            Ok(Response::new(
                Box::pin(ReceiverStream::new(rx)) as WatchStream
            ))
        }

        async fn disconnect(
            &self,
            _request: Request<pb::DisconnectRequest>,
        ) -> Result<Response<pb::DisconnectResponse>, Status> {
            Ok(Response::new(pb::DisconnectResponse {
                receipts: vec![pb::DisconnectReceipt {
                    task_id: "t-1".into(),
                    name: "send-email".into(),
                    outcome: pb::CancelOutcome::Cancelled as i32,
                }],
            }))
        }

        async fn list_tasks(
            &self,
            request: Request<pb::ListTasksRequest>,
        ) -> Result<Response<pb::ListTasksResponse>, Status> {
            let token = request.into_inner().page_token;
            self.state().list_tokens.push(token.clone());
            let (ids, next) = match token.as_str() {
                "" => (vec!["a", "b"], "p2"),
                "p2" => (vec!["c"], ""),
                _ => return Err(Status::invalid_argument("bad page token")),
            };
            Ok(Response::new(pb::ListTasksResponse {
                tasks: ids
                    .into_iter()
                    .map(|id| task(id, pb::TaskState::Running))
                    .collect(),
                next_page_token: next.into(),
            }))
        }

        async fn get_task_logs(
            &self,
            request: Request<pb::GetTaskLogsRequest>,
        ) -> Result<Response<pb::GetTaskLogsResponse>, Status> {
            let request = request.into_inner();
            let limit = if request.limit == 0 {
                200
            } else {
                request.limit as usize
            };
            let state = self.state();
            let after: Vec<_> = state
                .log_lines
                .iter()
                .filter(|l| l.line > request.after_line)
                .cloned()
                .collect();
            Ok(Response::new(pb::GetTaskLogsResponse {
                has_more: after.len() > limit,
                lines: after.into_iter().take(limit).collect(),
            }))
        }

        async fn signal_task(
            &self,
            _request: Request<pb::SignalTaskRequest>,
        ) -> Result<Response<pb::SignalTaskResponse>, Status> {
            Err(Status::unimplemented("not used by these tests"))
        }

        async fn register_workflow(
            &self,
            _request: Request<pb::RegisterWorkflowRequest>,
        ) -> Result<Response<pb::RegisterWorkflowResponse>, Status> {
            Err(Status::unimplemented("not used by these tests"))
        }

        async fn list_workflows(
            &self,
            _request: Request<pb::ListWorkflowsRequest>,
        ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
            Err(Status::unimplemented("not used by these tests"))
        }

        async fn get_cluster_status(
            &self,
            _request: Request<pb::GetClusterStatusRequest>,
        ) -> Result<Response<pb::GetClusterStatusResponse>, Status> {
            Ok(Response::new(pb::GetClusterStatusResponse {
                store: "postgres".into(),
                replica_id: "r1".into(),
                leases: vec![pb::PartitionLease {
                    partition: 0,
                    term: 3,
                    holder: "r1".into(),
                    address: "10.0.0.1:50051".into(),
                    since_renewal: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 120_000_000,
                    }),
                    expires_in: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 880_000_000,
                    }),
                    held_for: Some(prost_types::Duration {
                        seconds: 65,
                        nanos: 0,
                    }),
                }],
                replicas: vec![
                    pb::ClusterReplica {
                        id: "r1".into(),
                        address: "10.0.0.1:50051".into(),
                        leader: true,
                        since_seen: Some(prost_types::Duration {
                            seconds: 0,
                            nanos: 120_000_000,
                        }),
                        up: Some(prost_types::Duration {
                            seconds: 70,
                            nanos: 0,
                        }),
                    },
                    pb::ClusterReplica {
                        id: "r2".into(),
                        address: "10.0.0.2:50051".into(),
                        leader: false,
                        since_seen: Some(prost_types::Duration {
                            seconds: 0,
                            nanos: 300_000_000,
                        }),
                        up: Some(prost_types::Duration {
                            seconds: 60,
                            nanos: 0,
                        }),
                    },
                ],
            }))
        }

        async fn get_metrics(
            &self,
            _request: Request<pb::GetMetricsRequest>,
        ) -> Result<Response<pb::GetMetricsResponse>, Status> {
            Ok(Response::new(pb::GetMetricsResponse {
                by_type: HashMap::from([(
                    "SIMPLE".to_string(),
                    pb::StateCounts {
                        running: 3,
                        ..Default::default()
                    },
                )]),
                ..Default::default()
            }))
        }
    }

    /// Starts the mock on an ephemeral port.
    async fn serve(mock: MockOrchestrator) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(OrchestratorServiceServer::new(mock))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    /// A writer tests can read while a command still holds it.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl SharedBuf {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
        }
    }

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    use std::io;

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TaskCommand,
    }

    fn task_command(args: &[&str]) -> TaskCommand {
        TestCli::try_parse_from(std::iter::once("task").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    /// Runs a task command (not watch) against `addr`, returning its output.
    async fn run(addr: SocketAddr, json: bool, args: &[&str]) -> (Result<(), CliError>, String) {
        let mut client = connect(&addr.to_string(), &Conn::default()).await.unwrap();
        let mut out = Output::new(Vec::new(), json);
        let result = match task_command(args) {
            TaskCommand::Schedule(a) => match a.to_request() {
                Ok(request) => schedule(&mut client, request, &mut out).await,
                Err(e) => Err(e),
            },
            TaskCommand::Status(a) => status(&mut client, &a, &mut out).await,
            TaskCommand::Cancel(a) => cancel(&mut client, &a, &mut out).await,
            TaskCommand::Retry(a) => retry(&mut client, &a, &mut out).await,
            TaskCommand::Replay(a) => replay(&mut client, &a, &mut out).await,
            TaskCommand::List(a) => list(&mut client, &a, &mut out).await,
            TaskCommand::Logs(a) => logs(&mut client, &a, &mut out, std::future::pending()).await,
            TaskCommand::Watch(_) => unreachable!("watch has its own test"),
            TaskCommand::ScheduleMany(_) => unreachable!("schedule-many has its own test"),
            TaskCommand::Why(_) => unreachable!("why is tested against the real server"),
        };
        (result, String::from_utf8(out.into_inner()).unwrap())
    }

    #[tokio::test]
    async fn schedule_prints_the_id_and_json() {
        let addr = serve(MockOrchestrator::default()).await;
        let (result, text) = run(addr, false, &["schedule", "send-email"]).await;
        result.unwrap();
        assert!(
            text.starts_with("scheduled send-email as task t-1\n"),
            "{text}"
        );
        assert!(text.contains("pending"), "{text}");

        let (result, text) = run(addr, true, &["schedule", "send-email"]).await;
        result.unwrap();
        let value: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(value["taskId"], "t-1");
        assert_eq!(value["status"]["state"], "pending");
    }

    #[tokio::test]
    async fn schedule_many_prints_one_result_per_line_in_file_order() {
        let addr = serve(MockOrchestrator::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tasks.jsonl");
        std::fs::write(
            &file,
            concat!(
                "# a comment, then a blank line\n",
                "\n",
                "[\"send-email\", \"--payload\", \"{\\\"to\\\": 1}\"]\n",
                "{\"name\": \"bad\"}\n",
                "{\"name\": \"resize\", \"payload\": {\"w\": 2}, \"label\": [\"a=b\", \"c=d\"], \"immediate\": true, \"priority\": -5}\n",
                "{\"name\": \"x\", \"no-such-flag\": 1}\n",
                "not json\n",
            ),
        )
        .unwrap();
        let lines = read_lines(&file).unwrap();
        assert_eq!(
            lines.iter().map(|l| l.0).collect::<Vec<_>>(),
            vec![3, 4, 5, 6, 7]
        );
        let resize = lines[2].1.as_ref().unwrap();
        assert_eq!(resize.name, "resize");
        let o = resize.options.as_ref().unwrap();
        assert!(o.immediate);
        assert_eq!(o.priority, -5);
        assert_eq!(o.labels.len(), 2);
        assert_eq!(
            json::struct_to_json(resize.payload.as_ref().unwrap()),
            serde_json::json!({"w": 2})
        );
        assert!(lines[3].1.is_err() && lines[4].1.is_err());

        let mut client = connect(&addr.to_string(), &Conn::default()).await.unwrap();
        let mut out = Output::new(Vec::new(), false);
        let err = schedule_many(&mut client, lines.clone(), &mut out)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), CliError::FAILURE);
        assert_eq!(err.message(), "3 of 5 tasks were not scheduled");
        let text = String::from_utf8(out.into_inner()).unwrap();
        let got: Vec<&str> = text.lines().collect();
        assert_eq!(got.len(), 5, "{text}");
        assert_eq!(got[0], "line 3: scheduled as task t-0");
        assert_eq!(
            got[1],
            "line 4: INVALID_ARGUMENT: name: `bad` is a reserved name"
        );
        assert_eq!(got[2], "line 5: scheduled as task t-2");
        assert!(got[3].starts_with("line 6: INVALID_ARGUMENT: "), "{text}");
        assert!(
            got[4].starts_with("line 7: INVALID_ARGUMENT: not a JSON value"),
            "{text}"
        );

        let mut out = Output::new(Vec::new(), true);
        let _ = schedule_many(&mut client, lines, &mut out).await;
        let text = String::from_utf8(out.into_inner()).unwrap();
        let v: Vec<Json> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v[0]["line"], 3);
        assert_eq!(v[0]["taskId"], "t-0");
        assert_eq!(v[0]["state"], "pending");
        assert_eq!(v[1]["error"]["field"], "name");
        assert_eq!(v[1]["error"]["code"], "INVALID_ARGUMENT");

        // More than 1,000 lines go in calls of 1,000, in order.
        let many: Vec<Line> = (1..=2500)
            .map(|n| {
                (
                    n,
                    super::super::args::schedule_line("[\"resize\"]")
                        .map_err(|e| e.message().to_string()),
                )
            })
            .collect();
        let mut out = Output::new(Vec::new(), false);
        schedule_many(&mut client, many, &mut out).await.unwrap();
        let text = String::from_utf8(out.into_inner()).unwrap();
        let got: Vec<&str> = text.lines().collect();
        assert_eq!(got.len(), 2500);
        assert_eq!(got[999], "line 1000: scheduled as task t-999");
        assert_eq!(
            got[1000], "line 1001: scheduled as task t-0",
            "a second call"
        );
        assert_eq!(got[2499], "line 2500: scheduled as task t-499");
    }

    #[tokio::test]
    async fn server_errors_show_code_and_field_violations() {
        let addr = serve(MockOrchestrator::default()).await;
        let (result, _) = run(addr, false, &["schedule", "bad"]).await;
        let err = result.unwrap_err();
        assert_eq!(err.exit_code(), CliError::FAILURE);
        assert_eq!(
            err.message(),
            "INVALID_ARGUMENT: the request has invalid fields\n  name: `bad` is a reserved name"
        );
        let (result, _) = run(addr, false, &["status", "missing"]).await;
        assert_eq!(result.unwrap_err().message(), "NOT_FOUND: no task missing");
    }

    #[tokio::test]
    async fn unreachable_server_is_reported_as_such() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = connect(&addr.to_string(), &Conn::default())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), CliError::UNREACHABLE);
        assert!(
            err.message()
                .starts_with(&format!("cannot connect to http://{addr}")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn retry_tries_every_id_and_fails_if_one_was_refused() {
        let addr = serve(MockOrchestrator::default()).await;
        let (result, text) = run(addr, false, &["retry", "t-1", "missing", "t-2"]).await;
        let err = result.unwrap_err();
        assert_eq!(err.exit_code(), CliError::FAILURE);
        assert!(
            err.message().contains("1 of 3 tasks not retried"),
            "{err:?}"
        );
        assert!(text.contains("retried t-1: run 1, pending"), "{text}");
        assert!(text.contains("not retried missing: "), "{text}");
        assert!(text.contains("retried t-2: run 1, pending"), "{text}");
        let (result, text) = run(addr, true, &["retry", "t-3"]).await;
        result.unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["taskId"], "t-3");
        assert_eq!(v["status"]["run"], 1);
    }

    #[tokio::test]
    async fn cancel_says_what_happened() {
        let addr = serve(MockOrchestrator::default()).await;
        let (result, text) = run(addr, false, &["cancel", "t-9", "--reason", "r"]).await;
        result.unwrap();
        assert_eq!(
            text,
            "task t-9 had already finished (completed); nothing changed\n"
        );
    }

    #[tokio::test]
    async fn list_all_follows_the_pages() {
        let mock = MockOrchestrator::default();
        let addr = serve(mock.clone()).await;
        let (result, text) = run(addr, true, &["list", "--all"]).await;
        result.unwrap();
        let value: Json = serde_json::from_str(&text).unwrap();
        let ids: Vec<_> = value["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(mock.state().list_tokens, ["", "p2"]);

        let (result, text) = run(addr, false, &["list"]).await;
        result.unwrap();
        assert!(text.ends_with("more tasks: --page-token p2\n"), "{text}");
    }

    #[tokio::test]
    async fn logs_follow_pages_and_stops_when_the_task_is_final() {
        let mock = MockOrchestrator::default();
        mock.state().log_lines = vec![log(1, "one"), log(2, "two"), log(3, "three")];
        let addr = serve(mock.clone()).await;
        let (result, text) = run(addr, false, &["logs", "t-1", "--follow", "--limit", "2"]).await;
        result.unwrap();
        let messages: Vec<_> = text
            .lines()
            .map(|l| l.rsplit(": ").next().unwrap_or_default())
            .collect();
        assert_eq!(messages, ["one", "two", "three", "done"], "{text}");
        assert!(text.starts_with("- [worker/info] 1: one\n"), "{text}");
        assert_eq!(mock.state().status_calls, 2);
    }

    #[tokio::test]
    async fn logs_with_limit_prints_one_page() {
        let mock = MockOrchestrator::default();
        mock.state().log_lines = vec![log(1, "one"), log(2, "two"), log(3, "three")];
        let addr = serve(mock.clone()).await;
        let (result, text) =
            run(addr, true, &["logs", "t-1", "--after", "1", "--limit", "1"]).await;
        result.unwrap();
        let value: Json = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(value["message"], "two");
        assert_eq!(value["source"], "worker");
    }

    #[tokio::test]
    async fn watch_reconnects_after_the_last_sequence_seen() {
        let mock = MockOrchestrator::default();
        let addr = serve(mock.clone()).await;
        let args = match task_command(&["watch", "--snapshot"]) {
            TaskCommand::Watch(a) => a,
            _ => unreachable!(),
        };
        let buf = SharedBuf::default();
        let mut out = Output::new(buf.clone(), false);
        let seen = buf.clone();
        let stop = async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !seen.text().contains("t-7") && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        watch(&addr.to_string(), &Conn::default(), &args, &mut out, stop)
            .await
            .unwrap();
        let text = buf.text();
        assert_eq!(mock.state().watch_calls, [0, 6], "{text}");
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].trim_start().starts_with("5 "), "{text}");
        assert!(lines[1].trim_start().starts_with("6 "), "{text}");
        assert_eq!(lines[2], "-- live (caught up at sequence 6)");
        assert!(lines[3].contains("t-7"), "{text}");
    }

    #[tokio::test]
    async fn watch_fails_fast_when_the_first_connection_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let args = match task_command(&["watch"]) {
            TaskCommand::Watch(a) => a,
            _ => unreachable!(),
        };
        let mut out = Output::new(Vec::new(), false);
        let err = watch(
            &addr.to_string(),
            &Conn::default(),
            &args,
            &mut out,
            std::future::pending(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), CliError::UNREACHABLE);
    }

    #[tokio::test]
    async fn disconnect_and_metrics_print_tables() {
        let addr = serve(MockOrchestrator::default()).await;
        let mut client = connect(&addr.to_string(), &Conn::default()).await.unwrap();
        let mut out = Output::new(Vec::new(), false);
        let args = DisconnectArgs {
            user: Some("u".into()),
            session: None,
            reason: None,
        };
        disconnect(&mut client, &args, &mut out).await.unwrap();
        let text = String::from_utf8(out.into_inner()).unwrap();
        assert!(text.contains("t-1"), "{text}");
        assert!(text.ends_with("1 task: 1 cancelled, 0 cancel requested, 0 already finished\n"));

        let mut out = Output::new(Vec::new(), true);
        metrics(&mut client, &MetricsArgs { by_name: false }, &mut out)
            .await
            .unwrap();
        let value: Json = serde_json::from_slice(&out.into_inner()).unwrap();
        assert_eq!(value["byType"]["SIMPLE"]["running"], 3);
    }

    #[tokio::test]
    async fn cluster_status_prints_the_leader_and_the_replicas() {
        let addr = serve(MockOrchestrator::default()).await;
        // Two addresses, the first dead: the failover transport uses the other.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let mut client = connect(&format!("{dead_addr},{addr}"), &Conn::default())
            .await
            .unwrap();
        let mut out = Output::new(Vec::new(), false);
        cluster_status(&mut client, &mut out).await.unwrap();
        let text = String::from_utf8(out.into_inner()).unwrap();
        assert!(
            text.starts_with("store: postgres; answered by replica r1\n"),
            "{text}"
        );
        for needle in [
            "10.0.0.1:50051",
            "leader",
            "standby",
            "1.88s",
            "120ms",
            "65.00s",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        let mut out = Output::new(Vec::new(), true);
        cluster_status(&mut client, &mut out).await.unwrap();
        let value: Json = serde_json::from_slice(&out.into_inner()).unwrap();
        assert_eq!(value["leases"][0]["term"], 3);
        assert_eq!(value["leases"][0]["expiresInMs"], 1880.0);
        assert_eq!(value["replicas"][1]["leader"], false);
    }
}
