//! `KeysService`: creates, lists and revokes API keys and reads the audit
//! log. Thin handlers: validate, call [`Keys`], convert.

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::authz::caller;
use super::convert;
use crate::core::CoreError;
use crate::keys::limit::{MAX_PAYLOAD_BYTES, MAX_RPS, MIN_RPS};
use crate::keys::{AuditEvent, KeyRecord, Keys, NewKey, Role, MAX_NAMES, MAX_USER_BYTES};
use crate::pb;
use crate::pb::keys_service_server::KeysService;

/// The longest a key lasts.
const MAX_EXPIRY: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 86_400);

/// The service.
pub struct KeysApi {
    keys: Keys,
}

impl KeysApi {
    /// A service over the keys.
    pub fn new(keys: Keys) -> Self {
        KeysApi { keys }
    }
}

fn role(r: i32) -> Result<Role, CoreError> {
    Ok(match pb::KeyRole::try_from(r) {
        Ok(pb::KeyRole::Admin) => Role::Admin,
        Ok(pb::KeyRole::Operator) => Role::Operator,
        Ok(pb::KeyRole::Scheduler) => Role::Scheduler,
        Ok(pb::KeyRole::Reader) => Role::Reader,
        Ok(pb::KeyRole::Worker) => Role::Worker,
        _ => {
            return Err(CoreError::field(
                "role",
                format!("must be one of admin, operator, scheduler, reader, worker (got {r})"),
            ))
        }
    })
}

fn to_pb_role(r: Role) -> pb::KeyRole {
    match r {
        Role::Admin => pb::KeyRole::Admin,
        Role::Operator => pb::KeyRole::Operator,
        Role::Scheduler => pb::KeyRole::Scheduler,
        Role::Reader => pb::KeyRole::Reader,
        Role::Worker => pb::KeyRole::Worker,
    }
}

/// CreateKey's request, checked.
fn new_key(r: pb::CreateKeyRequest) -> Result<NewKey, CoreError> {
    let role = role(r.role)?;
    if r.user_id.len() > MAX_USER_BYTES {
        return Err(CoreError::field(
            "user_id",
            format!(
                "must be at most {MAX_USER_BYTES} bytes, got {}",
                r.user_id.len()
            ),
        ));
    }
    if r.user_id.chars().any(char::is_control) {
        return Err(CoreError::field(
            "user_id",
            "must not hold control characters",
        ));
    }
    if role == Role::Worker && !r.user_id.is_empty() {
        return Err(CoreError::field(
            "user_id",
            "a worker key is not bound to a user",
        ));
    }
    if r.names.len() > MAX_NAMES {
        return Err(CoreError::field(
            "names",
            format!("at most {MAX_NAMES} names, got {}", r.names.len()),
        ));
    }
    match (role, r.names.is_empty()) {
        (Role::Worker, true) => {
            return Err(CoreError::field(
                "names",
                "a worker key lists the task names it may register",
            ))
        }
        (Role::Worker, false) => {}
        (_, false) => return Err(CoreError::field("names", "only a worker key lists names")),
        (_, true) => {}
    }
    for (i, n) in r.names.iter().enumerate() {
        if let Err(e) = convert::check_name(n) {
            return Err(CoreError::field(format!("names[{i}]"), e));
        }
    }
    let expires_in = match r.expires_in {
        None => None,
        Some(d) if d.seconds < 1 || d.nanos < 0 => {
            return Err(CoreError::field(
                "expires_in",
                "must be at least 1 second (an expiry in the past is refused)",
            ))
        }
        Some(d) => {
            let d =
                std::time::Duration::new(d.seconds as u64, d.nanos.clamp(0, 999_999_999) as u32);
            if d > MAX_EXPIRY {
                return Err(CoreError::field("expires_in", "must be at most 10 years"));
            }
            Some(d)
        }
    };
    let rps = r.max_requests_per_second;
    let max_rps = if rps == 0.0 {
        None
    } else if rps.is_finite() && (MIN_RPS..=MAX_RPS).contains(&rps) {
        Some(rps)
    } else {
        return Err(CoreError::field(
            "max_requests_per_second",
            format!("must be 0 (no limit) or {MIN_RPS} to {MAX_RPS} calls per second, got {rps}"),
        ));
    };
    let max_payload_bytes = match r.max_payload_bytes {
        0 => None,
        b if (1..=MAX_PAYLOAD_BYTES).contains(&b) => Some(b as u64),
        b => {
            return Err(CoreError::field(
                "max_payload_bytes",
                format!(
                "must be 0 (the server's limit only) or 1 to {MAX_PAYLOAD_BYTES} bytes, got {b}"
            ),
            ))
        }
    };
    if !r.namespace.is_empty() {
        crate::domain::namespace::check(&r.namespace)
            .map_err(|e| CoreError::field("namespace", e))?;
    }
    let mut names = r.names;
    names.sort();
    names.dedup();
    Ok(NewKey {
        namespace: (!r.namespace.is_empty()).then_some(r.namespace),
        role,
        user_id: (!r.user_id.is_empty()).then_some(r.user_id),
        names,
        expires_in,
        max_rps,
        max_payload_bytes,
    })
}

