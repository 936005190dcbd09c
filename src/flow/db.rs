//! Where the flow rules set at run time are kept: `flow.db` (SQLite, WAL,
//! `synchronous = full`) in the data directory beside the task store, the
//! `flow_rules` table of the PostgreSQL store (fenced writes, see
//! `store::postgres::flow`), or nowhere when the task store is in memory.
//! Owns the SQLite table; must not decide anything.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{params, Connection};

use crate::store::postgres::flow::{FlowRow, FlowRows};
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
    Sqlite(Arc<Mutex<Connection>>),
    /// The PostgreSQL store's `flow_rules` table.
    Postgres(Box<FlowRows>),
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("flow rules database: {e}"))
}

impl Db {
    /// Opens (or creates) `flow.db` at `path`.
    pub fn open_sqlite(path: &Path) -> Result<Db, StoreError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(Db::Sqlite(Arc::new(Mutex::new(conn))))
    }

    /// Runs `f` on the SQLite connection off the async threads.
    async fn sqlite<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || f(&conn.lock()))
            .await
            .map_err(|e| StoreError::Unavailable(format!("flow rules database: {e}")))?
            .map_err(db_err)
    }

    /// Every stored rule, in the order they were first set.
    pub async fn all(&self) -> Result<Vec<FlowRow>, StoreError> {
        match self {
            Db::Memory => Ok(Vec::new()),
            Db::Postgres(rows) => rows.all().await,
            Db::Sqlite(conn) => {
                Self::sqlite(conn, |c| {
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
                Self::sqlite(conn, move |c| {
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
                Self::sqlite(conn, move |c| {
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
