//! When the disk refuses a commit: which SQLite errors mean "cannot write
//! now" (a full disk, a failing write or sync) rather than "this write is
//! wrong", and the store's writable state that the writer keeps and
//! [`Store::writable`] reads.
//!
//! Measured on a full tmpfs: a commit fails with `SQLITE_FULL` when the WAL
//! (or, in a checkpoint, the database file) cannot grow, and with
//! `SQLITE_IOERR_SHMSIZE` when the WAL index (`-shm`) cannot; in both cases
//! SQLite has rolled the transaction back and the connection is usable.

use rusqlite::ffi;

use super::*;

/// How often the writer tries again a batch the disk refused.
pub(super) const RETRY_EVERY: Duration = Duration::from_millis(250);
/// At shutdown, how long the writer keeps trying a batch the disk refuses
/// before it gives up: what was not committed is not acknowledged, and a
/// restart rebuilds from the store.
pub(super) const CLOSE_PATIENCE: Duration = Duration::from_secs(30);

/// Why the store cannot commit now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Blocked {
    /// No space left on the disk.
    Full(String),
    /// Another error writing or syncing the files.
    Io(String),
}

impl Blocked {
    /// The error callers get: [`StoreError::Full`] (RESOURCE_EXHAUSTED) or
    /// [`StoreError::Unavailable`].
    pub(super) fn error(&self) -> StoreError {
        match self {
            Blocked::Full(why) => StoreError::Full(why.clone()),
            Blocked::Io(why) => StoreError::Unavailable(format!(
                "the store cannot write to its disk ({why}); writes are kept and retried"
            )),
        }
    }
}

/// Whether `e` says the disk cannot take the commit now (the same writes
/// may commit later), and why; `None` for an error of the writes
/// themselves.
pub(super) fn cannot_commit(e: &StoreError) -> Option<Blocked> {
    let StoreError::Db(inner @ rusqlite::Error::SqliteFailure(f, _)) = e else {
        return None;
    };
    let name = match f.extended_code {
        ffi::SQLITE_IOERR_SHMSIZE => "SQLITE_IOERR_SHMSIZE",
        ffi::SQLITE_IOERR_WRITE => "SQLITE_IOERR_WRITE",
        ffi::SQLITE_IOERR_FSYNC => "SQLITE_IOERR_FSYNC",
        ffi::SQLITE_IOERR_DIR_FSYNC => "SQLITE_IOERR_DIR_FSYNC",
        ffi::SQLITE_IOERR_TRUNCATE => "SQLITE_IOERR_TRUNCATE",
        _ if f.code == rusqlite::ErrorCode::DiskFull => "SQLITE_FULL",
        _ => return None,
    };
    let why = format!("{name}: {inner}");
    Some(match f.extended_code {
        // The WAL index could not grow: on a full disk, as measured.
        ffi::SQLITE_IOERR_SHMSIZE => Blocked::Full(why),
        _ if f.code == rusqlite::ErrorCode::DiskFull => Blocked::Full(why),
        _ => Blocked::Io(why),
    })
}

/// Whether the writer can commit; written by the writer, read by
/// [`Store::writable`], `flush` and the shutdown.
#[derive(Debug)]
pub(super) struct Health {
    /// Why the writer cannot commit now; `None` while it can.
    state: tokio::sync::watch::Sender<Option<Blocked>>,
    since: Mutex<Option<Instant>>,
    closing: Mutex<Option<Instant>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: tokio::sync::watch::channel(None).0,
            since: Mutex::new(None),
            closing: Mutex::new(None),
        }
    }
}

impl Health {
    /// `Ok` when commits go through; the reason otherwise.
    pub(super) fn writable(&self) -> Result<(), StoreError> {
        match &*self.state.borrow() {
            Some(b) => Err(b.error()),
            None => Ok(()),
        }
    }

