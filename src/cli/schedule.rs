//! `switchyard schedule create|update|get|list|pause|resume|trigger|delete`:
//! the clap types of the schedule subcommands, their requests to
//! `ScheduleService`, and their output (a table or lines for people, JSON
//! with `--json`). The task template takes `task schedule`'s flags.
//!
//! Must not: hold server code; it talks gRPC only.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::args::{parse_duration, ScheduleArgs};
use super::commands::Conn;
use super::commands::{transport, Output};
use super::error::CliError;
use super::render;
use crate::pb;
use crate::pb::schedule_service_client::ScheduleServiceClient;

type Client = ScheduleServiceClient<switchyard_client::Transport>;

/// `schedule …`: repeatable schedules of a task.
#[derive(Subcommand, Debug, Clone)]
pub enum ScheduleCommand {
    /// Creates a schedule: ID, then the task as `task schedule` takes it.
    Create(Box<CreateArgs>),
    /// Replaces a schedule's timing, policies and task (the whole spec).
    Update(Box<UpdateArgs>),
    /// Prints one schedule and its next fire times.
    Get(IdArgs),
    /// Lists the schedules.
    List(ListSchedulesArgs),
    /// Pauses a schedule.
    Pause(NoteArgs),
    /// Resumes a paused schedule (ticks that fell meanwhile do not fire).
    Resume(NoteArgs),
    /// Fires a schedule now and prints the task id.
    Trigger(IdArgs),
    /// Deletes a schedule (the tasks it fired stay).
    Delete(IdArgs),
}

/// What the previous fire's still running makes a tick do.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum OverlapArg {
    /// The tick does not fire.
    Skip,
    /// The tick fires when the previous ends; at most one waits.
    BufferOne,
    /// The tick fires anyway.
    AllowAll,
    /// The previous fire is cancelled; the tick fires.
    CancelOther,
}

/// Which missed ticks in the catch-up window fire.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum CatchUpArg {
    /// Every one, oldest first.
    All,
    /// Only the latest.
    One,
}

/// When and how a schedule fires.
#[derive(Args, Debug, Clone)]
pub struct TimingArgs {
    /// A cron expression: 5 fields, or 6 with seconds first (`*/10 * * * * *`).
    #[arg(
        long,
        value_name = "EXPR",
        required_unless_present = "every",
        conflicts_with = "every"
    )]
    pub cron: Option<String>,
    /// A fixed interval (`30s`, `1h`) instead of a cron expression.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub every: Option<Duration>,
    /// The IANA time zone of the cron expression. Default UTC.
    #[arg(long, value_name = "ZONE")]
    pub time_zone: Option<String>,
    /// No tick before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub start: Option<prost_types::Timestamp>,
    /// No tick after this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub end: Option<prost_types::Timestamp>,
    /// Delay each fire by up to this much (fixed per tick). Default 0.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub jitter: Option<Duration>,
    /// While the previous fire runs. Default skip.
    #[arg(long, value_enum, ignore_case = true)]
    pub overlap: Option<OverlapArg>,
    /// How late a missed tick may still fire. Default 60s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub catchup_window: Option<Duration>,
    /// Which missed ticks in the window fire. Default all.
    #[arg(long, value_enum, ignore_case = true)]
    pub catchup: Option<CatchUpArg>,
    /// The task each fire schedules.
    #[command(flatten)]
    pub task: ScheduleArgs,
}

/// `schedule create`.
#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// The schedule's id.
    pub id: String,
    /// Create it paused.
    #[arg(long)]
    pub paused: bool,
    /// Timing, policies and the task.
    #[command(flatten)]
    pub spec: TimingArgs,
}

/// `schedule update`.
#[derive(Args, Debug, Clone)]
pub struct UpdateArgs {
    /// The schedule's id.
    pub id: String,
    /// Create it if it does not exist.
    #[arg(long)]
    pub create_if_missing: bool,
    /// Timing, policies and the task.
    #[command(flatten)]
    pub spec: TimingArgs,
}

/// A schedule's id.
#[derive(Args, Debug, Clone)]
pub struct IdArgs {
    /// The schedule's id.
    pub id: String,
}

/// A schedule's id and a note.
#[derive(Args, Debug, Clone)]
pub struct NoteArgs {
    /// The schedule's id.
    pub id: String,
    /// Why.
    #[arg(long, default_value = "")]
    pub note: String,
}

/// `schedule list`.
#[derive(Args, Debug, Clone)]
pub struct ListSchedulesArgs {
    /// Schedules per page (default 50, at most 1000).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Start after this page token.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
}

