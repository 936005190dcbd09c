//! `switchyard queue pause|resume`, `switchyard flow set|delete|list` (to
//! `FlowService`) and `switchyard task why` (what holds a pending task,
//! from `GetTaskStatus`): their clap types, requests and output (lines for
//! people, JSON with `--json`).
//!
//! Must not: hold server code; it talks gRPC only.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::json;

use super::args::{ClientArgs, StatusArgs};
use super::commands::{connect, transport, Output};
use super::error::CliError;
use super::json::{task_state_name, to_json, waiting_reason_name};
use crate::pb;
use crate::pb::flow_service_client::FlowServiceClient;

fn rpc(status: tonic::Status) -> CliError {
    CliError::status(&status)
}

/// `queue …`: pause and resume a task name or a queue of the namespace
/// the call acts in (`--namespace`, or the key's own).
#[derive(Subcommand, Debug, Clone)]
pub enum QueueCommand {
    /// Pauses a task name or queue: its pending tasks wait (running ones
    /// finish) until it is resumed. Durable.
    Pause(QueueArgs),
    /// Resumes a paused task name or queue.
    Resume(QueueArgs),
}

/// A task name or a queue.
#[derive(Args, Debug, Clone)]
pub struct QueueArgs {
    /// The task name or queue.
    pub name: String,
}

/// `flow …`: concurrency policies per key and rate limits of the namespace
/// the call acts in (`--namespace`, or the key's own); they hold only that
/// namespace's tasks.
#[derive(Subcommand, Debug, Clone)]
pub enum FlowCommand {
    /// Sets a concurrency policy: at most LIMIT tasks of one concurrency
    /// key run at once among the tasks whose name or queue matches PATTERN.
    Set(SetPolicyArgs),
    /// Deletes a concurrency policy set at run time.
    Delete(DeletePolicyArgs),
    /// Lists the policies and the rate limits in the order they are
    /// matched (with each rate limit's tokens now), the default limit and
    /// the paused names.
    List,
    /// Sets a rate limit: at most RATE tasks start per --per interval
    /// among the tasks whose name or queue matches PATTERN, up to --burst
    /// at once (a token bucket); with --per-key, per concurrency key.
    RateSet(RateSetArgs),
    /// Deletes a rate limit set at run time.
    RateDelete(DeletePolicyArgs),
}

/// `flow rate-set`.
#[derive(Args, Debug, Clone)]
pub struct RateSetArgs {
    /// A glob over task names and queues (`*` any run of characters).
    pub pattern: String,
    /// Starts per interval (1 to 1,000,000).
    #[arg(allow_negative_numbers = true)]
    pub rate: i32,
    /// The interval (`1s`, `500ms`, `1m`), 1 ms to 24 h.
    #[arg(long = "per", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
    /// Starts at once after a quiet time (1 to 1,000,000); default: the
    /// rate.
    #[arg(long, allow_negative_numbers = true)]
    pub burst: Option<i32>,
    /// One bucket per concurrency key.
    #[arg(long)]
    pub per_key: bool,
}

/// `flow set`.
#[derive(Args, Debug, Clone)]
pub struct SetPolicyArgs {
    /// A glob over task names and queues (`*` any run of characters).
    pub pattern: String,
    /// Tasks of one key at once (1 to 1,000,000).
    #[arg(allow_negative_numbers = true)]
    pub limit: i32,
    /// A key's turns per round of fairness, `KEY=WEIGHT` (1 to 100);
    /// repeat for several keys. Other keys have 1.
    #[arg(long = "weight", value_name = "KEY=WEIGHT", value_parser = parse_weight)]
    pub weights: Vec<(String, i32)>,
}

fn parse_weight(s: &str) -> Result<(String, i32), String> {
    let (k, w) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=WEIGHT"))?;
    let w = w
        .parse::<i32>()
        .map_err(|e| format!("{s:?}: the weight: {e}"))?;
    Ok((k.to_string(), w))
}

/// `flow delete`.
#[derive(Args, Debug, Clone)]
pub struct DeletePolicyArgs {
    /// The policy's pattern.
    pub pattern: String,
}

async fn flow_client(
    client: &ClientArgs,
) -> Result<FlowServiceClient<switchyard_client::Transport>, CliError> {
    Ok(FlowServiceClient::new(
        transport(&client.server, &client.conn()).await?,
    ))
}

