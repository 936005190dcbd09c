//! The writer's VFS: SQLite's own (`unix`), except that a WAL file's writes
//! reach the kernel in one `pwrite` per commit (per 124 KiB) instead of two
//! per page.
//!
//! SQLite writes each WAL frame as two calls (its 24-byte header, then the
//! page), so a commit of 9 pages is 18 `pwrite`s before its `fsync`, and
//! one of 70 pages 140: in a profile of bulk scheduling, a sixth of the
//! writer thread's time went to them (see the README's Performance
//! section). This VFS keeps a
//! WAL file's writes in memory while they follow each other, and writes
//! them out as one before anything that needs them in the file: the
//! `fsync` (a commit), a read that overlaps them, a truncate, the file's
//! size, a file control, the close.
//!
//! Why it is safe, and only with `synchronous = full` (the store opens the
//! writer through it in no other case): readers (other connections) read
//! only frames the WAL index lists, and a commit lists its frames only after
//! the WAL's `fsync` returned, by which time they are in the file. A frame
//! still in memory when the process dies belongs to a commit that was never
//! acknowledged, as if the crash had come before its writes. With
//! `synchronous = normal` a commit lists its frames without an `fsync`, so
//! readers could look for frames still in memory.
//!
//! Every other file (the database, its shared memory, temporary files) is
//! the `unix` VFS's own file, unchanged.
//!
//! The crate also holds the process's page cache ([`pcache`]): SQLite's
//! own, without a walk of the whole cache at the end of most commits that
//! rebalanced a B-tree.
//!
//! Safety: SQLite calls these functions with the file it allocated
//! (`szOsFile` bytes, 8-aligned) and opened through [`open`], from one
//! connection at a time; a WAL file's handle is a [`WalFile`] whose inner
//! `unix` file lies at [`INNER_AT`], every other handle is the `unix` file
//! itself. This crate is the only unsafe code of Switchyard: the server's
//! crate forbids it.

use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use libsqlite3_sys as ffi;

pub mod pcache;

/// Installs [`pcache`]'s page cache for the whole process; whether it was
/// installed. Call it first thing in `main`, before any other thread runs
/// and before any SQLite call: SQLite takes a page cache only before it
/// initializes, and only while no other thread calls it. Later calls (or
/// a first call after SQLite initialized) change nothing and answer
/// whether it was installed.
pub fn install_page_cache_at_start() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    // SAFETY: the caller runs this before any other thread uses SQLite
    // (see above); the OnceLock makes later calls no-ops.
    *DONE.get_or_init(|| unsafe { pcache::install() })
}

/// The name the writer's connection opens with.
pub const NAME: &str = "switchyard-wal";
const NAME_C: &CStr = c"switchyard-wal";

/// Writes kept in memory past this are written out first: a commit larger
/// than this is written in pieces of about this size.
const MAX_HELD: usize = 4 << 20;

/// The most one write of the `unix` VFS takes: it writes at most
/// `0x1ffff` bytes per call (SQLite itself never asks for more than a page)
/// and reports a shorter write as a full disk. 31 pages.
const MAX_WRITE: usize = 0x1ffff & !0xfff;

static HELD: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Since the process started: the WAL writes SQLite asked for, and the
/// writes that reached the file for them.
pub fn writes() -> (u64, u64) {
    (
        HELD.load(Ordering::Relaxed),
        WRITTEN.load(Ordering::Relaxed),
    )
}

/// A WAL file: SQLite's handle (first, as SQLite requires), the writes held,
/// then the `unix` VFS's own file at [`INNER_AT`].
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    held: Vec<u8>,
    /// The file offset of `held[0]`.
    at: i64,
}

const INNER_AT: usize = (std::mem::size_of::<WalFile>() + 15) & !15;

/// Registers the VFS (once per process); whether it can be used.
pub fn register() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| {
        // SAFETY: the default VFS lives as long as the process; the copy is
        // leaked, as SQLite keeps a pointer to a registered VFS.
        unsafe {
            let parent = ffi::sqlite3_vfs_find(ptr::null());
            if parent.is_null() {
                return false;
            }
            let mut vfs = *parent;
            vfs.pNext = ptr::null_mut();
            vfs.zName = NAME_C.as_ptr();
            vfs.szOsFile = (INNER_AT + (*parent).szOsFile as usize) as c_int;
            vfs.pAppData = parent.cast();
            // The other entries are the parent's own: the `unix` VFS's
            // xDelete, xAccess, xRandomness and the rest do not use the VFS
            // they are called with, apart from `mxPathname`, copied here.
            vfs.xOpen = Some(open);
            let vfs = Box::leak(Box::new(vfs));
            ffi::sqlite3_vfs_register(vfs, 0) == ffi::SQLITE_OK
        }
    })
}

