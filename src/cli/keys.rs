//! `switchyard keys create|list|revoke` and `switchyard audit` (to
//! `KeysService`): their clap types, requests and output (lines for people,
//! JSON with `--json`). Like every client command they send the global
//! `--token` (or `SWITCHYARD_TOKEN`) as the bearer token: here an admin key,
//! a static token or an admin JWT.
//!
//! Must not: hold server code; it talks gRPC only.

use std::io::Write;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::args::ClientArgs;
use super::commands::{transport, Output};
use super::error::CliError;
use crate::pb;
use crate::pb::keys_service_client::KeysServiceClient;

/// A key's role.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleArg {
    /// Everything, including keys.
    Admin,
    /// Schedule, read, cancel, disconnect, pause, retry, signal.
    Operator,
    /// Schedule; read and cancel what it scheduled.
    Scheduler,
    /// Read only.
    Reader,
    /// The worker stream, for its listed names.
    Worker,
}

/// `keys …`: scoped API keys.
#[derive(Subcommand, Debug, Clone)]
pub enum KeysCommand {
    /// Creates a key and prints its secret, once.
    Create(CreateKeyArgs),
    /// Lists the keys (never their secrets).
    List,
    /// Revokes a key: refused at once, its worker streams closed.
    Revoke(RevokeKeyArgs),
}

/// `keys create`.
#[derive(Args, Debug, Clone)]
pub struct CreateKeyArgs {
    /// Its role.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Binds it to a user: it sees and cancels only that user's tasks.
    #[arg(long)]
    pub user: Option<String>,
    /// A worker key's task names, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub names: Vec<String>,
    /// How long it lasts (`30d`, `12h`); default: no expiry.
    #[arg(long, value_parser = super::args::parse_duration)]
    pub expires: Option<std::time::Duration>,
    /// Its rate limit, in calls per second (0.01 to 100,000; fractions
    /// allowed); over it a call is RESOURCE_EXHAUSTED with a retry delay.
    /// Default: none.
    #[arg(long, allow_negative_numbers = true)]
    pub rps: Option<f64>,
    /// The largest task payload it may send, in bytes of JSON (1 to 1 GiB).
    /// Default: only the server's limit.
    #[arg(long, allow_negative_numbers = true)]
    pub max_payload: Option<i64>,
    /// The namespace the key acts in (default: the caller's own; only a
    /// caller of `default` may name another).
    #[arg(long = "key-namespace", value_name = "NAMESPACE")]
    pub key_namespace: Option<String>,
}

/// `keys revoke`.
#[derive(Args, Debug, Clone)]
pub struct RevokeKeyArgs {
    /// The key's id.
    pub id: String,
}

/// `audit`: the audit log, newest first.
#[derive(Args, Debug, Clone)]
pub struct AuditArgs {
    /// Events to print (1 to 1,000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only events older than this sequence number.
    #[arg(long, default_value_t = 0)]
    pub before: i64,
}

fn rpc(status: tonic::Status) -> CliError {
    CliError::status(&status)
}

fn time(t: &Option<prost_types::Timestamp>) -> String {
    match t {
        Some(t) => chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default(),
        None => "-".into(),
    }
}

fn role_name(r: i32) -> &'static str {
    match pb::KeyRole::try_from(r) {
        Ok(pb::KeyRole::Admin) => "admin",
        Ok(pb::KeyRole::Operator) => "operator",
        Ok(pb::KeyRole::Scheduler) => "scheduler",
        Ok(pb::KeyRole::Reader) => "reader",
        Ok(pb::KeyRole::Worker) => "worker",
        _ => "unknown",
    }
}

fn key_json(k: &pb::ApiKey) -> serde_json::Value {
    json!({
        "id": k.id,
        "role": role_name(k.role),
        "userId": k.user_id,
        "names": k.names,
        "expiresAt": k.expires_at.as_ref().map(|_| time(&k.expires_at)),
        "createdAt": time(&k.created_at),
        "lastUsedAt": k.last_used_at.as_ref().map(|_| time(&k.last_used_at)),
        "revokedAt": k.revoked_at.as_ref().map(|_| time(&k.revoked_at)),
        "namespace": k.namespace,
        "maxRequestsPerSecond": k.max_requests_per_second,
        "maxPayloadBytes": k.max_payload_bytes,
    })
}