fn parse_time(s: &str) -> Result<prost_types::Timestamp, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s.trim())
        .map_err(|e| format!("{e} (expected RFC 3339: 2026-01-02T09:00:00Z)"))?;
    Ok(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

impl TimingArgs {
    /// The spec as the proto message; the task's flags are checked first.
    pub fn to_spec(&self) -> Result<pb::ScheduleSpec, CliError> {
        use pb::schedule_spec::Timing;
        let timing = match (&self.cron, self.every) {
            (Some(c), _) => Timing::Cron(c.clone()),
            (None, Some(d)) => Timing::Interval(pb_duration(d)),
            (None, None) => return Err(CliError::usage("one of --cron or --every is required")),
        };
        Ok(pb::ScheduleSpec {
            timing: Some(timing),
            time_zone: self.time_zone.clone().unwrap_or_default(),
            start_at: self.start,
            end_at: self.end,
            jitter: self.jitter.map(pb_duration),
            overlap: match self.overlap {
                None => pb::ScheduleOverlapPolicy::Unspecified,
                Some(OverlapArg::Skip) => pb::ScheduleOverlapPolicy::Skip,
                Some(OverlapArg::BufferOne) => pb::ScheduleOverlapPolicy::BufferOne,
                Some(OverlapArg::AllowAll) => pb::ScheduleOverlapPolicy::AllowAll,
                Some(OverlapArg::CancelOther) => pb::ScheduleOverlapPolicy::CancelOther,
            } as i32,
            catchup_window: self.catchup_window.map(pb_duration),
            catchup: match self.catchup {
                None => pb::ScheduleCatchUp::Unspecified,
                Some(CatchUpArg::All) => pb::ScheduleCatchUp::All,
                Some(CatchUpArg::One) => pb::ScheduleCatchUp::One,
            } as i32,
            task: Some(self.task.to_request()?),
        })
    }
}

fn when(s: &pb::ScheduleInfo) -> String {
    use pb::schedule_spec::Timing;
    let spec = s.spec.clone().unwrap_or_default();
    match spec.timing {
        Some(Timing::Cron(c)) if spec.time_zone.is_empty() => c,
        Some(Timing::Cron(c)) => format!("{c} ({})", spec.time_zone),
        Some(Timing::Interval(d)) => format!(
            "every {}",
            humantime::format_duration(Duration::new(
                d.seconds.max(0) as u64,
                d.nanos.max(0) as u32
            ))
        ),
        None => "-".into(),
    }
}

fn print_one<W: Write>(out: &mut Output<W>, s: &pb::ScheduleInfo) -> Result<(), CliError> {
    if out.json() {
        return out.document(&super::json::to_json(s));
    }
    let mut t = render::table(["field", "value"]);
    let task = s.spec.as_ref().and_then(|p| p.task.as_ref());
    t.add_row(vec!["schedule".to_string(), s.schedule_id.clone()]);
    t.add_row(vec!["when".to_string(), when(s)]);
    t.add_row(vec![
        "task".to_string(),
        task.map(|t| t.name.clone()).unwrap_or_default(),
    ]);
    t.add_row(vec![
        "paused".to_string(),
        format!("{} {}", s.paused, s.note),
    ]);
    t.add_row(vec![
        "next fires".to_string(),
        s.next_fires
            .iter()
            .map(|t| render::ts(Some(t)))
            .collect::<Vec<_>>()
            .join("\n"),
    ]);
    t.add_row(vec![
        "fires / skipped / missed".to_string(),
        format!("{} / {} / {}", s.fires, s.skipped, s.missed),
    ]);
    t.add_row(vec![
        "last fire".to_string(),
        format!("{} {}", render::ts(s.last_fire_at.as_ref()), s.last_task_id),
    ]);
    if !s.last_error.is_empty() {
        t.add_row(vec!["last error".to_string(), s.last_error.clone()]);
    }
    out.line(t)
}

async fn connect(server: &str, tls: &Conn) -> Result<Client, CliError> {
    Ok(ScheduleServiceClient::new(transport(server, tls).await?))
}

fn rpc(status: tonic::Status) -> CliError {
    CliError::status(&status)
}

/// Runs one `schedule` subcommand, writing to `out`.
pub(crate) async fn run<W: Write>(
    server: &str,
    tls: &Conn,
    command: ScheduleCommand,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    use ScheduleCommand as C;
    // Bad flags fail before the connection does.
    let spec = match &command {
        C::Create(a) => Some(a.spec.to_spec()?),
        C::Update(a) => Some(a.spec.to_spec()?),
        _ => None,
    };
    let mut c = connect(server, tls).await?;
    let info = match command {
        C::Create(a) => {
            c.create_schedule(pb::CreateScheduleRequest {
                schedule_id: a.id,
                spec,
                paused: a.paused,
            })
            .await
            .map_err(rpc)?
            .into_inner()
            .schedule
        }
        C::Update(a) => {
            c.update_schedule(pb::UpdateScheduleRequest {
                schedule_id: a.id,
                spec,
                create_if_missing: a.create_if_missing,
            })
            .await
            .map_err(rpc)?
            .into_inner()
            .schedule
        }
        C::Get(a) => {
            c.get_schedule(pb::GetScheduleRequest { schedule_id: a.id })
                .await
                .map_err(rpc)?
                .into_inner()
                .schedule
        }
        C::Pause(a) => {
            c.pause_schedule(pb::PauseScheduleRequest {
                schedule_id: a.id,
                note: a.note,
            })
            .await
            .map_err(rpc)?
            .into_inner()
            .schedule
        }
        C::Resume(a) => {
            c.resume_schedule(pb::ResumeScheduleRequest {
                schedule_id: a.id,
                note: a.note,
            })
            .await
            .map_err(rpc)?
            .into_inner()
            .schedule
        }
        C::List(a) => return list(&mut c, a, out).await,
        C::Trigger(a) => {
            let id = c
                .trigger_schedule(pb::TriggerScheduleRequest { schedule_id: a.id })
                .await
                .map_err(rpc)?
                .into_inner()
                .task_id;
            return if out.json() {
                out.document(&json!({ "taskId": id }))
            } else {
                out.line(id)
            };
        }
        C::Delete(a) => {
            c.delete_schedule(pb::DeleteScheduleRequest {
                schedule_id: a.id.clone(),
            })
            .await
            .map_err(rpc)?;
            return if out.json() {
                out.document(&json!({ "deleted": a.id }))
            } else {
                out.line(format!("deleted {}", a.id))
            };
        }
    };
    print_one(out, &info.unwrap_or_default())
}

async fn list<W: Write>(
    c: &mut Client,
    a: ListSchedulesArgs,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let page = c
        .list_schedules(pb::ListSchedulesRequest {
            page_size: a.limit.unwrap_or(0),
            page_token: a.page_token.unwrap_or_default(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if out.json() {
        return out.document(&super::json::to_json(&page));
    }
    let mut t = render::table([
        "schedule",
        "when",
        "task",
        "paused",
        "next fire",
        "fires",
        "last fire",
    ]);
    for s in &page.schedules {
        t.add_row(vec![
            s.schedule_id.clone(),
            when(s),
            s.spec
                .as_ref()
                .and_then(|p| p.task.as_ref())
                .map(|t| t.name.clone())
                .unwrap_or_default(),
            s.paused.to_string(),
            render::ts(s.next_fires.first()),
            s.fires.to_string(),
            render::ts(s.last_fire_at.as_ref()),
        ]);
    }
    out.line(t)?;
    if !page.next_page_token.is_empty() {
        out.line(format!("next page: --page-token {}", page.next_page_token))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ScheduleCommand,
    }

    #[test]
    fn create_takes_the_timing_and_the_tasks_flags() {
        let cli = Cli::try_parse_from([
            "x",
            "create",
            "nightly",
            "send-report",
            "--cron",
            "0 2 * * *",
            "--time-zone",
            "Europe/Paris",
            "--overlap",
            "buffer-one",
            "--catchup",
            "one",
            "--payload",
            r#"{"to":"ops"}"#,
            "--priority",
            "5",
        ])
        .expect("parses");
        let ScheduleCommand::Create(a) = cli.command else {
            panic!("create")
        };
        let spec = a.spec.to_spec().expect("a spec");
        assert_eq!(
            spec.timing,
            Some(pb::schedule_spec::Timing::Cron("0 2 * * *".into()))
        );
        assert_eq!(spec.overlap, pb::ScheduleOverlapPolicy::BufferOne as i32);
        assert_eq!(spec.catchup, pb::ScheduleCatchUp::One as i32);
        let task = spec.task.expect("a task");
        assert_eq!(
            (task.name.as_str(), task.options.map(|o| o.priority)),
            ("send-report", Some(5))
        );
    }

    #[test]
    fn cron_or_every_is_required_and_not_both() {
        assert!(Cli::try_parse_from(["x", "create", "a", "t"]).is_err());
        assert!(Cli::try_parse_from([
            "x",
            "create",
            "a",
            "t",
            "--cron",
            "* * * * *",
            "--every",
            "1m"
        ])
        .is_err());
        let cli = Cli::try_parse_from(["x", "update", "a", "t", "--every", "90s"]).expect("parses");
        let ScheduleCommand::Update(a) = cli.command else {
            panic!("update")
        };
        assert_eq!(
            a.spec.to_spec().expect("a spec").timing,
            Some(pb::schedule_spec::Timing::Interval(prost_types::Duration {
                seconds: 90,
                nanos: 0
            }))
        );
    }
}
