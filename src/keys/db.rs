//! Where the keys and the audit log are kept: `keys.db` beside the SQLite
//! store, the `api_keys` and `audit_events` tables of the PostgreSQL store,
//! or memory (a store in memory). Owns the SQLite tables' SQL; the
//! PostgreSQL SQL is `store::postgres::keys`'s.

use std::collections::VecDeque;
use std::path::Path;

use parking_lot::Mutex;

use super::{KeyRecord, Role};
use crate::domain::Micros;
use crate::store::postgres::keys::{AuditRow, KeyRow, KeyRows};
use crate::store::sqlite::side::SideDb;
use crate::store::StoreError;

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Its sequence number (assigned by the store).
    pub seq: i64,
    /// When.
    pub time: Micros,
    /// The key that did it.
    pub key_id: String,
    /// What.
    pub action: String,
    /// To what.
    pub target: String,
    /// More.
    pub detail: String,
    /// The namespace of the caller that did it.
    pub namespace: String,
}

/// The most audit events kept in memory (a store in memory).
const MEMORY_AUDIT: usize = 10_000;

/// The storage.
pub enum Db {
    /// Nothing durable.
    Memory(Mutex<Memory>),
    /// `keys.db`.
    Sqlite(SideDb),
    /// The PostgreSQL tables.
    Postgres(Box<KeyRows>),
}

/// The keys and events of a store in memory.
#[derive(Default)]
pub struct Memory {
    keys: Vec<KeyRecord>,
    audit: VecDeque<AuditEvent>,
    seq: i64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL DEFAULT 'default',
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    user_id TEXT,
    names TEXT NOT NULL DEFAULT '',
    expires_at INTEGER,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at INTEGER,
    max_requests_per_second REAL,
    max_payload_bytes INTEGER
);
CREATE TABLE IF NOT EXISTS audit_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    namespace TEXT NOT NULL DEFAULT 'default',
    key_id TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
