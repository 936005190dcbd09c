//! Where schedules are kept: `schedules.db` (SQLite, WAL, `synchronous =
//! full`) in the data directory beside the task store, the `schedules`
//! table of the PostgreSQL store (fenced writes, see
//! `store::postgres::schedules`), or nowhere when the task store is in
//! memory. Owns the SQLite table; must not decide anything.

use std::path::Path;

use rusqlite::params;

use crate::store::postgres::schedules::{ScheduleRow, ScheduleRows};
use crate::store::sqlite::side::SideDb;
use crate::store::StoreError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schedules (
    id         TEXT    PRIMARY KEY,
    spec       TEXT    NOT NULL,
    template   BLOB    NOT NULL,
    paused     INTEGER NOT NULL,
    note       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    state      TEXT    NOT NULL
);";

/// The schedules' storage.
pub enum Db {
    /// Nothing is kept (the task store is in memory too).
    Memory,
    /// `schedules.db`.
    Sqlite(SideDb),
    /// The PostgreSQL store's `schedules` table.
    Postgres(Box<ScheduleRows>),
}

impl Db {
    /// Opens (or creates) `schedules.db` at `path`.
    pub fn open_sqlite(path: &Path) -> Result<Db, StoreError> {
        SideDb::open(path, SCHEMA, "schedules database").map(Db::Sqlite)
    }

    /// Every stored schedule, by id.
    pub async fn all(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        match self {
            Db::Memory => Ok(Vec::new()),
            Db::Postgres(rows) => rows.all().await,
            Db::Sqlite(conn) => {
                conn.run(|c| {
                    let mut stmt = c.prepare(
                        "SELECT id, spec, template, paused, note, created_at, updated_at, state
                         FROM schedules ORDER BY id",
                    )?;
                    let rows = stmt.query_map([], |r| {
                        Ok(ScheduleRow {
                            id: r.get(0)?,
                            spec: r.get(1)?,
                            template: r.get(2)?,
                            paused: r.get(3)?,
                            note: r.get(4)?,
                            created_at: r.get(5)?,
                            updated_at: r.get(6)?,
                            state: r.get(7)?,
                        })
                    })?;
                    rows.collect()
                })
                .await
            }
        }
    }

    /// Inserts or replaces a whole schedule.
    pub async fn put(&self, row: ScheduleRow) -> Result<(), StoreError> {
        match self {
            Db::Memory => Ok(()),
            Db::Postgres(rows) => rows.put(&row).await,
            Db::Sqlite(conn) => {
                conn.run(move |c| {
                    c.execute(
                        "INSERT INTO schedules (id, spec, template, paused, note, created_at, updated_at, state)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (id) DO UPDATE SET spec = ?2, template = ?3, paused = ?4,
                             note = ?5, updated_at = ?7, state = ?8",
                        params![
                            row.id,
                            row.spec,
                            row.template,
                            row.paused,
                            row.note,
                            row.created_at,
                            row.updated_at,
                            row.state
                        ],
                    )
                    .map(drop)
                })
                .await
            }
        }
    }

    /// Replaces the fire state of a schedule that still exists.
    pub async fn put_state(&self, id: &str, state: String) -> Result<(), StoreError> {
        match self {
            Db::Memory => Ok(()),
            Db::Postgres(rows) => rows.put_state(id, &state).await,
            Db::Sqlite(conn) => {
                let id = id.to_string();
                conn.run(move |c| {
                    c.execute(
                        "UPDATE schedules SET state = ?2 WHERE id = ?1",
                        params![id, state],
                    )
                    .map(drop)
                })
                .await
            }
        }
    }

    /// Replaces the fire states of several schedules in one transaction
    /// (one commit for a whole pass of the runner); ids deleted meanwhile
    /// stay deleted.
    pub async fn put_states(&self, states: Vec<(String, String)>) -> Result<(), StoreError> {
        match self {
            Db::Memory => Ok(()),
            _ if states.is_empty() => Ok(()),
            Db::Postgres(rows) => rows.put_states(&states).await,
            Db::Sqlite(conn) => {
                conn.run(move |c| {
                    let tx = c.unchecked_transaction()?;
                    {
                        let mut stmt =
                            tx.prepare_cached("UPDATE schedules SET state = ?2 WHERE id = ?1")?;
                        for (id, state) in &states {
                            stmt.execute(params![id, state])?;
                        }
                    }
                    tx.commit()
                })
                .await
            }
        }
    }

    /// Deletes a schedule.
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        match self {
            Db::Memory => Ok(()),
            Db::Postgres(rows) => rows.delete(id).await,
            Db::Sqlite(conn) => {
                let id = id.to_string();
                conn.run(move |c| {
                    c.execute("DELETE FROM schedules WHERE id = ?1", params![id])
                        .map(drop)
                })
                .await
            }
        }
    }
}
