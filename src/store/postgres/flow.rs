//! Flow rule rows in PostgreSQL (`flow_rules`), for the `flow` module: one
//! connection of its own, opened on first use and again after it was lost;
//! every write is one transaction fenced by the leader's term, as the task
//! writer's are, so a deposed leader changes no rule.
//!
//! Owns the SQL of the `flow_rules` table; what a row means is the `flow`
//! module's.

use super::side::SideConn;
use super::PgStore;
use crate::store::StoreError;

/// One stored rule, as columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRow {
    /// `concurrency` or `paused`.
    pub kind: String,
    /// The policy's pattern, or the paused name.
    pub name: String,
    /// The limit, or empty.
    pub value: String,
    /// The order rules were first set in.
    pub seq: i64,
}

/// The flow rules of one schema.
pub struct FlowRows {
    conn: SideConn,
}

impl FlowRows {
    /// The rows of `store`'s schema, written under its fence.
    pub fn open(store: &PgStore) -> Result<FlowRows, StoreError> {
        Ok(FlowRows {
            conn: SideConn::open(store, "flow")?,
        })
    }

    /// Every stored rule, in the order they were first set.
    pub async fn all(&self) -> Result<Vec<FlowRow>, StoreError> {
        self.conn
            .with_client(async |c| {
                let rows = c
                    .query(
                        "SELECT kind, name, value, seq FROM flow_rules ORDER BY seq, kind, name",
                        &[],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| FlowRow {
                        kind: r.get(0),
                        name: r.get(1),
                        value: r.get(2),
                        seq: r.get(3),
                    })
                    .collect())
            })
            .await
    }

    /// Inserts a rule or changes its value (keeping its place).
    pub async fn put(&self, row: &FlowRow) -> Result<(), StoreError> {
        let term = self.conn.term();
        self.conn
            .fenced(async |tx| {
                tx.execute(
                "INSERT INTO flow_rules (kind, name, value, seq, term) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (kind, name) DO UPDATE SET value = $3, term = $5",
                &[&row.kind, &row.name, &row.value, &row.seq, &term],
            )
            .await
            .map(drop)
            })
            .await
    }

    /// Deletes a rule.
    pub async fn delete(&self, kind: &str, name: &str) -> Result<(), StoreError> {
        self.conn
            .fenced(async |tx| {
                tx.execute(
                    "DELETE FROM flow_rules WHERE kind = $1 AND name = $2",
                    &[&kind, &name],
                )
                .await
                .map(drop)
            })
            .await
    }
}