-- The audit log of one namespace, newest first (a namespace's admin).
CREATE INDEX IF NOT EXISTS audit_events_namespace ON audit_events(namespace, seq);
";

fn to_row(r: &KeyRecord) -> KeyRow {
    KeyRow {
        id: r.id.clone(),
        namespace: r.namespace.clone(),
        hash: r.hash.clone(),
        role: r.role.as_str().to_string(),
        user_id: r.user_id.clone(),
        names: r.names.join(","),
        expires_at: r.expires_at,
        created_at: r.created_at,
        last_used_at: r.last_used_at,
        revoked_at: r.revoked_at,
        max_rps: r.max_rps,
        max_payload_bytes: r.max_payload_bytes,
    }
}

fn from_row(r: KeyRow) -> Option<KeyRecord> {
    let role = match Role::parse(&r.role) {
        Some(role) => role,
        None => {
            // A role this version does not know grants nothing.
            tracing::warn!(key_id = %r.id, role = %r.role, "a stored key has an unknown role: ignored");
            return None;
        }
    };
    Some(KeyRecord {
        id: r.id,
        namespace: r.namespace,
        hash: r.hash,
        role,
        user_id: r.user_id,
        names: r
            .names
            .split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect(),
        expires_at: r.expires_at,
        created_at: r.created_at,
        last_used_at: r.last_used_at,
        revoked_at: r.revoked_at,
        // A limit out of bounds (edited by hand) is none, never a refusal
        // of every call.
        max_rps: r
            .max_rps
            .filter(|v| (super::limit::MIN_RPS..=super::limit::MAX_RPS).contains(v)),
        max_payload_bytes: r.max_payload_bytes.filter(|b| *b > 0),
    })
}

fn from_audit(r: AuditRow) -> AuditEvent {
    AuditEvent {
        seq: r.seq,
        time: r.at,
        key_id: r.key_id,
        action: r.action,
        target: r.target,
        detail: r.detail,
        namespace: r.namespace,
    }
}

impl Db {
    /// Opens `keys.db` in `dir` (a file of an earlier version gains the
    /// limit columns).
    pub fn open_sqlite(dir: &Path) -> Result<Db, StoreError> {
        let db = SideDb::open(&dir.join(super::FILE), SCHEMA, "keys database")?;
        db.add_columns(
            "api_keys",
            &[
                ("max_requests_per_second", "REAL"),
                ("max_payload_bytes", "INTEGER"),
            ],
        )?;
        Ok(Db::Sqlite(db))
    }

    /// A store in memory.
    pub fn memory() -> Db {
        Db::Memory(Mutex::default())
    }

    /// Every key.
    pub async fn all(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = match self {
            Db::Memory(m) => return Ok(m.lock().keys.clone()),
            Db::Sqlite(db) => {
                db.run(|c| {
                    let mut st = c.prepare(
                        "SELECT id, namespace, hash, role, user_id, names, expires_at, created_at, \
                         last_used_at, revoked_at, max_requests_per_second, max_payload_bytes \
                         FROM api_keys",
                    )?;
                    let rows = st.query_map([], |r| {
                        Ok(KeyRow {
                            id: r.get(0)?,
                            namespace: r.get(1)?,
                            hash: r.get(2)?,
                            role: r.get(3)?,
                            user_id: r.get(4)?,
                            names: r.get(5)?,
                            expires_at: r.get(6)?,
                            created_at: r.get(7)?,
                            last_used_at: r.get(8)?,
                            revoked_at: r.get(9)?,
                            max_rps: r.get(10)?,
                            max_payload_bytes: r
                                .get::<_, Option<i64>>(11)?
                                .map(|b| b.max(0) as u64),
                        })
                    })?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                })
                .await?
            }
            Db::Postgres(p) => p.all().await?,
        };
        Ok(rows.into_iter().filter_map(from_row).collect())
    }

    /// Stores a new key.
    pub async fn insert(&self, r: &KeyRecord) -> Result<(), StoreError> {
        let row = to_row(r);
        match self {
            Db::Memory(m) => {
                m.lock().keys.push(r.clone());
                Ok(())
            }
            Db::Sqlite(db) => {
                db.run(move |c| {
                    c.execute(
                        "INSERT INTO api_keys (id, namespace, hash, role, user_id, names, expires_at, \
                         created_at, last_used_at, revoked_at, max_requests_per_second, max_payload_bytes) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                        rusqlite::params![
                            row.id,
                            row.namespace,
                            row.hash,
                            row.role,
                            row.user_id,
                            row.names,
                            row.expires_at,
                            row.created_at,
                            row.last_used_at,
                            row.revoked_at,
                            row.max_rps,
                            row.max_payload_bytes.map(|b| b.min(i64::MAX as u64) as i64)
                        ],
                    )
                    .map(drop)
                })
                .await
            }
            Db::Postgres(p) => p.insert(&row).await,
        }
    }

    /// Marks a key revoked.
    pub async fn revoke(&self, id: &str, at: Micros) -> Result<(), StoreError> {
        match self {
            Db::Memory(m) => {
                if let Some(k) = m.lock().keys.iter_mut().find(|k| k.id == id) {
                    k.revoked_at = Some(at);
                }
                Ok(())
            }
            Db::Sqlite(db) => {
                let id = id.to_string();
                db.run(move |c| {
                    c.execute(
                        "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                        rusqlite::params![id, at],
                    )
                    .map(drop)
                })
                .await
            }
            Db::Postgres(p) => p.revoke(id, at).await,
        }
    }

    /// Writes last-used times.
    pub async fn touch(&self, used: &[(String, Micros)]) -> Result<(), StoreError> {
        match self {
            Db::Memory(m) => {
                let mut m = m.lock();
                for (id, at) in used {
                    if let Some(k) = m.keys.iter_mut().find(|k| &k.id == id) {
                        k.last_used_at = Some(*at);
                    }
                }
                Ok(())
            }
            Db::Sqlite(db) => {
                let used = used.to_vec();
                db.run(move |c| {
                    let mut st =
                        c.prepare("UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1")?;
                    for (id, at) in &used {
                        st.execute(rusqlite::params![id, at])?;
                    }
                    Ok(())
                })
                .await
            }
            Db::Postgres(p) => p.touch(used).await,
        }
    }

    /// Appends an audit event.
    pub async fn append(&self, ev: &AuditEvent) -> Result<(), StoreError> {
        let row = AuditRow {
            seq: 0,
            at: ev.time,
            key_id: ev.key_id.clone(),
            action: ev.action.clone(),
            target: ev.target.clone(),
            detail: ev.detail.clone(),
            namespace: ev.namespace.clone(),
        };
        match self {
            Db::Memory(m) => {
                let mut m = m.lock();
                m.seq += 1;
                let mut ev = ev.clone();
                ev.seq = m.seq;
                m.audit.push_front(ev);
                m.audit.truncate(MEMORY_AUDIT);
                Ok(())
            }
            Db::Sqlite(db) => {
                db.run(move |c| {
                    c.execute(
                        "INSERT INTO audit_events (at, key_id, action, target, detail, namespace) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        rusqlite::params![
                            row.at,
                            row.key_id,
                            row.action,
                            row.target,
                            row.detail,
                            row.namespace
                        ],
                    )
                    .map(drop)
                })
                .await
            }
            Db::Postgres(p) => p.append(&row).await,
        }
    }

    /// Events older than `before` (0: any), of namespace `ns` when given,
    /// newest first, at most `limit`.
    pub async fn page(
        &self,
        before: i64,
        limit: usize,
        ns: Option<&str>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let before = if before <= 0 { i64::MAX } else { before };
        let of_ns = ns.map(str::to_string);
        let rows = match self {
            Db::Memory(m) => {
                return Ok(m
                    .lock()
                    .audit
                    .iter()
                    .filter(|e| e.seq < before && ns.is_none_or(|n| e.namespace == n))
                    .take(limit)
                    .cloned()
                    .collect())
            }
            Db::Sqlite(db) => {
                db.run(move |c| {
                    // `?3` NULL: every namespace (the index walks one).
                    let mut st = c.prepare(match of_ns {
                        None => {
                            "SELECT seq, at, key_id, action, target, detail, namespace \
                             FROM audit_events WHERE seq < ?1 AND ?3 IS NULL \
                             ORDER BY seq DESC LIMIT ?2"
                        }
                        Some(_) => {
                            "SELECT seq, at, key_id, action, target, detail, namespace \
                             FROM audit_events WHERE namespace = ?3 AND seq < ?1 \
                             ORDER BY seq DESC LIMIT ?2"
                        }
                    })?;
                    let params = rusqlite::params![before, limit as i64, of_ns];
                    let rows = st.query_map(params, |r| {
                        Ok(AuditRow {
                            seq: r.get(0)?,
                            at: r.get(1)?,
                            key_id: r.get(2)?,
                            action: r.get(3)?,
                            target: r.get(4)?,
                            detail: r.get(5)?,
                            namespace: r.get(6)?,
                        })
                    })?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                })
                .await?
            }
            Db::Postgres(p) => p.page(before, limit as i64, ns).await?,
        };
        Ok(rows.into_iter().map(from_audit).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_keys_file_of_an_earlier_version_gains_the_limit_columns() {
        let dir = tempfile::tempdir().unwrap();
        let old = rusqlite::Connection::open(dir.path().join(super::super::FILE)).unwrap();
        old.execute_batch(
            "CREATE TABLE api_keys (id TEXT PRIMARY KEY, namespace TEXT NOT NULL DEFAULT 'default', \
             hash TEXT NOT NULL UNIQUE, role TEXT NOT NULL, user_id TEXT, names TEXT NOT NULL DEFAULT '', \
             expires_at INTEGER, created_at INTEGER NOT NULL, last_used_at INTEGER, revoked_at INTEGER);
             INSERT INTO api_keys (id, hash, role, created_at) VALUES ('key_old', 'h1', 'reader', 1);",
        )
        .unwrap();
        drop(old);
        let db = Db::open_sqlite(dir.path()).unwrap();
        let mut new = db.all().await.unwrap().pop().expect("the old key");
        assert_eq!((new.max_rps, new.max_payload_bytes), (None, None));
        new.id = "key_new".into();
        new.hash = "h2".into();
        new.max_rps = Some(2.5);
        new.max_payload_bytes = Some(100);
        db.insert(&new).await.unwrap();
        drop(db);
        // Opened again: nothing to add, and the limits read back.
        let db = Db::open_sqlite(dir.path()).unwrap();
        let back = db.all().await.unwrap();
        let k = back.iter().find(|k| k.id == "key_new").unwrap();
        assert_eq!((k.max_rps, k.max_payload_bytes), (Some(2.5), Some(100)));
    }

    /// A namespace's page of the audit log reads its events only, newest
    /// first, walking the namespace's index (no scan of the log).
    #[tokio::test]
    async fn a_namespace_reads_its_audit_events_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sqlite(dir.path()).unwrap();
        for (i, ns) in ["default", "acme", "beta", "acme"].iter().enumerate() {
            db.append(&AuditEvent {
                seq: 0,
                time: i as i64,
                key_id: format!("key_{i}"),
                action: "cancel".into(),
                target: "t".into(),
                detail: String::new(),
                namespace: ns.to_string(),
            })
            .await
            .unwrap();
        }
        let acme = db.page(0, 10, Some("acme")).await.unwrap();
        let ids: Vec<&str> = acme.iter().map(|e| e.key_id.as_str()).collect();
        assert_eq!(ids, ["key_3", "key_1"]);
        assert_eq!(db.page(0, 10, None).await.unwrap().len(), 4);
        assert_eq!(
            db.page(acme[0].seq, 10, Some("acme")).await.unwrap().len(),
            1
        );
        drop(db);
        let c = rusqlite::Connection::open(dir.path().join(super::super::FILE)).unwrap();
        let plan: Vec<String> = c
            .prepare(
                "EXPLAIN QUERY PLAN SELECT seq FROM audit_events \
                 WHERE namespace = 'acme' AND seq < 9 ORDER BY seq DESC LIMIT 10",
            )
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let text = plan.join(" | ");
        assert!(text.contains("audit_events_namespace"), "{text}");
        assert!(!text.contains("TEMP B-TREE"), "{text}");
    }
}
