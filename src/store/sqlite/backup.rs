//! `switchyard backup`: a consistent copy of the store's file, taken while
//! the server runs.
//!
//! The copy is SQLite's `VACUUM INTO` on a read-only connection of its own:
//! one read transaction, so one snapshot, whatever commits meanwhile; in WAL
//! mode a reader never blocks the writer (and the writer's WAL restart does
//! not wait for it, see `restart_wal`), and the copy is compact. It is
//! written beside the destination under a temporary name, synced, and only
//! then given its name, so a file with that name is always a whole copy.

use std::fs::File;
use std::io::ErrorKind;

use super::*;

/// What [`backup`] wrote.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The copy.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Tasks in it (`None` for a file without a `tasks` table, such as the
    /// workflow registry).
    pub tasks: Option<u64>,
    /// How long the copy took.
    pub took: Duration,
}

/// Why a backup was not written.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The destination exists, and replacing it was not asked for.
    #[error("{0} exists: choose another file, or replace it with --force")]
    Exists(PathBuf),
    /// There is no store file to copy.
    #[error("no store at {0} (is the data directory right?)")]
    NoStore(PathBuf),
    /// SQLite failed.
    #[error("copying {path}: {cause}")]
    Db {
        /// The file being copied.
        path: PathBuf,
        /// What SQLite said.
        cause: rusqlite::Error,
    },
    /// Writing the copy failed.
    #[error("writing {path}: {cause}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// Removes the temporary copy unless it was given its name.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Copies the store file `db` into `dest` as one consistent snapshot. The
/// server may be running (its commits go on meanwhile) or stopped. An
/// existing `dest` is refused unless `replace`.
pub fn backup(db: &Path, dest: &Path, replace: bool) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    if !db.is_file() {
        return Err(BackupError::NoStore(db.to_path_buf()));
    }
    // Refused before any work; checked again, atomically, at the end.
    if !replace && dest.symlink_metadata().is_ok() {
        return Err(BackupError::Exists(dest.to_path_buf()));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| BackupError::Io { path, cause }
    };
    let sqlite = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| BackupError::Db { path, cause }
    };
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .ok_or_else(|| BackupError::Io {
            path: dest.to_path_buf(),
            cause: std::io::Error::new(ErrorKind::InvalidInput, "not a file name"),
        })?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    // A partial copy of an earlier run that was killed.
    let _ = std::fs::remove_file(&tmp);
    let partial = Partial(Some(tmp.clone()));

    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite(db))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite(db))?;
    let target = tmp.to_str().ok_or_else(|| BackupError::Io {
        path: tmp.clone(),
        cause: std::io::Error::new(ErrorKind::InvalidInput, "not a UTF-8 path"),
    })?;
    conn.execute("VACUUM INTO ?1", [target])
        .map_err(sqlite(db))?;
    drop(conn);
    // VACUUM INTO does not promise the copy is on disk.
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    let (bytes, tasks) = {
        let copy = Connection::open_with_flags(&tmp, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sqlite(&tmp))?;
        let has_tasks: bool = copy
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'tasks'",
                [],
                |r| r.get(0),
            )
            .map_err(sqlite(&tmp))?;
        let tasks = match has_tasks {
            true => Some(
                copy.query_row("SELECT count(*) FROM tasks", [], |r| r.get::<_, i64>(0))
                    .map_err(sqlite(&tmp))?
                    .max(0) as u64,
            ),
            false => None,
        };
        let bytes = std::fs::metadata(&tmp).map_err(io(&tmp))?.len();
        (bytes, tasks)
    };
    if replace {
        std::fs::rename(&tmp, dest).map_err(io(dest))?;
    } else {
        // A link fails if the name is taken, even by a file that appeared
        // during the copy.
        match std::fs::hard_link(&tmp, dest) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(BackupError::Exists(dest.to_path_buf()))
            }
            // A file system without hard links.
            Err(_) if dest.symlink_metadata().is_err() => {
                std::fs::rename(&tmp, dest).map_err(io(dest))?
            }
            Err(_) => return Err(BackupError::Exists(dest.to_path_buf())),
        }
    }
    drop(partial);
    // The new name is durable too.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))?;
    Ok(BackupReport {
        path: dest.to_path_buf(),
        bytes,
        tasks,
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{insert, task};

    #[tokio::test]
    async fn a_backup_is_a_whole_copy_and_refuses_to_overwrite_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("switchyard.db");
        let s = SqliteStore::open(SqliteOptions {
            path: Some(db.clone()),
            ..Default::default()
        })
        .unwrap();
        let t = task(None);
        insert(&*s, &t).await;
        let dest = dir.path().join("copy.db");
        let r = backup(&db, &dest, false).unwrap();
        assert_eq!(r.tasks, Some(1));
        assert_eq!(r.bytes, std::fs::metadata(&dest).unwrap().len());
        // Refused, and the first copy is untouched.
        insert(&*s, &task(None)).await;
        assert!(matches!(
            backup(&db, &dest, false),
            Err(BackupError::Exists(_))
        ));
        assert_eq!(backup(&db, &dest, true).unwrap().tasks, Some(2));
        // No temporary file is left.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // The copy opens as a store.
        s.close();
        let c = SqliteStore::open(SqliteOptions {
            path: Some(dest),
            ..Default::default()
        })
        .unwrap();
        assert!(c.get(t.id).await.unwrap().is_some());
        assert!(matches!(
            backup(&dir.path().join("none.db"), &dir.path().join("x.db"), false),
            Err(BackupError::NoStore(_))
        ));
    }
}
