//! The page cache: SQLite's own (`pcache1`), except that a truncation that
//! cannot drop any page is not passed on to it.
//!
//! At the end of every write transaction SQLite truncates the page cache
//! to the database's size. `pcache1` does so by walking its hash table
//! whenever it has seen a page number past that size since its last
//! truncation (its `iMaxKey`), and walking all of it when that number is
//! far past. A B-tree rebalance that reuses free pages sorts the new pages
//! by number, swapping two of them through a temporary number: the page
//! of the "pending byte" (page 262,145 with 4 KiB pages). In a file under
//! 1 GiB that number is past the end, so every commit that rebalanced a
//! B-tree after removals ends with a walk of the whole cache: in the soak
//! (7,200 tasks/s, completed tasks kept one minute) 150 walks a second of
//! 8,192 slots and 4,400 pages, 8% of the writer thread's time, each
//! commit that paid for one half a millisecond longer.
//!
//! This cache keeps, per cache, the highest page number it has handed out
//! or moved a page to (other than the temporary one), and whether a page
//! holds the temporary number; a truncation above both drops nothing and
//! is answered here. Every other call is `pcache1`'s, with its own cache.
//!
//! SQLite takes a page cache only before it initializes: [`install`] must
//! run before any other SQLite call of the process (the server calls it
//! first thing in `main`), and only while no other thread uses SQLite.

use std::ffi::{c_int, c_uint};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use libsqlite3_sys as ffi;

/// SQLite's `PENDING_BYTE` (its default, which only its own tests change).
const PENDING_BYTE: c_uint = 0x4000_0000;

/// `pcache1`'s methods.
struct Inner(ffi::sqlite3_pcache_methods2);
// SAFETY: functions, and `pArg`, which this module never dereferences
// (SQLite passes it to `xInit` and `xShutdown`, given as they are).
unsafe impl Send for Inner {}
unsafe impl Sync for Inner {}

static INNER: OnceLock<Inner> = OnceLock::new();
static ASKED: AtomicU64 = AtomicU64::new(0);
static PASSED_ON: AtomicU64 = AtomicU64::new(0);

/// One cache: `pcache1`'s, and what is known of the page numbers in it.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    /// No page of this cache has a number above this, apart from `temp`.
    max_key: c_uint,
    /// The rebalance's temporary page number (the pending byte's page).
    temp: c_uint,
    /// Whether a page may hold `temp`.
    temp_held: bool,
}

/// Installs this page cache; whether it was installed (not when SQLite
/// has initialized already, or its default cache could not be read).
///
/// # Safety
///
/// No other thread may call SQLite while this runs (SQLite's rule for
/// `sqlite3_config`).
pub unsafe fn install() -> bool {
    if INNER.get().is_some() {
        return true;
    }
    let mut inner = std::mem::MaybeUninit::<ffi::sqlite3_pcache_methods2>::zeroed();
    if ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, inner.as_mut_ptr()) != ffi::SQLITE_OK {
        return false;
    }
    let inner = inner.assume_init();
    let complete = inner.xCreate.is_some()
        && inner.xCachesize.is_some()
        && inner.xPagecount.is_some()
        && inner.xFetch.is_some()
        && inner.xUnpin.is_some()
        && inner.xRekey.is_some()
        && inner.xTruncate.is_some()
        && inner.xDestroy.is_some();
    if !complete || INNER.set(Inner(inner)).is_err() {
        return false;
    }
    let ours = ffi::sqlite3_pcache_methods2 {
        iVersion: 1,
        pArg: inner.pArg,
        xInit: inner.xInit,
        xShutdown: inner.xShutdown,
        xCreate: Some(create),
        xCachesize: Some(cachesize),
        xPagecount: Some(pagecount),
        xFetch: Some(fetch),
        xUnpin: Some(unpin),
        xRekey: Some(rekey),
        xTruncate: Some(truncate),
        xDestroy: Some(destroy),
        xShrink: inner.xShrink.map(|_| shrink as unsafe extern "C" fn(_)),
    };
    // SQLite copies the methods.
    ffi::sqlite3_config(ffi::SQLITE_CONFIG_PCACHE2, &ours as *const _) == ffi::SQLITE_OK
}

/// Since the process started: the truncations SQLite asked for, and those
/// passed on to `pcache1` (the others could drop nothing).
pub fn truncations() -> (u64, u64) {
    (
        ASKED.load(Ordering::Relaxed),
        PASSED_ON.load(Ordering::Relaxed),
    )
}

fn inner() -> &'static ffi::sqlite3_pcache_methods2 {
    // Set before any of the functions below can be called.
    &INNER.get().expect("page cache installed").0
}

unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a mut Cache {
    &mut *p.cast::<Cache>()
}

unsafe extern "C" fn create(
    sz_page: c_int,
    sz_extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let Some(create) = inner().xCreate else {
        return std::ptr::null_mut();
    };
    let p = create(sz_page, sz_extra, purgeable);
    if p.is_null() {
        return p;
    }
    let temp = match c_uint::try_from(sz_page) {
        Ok(size) if size > 0 => PENDING_BYTE / size + 1,
        _ => 0,
    };
    Box::into_raw(Box::new(Cache {
        inner: p,
        max_key: 0,
        temp,
        temp_held: false,
    }))
    .cast()
}

unsafe extern "C" fn cachesize(p: *mut ffi::sqlite3_pcache, n: c_int) {
    if let Some(f) = inner().xCachesize {
        f(cache(p).inner, n)
    }
}

unsafe extern "C" fn pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    inner().xPagecount.map_or(0, |f| f(cache(p).inner))
}

unsafe extern "C" fn fetch(
    p: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let c = cache(p);
    let Some(f) = inner().xFetch else {
        return std::ptr::null_mut();
    };
    let page = f(c.inner, key, create);
    if !page.is_null() {
        c.note(key);
    }
    page
}

unsafe extern "C" fn unpin(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    if let Some(f) = inner().xUnpin {
        f(cache(p).inner, page, discard)
    }
}

unsafe extern "C" fn rekey(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let c = cache(p);
    if let Some(f) = inner().xRekey {
        f(c.inner, page, old, new)
    }
    // The page numbers are unique in a cache: the page that held `temp`
    // has left it.
    if old == c.temp && new != c.temp {
        c.temp_held = false;
    }
    c.note(new);
}

unsafe extern "C" fn truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let c = cache(p);
    ASKED.fetch_add(1, Ordering::Relaxed);
    if limit > c.max_key && !(c.temp_held && c.temp >= limit) {
        // No page numbered `limit` or above: nothing to drop.
        return;
    }
    PASSED_ON.fetch_add(1, Ordering::Relaxed);
    if let Some(f) = inner().xTruncate {
        f(c.inner, limit)
    }
    c.max_key = c.max_key.min(limit.saturating_sub(1));
    if c.temp >= limit {
        c.temp_held = false;
    }
}

unsafe extern "C" fn destroy(p: *mut ffi::sqlite3_pcache) {
    let c = Box::from_raw(p.cast::<Cache>());
    if let Some(f) = inner().xDestroy {
        f(c.inner)
    }
}

unsafe extern "C" fn shrink(p: *mut ffi::sqlite3_pcache) {
    if let Some(f) = inner().xShrink {
        f(cache(p).inner)
    }
}

impl Cache {
    /// A page now has number `key`.
    fn note(&mut self, key: c_uint) {
        if key == self.temp {
            self.temp_held = true;
        } else {
            self.max_key = self.max_key.max(key);
        }
    }
}
