//! Files read again when they change, without a restart: the TLS
//! certificate and key (`[tls]`) and the JWKS file of `[auth.jwt]`.
//!
//! What the files give is kept in memory and handed out by
//! [`Reloading::current`]. When asked, at most once per interval (a second
//! in the server), it looks at the files' stamps (modification time, size
//! and, on Unix, inode: an in-place write and an atomic rename both change
//! one) and reads them again when a stamp changed. A version that cannot be
//! used (unreadable, removed, half written, invalid) keeps the last good
//! value and logs a warning once; it is tried again when a file changes
//! again.
//!
//! Owns: the stamps and when to look. Must not: know what the files hold
//! (the caller's `read` turns them into a value).

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

/// How often, at most, the server looks at a reloaded file's stamp.
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// What identifies a version of a file: its modification time, size and
/// inode (0 off Unix); `None` when it cannot be looked at.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some((m.modified().ok()?, m.len(), inode))
}

type Read<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

/// A value read from files, read again when they change.
pub struct Reloading<T> {
    what: &'static str,
    files: Vec<PathBuf>,
    every: Duration,
    read: Read<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    value: T,
    /// The files' stamps when `value` was read.
    stamps: Vec<Stamp>,
    /// Stamps whose files could not be used: not read again (nor logged
    /// again) until a file changes once more.
    refused: Option<Vec<Stamp>>,
    looked: Instant,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl<T: Clone> Reloading<T> {
    /// Reads `files` now with `read` (an error here is the caller's: the
    /// start-up stops), then again when they change, looked at once per
    /// `every` at most. `what` names the value in logs ("TLS certificate").
    pub fn load<E: Display>(
        what: &'static str,
        files: Vec<PathBuf>,
        every: Duration,
        read: impl Fn() -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, E> {
        // Stamps before reading: a write during the read is seen next time.
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let value = read()?;
        Ok(Reloading {
            what,
            files,
            every,
            read: Box::new(move || read().map_err(|e| e.to_string())),
            state: Mutex::new(State {
                value,
                stamps,
                refused: None,
                looked: Instant::now(),
            }),
        })
    }

    /// The value now, read again first if the files changed since the last
    /// look (one `stat` a file, once per interval at most).
    pub fn current(&self) -> T {
        let mut s = self.state.lock();
        if s.looked.elapsed() >= self.every {
            s.looked = Instant::now();
            let now: Vec<Stamp> = self.files.iter().map(|f| stamp(f)).collect();
            if now != s.stamps && s.refused.as_ref() != Some(&now) {
                match (self.read)() {
                    Ok(v) => {
                        s.value = v;
                        s.stamps = now;
                        s.refused = None;
                        tracing::info!(files = ?self.files, "{} reloaded", self.what);
                    }
                    Err(e) => {
                        s.refused = Some(now);
                        tracing::warn!(
                            cause = %e,
                            "{} changed but cannot be used (yet); keeping the last good one",
                            self.what
                        );
                    }
                }
            }
        }
        s.value.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A file's text as a number; anything else is refused. Counts reads.
    fn number(path: PathBuf, every: Duration) -> (Reloading<u32>, Arc<AtomicUsize>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let n = reads.clone();
        let r = Reloading::load("number", vec![path.clone()], every, move || {
            n.fetch_add(1, Ordering::Relaxed);
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            text.trim().parse::<u32>().map_err(|e| e.to_string())
        })
        .unwrap();
        (r, reads)
    }

    #[test]
    fn a_change_is_read_and_a_bad_version_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("n");
        std::fs::write(&f, "1").unwrap();
        let (r, reads) = number(f.clone(), Duration::ZERO);
        assert_eq!(r.current(), 1);
        assert_eq!(
            reads.load(Ordering::Relaxed),
            1,
            "unchanged: not read again"
        );
        // In place (another size: two writes of one size within the
        // clock's tick would look the same).
        std::fs::write(&f, "22").unwrap();
        assert_eq!(r.current(), 22);
        // Replaced by a rename, the same size: another inode.
        let tmp = dir.path().join("n.tmp");
        std::fs::write(&tmp, "33").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert_eq!(r.current(), 33);
        // Garbage: the last good value, read once, not again until it changes.
        std::fs::write(&f, "garbage").unwrap();
        let before = reads.load(Ordering::Relaxed);
        assert_eq!(r.current(), 33);
        assert_eq!(r.current(), 33);
        assert_eq!(reads.load(Ordering::Relaxed), before + 1);
        // Removed: the same.
        std::fs::remove_file(&f).unwrap();
        assert_eq!(r.current(), 33);
        // Back: read.
        std::fs::write(&f, "4").unwrap();
        assert_eq!(r.current(), 4);
    }

    #[test]
    fn files_are_looked_at_once_per_interval_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("n");
        std::fs::write(&f, "1").unwrap();
        let (r, _) = number(f.clone(), Duration::from_secs(3600));
        std::fs::write(&f, "2").unwrap();
        assert_eq!(r.current(), 1, "not looked at again within the interval");
    }

    #[test]
    fn a_first_read_that_fails_is_the_callers_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let r = Reloading::load("x", vec![missing.clone()], Duration::ZERO, move || {
            std::fs::read_to_string(&missing)
        });
        assert!(r.is_err());
    }
}