/// Runs one `queue` subcommand.
pub async fn run_queue<W: Write>(
    client: &ClientArgs,
    command: QueueCommand,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let mut c = flow_client(client).await?;
    let (name, text, changed) = match command {
        QueueCommand::Pause(a) => {
            let r = c
                .pause_queue(pb::PauseQueueRequest {
                    name: a.name.clone(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let text = if r.already {
                "was paused already"
            } else {
                "paused"
            };
            (a.name, text, !r.already)
        }
        QueueCommand::Resume(a) => {
            let r = c
                .resume_queue(pb::ResumeQueueRequest {
                    name: a.name.clone(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let text = if r.was_paused {
                "resumed"
            } else {
                "was not paused"
            };
            (a.name, text, r.was_paused)
        }
    };
    if out.json() {
        return out.document(&json!({"name": name, "changed": changed}));
    }
    out.line(format!("{name}: {text}"))
}

/// Runs one `flow` subcommand.
pub async fn run_flow<W: Write>(
    client: &ClientArgs,
    command: FlowCommand,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let mut c = flow_client(client).await?;
    match command {
        FlowCommand::Set(a) => {
            let r = c
                .set_concurrency_policy(pb::SetConcurrencyPolicyRequest {
                    policy: Some(pb::ConcurrencyPolicy {
                        pattern: a.pattern.clone(),
                        limit: a.limit,
                        from_config: false,
                        weights: a.weights.iter().cloned().collect(),
                    }),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if out.json() {
                return out.document(&json!({"pattern": a.pattern, "replaced": r.replaced}));
            }
            let verb = if r.replaced { "replaced" } else { "set" };
            out.line(format!("{}: limit {} per key ({verb})", a.pattern, a.limit))
        }
        FlowCommand::Delete(a) => {
            c.delete_concurrency_policy(pb::DeleteConcurrencyPolicyRequest {
                pattern: a.pattern.clone(),
            })
            .await
            .map_err(rpc)?;
            if out.json() {
                return out.document(&json!({"pattern": a.pattern, "deleted": true}));
            }
            out.line(format!("{}: deleted", a.pattern))
        }
        FlowCommand::List => {
            let r = c
                .list_flow_rules(pb::ListFlowRulesRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            if out.json() {
                return out.document(&to_json(&r));
            }
            for p in &r.policies {
                let from = if p.from_config { " (config)" } else { "" };
                let mut weights: Vec<String> =
                    p.weights.iter().map(|(k, w)| format!("{k}={w}")).collect();
                weights.sort();
                let weights = if weights.is_empty() {
                    String::new()
                } else {
                    format!("\tweights {}", weights.join(","))
                };
                out.line(format!("{}\tlimit {}{weights}{from}", p.pattern, p.limit))?;
            }
            if r.default_limit > 0 {
                out.line(format!("default\tlimit {}", r.default_limit))?;
            }
            for p in &r.paused {
                out.line(format!("{p}\tpaused"))?;
            }
            for l in &r.rate_limits {
                let from = if l.from_config { " (config)" } else { "" };
                let per_key = if l.per_key { " per key" } else { "" };
                out.line(format!(
                    "{}\trate {} per {}{per_key}, burst {}, {:.1} tokens{from}",
                    l.pattern,
                    l.rate,
                    interval_text(l.interval.as_ref()),
                    l.burst,
                    l.tokens
                ))?;
            }
            Ok(())
        }
        FlowCommand::RateSet(a) => {
            let burst = a.burst.unwrap_or(a.rate);
            let r = c
                .set_rate_limit(pb::SetRateLimitRequest {
                    rate_limit: Some(pb::RateLimit {
                        pattern: a.pattern.clone(),
                        rate: a.rate,
                        interval: Some(prost_types::Duration {
                            seconds: a.interval.as_secs().min(i64::MAX as u64) as i64,
                            nanos: a.interval.subsec_nanos() as i32,
                        }),
                        burst,
                        per_key: a.per_key,
                        from_config: false,
                        tokens: 0.0,
                    }),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if out.json() {
                return out.document(&json!({"pattern": a.pattern, "replaced": r.replaced}));
            }
            let verb = if r.replaced { "replaced" } else { "set" };
            let per_key = if a.per_key { " per key" } else { "" };
            out.line(format!(
                "{}: rate {} per {}{per_key}, burst {burst} ({verb})",
                a.pattern,
                a.rate,
                humantime::format_duration(a.interval)
            ))
        }
        FlowCommand::RateDelete(a) => {
            c.delete_rate_limit(pb::DeleteRateLimitRequest {
                pattern: a.pattern.clone(),
            })
            .await
            .map_err(rpc)?;
            if out.json() {
                return out.document(&json!({"pattern": a.pattern, "deleted": true}));
            }
            out.line(format!("{}: rate limit deleted", a.pattern))
        }
    }
}

/// A protobuf duration in words (`1s`, `500ms`).
fn interval_text(d: Option<&prost_types::Duration>) -> String {
    let d = d.cloned().unwrap_or_default();
    let d = std::time::Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32);
    humantime::format_duration(d).to_string()
}

/// A protobuf timestamp as RFC 3339, and how far from now.
fn when_text(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else {
        return "an unknown time".into();
    };
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
    let left = at
        .duration_since(std::time::SystemTime::now())
        .map(|d| format!(" (in {})", humantime::format_duration(round_ms(d))))
        .unwrap_or_default();
    format!("{}{left}", humantime::format_rfc3339_millis(at))
}

fn round_ms(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// `task why`: what holds a task, in words.
pub async fn why<W: Write>(
    client: &ClientArgs,
    args: &StatusArgs,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let mut c = connect(&client.server, &client.conn()).await?;
    let r = c
        .get_task_status(pb::GetTaskStatusRequest {
            task_id: args.id.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let Some(s) = r.status else {
        return Err(CliError::status(&tonic::Status::internal(
            "the server answered without a status",
        )));
    };
    let text = explain(&s);
    if out.json() {
        return out.document(&json!({
            "id": s.id,
            "state": task_state_name(s.state),
            "waitingReason": waiting_reason_name(s.waiting_reason),
            "hold": s.hold.as_ref().map_or(serde_json::Value::Null, to_json),
            "explanation": text,
        }));
    }
    out.line(text)
}

/// What holds a task, in one sentence.
pub(crate) fn explain(s: &pb::TaskStatus) -> String {
    use pb::WaitingReason as R;
    if s.state != pb::TaskState::Pending as i32 {
        return format!(
            "task {} is {}: nothing holds it",
            s.id,
            task_state_name(s.state)
        );
    }
    let h = s.hold.clone().unwrap_or_default();
    let ahead = h
        .ahead
        .map(|n| format!("; {n} of its tasks are ahead of it"))
        .unwrap_or_default();
    match R::try_from(s.waiting_reason).unwrap_or(R::Unspecified) {
        R::ConcurrencyLimit => format!(
            "held by the concurrency policy {}: key {:?} has {} of {} tasks running{ahead}",
            h.rule, h.concurrency_key, h.running, h.limit
        ),
        R::RateLimited => {
            let key = if h.concurrency_key.is_empty() {
                String::new()
            } else {
                format!(" for key {:?}", h.concurrency_key)
            };
            format!(
                "held by the rate limit {}{key} ({} per {}, burst {}): no token now; \
                 it may start at {}",
                h.rule,
                h.rate,
                interval_text(h.interval.as_ref()),
                h.burst,
                when_text(h.next_start_at.as_ref())
            )
        }
        R::QueuePaused => format!(
            "held: {} is paused (switchyard queue resume {})",
            h.rule, h.rule
        ),
        R::Queued => "queued: waiting behind tasks of higher priority or older ones".into(),
        R::NoWorker => format!("no connected worker takes the name {}", s.name),
        R::Delayed => format!(
            "delayed until {}",
            s.run_at.as_ref().map(|t| t.to_string()).unwrap_or_default()
        ),
        R::BackingOff => format!(
            "backing off after a failed attempt until {}",
            s.run_at.as_ref().map(|t| t.to_string()).unwrap_or_default()
        ),
        R::CapacityFull => "every slot of the workers that take it is busy".into(),
        R::EngineUnreachable => {
            "its engine cannot be reached; it is kept and handed over when it is back".into()
        }
        R::Unspecified => "pending; the server gave no reason".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn why_names_the_rule_the_key_and_the_limit() {
        let s = pb::TaskStatus {
            id: "t".into(),
            state: pb::TaskState::Pending as i32,
            waiting_reason: pb::WaitingReason::ConcurrencyLimit as i32,
            hold: Some(pb::Hold {
                rule: "email.*".into(),
                concurrency_key: "tenant-1".into(),
                limit: 2,
                running: 2,
                ahead: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = explain(&s);
        assert!(t.contains("email.*") && t.contains("tenant-1"), "{t}");
        assert!(t.contains("2 of 2") && t.contains("3 of its tasks"), "{t}");
        let done = pb::TaskStatus {
            state: pb::TaskState::Completed as i32,
            ..s
        };
        assert!(explain(&done).contains("nothing holds it"));
    }

    #[test]
    fn why_names_the_rate_limit_and_when_the_task_may_start() {
        let s = pb::TaskStatus {
            id: "t".into(),
            state: pb::TaskState::Pending as i32,
            waiting_reason: pb::WaitingReason::RateLimited as i32,
            hold: Some(pb::Hold {
                rule: "hook.*".into(),
                concurrency_key: "tenant-1".into(),
                next_start_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                rate: 50,
                interval: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                burst: 10,
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = explain(&s);
        assert!(
            t.contains("rate limit hook.*")
                && t.contains("\"tenant-1\"")
                && t.contains("50 per 1s, burst 10")
                && t.contains("2023-11-14T22:13:20"),
            "{t}"
        );
    }
}