unsafe fn parent(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    (*vfs).pAppData.cast()
}

unsafe fn inner(f: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    f.cast::<u8>().add(INNER_AT).cast()
}

unsafe fn methods(f: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    &*(*f).pMethods
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let parent = parent(vfs);
    let Some(parent_open) = (*parent).xOpen else {
        return ffi::SQLITE_CANTOPEN;
    };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // The parent's file in place: SQLite calls its methods directly.
        return parent_open(parent, name, file, flags, out_flags);
    }
    let rc = parent_open(parent, name, inner(file), flags, out_flags);
    if rc != ffi::SQLITE_OK {
        // A failed open leaves no methods to call (SQLite's rule).
        (*file).pMethods = ptr::null();
        return rc;
    }
    ptr::write(
        file.cast::<WalFile>(),
        WalFile {
            base: ffi::sqlite3_file {
                pMethods: &WAL_METHODS,
            },
            held: Vec::new(),
            at: 0,
        },
    );
    rc
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe fn wal<'a>(f: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    &mut *f.cast::<WalFile>()
}

/// Writes the held writes out, as one. They are dropped whatever happens:
/// after a failure SQLite writes the transaction's frames again.
unsafe fn flush(f: *mut ffi::sqlite3_file) -> c_int {
    let w = wal(f);
    if w.held.is_empty() {
        return ffi::SQLITE_OK;
    }
    let inner = inner(f);
    let mut rc = ffi::SQLITE_OK;
    for (i, piece) in w.held.chunks(MAX_WRITE).enumerate() {
        rc = match methods(inner).xWrite {
            Some(x) => x(
                inner,
                piece.as_ptr().cast(),
                piece.len() as c_int,
                w.at + (i * MAX_WRITE) as i64,
            ),
            None => ffi::SQLITE_IOERR_WRITE,
        };
        WRITTEN.fetch_add(1, Ordering::Relaxed);
        if rc != ffi::SQLITE_OK {
            break;
        }
    }
    w.held.clear();
    rc
}

