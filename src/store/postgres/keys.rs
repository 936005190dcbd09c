//! API key and audit rows in PostgreSQL (`api_keys`, `audit_events`), for
//! the `keys` module: one connection of its own; every write one
//! transaction fenced by the leader's term, so a deposed leader changes no
//! key. Owns the SQL of those tables; what a row means is the `keys`
//! module's.

use super::side::SideConn;
use super::PgStore;
use crate::store::StoreError;

/// One key, as columns.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    /// Id.
    pub id: String,
    /// Namespace.
    pub namespace: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// Role name.
    pub role: String,
    /// Bound user.
    pub user_id: Option<String>,
    /// Comma-separated task names.
    pub names: String,
    /// Expiry, µs.
    pub expires_at: Option<i64>,
    /// Creation, µs.
    pub created_at: i64,
    /// Last use, µs.
    pub last_used_at: Option<i64>,
    /// Revocation, µs.
    pub revoked_at: Option<i64>,
    /// Rate limit, calls per second.
    pub max_rps: Option<f64>,
    /// Payload limit, bytes.
    pub max_payload_bytes: Option<u64>,
}

/// One audit event, as columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Sequence number.
    pub seq: i64,
    /// Time, µs.
    pub at: i64,
    /// Key id.
    pub key_id: String,
    /// Action.
    pub action: String,
    /// Target.
    pub target: String,
    /// Detail.
    pub detail: String,
    /// The namespace of the caller that did it.
    pub namespace: String,
}

/// The key and audit rows of one schema.
pub struct KeyRows {
    conn: SideConn,
}

impl KeyRows {
    /// The rows of `store`'s schema, written under its fence.
    pub fn open(store: &PgStore) -> Result<KeyRows, StoreError> {
        Ok(KeyRows {
            conn: SideConn::open(store, "keys")?,
        })
    }

    /// Every key.
    pub async fn all(&self) -> Result<Vec<KeyRow>, StoreError> {
        self.conn
            .with_client(async |c| {
                let rows = c
                    .query(
                        "SELECT id, namespace, hash, role, user_id, names, expires_at, created_at, \
                         last_used_at, revoked_at, max_requests_per_second, max_payload_bytes \
                         FROM api_keys",
                        &[],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| KeyRow {
                        id: r.get(0),
                        namespace: r.get(1),
                        hash: r.get(2),
                        role: r.get(3),
                        user_id: r.get(4),
                        names: r.get(5),
                        expires_at: r.get(6),
                        created_at: r.get(7),
                        last_used_at: r.get(8),
                        revoked_at: r.get(9),
                        max_rps: r.get(10),
                        max_payload_bytes: r.get::<_, Option<i64>>(11).map(|b| b.max(0) as u64),
                    })
                    .collect())
            })
            .await
    }

    /// Inserts a key.
    pub async fn insert(&self, k: &KeyRow) -> Result<(), StoreError> {
        let term = self.conn.term();
        self.conn
            .fenced(async |tx| {
                tx.execute(
                    "INSERT INTO api_keys (id, namespace, hash, role, user_id, names, expires_at, \
                     created_at, last_used_at, revoked_at, term, max_requests_per_second, \
                     max_payload_bytes) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                    &[
                        &k.id,
                        &k.namespace,
                        &k.hash,
                        &k.role,
                        &k.user_id,
                        &k.names,
                        &k.expires_at,
                        &k.created_at,
                        &k.last_used_at,
                        &k.revoked_at,
                        &term,
                        &k.max_rps,
                        &k.max_payload_bytes.map(|b| b.min(i64::MAX as u64) as i64),
                    ],
                )
                .await
                .map(drop)
            })
            .await
    }

    /// Marks a key revoked.
    pub async fn revoke(&self, id: &str, at: i64) -> Result<(), StoreError> {
        let term = self.conn.term();
        self.conn
            .fenced(async |tx| {
                tx.execute(
                    "UPDATE api_keys SET revoked_at = $2, term = $3 WHERE id = $1 AND revoked_at IS NULL",
                    &[&id, &at, &term],
                )
                .await
                .map(drop)
            })
            .await
    }

    /// Writes last-used times.
    pub async fn touch(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        self.conn
            .fenced(async |tx| {
                for (id, at) in used {
                    tx.execute(
                        "UPDATE api_keys SET last_used_at = $2 WHERE id = $1",
                        &[id, at],
                    )
                    .await?;
                }
                Ok(())
            })
            .await
    }

    /// Appends an audit event.
    pub async fn append(&self, e: &AuditRow) -> Result<(), StoreError> {
        let term = self.conn.term();
        self.conn
            .fenced(async |tx| {
                tx.execute(
                    "INSERT INTO audit_events (at, key_id, action, target, detail, term, namespace) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &e.at,
                        &e.key_id,
                        &e.action,
                        &e.target,
                        &e.detail,
                        &term,
                        &e.namespace,
                    ],
                )
                .await
                .map(drop)
            })
            .await
    }

    /// Events with `seq < before` (of namespace `ns`, when given), newest
    /// first, at most `limit`.
    pub async fn page(
        &self,
        before: i64,
        limit: i64,
        ns: Option<&str>,
    ) -> Result<Vec<AuditRow>, StoreError> {
        self.conn
            .with_client(async |c| {
                let rows = match ns {
                    None => {
                        c.query(
                            "SELECT seq, at, key_id, action, target, detail, namespace \
                             FROM audit_events WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
                            &[&before, &limit],
                        )
                        .await?
                    }
                    Some(ns) => {
                        c.query(
                            "SELECT seq, at, key_id, action, target, detail, namespace \
                             FROM audit_events WHERE namespace = $3 AND seq < $1 \
                             ORDER BY seq DESC LIMIT $2",
                            &[&before, &limit, &ns],
                        )
                        .await?
                    }
                };
                Ok(rows
                    .iter()
                    .map(|r| AuditRow {
                        seq: r.get(0),
                        at: r.get(1),
                        key_id: r.get(2),
                        action: r.get(3),
                        target: r.get(4),
                        detail: r.get(5),
                        namespace: r.get(6),
                    })
                    .collect())
            })
            .await
    }
}
