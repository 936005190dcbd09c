//! Where the flow rules set at run time are kept: `flow.db` (SQLite, WAL,
//! `synchronous = full`) in the data directory beside the task store, the
//! `flow_rules` table of the PostgreSQL store (fenced writes, see
//! `store::postgres::flow`), or nowhere when the task store is in memory.
//! Owns the SQLite table; must not decide anything.

use std::path::Path;

use rusqlite::params;

use crate::store::postgres::flow::{FlowRow, FlowRows};
use crate::store::sqlite::side::SideDb;
use crate::store::StoreError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS flow_rules (
    kind  TEXT    NOT NULL,
    name  TEXT    NOT NULL,
    value TEXT    NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);";

/// The flow rules' storage.
pub enum Db {
    /// Nothing is kept (the task store is in memory too).
    Memory,
    /// `flow.db`.
    Sqlite(SideDb),
    /// The PostgreSQL store's `flow_rules` table.
    Postgres(Box<FlowRows>),
}

impl Db {
    /// Opens (or creates) `flow.db` at `path`.
    pub fn open_sqlite(path: &Path) -> Result<Db, StoreError> {
        SideDb::open(path, SCHEMA, "flow rules database").map(Db::Sqlite)
    }

    /// Every stored rule, in the order they were first set.
    pub async fn all(&self) -> Result<Vec<FlowRow>, StoreError> {
        match self {
            Db::Memory => Ok(Vec::new()),
            Db::Postgres(rows) => rows.all().await,
            Db::Sqlite(conn) => {
                conn.run(|c| {
                    let mut stmt = c.prepare(
                        "SELECT kind, name, value, seq FROM flow_rules ORDER BY seq, kind, name",
                    )?;
                    let rows = stmt.query_map([], |r| {
                        Ok(FlowRow {
                            kind: r.get(0)?,
                            name: r.get(1)?,
                            value: r.get(2)?,
                            seq: r.get(3)?,
                        })
                    })?;
                    rows.collect()
                })
                .await
            }
        }
    }

    /// Inserts a rule or changes its value (keeping its place).
    pub async fn put(&self, row: FlowRow) -> Result<(), StoreError> {
        match self {
            Db::Memory => Ok(()),
            Db::Postgres(rows) => rows.put(&row).await,
            Db::Sqlite(conn) => {
                conn.run(move |c| {
                    c.execute(
                        "INSERT INTO flow_rules (kind, name, value, seq) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (kind, name) DO UPDATE SET value = ?3",
                        params![row.kind, row.name, row.value, row.seq],
                    )
                    .map(drop)
                })
                .await
            }
        }
    }

    /// Deletes a rule.
    pub async fn delete(&self, kind: &'static str, name: &str) -> Result<(), StoreError> {
        match self {
            Db::Memory => Ok(()),
            Db::Postgres(rows) => rows.delete(kind, name).await,
            Db::Sqlite(conn) => {
                let name = name.to_string();
                conn.run(move |c| {
                    c.execute(
                        "DELETE FROM flow_rules WHERE kind = ?1 AND name = ?2",
                        params![kind, name],
                    )
                    .map(drop)
                })
                .await
            }
        }
    }
}