unsafe extern "C" fn write(
    f: *mut ffi::sqlite3_file,
    data: *const c_void,
    amt: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    let w = wal(f);
    let (n, end) = (amt.max(0) as usize, w.at + w.held.len() as i64);
    let data = std::slice::from_raw_parts(data.cast::<u8>(), n);
    if !w.held.is_empty() && off >= w.at && off + n as i64 <= end {
        // A frame of this transaction written again (SQLite rewrites a
        // page's frame in place): change the held copy.
        let from = (off - w.at) as usize;
        w.held[from..from + n].copy_from_slice(data);
        HELD.fetch_add(1, Ordering::Relaxed);
        return ffi::SQLITE_OK;
    }
    let follows = w.held.is_empty() || off == end;
    if !follows || w.held.len() + n > MAX_HELD {
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    let w = wal(f);
    if w.held.is_empty() {
        w.at = off;
    }
    w.held.extend_from_slice(data);
    HELD.fetch_add(1, Ordering::Relaxed);
    ffi::SQLITE_OK
}

unsafe extern "C" fn read(
    f: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    let w = wal(f);
    if !w.held.is_empty() && off < w.at + w.held.len() as i64 && off + amt as i64 > w.at {
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    let inner = inner(f);
    match methods(inner).xRead {
        Some(x) => x(inner, buf, amt, off),
        None => ffi::SQLITE_IOERR_READ,
    }
}

unsafe extern "C" fn close(f: *mut ffi::sqlite3_file) -> c_int {
    let flushed = flush(f);
    ptr::drop_in_place(&mut wal(f).held);
    let inner = inner(f);
    let closed = match methods(inner).xClose {
        Some(x) => x(inner),
        None => ffi::SQLITE_OK,
    };
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

/// A method that calls the `unix` file's method `m`: after writing out what
/// is held (`flush`: the call needs the file as SQLite wrote it), or at once
/// (`keep`: nothing held matters to it).
macro_rules! forward {
    (@held flush, $f:ident) => {
        let rc = flush($f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    };
    (@held keep, $f:ident) => {};
    ($name:ident, $m:ident, $held:ident, ($($arg:ident: $ty:ty),*), $missing:expr) => {
        unsafe extern "C" fn $name(f: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            forward!(@held $held, f);
            let inner = inner(f);
            match methods(inner).$m {
                Some(x) => x(inner $(, $arg)*),
                None => $missing,
            }
        }
    };
}

forward!(sync, xSync, flush, (flags: c_int), ffi::SQLITE_IOERR_FSYNC);
forward!(truncate, xTruncate, flush, (size: ffi::sqlite3_int64), ffi::SQLITE_IOERR_TRUNCATE);
forward!(file_size, xFileSize, flush, (size: *mut ffi::sqlite3_int64), ffi::SQLITE_IOERR_FSTAT);
forward!(file_control, xFileControl, flush, (op: c_int, arg: *mut c_void), ffi::SQLITE_NOTFOUND);
forward!(lock, xLock, keep, (level: c_int), ffi::SQLITE_OK);
forward!(unlock, xUnlock, keep, (level: c_int), ffi::SQLITE_OK);
forward!(check_reserved_lock, xCheckReservedLock, keep, (out: *mut c_int), ffi::SQLITE_OK);
forward!(sector_size, xSectorSize, keep, (), 4096);
forward!(device_characteristics, xDeviceCharacteristics, keep, (), 0);

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};

    fn open(path: &std::path::Path) -> Connection {
        assert!(register());
        let c = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), NAME).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "synchronous", "FULL").unwrap();
        c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        c
    }

    /// What one connection commits through the VFS, another (SQLite's own
    /// VFS) reads: small commits, a transaction larger than what is held
    /// (written in pieces, with pages spilled and rewritten), a checkpoint
    /// that reads the WAL back, and a reopen that recovers from it.
    #[test]
    fn what_the_writer_commits_through_it_every_reader_finds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let w = open(&path);
        // A small cache, so the large transaction spills pages mid-way.
        w.pragma_update(None, "cache_size", 50).unwrap();
        w.execute_batch(
            "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);
             CREATE INDEX t_v ON t(v);",
        )
        .unwrap();
        let r = Connection::open(&path).unwrap();
        let count = |c: &Connection| -> i64 {
            c.query_row("SELECT count(*) FROM t", [], |x| x.get(0))
                .unwrap()
        };
        let (held, written) = writes();
        for k in 0..200 {
            w.execute("INSERT INTO t (k, v) VALUES (?1, 'small')", [k])
                .unwrap();
            assert_eq!(count(&r), k + 1, "a reader sees every commit at once");
        }
        // Each commit (two pages: the row, the index entry; four writes
        // from SQLite) reached the file as one write.
        let (h, wr) = (writes().0 - held, writes().1 - written);
        assert_eq!((h, wr), (800, 200));
        let big = "x".repeat(3000);
        let tx = w.unchecked_transaction().unwrap();
        for k in 1000..4000 {
            tx.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                rusqlite::params![k, big],
            )
            .unwrap();
        }
        // Rewrites pages the transaction wrote already.
        tx.execute(
            "UPDATE t SET v = 'changed' WHERE k >= 1000 AND k % 7 = 0",
            [],
        )
        .unwrap();
        tx.commit().unwrap();
        assert_eq!(count(&r), 3200);
        let changed: i64 = r
            .query_row("SELECT count(*) FROM t WHERE v = 'changed'", [], |x| {
                x.get(0)
            })
            .unwrap();
        assert_eq!(changed, (1000..4000).filter(|k| k % 7 == 0).count() as i64);
        let ok: String = r
            .query_row("PRAGMA integrity_check", [], |x| x.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        // The writer's own checkpoint reads the frames back from the WAL.
        w.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        w.execute(
            "INSERT INTO t (k, v) VALUES (-1, 'after the checkpoint')",
            [],
        )
        .unwrap();
        drop(r);
        // Never closed, as after a crash: a new connection reads it all.
        std::mem::forget(w);
        let again = Connection::open(&path).unwrap();
        assert_eq!(count(&again), 3201);
        let ok: String = again
            .query_row("PRAGMA integrity_check", [], |x| x.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }
}
