//! The human-readable output of the client subcommands: tables and one-line
//! summaries, built as strings so they can be tested. The `--json` output is
//! in `json`.
use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use prost_types::Timestamp;

use super::json::{
    cancel_outcome_name, event_kind_name, log_source_name, step_state_name, struct_to_json,
    task_source_name, task_state_name, task_type_name, value_to_json, waiting_reason_name,
};
use crate::pb;

/// A table with a header row, sized to the terminal when there is one.
pub(crate) fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    t
}

/// Right-aligns the columns at these indexes (numbers).
fn align_right(t: &mut Table, columns: &[usize]) {
    for &i in columns {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// A timestamp as RFC 3339, or `-`.
pub(crate) fn ts(t: Option<&Timestamp>) -> String {
    t.map_or_else(|| "-".to_string(), Timestamp::to_string)
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// A protobuf duration as `1.25s` / `-250ms`, or `-` when absent.
fn span(d: Option<&prost_types::Duration>) -> String {
    let Some(d) = d else {
        return "-".into();
    };
    let ms = super::json::duration_ms(d);
    if ms.abs() < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

/// `cluster status`: the store, the leases and the replicas.
pub(crate) fn cluster_status(c: &pb::GetClusterStatusResponse) -> String {
    let mut out = format!("store: {}; answered by replica {}\n", c.store, c.replica_id);
    if c.leases.is_empty() {
        out.push_str("one replica (the embedded store has no lease)");
        return out;
    }
    let mut leases = table([
        "partition",
        "term",
        "leader",
        "address",
        "renewed ago",
        "expires in",
        "held for",
    ]);
    for l in &c.leases {
        leases.add_row(vec![
            l.partition.to_string(),
            l.term.to_string(),
            l.holder.clone(),
            l.address.clone(),
            span(l.since_renewal.as_ref()),
            span(l.expires_in.as_ref()),
            span(l.held_for.as_ref()),
        ]);
    }
    align_right(&mut leases, &[0, 1, 4, 5, 6]);
    let mut replicas = table(["replica", "address", "role", "seen ago", "up"]);
    for r in &c.replicas {
        replicas.add_row(vec![
            r.id.clone(),
            r.address.clone(),
            if r.leader { "leader" } else { "standby" }.to_string(),
            span(r.since_seen.as_ref()),
            span(r.up.as_ref()),
        ]);
    }
    align_right(&mut replicas, &[3, 4]);
    out.push_str(&format!("{leases}\n{replicas}"));
    out
}

/// `2/3`, or `0/3` before the first attempt.
pub(crate) fn attempts(s: &pb::TaskStatus) -> String {
    format!("{}/{}", s.attempt, s.max_attempts)
}

/// `42% message`, `42%`, or empty when there is no progress to show.
fn progress(s: &pb::TaskStatus) -> String {
    match (s.progress > 0.0, s.progress_message.is_empty()) {
        (false, true) => String::new(),
        (false, false) => s.progress_message.clone(),
        (true, true) => format!("{}%", s.progress),
        (true, false) => format!("{}% {}", s.progress, s.progress_message),
    }
}

/// The state, with `(cancel requested)` when a cancel is pending.
fn state(s: &pb::TaskStatus) -> String {
    let name = task_state_name(s.state);
    if s.cancel_requested {
        format!("{name} (cancel requested)")
    } else {
        name
    }
}

/// `kind: message (attempt 2, retryable)`.
fn task_error(e: &pb::TaskError) -> String {
    let mut text = if e.kind.is_empty() {
        e.message.clone()
    } else {
        format!("{}: {}", e.kind, e.message)
    };
    let mut notes = Vec::new();
    if e.attempt > 0 {
        notes.push(format!("attempt {}", e.attempt));
    }
    if e.retryable {
        notes.push("retryable".to_string());
    }
    if !notes.is_empty() {
        text.push_str(&format!(" ({})", notes.join(", ")));
    }
    if !e.details.is_empty() {
        text.push('\n');
        text.push_str(&e.details);
    }
    text
}

/// Labels as `k=v, k=v`, sorted by key.
fn labels(labels: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = labels.iter().collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything in a `TaskStatus`, one field per row.
pub(crate) fn status_table(s: &pb::TaskStatus) -> Table {
    let mut t = Table::new();
    t.load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    let mut row = |key: &str, value: String| {
        t.add_row([key.to_string(), value]);
    };
    row("id", s.id.clone());
    row("name", s.name.clone());
    row("type", task_type_name(s.task_type));
    row("state", state(s));
    if s.state == pb::TaskState::Pending as i32
        && s.waiting_reason != pb::WaitingReason::Unspecified as i32
    {
        row(
            "waiting",
            waiting_reason_name(s.waiting_reason).replace('_', " "),
        );
        if s.hold.is_some() {
            row("held by", super::flow::explain(s));
        }
    }
    if !s.concurrency_key.is_empty() {
        row("concurrency key", s.concurrency_key.clone());
    }
    row("source", task_source_name(s.source));
    row("target", or_dash(&s.target).to_string());
    if s.workflow_version > 0 {
        row("workflow version", s.workflow_version.to_string());
    }
    if !s.parent_id.is_empty() {
        row("workflow task", s.parent_id.clone());
    }
    row("attempt", attempts(s));
    row(
        "priority",
        if s.immediate {
            format!("{} (immediate)", s.priority)
        } else {
            s.priority.to_string()
        },
    );
    row("user", or_dash(&s.user_id).to_string());
    row("session", or_dash(&s.session_id).to_string());
    row("progress", or_dash(&progress(s)).to_string());
    row("created", ts(s.created_at.as_ref()));
    row("run at", ts(s.run_at.as_ref()));
    row("started", ts(s.started_at.as_ref()));
    row("finished", ts(s.finished_at.as_ref()));
    row(
        "last error",
        s.last_error
            .as_ref()
            .map_or_else(|| "-".to_string(), task_error),
    );
    row(
        "result",
        s.result
            .as_ref()
            .map_or_else(|| "-".to_string(), |v| value_to_json(v).to_string()),
    );
    row("external id", or_dash(&s.external_id).to_string());
    row("worker", or_dash(&s.worker_id).to_string());
    row("idempotency key", or_dash(&s.idempotency_key).to_string());
    if let Some(ttl) = &s.idempotency_ttl {
        row("key window", span(Some(ttl)));
    }
    if let Some(d) = &s.debounce {
        let mode = if d.mode == pb::DebounceMode::Throttle as i32 {
            "throttle"
        } else {
            "debounce"
        };
        row(
            "debounce",
            format!("{mode} key {:?}, period {}", d.key, span(d.period.as_ref())),
        );
    }
    row("labels", or_dash(&labels(&s.labels)).to_string());
    row("sequence", s.sequence.to_string());
    t
}

/// At most `max` characters of `text`, with `…` when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// A workflow's steps, one row each, or `None` for a task without steps.
pub(crate) fn steps_table(s: &pb::TaskStatus) -> Option<Table> {
    if s.steps.is_empty() {
        return None;
    }
    let mut t = table([
        "step",
        "kind",
        "state",
        "attempt",
        "depends on",
        "task",
        "finished",
        "output / error",
    ]);
    for step in &s.steps {
        let detail = match (&step.error, &step.output) {
            (Some(e), _) => format!("error: {}", e.message),
            (None, Some(v)) => value_to_json(v).to_string(),
            (None, None) => String::new(),
        };
        let task = match (step.task_id.as_str(), step.compensation_task_id.as_str()) {
            (task, "") => task.to_string(),
            (task, comp) => format!("{} (compensation {comp})", or_dash(task)),
        };
        t.add_row([
            step.id.clone(),
            step.kind.clone(),
            step_state_name(step.state).replace('_', " "),
            step.attempt.to_string(),
            step.depends_on.join(", "),
            task,
            ts(step.finished_at.as_ref()),
            clip(&detail, 80),
        ]);
    }
    align_right(&mut t, &[3]);
    Some(t)
}

/// A payload as indented JSON (`{}` when absent).
pub(crate) fn payload(p: Option<&prost_types::Struct>) -> String {
    let value = p.map_or_else(|| serde_json::json!({}), struct_to_json);
    serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
}

/// One row per task.
pub(crate) fn task_list_table(tasks: &[pb::TaskStatus]) -> Table {
    let mut t = table([
        "id", "name", "type", "state", "source", "attempt", "priority", "user", "created",
    ]);
    for s in tasks {
        t.add_row([
            s.id.clone(),
            s.name.clone(),
            task_type_name(s.task_type),
            state(s),
            task_source_name(s.source),
            attempts(s),
            s.priority.to_string(),
            s.user_id.clone(),
            ts(s.created_at.as_ref()),
        ]);
    }
    align_right(&mut t, &[5, 6]);
    t
}

/// What a cancel did, as a sentence.
pub(crate) fn cancel_outcome(task_id: &str, r: &pb::CancelTaskResponse) -> String {
    let state = r
        .status
        .as_ref()
        .map_or_else(|| "unknown".to_string(), |s| task_state_name(s.state));
    match pb::CancelOutcome::try_from(r.outcome) {
        Ok(pb::CancelOutcome::Cancelled) => format!("task {task_id} cancelled"),
        Ok(pb::CancelOutcome::CancelRequested) => format!(
            "cancel requested for task {task_id}: its worker or engine has been asked to \
             stop; it stays {state} until it acknowledges"
        ),
        Ok(pb::CancelOutcome::AlreadyFinished) => {
            format!("task {task_id} had already finished ({state}); nothing changed")
        }
        _ => format!(
            "task {task_id}: cancel outcome {} (state {state})",
            cancel_outcome_name(r.outcome)
        ),
    }
}

/// One watch event: sequence, time, kind, task id, name, state, and the
/// progress, error or waiting reason that goes with it.
pub(crate) fn event_line(e: &pb::TaskEvent) -> String {
    let kind = event_kind_name(e.kind);
    let time = ts(e.time.as_ref());
    let Some(s) = &e.status else {
        return format!("{:>8}  {time}  {kind:<16}", e.sequence);
    };
    let mut line = format!(
        "{:>8}  {time}  {kind:<16}  {}  {}  {}",
        e.sequence,
        s.id,
        s.name,
        state(s)
    );
    let error = s.last_error.as_ref().map(|e| {
        if e.kind.is_empty() {
            e.message.clone()
        } else {
            format!("{}: {}", e.kind, e.message)
        }
    });
    let extra = match pb::TaskEventKind::try_from(e.kind) {
        Ok(pb::TaskEventKind::Failed | pb::TaskEventKind::Retrying) => {
            error.map(|e| format!("error: {e}"))
        }
        _ if s.state == pb::TaskState::Failed as i32 => error.map(|e| format!("error: {e}")),
        _ if s.state == pb::TaskState::Pending as i32
            && s.waiting_reason != pb::WaitingReason::Unspecified as i32 =>
        {
            Some(format!(
                "waiting: {}",
                waiting_reason_name(s.waiting_reason)
            ))
        }
        _ => Some(progress(s)).filter(|p| !p.is_empty()),
    };
    if let Some(extra) = extra {
        line.push_str("  ");
        line.push_str(&extra);
    }
    line
}

/// The line printed for a gap in the replayed history.
pub(crate) fn gap_line(g: &pb::WatchGap) -> String {
    format!(
        "-- gap: events before sequence {} are no longer kept one by one; the latest \
         status of each task that changed follows",
        g.oldest_kept
    )
}

/// The line printed when replay is over and the stream is live.
pub(crate) fn live_line(l: &pb::WatchLive) -> String {
    format!("-- live (caught up at sequence {})", l.sequence)
}

/// `time [source/level] attempt: message`; the attempt is `-` when the line
/// concerns none.
pub(crate) fn log_line(l: &pb::LogLine) -> String {
    let attempt = if l.attempt == 0 {
        "-".to_string()
    } else {
        l.attempt.to_string()
    };
    format!(
        "{} [{}/{}] {attempt}: {}",
        ts(l.time.as_ref()),
        log_source_name(l.source),
        or_dash(&l.level),
        l.message
    )
}

/// One row per disconnect receipt.
pub(crate) fn receipts_table(r: &pb::DisconnectResponse) -> Table {
    let mut t = table(["task id", "name", "outcome"]);
    for x in &r.receipts {
        t.add_row([
            x.task_id.clone(),
            x.name.clone(),
            cancel_outcome_name(x.outcome).replace('_', " "),
        ]);
    }
    t
}

/// `3 tasks: 2 cancelled, 1 cancel requested, 0 already finished`.
pub(crate) fn receipts_summary(r: &pb::DisconnectResponse) -> String {
    let count = |o: pb::CancelOutcome| r.receipts.iter().filter(|x| x.outcome == o as i32).count();
    let n = r.receipts.len();
    format!(
        "{n} task{}: {} cancelled, {} cancel requested, {} already finished",
        if n == 1 { "" } else { "s" },
        count(pb::CancelOutcome::Cancelled),
        count(pb::CancelOutcome::CancelRequested),
        count(pb::CancelOutcome::AlreadyFinished),
    )
}

fn counts_row(label: &str, c: &pb::StateCounts) -> Vec<String> {
    let total = c.pending
        + c.running
        + c.completed
        + c.failed
        + c.cancelled
        + c.compensating
        + c.compensated;
    [
        c.pending,
        c.running,
        c.completed,
        c.failed,
        c.cancelled,
        c.compensating,
        c.compensated,
        total,
    ]
    .iter()
    .map(u64::to_string)
    .fold(vec![label.to_string()], |mut row, n| {
        row.push(n);
        row
    })
}

/// Groups in display order: the known task types first, then the rest by name.
fn sorted_groups(
    map: &std::collections::HashMap<String, pb::StateCounts>,
) -> Vec<(&String, &pb::StateCounts)> {
    let rank = |k: &str| match k.to_ascii_lowercase().as_str() {
        "simple" => 0,
        "complex" => 1,
        "integration" => 2,
        _ => 3,
    };
    let mut groups: Vec<_> = map.iter().collect();
    groups.sort_by(|a, b| (rank(a.0), a.0).cmp(&(rank(b.0), b.0)));
    groups
}

/// The metrics: counts per state (total, per type, per name if asked),
/// queues, latency, throughput.
pub(crate) fn metrics(m: &pb::GetMetricsResponse, by_name: bool) -> String {
    let header = [
        "",
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
        "compensating",
        "compensated",
        "all",
    ];
    let mut states = table(header);
    states.add_row(counts_row("total", &m.total.unwrap_or_default()));
    for (name, c) in sorted_groups(&m.by_type) {
        states.add_row(counts_row(&name.to_ascii_lowercase(), c));
    }
    align_right(&mut states, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let mut out = format!("Tasks by state\n{states}\n");

    if by_name && !m.by_name.is_empty() {
        let mut names = table(header);
        for (name, c) in sorted_groups(&m.by_name) {
            names.add_row(counts_row(name, c));
        }
        align_right(&mut names, &[1, 2, 3, 4, 5, 6, 7, 8]);
        out.push_str(&format!("\nTasks by name\n{names}\n"));
    }

    if m.queues.is_empty() {
        out.push_str("\nQueues: none active\n");
    } else {
        let mut queues = table([
            "queue",
            "ready",
            "scheduled",
            "running",
            "workers",
            "free slots",
        ]);
        let mut sorted: Vec<_> = m.queues.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        for q in sorted {
            queues.add_row([
                q.name.clone(),
                q.ready.to_string(),
                q.scheduled.to_string(),
                q.running.to_string(),
                q.workers.to_string(),
                q.free_slots.to_string(),
            ]);
        }
        align_right(&mut queues, &[1, 2, 3, 4, 5]);
        out.push_str(&format!("\nQueues\n{queues}\n"));
    }

    let mut latency = table(["latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"]);
    for (label, l) in [
        ("schedule to start", m.schedule_to_start.as_ref()),
        ("run time", m.run_time.as_ref()),
    ] {
        let l = l.copied().unwrap_or_default();
        latency.add_row([
            label.to_string(),
            l.count.to_string(),
            format!("{:.1}", l.p50_ms),
            format!("{:.1}", l.p90_ms),
            format!("{:.1}", l.p99_ms),
            format!("{:.1}", l.p999_ms),
            format!("{:.1}", l.max_ms),
        ]);
    }
    align_right(&mut latency, &[1, 2, 3, 4, 5, 6]);
    out.push_str(&format!("\nLatency over the last 5 minutes\n{latency}\n"));

    out.push_str(&format!(
        "\nthroughput: {:.2} tasks/s (last 60s)\nworkers connected: {}\nserver started: {}\nlast sequence: {}",
        m.throughput_per_sec,
        m.workers_connected,
        ts(m.started_at.as_ref()),
        m.last_sequence
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> pb::TaskStatus {
        pb::TaskStatus {
            id: "t-1".into(),
            name: "send-email".into(),
            task_type: pb::TaskType::Simple as i32,
            source: pb::TaskSource::Embedded as i32,
            state: pb::TaskState::Running as i32,
            attempt: 1,
            max_attempts: 3,
            progress: 42.0,
            progress_message: "halfway".into(),
            ..Default::default()
        }
    }

    #[test]
    fn event_line_shows_progress() {
        let line = event_line(&pb::TaskEvent {
            sequence: 12,
            kind: pb::TaskEventKind::Progress as i32,
            time: Some(Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            status: Some(status()),
        });
        assert_eq!(
            line,
            "      12  1970-01-01T00:00:00Z  progress          t-1  send-email  running  42% halfway"
        );
    }

    #[test]
    fn event_line_shows_the_error_of_a_failure() {
        let mut s = status();
        s.state = pb::TaskState::Failed as i32;
        s.last_error = Some(pb::TaskError {
            message: "smtp down".into(),
            kind: "IOError".into(),
            ..Default::default()
        });
        let line = event_line(&pb::TaskEvent {
            sequence: 13,
            kind: pb::TaskEventKind::Failed as i32,
            time: None,
            status: Some(s),
        });
        assert!(
            line.ends_with("failed  error: IOError: smtp down"),
            "{line}"
        );
    }

    #[test]
    fn log_line_format() {
        let line = log_line(&pb::LogLine {
            line: 3,
            time: Some(Timestamp {
                seconds: 1,
                nanos: 500_000_000,
            }),
            source: pb::LogSource::Worker as i32,
            level: "warn".into(),
            message: "slow".into(),
            attempt: 2,
        });
        assert_eq!(line, "1970-01-01T00:00:01.500Z [worker/warn] 2: slow");
    }

    #[test]
    fn status_table_has_the_key_fields() {
        let mut s = status();
        s.labels = [
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]
        .into();
        let text = status_table(&s).to_string();
        for needle in [
            "send-email",
            "running",
            "1/3",
            "42% halfway",
            "a=1, b=2",
            "embedded",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }

    #[test]
    fn steps_table_only_for_workflows() {
        assert!(steps_table(&status()).is_none());
        let mut s = status();
        s.steps = vec![pb::StepStatus {
            id: "charge".into(),
            kind: "task".into(),
            state: pb::StepState::Completed as i32,
            output: Some(crate::pb::json::json_to_value(
                &serde_json::json!({"id": 7}),
            )),
            depends_on: vec!["reserve".into()],
            ..Default::default()
        }];
        let text = steps_table(&s).unwrap().to_string();
        for needle in ["charge", "completed", "reserve", r#"{"id":7}"#] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }

    #[test]
    fn receipts_summary_counts_outcomes() {
        let r = pb::DisconnectResponse {
            receipts: vec![
                pb::DisconnectReceipt {
                    outcome: pb::CancelOutcome::Cancelled as i32,
                    ..Default::default()
                },
                pb::DisconnectReceipt {
                    outcome: pb::CancelOutcome::CancelRequested as i32,
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            receipts_summary(&r),
            "2 tasks: 1 cancelled, 1 cancel requested, 0 already finished"
        );
    }

    #[test]
    fn metrics_lists_types_in_a_fixed_order() {
        let m = pb::GetMetricsResponse {
            by_type: [
                ("INTEGRATION".to_string(), pb::StateCounts::default()),
                (
                    "SIMPLE".to_string(),
                    pb::StateCounts {
                        pending: 2,
                        ..Default::default()
                    },
                ),
            ]
            .into(),
            ..Default::default()
        };
        let text = metrics(&m, false);
        let simple = text.find("simple").unwrap();
        let integration = text.find("integration").unwrap();
        assert!(simple < integration, "{text}");
        assert!(text.contains("Queues: none active"));
    }
}
