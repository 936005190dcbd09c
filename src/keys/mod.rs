//! Scoped API keys and the audit log.
//!
//! Owns: the key records (stored hashed, never the secret), the ring that
//! resolves a bearer secret to a [`Principal`] from memory (a hash map keyed
//! by the secret's SHA-256: no store read per call), the one table of what
//! each RPC and admin route needs ([`table`]), a principal's scope over tasks
//! (its user, the tasks a scheduler key scheduled), and the audit log.
//! Must not: know gRPC or HTTP (the edges map [`Denied`] to their codes).
//!
//! The static `auth.tokens` stay: each acts as an admin key (audited as
//! `token`). With no token and no key stored, every caller is an admin
//! (`open`, the local default).

pub mod db;
pub mod jwt;
pub mod limit;
pub mod table;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::auth::Tokens;
use crate::core::{Core, CoreError};
use crate::domain::{now_micros, LogEntry, Micros, Task, TaskFilter, TaskId, TaskSpec};

pub use db::{AuditEvent, Db};
pub use limit::Limited;
pub use table::{Need, Scoping};

/// The SQLite store's keys file in the data directory.
pub const FILE: &str = "keys.db";
/// The label a scheduler key's tasks carry: the key's id.
pub const LABEL: &str = "switchyard.key";
/// The namespace of a key that names none.
pub const DEFAULT_NAMESPACE: &str = crate::domain::namespace::DEFAULT;
/// The request header (gRPC metadata) in which a static token or an open
/// server's caller names the namespace it acts in (`default` without it).
/// A key acts in its own namespace: naming another is PERMISSION_DENIED.
pub const NAMESPACE_HEADER: &str = crate::domain::namespace::HEADER;
/// The most task names a worker key lists.
pub const MAX_NAMES: usize = 100;
/// The longest user a key is bound to.
pub const MAX_USER_BYTES: usize = 256;

/// What a key may do (see `keys.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
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

impl Role {
    /// Its name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Scheduler => "scheduler",
            Role::Reader => "reader",
            Role::Worker => "worker",
        }
    }

    /// The role of a stored name.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            "scheduler" => Role::Scheduler,
            "reader" => Role::Reader,
            "worker" => Role::Worker,
            _ => return None,
        })
    }

    /// Whether the role grants `need` (the scope is checked apart).
    pub fn grants(self, need: Need) -> bool {
        use Need::*;
        match self {
            Role::Admin => true,
            Role::Operator => matches!(need, Open | Read | Schedule | Cancel | Operate),
            Role::Scheduler => matches!(need, Open | Read | Schedule | Cancel),
            Role::Reader => matches!(need, Open | Read),
            Role::Worker => matches!(need, Open | Work),
        }
    }
}

/// A stored key (its secret's hash, never the secret).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// `key_` and 16 hex digits.
    pub id: String,
    /// The namespace it acts in.
    pub namespace: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// Its role.
    pub role: Role,
    /// The user it is bound to.
    pub user_id: Option<String>,
    /// A worker key's task names.
    pub names: Vec<String>,
    /// When it stops being accepted.
    pub expires_at: Option<Micros>,
    /// When it was created.
    pub created_at: Micros,
    /// When it was last accepted.
    pub last_used_at: Option<Micros>,
    /// When it was revoked.
    pub revoked_at: Option<Micros>,
    /// Its rate limit, in calls per second.
    pub max_rps: Option<f64>,
    /// The largest payload it may send, in bytes.
    pub max_payload_bytes: Option<u64>,
}

/// A key in memory: its record, and what changes.
#[derive(Debug)]
pub struct Entry {
    record: KeyRecord,
    last_used: AtomicI64,
    revoked_at: AtomicI64,
    used: AtomicBool,
    /// Cancelled when the key is revoked (an open worker stream ends).
    revoked: CancellationToken,
    /// Its rate, when it has one (this replica's count).
    bucket: Option<limit::Bucket>,
}