fn key(r: &KeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        id: r.id.clone(),
        role: to_pb_role(r.role) as i32,
        user_id: r.user_id.clone().unwrap_or_default(),
        names: r.names.clone(),
        expires_at: r.expires_at.map(convert::ts),
        created_at: Some(convert::ts(r.created_at)),
        last_used_at: r.last_used_at.map(convert::ts),
        revoked_at: r.revoked_at.map(convert::ts),
        namespace: r.namespace.clone(),
        max_requests_per_second: r.max_rps.unwrap_or(0.0),
        max_payload_bytes: r
            .max_payload_bytes
            .map_or(0, |b| b.min(i64::MAX as u64) as i64),
    }
}

fn event(e: &AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        seq: e.seq,
        time: Some(convert::ts(e.time)),
        key_id: e.key_id.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        detail: e.detail.clone(),
        namespace: e.namespace.clone(),
    }
}

#[tonic::async_trait]
impl KeysService for KeysApi {
    #[instrument(skip_all)]
    async fn create_key(
        &self,
        req: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let who = caller(&req)?;
        let new = new_key(req.into_inner())?;
        if let Some(ns) = new.namespace.as_deref().filter(|ns| !who.manages(ns)) {
            return Err(Status::permission_denied(format!(
                "namespace: a key of namespace {} may not create keys of namespace {ns}",
                who.namespace()
            )));
        }
        let (record, secret) = self.keys.create(&who, new).await?;
        Ok(Response::new(pb::CreateKeyResponse {
            key: Some(key(&record)),
            secret,
        }))
    }

    #[instrument(skip_all)]
    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let who = caller(&req)?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: self
                .keys
                .list()
                .iter()
                .filter(|k| who.manages(&k.namespace))
                .take(10_000)
                .map(key)
                .collect(),
        }))
    }

    #[instrument(skip_all, fields(key_id = %req.get_ref().id))]
    async fn revoke_key(
        &self,
        req: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let who = caller(&req)?;
        let id = req.into_inner().id;
        if id.is_empty() || id.len() > 64 {
            return Err(CoreError::field("id", "must be a key id (1 to 64 bytes)").into());
        }
        let (record, already) = self.keys.revoke(&who, &id).await?;
        Ok(Response::new(pb::RevokeKeyResponse {
            key: Some(key(&record)),
            already,
        }))
    }

    #[instrument(skip_all)]
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let limit = match r.page_size {
            0 => 100,
            n if n > 1000 => {
                return Err(CoreError::field("page_size", "must be at most 1000").into())
            }
            n => n as usize,
        };
        if r.before < 0 {
            return Err(CoreError::field("before", "must not be negative").into());
        }
        let events = self.keys.audit_page(&who, r.before, limit + 1).await?;
        let more = events.len() > limit;
        let events: Vec<_> = events.iter().take(limit).map(event).collect();
        let next_before = if more {
            events.last().map_or(0, |e| e.seq)
        } else {
            0
        };
        Ok(Response::new(pb::ListAuditEventsResponse {
            events,
            next_before,
        }))
    }
}
