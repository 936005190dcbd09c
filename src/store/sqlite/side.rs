//! A small SQLite file of its own beside the task store (`schedules.db`,
//! `flow.db`): WAL, `synchronous = full`, one connection, used off the
//! async threads. Owns only the opening and the hop to a blocking thread;
//! the tables and their statements are the owner's.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::Connection;

use crate::store::StoreError;

/// One side database. Cheap to clone.
#[derive(Clone)]
pub struct SideDb {
    conn: Arc<Mutex<Connection>>,
    /// What it holds, for errors ("schedules database").
    what: &'static str,
}

impl SideDb {
    /// Opens (or creates) the file at `path` and applies `schema`.
    pub fn open(path: &Path, schema: &str, what: &'static str) -> Result<SideDb, StoreError> {
        let err = |e: rusqlite::Error| StoreError::Unavailable(format!("{what}: {e}"));
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(schema).map_err(err)?;
        Ok(SideDb {
            conn: Arc::new(Mutex::new(conn)),
            what,
        })
    }

    /// Adds the columns `table` lacks (a file of an earlier version):
    /// `(name, declaration)` pairs, each added with `ALTER TABLE … ADD
    /// COLUMN`. Names and declarations are the owner's constants.
    pub fn add_columns(&self, table: &str, columns: &[(&str, &str)]) -> Result<(), StoreError> {
        let what = self.what;
        let err = |e: rusqlite::Error| StoreError::Unavailable(format!("{what}: {e}"));
        let conn = self.conn.lock();
        let mut st = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .map_err(err)?;
        let have = st
            .query_map([], |r| r.get::<_, String>(1))
            .map_err(err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err)?;
        for (name, decl) in columns {
            if !have.iter().any(|h| h == name) {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {decl}"))
                    .map_err(err)?;
            }
        }
        Ok(())
    }

    /// Runs `f` on the connection on a blocking thread.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        let what = self.what;
        tokio::task::spawn_blocking(move || f(&conn.lock()))
            .await
            .map_err(|e| StoreError::Unavailable(format!("{what}: {e}")))?
            .map_err(|e| StoreError::Unavailable(format!("{what}: {e}")))
    }
}