impl Entry {
    fn new(record: KeyRecord) -> Arc<Entry> {
        let revoked = CancellationToken::new();
        if record.revoked_at.is_some() {
            revoked.cancel();
        }
        Arc::new(Entry {
            last_used: AtomicI64::new(record.last_used_at.unwrap_or(0)),
            revoked_at: AtomicI64::new(record.revoked_at.unwrap_or(0)),
            used: AtomicBool::new(false),
            revoked,
            bucket: record.max_rps.map(limit::Bucket::new),
            record,
        })
    }

    /// The caller a verified JWT describes: a key that is stored nowhere,
    /// expires with the token and has no limits.
    fn of_jwt(c: jwt::Claims) -> Arc<Entry> {
        Entry::new(KeyRecord {
            id: c.id,
            namespace: c.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
            hash: String::new(),
            role: c.role,
            user_id: c.user_id,
            names: c.names,
            expires_at: Some(c.expires_at),
            created_at: now_micros(),
            last_used_at: None,
            revoked_at: None,
            max_rps: None,
            max_payload_bytes: None,
        })
    }

    /// The record as it is now.
    pub fn record(&self) -> KeyRecord {
        let mut r = self.record.clone();
        r.last_used_at = Some(self.last_used.load(Ordering::Relaxed)).filter(|t| *t > 0);
        r.revoked_at = Some(self.revoked_at.load(Ordering::Relaxed)).filter(|t| *t > 0);
        r
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A server without authentication: everything is allowed, in the
    /// namespace the call names ([`NAMESPACE_HEADER`]).
    Open(Cow<'static, str>),
    /// One of the static `auth.tokens`: an admin, in the namespace the
    /// call names.
    Token(Cow<'static, str>),
    /// An API key, in its own namespace.
    Key(Arc<Entry>),
}

impl Principal {
    /// The id the audit log records.
    pub fn key_id(&self) -> &str {
        match self {
            Principal::Open(_) => "open",
            Principal::Token(_) => "token",
            Principal::Key(e) => &e.record.id,
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        match self {
            Principal::Open(_) | Principal::Token(_) => Role::Admin,
            Principal::Key(e) => e.record.role,
        }
    }

    /// The user the caller is bound to.
    pub fn user(&self) -> Option<&str> {
        match self {
            Principal::Key(e) => e.record.user_id.as_deref(),
            _ => None,
        }
    }

    /// Whether the caller sees only its scheduled tasks.
    fn own_tasks_only(&self) -> bool {
        self.role() == Role::Scheduler
    }

    /// Whether the caller sees only part of its namespace's tasks.
    pub fn scoped(&self) -> bool {
        self.user().is_some() || self.own_tasks_only()
    }

    /// The namespace the caller acts in.
    pub fn namespace(&self) -> &str {
        match self {
            Principal::Open(ns) | Principal::Token(ns) => ns,
            Principal::Key(e) => &e.record.namespace,
        }
    }

    /// Whether the caller may manage the keys of namespace `ns`: those of
    /// its own, or any for a caller of `default`.
    pub fn manages(&self, ns: &str) -> bool {
        self.namespace() == DEFAULT_NAMESPACE || self.namespace() == ns
    }

    /// Whether the caller is a key of a namespace other than `default` (a
    /// tenant): it makes no server-wide call.
    pub fn tenant(&self) -> bool {
        matches!(self, Principal::Key(e) if e.record.namespace != DEFAULT_NAMESPACE)
    }

    /// The caller, acting in the namespace a call names (`asked`, from
    /// [`NAMESPACE_HEADER`]): a token or an open server's caller takes it;
    /// a key may only name its own.
    pub fn in_namespace(self, asked: Option<&str>) -> Result<Principal, Denied> {
        let Some(asked) = asked.filter(|a| !a.is_empty()) else {
            return Ok(self);
        };
        crate::domain::namespace::check(asked)
            .map_err(|e| Denied::Namespace(format!("{NAMESPACE_HEADER} {e}")))?;
        Ok(match self {
            Principal::Open(_) => Principal::Open(Cow::Owned(asked.to_string())),
            Principal::Token(_) => Principal::Token(Cow::Owned(asked.to_string())),
            Principal::Key(e) if e.record.namespace == asked => Principal::Key(e),
            Principal::Key(e) => {
                return Err(Denied::Namespace(format!(
                    "this key belongs to namespace {}, not {asked}",
                    e.record.namespace
                )))
            }
        })
    }

    /// Whether the caller may make a call that needs `need` with `scoping`:
    /// `Err` says why not.
    pub fn may(&self, need: Need, scoping: Scoping) -> Result<(), Denied> {
        if !self.role().grants(need) {
            return Err(Denied::Role(self.role(), need));
        }
        let fits = match scoping {
            Scoping::Tasks => true,
            Scoping::User => !self.own_tasks_only(),
            Scoping::Namespace => !self.scoped(),
            Scoping::Global => !self.scoped() && !self.tenant(),
        };
        if fits {
            Ok(())
        } else {
            Err(Denied::Scope)
        }
    }

    /// Whether the caller may see the task (never one of another
    /// namespace).
    pub fn sees(&self, t: &Task) -> bool {
        if t.spec.namespace() != self.namespace() {
            return false;
        }
        if let Some(u) = self.user() {
            if t.spec.user_id.as_deref() != Some(u) {
                return false;
            }
        }
        if self.own_tasks_only()
            && t.spec.labels.get(LABEL).map(String::as_str) != Some(self.key_id())
        {
            return false;
        }
        true
    }

    /// NOT_FOUND (as for an unknown id) for a task the caller may not see.
    pub fn check(&self, t: &Task) -> Result<(), CoreError> {
        if self.sees(t) {
            Ok(())
        } else {
            Err(CoreError::NotFound(t.id.to_string()))
        }
    }

    /// Narrows a list or watch filter to the caller's namespace and user.
    /// `false`: the filter asks for another user's tasks (the answer is
    /// empty).
    pub fn narrow(&self, f: &mut TaskFilter) -> bool {
        f.namespace = Some(self.namespace().to_string());
        // A schedule's id is qualified by its namespace (`id@ns`).
        if let Some(s) = f.schedule_id.take() {
            f.schedule_id =
                Some(crate::domain::namespace::qualify(&s, self.namespace()).into_owned());
        }
        let Some(u) = self.user() else {
            return true;
        };
        match &f.user_id {
            Some(asked) if asked != u => false,
            _ => {
                f.user_id = Some(u.to_string());
                true
            }
        }
    }

    /// Marks a task the caller schedules: it belongs to the caller's
    /// namespace ([`crate::domain::namespace::stamp`]), a user-bound key's tasks are its
    /// user's (another user is PERMISSION_DENIED, as `Denied::User`), a
    /// scheduler key's carry its id in [`LABEL`]. Any caller's own
    /// [`LABEL`] is replaced, so no caller claims another key's tasks.
    pub fn stamp(&self, spec: &mut TaskSpec) -> Result<(), Denied> {
        crate::domain::namespace::stamp(spec, self.namespace());
        if let Some(u) = self.user() {
            match spec.user_id.as_deref() {
                None => spec.user_id = Some(u.to_string()),
                Some(x) if x == u => {}
                Some(_) => return Err(Denied::User),
            }
        }
        match self {
            Principal::Key(e) if e.record.role == Role::Scheduler => {
                spec.labels.insert(LABEL.into(), e.record.id.clone());
            }
            _ => {
                spec.labels.remove(LABEL);
            }
        }
        Ok(())
    }

    /// Counts one call against the caller's rate: `Err` when it is over
    /// (a token, an open server and a key without a rate always pass).
    pub fn admit(&self) -> Result<(), Limited> {
        let Principal::Key(e) = self else {
            return Ok(());
        };
        match &e.bucket {
            Some(b) => b
                .take(std::time::Instant::now())
                .map_err(|retry_after| Limited::Rate {
                    key: e.record.id.clone(),
                    rps: b.rate(),
                    retry_after,
                }),
            None => Ok(()),
        }
    }

    /// Whether the caller may send a payload of `bytes` (serialised JSON).
    pub fn fits_payload(&self, bytes: usize) -> Result<(), Limited> {
        let Principal::Key(e) = self else {
            return Ok(());
        };
        match e.record.max_payload_bytes {
            Some(limit) if bytes as u64 > limit => Err(Limited::Payload {
                key: e.record.id.clone(),
                limit,
                got: bytes as u64,
            }),
            _ => Ok(()),
        }
    }

    /// Whether a worker may register these task names: `Err` names the
    /// first it may not.
    pub fn may_register<'a>(&self, names: &'a [String]) -> Result<(), &'a str> {
        let Principal::Key(e) = self else {
            return Ok(());
        };
        if e.record.role != Role::Worker {
            return Ok(());
        }
        match names
            .iter()
            .find(|n| !e.record.names.iter().any(|m| m == *n))
        {
            Some(n) => Err(n.as_str()),
            None => Ok(()),
        }
    }

    /// Resolves when the caller's key is revoked or expires (never for a
    /// token or an open server).
    pub async fn gone(&self) {
        let Principal::Key(e) = self else {
            return std::future::pending().await;
        };
        let expiry = async {
            match e.record.expires_at {
                Some(at) => {
                    let left = (at - now_micros()).max(0) as u64;
                    tokio::time::sleep(std::time::Duration::from_micros(left)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = e.revoked.cancelled() => {}
            _ = expiry => {}
        }
    }
}

/// Why a caller may not make a call (PERMISSION_DENIED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The role does not grant it.
    #[error("a key of role {} may not do this (it needs {})", .0.as_str(), .1.as_str())]
    Role(Role, Need),
    /// The call reaches beyond the key's scope (its user, its tasks).
    #[error("this call reaches beyond the key's scope (its user or the tasks it scheduled)")]
    Scope,
    /// A user-bound key names another user.
    #[error("this key is bound to another user")]
    User,
    /// A valid JWT whose claims grant nothing (no role, an unknown one).
    #[error("{0}")]
    Claim(String),
    /// The call names a namespace the caller may not act in.
    #[error("{0}")]
    Namespace(String),
}

/// Why a bearer is refused before any check of the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not known (UNAUTHENTICATED).
    #[error(transparent)]
    Unknown(#[from] Unknown),
    /// Known, but granted nothing (PERMISSION_DENIED): a JWT's claims.
    #[error(transparent)]
    Denied(#[from] Denied),
}

/// Why a caller is not known (UNAUTHENTICATED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unknown {
    /// No bearer token.
    #[error("this server requires `authorization: Bearer <token>`")]
    Missing,
    /// A token that is no key.
    #[error("the bearer token is not valid")]
    Invalid,
    /// An expired key.
    #[error("the key has expired")]
    Expired,
    /// A revoked key.
    #[error("the key has been revoked")]
    Revoked,
}

/// What a new key is.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The namespace it acts in (`None`: its creator's).
    pub namespace: Option<String>,
    /// Its role.
    pub role: Role,
    /// The user it is bound to.
    pub user_id: Option<String>,
    /// A worker key's names.
    pub names: Vec<String>,
    /// How long it lasts.
    pub expires_in: Option<std::time::Duration>,
    /// Its rate limit, in calls per second.
    pub max_rps: Option<f64>,
    /// The largest payload it may send, in bytes.
    pub max_payload_bytes: Option<u64>,
}

/// The keys: in memory for every call, in the store for restarts. Cheap to
/// clone.
#[derive(Clone)]
pub struct Keys {
    inner: Arc<Inner>,
}

struct Inner {
    statics: Tokens,
    jwt: Option<jwt::Jwt>,
    by_hash: RwLock<HashMap<[u8; 32], Arc<Entry>>>,
    by_id: RwLock<HashMap<String, Arc<Entry>>>,
    any: AtomicBool,
    db: Db,
    core: Core,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer(v: &str) -> Option<&str> {
    let (scheme, rest) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

impl Keys {
    /// The keys of `db`, beside the static tokens and the JWT verifier;
    /// audited task actions are noted in the task's log through `core`.
    pub async fn load(
        statics: Tokens,
        jwt: Option<jwt::Jwt>,
        db: Db,
        core: Core,
    ) -> Result<Keys, CoreError> {
        let records = db.all().await?;
        let keys = Keys {
            inner: Arc::new(Inner {
                statics,
                jwt,
                by_hash: Default::default(),
                by_id: Default::default(),
                any: AtomicBool::new(!records.is_empty()),
                db,
                core,
            }),
        };
        for r in records {
            keys.insert(Entry::new(r));
        }
        Ok(keys)
    }

    fn insert(&self, e: Arc<Entry>) {
        if let Ok(h) = hex::decode(&e.record.hash) {
            if let Ok(h) = <[u8; 32]>::try_from(h.as_slice()) {
                self.inner.by_hash.write().insert(h, e.clone());
            }
        }
        self.inner.by_id.write().insert(e.record.id.clone(), e);
    }

    /// Whether no caller needs a token.
    pub fn is_open(&self) -> bool {
        self.inner.statics.is_open()
            && self.inner.jwt.is_none()
            && !self.inner.any.load(Ordering::Relaxed)
    }

    /// Who sends this `authorization` value (or, where the route allows it,
    /// this `access_token` query value). A wrong header is not rescued by a
    /// query token.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        access_token: Option<&str>,
    ) -> Result<Principal, Refusal> {
        if self.is_open() {
            return Ok(Principal::Open(Cow::Borrowed(DEFAULT_NAMESPACE)));
        }
        // A bearer header first; else, where the route takes one, the query
        // token (a wrong bearer is not rescued by it).
        let secret = match (authorization.and_then(bearer), access_token) {
            (Some(t), _) => t,
            (None, Some(q)) if !q.is_empty() => q,
            _ if authorization.is_some() => return Err(Unknown::Invalid.into()),
            _ => return Err(Unknown::Missing.into()),
        };
        if !self.inner.statics.is_open() && self.inner.statics.accepts(secret) {
            return Ok(Principal::Token(Cow::Borrowed(DEFAULT_NAMESPACE)));
        }
        let found = self.inner.by_hash.read().get(&digest(secret)).cloned();
        let e = match (found, &self.inner.jwt) {
            (Some(e), _) => e,
            (None, Some(j)) if jwt::Jwt::looks_like(secret) => {
                return Ok(Principal::Key(Entry::of_jwt(j.verify(secret)?)))
            }
            (None, _) => return Err(Unknown::Invalid.into()),
        };
        if e.revoked.is_cancelled() {
            return Err(Unknown::Revoked.into());
        }
        let now = now_micros();
        if e.record.expires_at.is_some_and(|at| at <= now) {
            return Err(Unknown::Expired.into());
        }
        // Last use to within a second: one store write per key and flush.
        if now - e.last_used.load(Ordering::Relaxed) > 1_000_000 {
            e.last_used.store(now, Ordering::Relaxed);
            e.used.store(true, Ordering::Relaxed);
        }
        Ok(Principal::Key(e))
    }

    /// Creates a key: its record and its secret (returned once).
    pub async fn create(
        &self,
        who: &Principal,
        new: NewKey,
    ) -> Result<(KeyRecord, String), CoreError> {
        if matches!(who, Principal::Open(_)) && new.role != Role::Admin {
            // The first key closes an open server: were it not an admin,
            // nobody could manage keys afterwards.
            return Err(CoreError::FailedPrecondition(
                "role: this server has no token and no key yet, so its first key must be \
                 an admin key (or set auth.tokens first): a first key of another role \
                 would leave nobody able to create or revoke keys"
                    .into(),
            ));
        }
        let secret = format!(
            "sy_{}",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                rand::random::<[u8; 32]>()
            )
        );
        // The edge refused a namespace the caller does not manage.
        let namespace = new
            .namespace
            .filter(|ns| who.manages(ns))
            .unwrap_or_else(|| who.namespace().to_string());
        let now = now_micros();
        let record = KeyRecord {
            id: format!("key_{:016x}", rand::random::<u64>()),
            namespace,
            hash: hex::encode(digest(&secret)),
            role: new.role,
            user_id: new.user_id,
            names: new.names,
            expires_at: new
                .expires_in
                .map(|d| now.saturating_add(d.as_micros().min(i64::MAX as u128) as i64)),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
            max_rps: new.max_rps,
            max_payload_bytes: new.max_payload_bytes,
        };
        self.inner.db.insert(&record).await?;
        self.inner.any.store(true, Ordering::Relaxed);
        self.insert(Entry::new(record.clone()));
        let detail = format!(
            "namespace {}, role {}{}{}{}{}",
            record.namespace,
            record.role.as_str(),
            record
                .user_id
                .as_deref()
                .map(|u| format!(", user {u}"))
                .unwrap_or_default(),
            if record.names.is_empty() {
                String::new()
            } else {
                format!(", names {}", record.names.join(","))
            },
            record
                .max_rps
                .map(|r| format!(", max_requests_per_second {r}"))
                .unwrap_or_default(),
            record
                .max_payload_bytes
                .map(|b| format!(", max_payload_bytes {b}"))
                .unwrap_or_default(),
        );
        self.audit(who, "key_create", &record.id, &detail).await;
        Ok((record, secret))
    }

    /// Every key, newest first.
    pub fn list(&self) -> Vec<KeyRecord> {
        let mut v: Vec<KeyRecord> = self
            .inner
            .by_id
            .read()
            .values()
            .map(|e| e.record())
            .collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        v
    }

    /// Revokes a key: refused at once, its open streams closed. `Ok(true)`:
    /// it was revoked already.
    pub async fn revoke(&self, who: &Principal, id: &str) -> Result<(KeyRecord, bool), CoreError> {
        let e = self
            .inner
            .by_id
            .read()
            .get(id)
            .filter(|e| who.manages(&e.record.namespace))
            .cloned()
            .ok_or_else(|| CoreError::Absent(format!("key {id} not found")))?;
        if e.revoked.is_cancelled() {
            return Ok((e.record(), true));
        }
        let now = now_micros();
        self.inner.db.revoke(id, now).await?;
        e.revoked_at.store(now, Ordering::Relaxed);
        e.revoked.cancel();
        self.audit(who, "key_revoke", id, "").await;
        Ok((e.record(), false))
    }

    /// Records an action in the audit log. A failed write is logged: the
    /// action is done.
    pub async fn audit(&self, who: &Principal, action: &str, target: &str, detail: &str) {
        let ev = AuditEvent {
            seq: 0,
            time: now_micros(),
            key_id: who.key_id().to_string(),
            action: action.to_string(),
            target: target.to_string(),
            detail: detail.to_string(),
            namespace: who.namespace().to_string(),
        };
        if let Err(e) = self.inner.db.append(&ev).await {
            tracing::error!(cause = %e, action, target, key_id = who.key_id(), "writing the audit log");
        }
    }

    /// Records an action on a task: in the audit log and in the task's log.
    pub async fn audit_task(&self, who: &Principal, action: &str, id: TaskId, detail: &str) {
        self.note_task(who, action, id, detail);
        self.audit(who, action, &id.to_string(), detail).await;
    }

    /// Notes an action in the task's log only (the audit log has it once,
    /// for many tasks). A server without authentication has no key to
    /// name: its task logs keep only the action's own line.
    pub fn note_task(&self, who: &Principal, action: &str, id: TaskId, detail: &str) {
        if matches!(who, Principal::Open(_)) {
            return;
        }
        let line = if detail.is_empty() {
            format!("{action} by key {}", who.key_id())
        } else {
            format!("{action} by key {}: {detail}", who.key_id())
        };
        self.inner.core.note(LogEntry::system(id, 0, line));
    }

    /// A page of the audit log, newest first: events older than `before`
    /// (0: from the newest), at most `limit`.
    pub async fn audit_page(
        &self,
        who: &Principal,
        before: i64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, CoreError> {
        // A caller of `default` reads every namespace's events (as it
        // manages every namespace's keys); another, its own namespace's.
        let ns = Some(who.namespace()).filter(|ns| *ns != DEFAULT_NAMESPACE);
        Ok(self.inner.db.page(before, limit, ns).await?)
    }

    /// Writes the last-used times that changed. Policy: run by
    /// [`Keys::flush_loop`].
    pub async fn flush_last_used(&self) {
        let used: Vec<(String, Micros)> = self
            .inner
            .by_id
            .read()
            .values()
            .filter(|e| e.used.swap(false, Ordering::Relaxed))
            .map(|e| (e.record.id.clone(), e.last_used.load(Ordering::Relaxed)))
            .collect();
        if used.is_empty() {
            return;
        }
        if let Err(e) = self.inner.db.touch(&used).await {
            tracing::warn!(cause = %e, "writing the keys' last use");
        }
    }

    /// Writes the last-used times every few seconds until `stop`
    /// (policy on shutdown: one last write, then end).
    pub async fn flush_loop(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush_last_used().await,
                _ = stop.cancelled() => {
                    self.flush_last_used().await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_the_table_says() {
        use Need::*;
        assert!(Role::Admin.grants(Admin));
        assert!(!Role::Operator.grants(Admin) && Role::Operator.grants(Operate));
        assert!(Role::Scheduler.grants(Cancel) && !Role::Scheduler.grants(Operate));
        assert!(Role::Reader.grants(Read) && !Role::Reader.grants(Cancel));
        assert!(Role::Worker.grants(Work) && !Role::Worker.grants(Read));
        for r in ["admin", "operator", "scheduler", "reader", "worker"] {
            assert_eq!(Role::parse(r).map(Role::as_str), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    fn key(role: Role, user: Option<&str>, names: &[&str]) -> Principal {
        Principal::Key(Entry::new(KeyRecord {
            id: "key_0000000000000001".into(),
            namespace: DEFAULT_NAMESPACE.into(),
            hash: hex::encode(digest("s")),
            role,
            user_id: user.map(str::to_string),
            names: names.iter().map(|n| n.to_string()).collect(),
            expires_at: None,
            created_at: 0,
            last_used_at: None,
            revoked_at: None,
            max_rps: None,
            max_payload_bytes: None,
        }))
    }

    #[test]
    fn scopes_follow_the_user_and_the_scheduling_key() {
        let u1 = key(Role::Operator, Some("u1"), &[]);
        assert!(u1.may(Need::Cancel, Scoping::Tasks).is_ok());
        assert!(u1.may(Need::Read, Scoping::User).is_ok());
        assert_eq!(u1.may(Need::Read, Scoping::Global), Err(Denied::Scope));
        let sched = key(Role::Scheduler, None, &[]);
        assert_eq!(sched.may(Need::Read, Scoping::User), Err(Denied::Scope));
        assert!(sched.may(Need::Read, Scoping::Tasks).is_ok());
        assert!(matches!(
            sched.may(Need::Operate, Scoping::Tasks),
            Err(Denied::Role(..))
        ));

        let mut spec = TaskSpec::new(
            "n",
            crate::domain::TaskType::Simple,
            crate::domain::Target::Simple { queue: None },
        );
        u1.stamp(&mut spec).unwrap();
        assert_eq!(spec.user_id.as_deref(), Some("u1"));
        spec.user_id = Some("u2".into());
        assert_eq!(u1.stamp(&mut spec), Err(Denied::User));

        let mut mine = TaskSpec::new(
            "n",
            crate::domain::TaskType::Simple,
            crate::domain::Target::Simple { queue: None },
        );
        mine.labels.insert(LABEL.into(), "key_forged".into());
        sched.stamp(&mut mine).unwrap();
        assert_eq!(
            mine.labels.get(LABEL).map(String::as_str),
            Some("key_0000000000000001")
        );
        let mut other = mine.clone();
        Principal::Token(Cow::Borrowed(DEFAULT_NAMESPACE))
            .stamp(&mut other)
            .unwrap();
        assert!(
            !other.labels.contains_key(LABEL),
            "an unscoped caller's label is dropped"
        );

        let w = key(Role::Worker, None, &["a", "b"]);
        assert!(w.may_register(&["a".into(), "b".into()]).is_ok());
        assert_eq!(w.may_register(&["a".into(), "c".into()]), Err("c"));
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