    /// Follows the state (`flush` stops waiting once the store cannot
    /// commit).
    pub(super) fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Blocked>> {
        self.state.subscribe()
    }

    /// The writer could not commit: new writes are refused. Logged once,
    /// not at every retry.
    pub(super) fn block(&self, b: Blocked, stats: &CommitStats) {
        let mut first = false;
        self.state.send_if_modified(|s| match s {
            Some(was) if *was == b => false,
            Some(was) => {
                tracing::debug!(cause = ?b, "the store still cannot commit");
                *was = b.clone();
                true
            }
            None => {
                first = true;
                *s = Some(b.clone());
                true
            }
        });
        if first {
            tracing::warn!(
                cause = ?b,
                "the store cannot commit: the writes are kept and retried every {} ms, \
                 new writes are refused until it can",
                RETRY_EVERY.as_millis()
            );
            *self.since.lock() = Some(Instant::now());
            if let Some(s) = stats.sink.get() {
                s.store_blocked(true);
            }
        }
    }

    /// The writer committed: writable again if it was not.
    pub(super) fn unblock(&self, stats: &CommitStats) {
        if self.state.borrow().is_none() {
            return;
        }
        self.state.send_replace(None);
        let since = self.since.lock().take();
        tracing::info!(
            blocked_ms = since.map_or(0, |t| t.elapsed().as_millis() as u64),
            "the store commits again"
        );
        if let Some(s) = stats.sink.get() {
            s.store_blocked(false);
        }
    }

    /// The store is closing: the writer stops waiting for space after
    /// [`CLOSE_PATIENCE`].
    pub(super) fn closing(&self) {
        self.closing.lock().get_or_insert_with(Instant::now);
    }

    /// Whether the writer should give up a batch the disk refuses.
    pub(super) fn give_up(&self) -> bool {
        self.closing
            .lock()
            .is_some_and(|t| t.elapsed() >= CLOSE_PATIENCE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32) -> StoreError {
        StoreError::Db(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None))
    }

    #[test]
    fn a_full_disk_and_failing_writes_are_told_from_wrong_writes() {
        assert!(matches!(
            cannot_commit(&sqlite(ffi::SQLITE_FULL)),
            Some(Blocked::Full(w)) if w.contains("SQLITE_FULL")
        ));
        assert!(matches!(
            cannot_commit(&sqlite(ffi::SQLITE_IOERR_SHMSIZE)),
            Some(Blocked::Full(_))
        ));
        for c in [
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_IOERR_DIR_FSYNC,
            ffi::SQLITE_IOERR_TRUNCATE,
        ] {
            assert!(
                matches!(cannot_commit(&sqlite(c)), Some(Blocked::Io(_))),
                "{c}"
            );
        }
        for c in [
            ffi::SQLITE_CONSTRAINT_UNIQUE,
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_IOERR_READ,
            ffi::SQLITE_ERROR,
            ffi::SQLITE_READONLY,
        ] {
            assert_eq!(cannot_commit(&sqlite(c)), None, "{c}");
        }
        assert_eq!(cannot_commit(&StoreError::Closed), None);
        assert!(matches!(
            Blocked::Full("x".into()).error(),
            StoreError::Full(_)
        ));
        assert!(matches!(
            Blocked::Io("x".into()).error(),
            StoreError::Unavailable(_)
        ));
    }

    #[test]
    fn the_writable_state_follows_the_writer() {
        let h = Health::default();
        let stats = CommitStats::default();
        assert!(h.writable().is_ok());
        h.block(Blocked::Full("SQLITE_FULL".into()), &stats);
        assert!(matches!(h.writable(), Err(StoreError::Full(_))));
        h.block(Blocked::Io("SQLITE_IOERR_FSYNC".into()), &stats);
        assert!(matches!(h.writable(), Err(StoreError::Unavailable(_))));
        h.unblock(&stats);
        assert!(h.writable().is_ok());
        assert!(!h.give_up());
    }
}
