//! The page cache, in a process of its own (it must be installed before
//! SQLite initializes): B-trees rebalanced over reused free pages, a
//! transaction that grew the file rolled back, and the file checked after
//! each, against a copy of the rows kept in memory; then a file that
//! shrinks, whose pages past its new end leave the cache.

use std::collections::BTreeMap;

use rusqlite::{params, Connection};

#[test]
fn the_page_cache_answers_needless_truncations_and_keeps_every_page_right() {
    assert!(switchyard_wal_vfs::install_page_cache_at_start());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA auto_vacuum = INCREMENTAL;
         PRAGMA journal_mode = WAL;
         PRAGMA cache_size = -2048;
         CREATE TABLE t (k INTEGER NOT NULL, v TEXT NOT NULL, PRIMARY KEY (k)) WITHOUT ROWID;
         CREATE INDEX t_v ON t (v);",
    )
    .unwrap();
    let mut model = BTreeMap::new();
    // A deterministic mix: grow, remove most (free pages), grow again over
    // them (rebalances that renumber pages through the temporary number).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let value = |k: i64, round: u64| format!("{k:08}-{round}-{}", "x".repeat((k % 200) as usize));
    for round in 0..6u64 {
        let tx = conn.unchecked_transaction().unwrap();
        for _ in 0..4_000 {
            let k = (next() % 50_000) as i64;
            let v = value(k, round);
            tx.execute("INSERT OR REPLACE INTO t VALUES (?1, ?2)", params![k, v])
                .unwrap();
            model.insert(k, v);
        }
        tx.commit().unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        let gone: Vec<i64> = model.keys().copied().filter(|_| next() % 4 != 0).collect();
        for k in gone {
            tx.execute("DELETE FROM t WHERE k = ?1", [k]).unwrap();
            model.remove(&k);
        }
        tx.commit().unwrap();
        // Grow the file past its end, then roll back: the cache must drop
        // the pages past the end (that truncation is passed on).
        let tx = conn.unchecked_transaction().unwrap();
        for k in 100_000..103_000i64 {
            tx.execute("INSERT INTO t VALUES (?1, ?2)", params![k, value(k, 99)])
                .unwrap();
        }
        drop(tx);
        check(&conn, &model);
    }
    let (asked, passed_on) = switchyard_wal_vfs::pcache::truncations();
    assert!(passed_on > 0, "{asked} {passed_on}");
    assert!(asked > 2 * passed_on, "{asked} {passed_on}");
    // A second connection (its own cache) reads the same rows.
    check(&Connection::open(&path).unwrap(), &model);

    // The file shrinks: the truncation at the end of that commit is passed
    // on, and the pages past the new end leave the cache.
    conn.execute("DELETE FROM t WHERE k % 10 <> 0", []).unwrap();
    model.retain(|k, _| k % 10 == 0);
    check(&conn, &model);
    let pages =
        |c: &Connection| -> i64 { c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap() };
    let (before, cached) = (pages(&conn), cache_used(&conn));
    {
        // One free page given back per step.
        let mut st = conn.prepare("PRAGMA incremental_vacuum").unwrap();
        let mut rows = st.query([]).unwrap();
        while rows.next().unwrap().is_some() {}
    }
    let (after, left) = (pages(&conn), cache_used(&conn));
    assert!(after < before / 2, "{before} → {after} pages");
    assert!(left < cached / 2, "{cached} → {left} bytes cached");
    check(&conn, &model);
}

/// The bytes the connection's page cache holds.
fn cache_used(conn: &Connection) -> i32 {
    let (mut now, mut high) = (0, 0);
    // SAFETY: the connection's own handle, used while it is open.
    let rc = unsafe {
        libsqlite3_sys::sqlite3_db_status(
            conn.handle(),
            libsqlite3_sys::SQLITE_DBSTATUS_CACHE_USED,
            &mut now,
            &mut high,
            0,
        )
    };
    assert_eq!(rc, 0);
    now
}

fn check(conn: &Connection, model: &BTreeMap<i64, String>) {
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let mut st = conn.prepare("SELECT k, v FROM t ORDER BY k").unwrap();
    let rows: BTreeMap<i64, String> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), model.len());
    assert!(rows == *model);
    let by_index: i64 = conn
        .query_row(
            "SELECT count(*) FROM t INDEXED BY t_v WHERE v > ''",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(by_index as usize, model.len());
}