fn key_line(k: &pb::ApiKey) -> String {
    format!(
        "{}  {:<9}  user {}  names {}  created {}  expires {}  last used {}{}{}",
        k.id,
        role_name(k.role),
        if k.user_id.is_empty() {
            "-"
        } else {
            &k.user_id
        },
        if k.names.is_empty() {
            "-".to_string()
        } else {
            k.names.join(",")
        },
        time(&k.created_at),
        time(&k.expires_at),
        time(&k.last_used_at),
        limits(k),
        if k.revoked_at.is_some() {
            format!("  REVOKED {}", time(&k.revoked_at))
        } else {
            String::new()
        }
    )
}

/// A key's limits, for its line (nothing when it has none).
fn limits(k: &pb::ApiKey) -> String {
    let mut s = String::new();
    if k.max_requests_per_second > 0.0 {
        s.push_str(&format!("  rps {}", k.max_requests_per_second));
    }
    if k.max_payload_bytes > 0 {
        s.push_str(&format!("  max payload {} B", k.max_payload_bytes));
    }
    s
}

/// Runs one `keys` subcommand.
pub async fn run_keys<W: Write>(
    client: &ClientArgs,
    command: KeysCommand,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let mut c = KeysServiceClient::new(transport(&client.server, &client.conn()).await?);
    match command {
        KeysCommand::Create(a) => {
            let role = match a.role {
                RoleArg::Admin => pb::KeyRole::Admin,
                RoleArg::Operator => pb::KeyRole::Operator,
                RoleArg::Scheduler => pb::KeyRole::Scheduler,
                RoleArg::Reader => pb::KeyRole::Reader,
                RoleArg::Worker => pb::KeyRole::Worker,
            };
            let msg = pb::CreateKeyRequest {
                role: role as i32,
                user_id: a.user.clone().unwrap_or_default(),
                names: a.names.clone(),
                expires_in: a.expires.map(|d| prost_types::Duration {
                    seconds: d.as_secs().min(i64::MAX as u64) as i64,
                    nanos: d.subsec_nanos() as i32,
                }),
                max_requests_per_second: a.rps.unwrap_or(0.0),
                max_payload_bytes: a.max_payload.unwrap_or(0),
                namespace: a.key_namespace.clone().unwrap_or_default(),
            };
            let r = c.create_key(msg).await.map_err(rpc)?.into_inner();
            let key = r.key.unwrap_or_default();
            if out.json() {
                return out.document(&json!({"key": key_json(&key), "secret": r.secret}));
            }
            out.line(key_line(&key))?;
            out.line(format!("secret (shown once, keep it now): {}", r.secret))
        }
        KeysCommand::List => {
            let r = c
                .list_keys(pb::ListKeysRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            if out.json() {
                return out
                    .document(&json!({"keys": r.keys.iter().map(key_json).collect::<Vec<_>>()}));
            }
            if r.keys.is_empty() {
                return out.line("no keys");
            }
            for k in &r.keys {
                out.line(key_line(k))?;
            }
            Ok(())
        }
        KeysCommand::Revoke(a) => {
            let r = c
                .revoke_key(pb::RevokeKeyRequest { id: a.id.clone() })
                .await
                .map_err(rpc)?
                .into_inner();
            if out.json() {
                return out.document(&json!({"id": a.id, "already": r.already}));
            }
            out.line(if r.already {
                format!("{}: was revoked already", a.id)
            } else {
                format!("{}: revoked", a.id)
            })
        }
    }
}

/// Runs `audit`.
pub async fn run_audit<W: Write>(
    client: &ClientArgs,
    args: AuditArgs,
    out: &mut Output<W>,
) -> Result<(), CliError> {
    let mut c = KeysServiceClient::new(transport(&client.server, &client.conn()).await?);
    let msg = pb::ListAuditEventsRequest {
        page_size: args.limit,
        before: args.before,
    };
    let r = c.list_audit_events(msg).await.map_err(rpc)?.into_inner();
    if out.json() {
        let events: Vec<_> = r
            .events
            .iter()
            .map(|e| {
                json!({"seq": e.seq, "time": time(&e.time), "keyId": e.key_id,
                       "namespace": e.namespace, "action": e.action,
                       "target": e.target, "detail": e.detail})
            })
            .collect();
        return out.document(&json!({"events": events, "nextBefore": r.next_before}));
    }
    for e in &r.events {
        out.line(format!(
            "{}  {}  {}  {}  {}{}",
            e.seq,
            time(&e.time),
            // The caller's namespace, when it is not `default`.
            match e.namespace.as_str() {
                "" | "default" => e.key_id.clone(),
                ns => format!("{}@{ns}", e.key_id),
            },
            e.action,
            e.target,
            if e.detail.is_empty() {
                String::new()
            } else {
                format!("  ({})", e.detail)
            }
        ))?;
    }
    if r.next_before != 0 {
        out.line(format!("more: --before {}", r.next_before))?;
    }
    Ok(())
}
