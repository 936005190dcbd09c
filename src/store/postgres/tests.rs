//! The PostgreSQL store's tests, on the real server of `DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`), each in a schema
//! of its own. They never skip: without PostgreSQL they fail.

use super::*;
use crate::store::contract::{self, store_contract, task, Harness, Opened};
use crate::store::WriteOutcome;

pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Stores in a fresh schema, dropped at the end.
struct Schema(String);

impl Schema {
    fn new() -> Schema {
        Schema(format!("t_{}", uuid::Uuid::now_v7().simple()))
    }

    fn options(&self) -> PgOptions {
        PgOptions {
            url: database_url(),
            schema: self.0.clone(),
            ..Default::default()
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let url = database_url();
        let schema = self.0.clone();
        // Best effort, on a thread of its own (the test's runtime is
        // shutting down).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok((c, conn)) = tokio_postgres::connect(&url, NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!(
                            "DROP SCHEMA IF EXISTS {} CASCADE",
                            quote_ident(&schema)
                        ))
                        .await;
                }
            })
        })
        .join();
    }
}

#[async_trait]
impl Harness for Schema {
    async fn open(&self, lazy_within: Duration) -> Opened {
        let s = PgStore::open(PgOptions {
            lazy_within,
            ..self.options()
        })
        .await
        .expect("PostgreSQL at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test)");
        let (a, b) = (s.stats.clone(), s.stats.clone());
        Opened {
            store: s,
            commits: Box::new(move || a.commits.load(Ordering::Relaxed)),
            coalesced: Box::new(move || Some(b.coalesced.load(Ordering::Relaxed))),
        }
    }

    async fn close(&self, o: Opened) {
        o.store.flush().await.unwrap();
        drop(o);
    }
}

store_contract!(Schema::new());

/// Opening twice, and by several replicas at once, applies the migrations
/// once.
#[tokio::test]
async fn migrations_apply_once_under_concurrent_opens() {
    let schema = Schema::new();
    let opens = (0..4).map(|_| PgStore::open(schema.options()));
    let stores = futures::future::try_join_all(opens).await.unwrap();
    let c = stores[0].reader().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    let embedded = super::embedded::migrations::runner().get_migrations().len() as i64;
    assert!(embedded >= 2);
    assert_eq!(n, embedded, "each migration applied once");
    for s in stores {
        s.close().await;
    }
}

/// A bad schema name or URL is refused with the setting's name.
#[tokio::test]
async fn bad_settings_are_refused_with_their_name() {
    for (url, schema, want) in [
        (database_url(), "bad-name".to_string(), "store.schema"),
        (database_url(), String::new(), "store.schema"),
        ("postgres://[::1".to_string(), "ok".to_string(), "store.url"),
    ] {
        let e = PgStore::open(PgOptions {
            url,
            schema,
            ..Default::default()
        })
        .await
        .err()
        .expect("refused");
        assert!(e.to_string().contains(want), "{e}");
    }
}

fn lease(schema: &Schema, replica: &str, ttl: Duration) -> Lease {
    let opts = PgOptions {
        replica: replica.into(),
        ..schema.options()
    };
    Lease::new(&opts, format!("{replica}:50051"), ttl).unwrap()
}

/// One replica leads; the other waits until the lease lapses, then takes
/// it with the next term; the old leader cannot renew.
#[tokio::test]
async fn the_lease_moves_only_when_it_lapses_and_the_term_grows() {
    let schema = Schema::new();
    let s = PgStore::open(schema.options()).await.unwrap();
    let ttl = Duration::from_millis(500);
    let a = lease(&schema, "a", ttl);
    let b = lease(&schema, "b", ttl);
    assert_eq!(a.try_acquire().await.unwrap(), Leadership::Leader(1));
    assert_eq!(b.try_acquire().await.unwrap(), Leadership::Standby);
    assert!(a.renew(1).await.unwrap());
    assert_eq!(b.try_acquire().await.unwrap(), Leadership::Standby);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(b.try_acquire().await.unwrap(), Leadership::Leader(2));
    assert!(!a.renew(1).await.unwrap(), "the old term cannot renew");
    let (leases, replicas) = b.status().await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!((leases[0].term, leases[0].holder.as_str()), (2, "b"));
    assert_eq!(replicas.len(), 2);
    // A clean release hands over at once.
    b.release(2).await.unwrap();
    assert_eq!(a.try_acquire().await.unwrap(), Leadership::Leader(3));
    s.close().await;
}

/// A leader whose term moved on writes nothing: its next write fails with
/// `Fenced`, every later one too, and the rows keep the new term.
#[tokio::test]
async fn a_fenced_leader_writes_nothing() {
    let schema = Schema::new();
    let ttl = Duration::from_millis(300);
    let old = PgStore::open(PgOptions {
        replica: "old".into(),
        ..schema.options()
    })
    .await
    .unwrap();
    let la = lease(&schema, "old", ttl);
    let Leadership::Leader(t1) = la.try_acquire().await.unwrap() else {
        panic!("first replica must lead");
    };
    old.set_fence(Fence {
        partition: 0,
        term: t1,
        holder: "old".into(),
    });
    let a = task(None);
    assert_eq!(contract::insert(&*old, &a).await, WriteOutcome::Done);
    // The old leader pauses past its lease; a standby takes over.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let new = PgStore::open(PgOptions {
        replica: "new".into(),
        ..schema.options()
    })
    .await
    .unwrap();
    let lb = lease(&schema, "new", ttl);
    let Leadership::Leader(t2) = lb.try_acquire().await.unwrap() else {
        panic!("the standby must take over");
    };
    assert_eq!(t2, t1 + 1);
    new.set_fence(Fence {
        partition: 0,
        term: t2,
        holder: "new".into(),
    });
    let b = task(None);
    assert_eq!(contract::insert(&*new, &b).await, WriteOutcome::Done);
    // The old one wakes up and writes: refused, nothing lands.
    let c = task(None);
    let (tx, rx) = oneshot::channel();
    old.submit(
        vec![WriteOp::Insert {
            task: c.clone(),
            payload: crate::domain::Payload::Json(Arc::from("{}")),
            log: vec![],
            event: None,
        }],
        Some(tx),
    );
    let e = rx.await.unwrap().unwrap_err();
    assert!(
        matches!(*e, StoreError::Fenced { term } if term == t1),
        "{e}"
    );
    assert!(matches!(old.writable(), Err(StoreError::Fenced { .. })));
    tokio::time::timeout(Duration::from_secs(1), old.fenced())
        .await
        .expect("fenced() resolves");
    // Sticky: a later write fails without reaching the database.
    assert!(old.flush().await.is_err());
    assert!(new.get(c.id).await.unwrap().is_none());
    let r = new.reader().await.unwrap();
    let terms: Vec<(uuid::Uuid, i64)> = r
        .query("SELECT id, term FROM tasks ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(terms, vec![(a.id, t1), (b.id, t2)]);
    old.close().await;
    new.close().await;
}

/// Every filter of a list page, and every query of retention and start-up,
/// is planned on an index by PostgreSQL, on a table of 50,000 rows with
/// statistics: no sequential scan of `tasks`, and no sort of every
/// matching row (a sort the planner expects to hold a few rows, such as
/// one limit per value of a merged page, is fine).
#[tokio::test]
async fn every_list_filter_and_sweep_query_uses_an_index() {
    let schema = Schema::new();
    let s = PgStore::open(schema.options()).await.unwrap();
    let c = s.reader().await.unwrap();
    // Realistic spreads: most tasks ended, few pending, 20 names, an owner
    // on one in ten.
    c.batch_execute(
        "INSERT INTO tasks (id, created_at, name, task_type, state, seq, source, user_id,
                            session_id, spec, rt, payload, term, purge_at, parent_id)
         SELECT gen_random_uuid(), i, 'n' || (i % 20), 1 + i % 3,
                CASE WHEN i % 50 = 0 THEN 1 WHEN i % 97 = 0 THEN 4 ELSE 3 END, i, 1 + i % 4,
                CASE WHEN i % 10 = 0 THEN 'u' || (i % 100) END,
                CASE WHEN i % 10 = 1 THEN 's' || (i % 100) END,
                '{}', '{}', '{}', 0,
                CASE WHEN i % 50 <> 0 THEN i END, NULL
         FROM generate_series(1, 50000) AS i;
         ANALYZE tasks;",
    )
    .await
    .unwrap();
    let explain = |sql: String| format!("EXPLAIN {sql}");
    // A sort is bounded when the planner expects few rows under it (an
    // owner's handful, or one limit per value of a merged page).
    let rows = |line: &str| -> u64 {
        let at = line.find(" rows=").expect("an estimate") + 6;
        line[at..].split(' ').next().unwrap().parse().unwrap()
    };
    let check = |what: &str, plan: &[String]| {
        let text = plan.join("\n");
        assert!(!text.contains("Seq Scan on tasks"), "{what}:\n{text}");
        for line in plan.iter().filter(|l| l.contains("Sort  (")) {
            assert!(
                rows(line) <= 2_000,
                "{what}: a sort of every matching row:\n{text}"
            );
        }
        assert!(text.contains("Index"), "{what}:\n{text}");
    };
    let lines = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
        rows.iter().map(|r| r.get::<_, String>(0)).collect()
    };
    let mut checked = 0;
    for (case, mut filter) in contract::filter_cases() {
        // Values the table holds, so the planner's estimates are real.
        if filter.user_id.is_some() {
            filter.user_id = Some("u10".into());
        }
        if filter.session_id.is_some() {
            filter.session_id = Some("s11".into());
        }
        for n in filter.names.iter_mut() {
            *n = if n == "a" { "n1".into() } else { "n2".into() };
        }
        for before in [None, Some(TaskId::now_v7())] {
            let (sql, params) = reads::list_sql(&ListQuery {
                filter: filter.clone(),
                limit: 50,
                before,
            });
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|b| &**b as _).collect();
            check(case, &lines(c.query(&explain(sql), &refs).await.unwrap()));
            checked += 1;
        }
    }
    assert_eq!(checked, 40);
    let now = 25_000i64;
    let limit = 500i64;
    check(
        "due",
        &lines(
            c.query(&explain(reads::due_sql()), &[&now, &limit])
                .await
                .unwrap(),
        ),
    );
    check(
        "caps",
        &lines(
            c.query(
                &explain(reads::oldest_sql(crate::domain::TaskState::Failed)),
                &[&"n3", &limit],
            )
            .await
            .unwrap(),
        ),
    );
    check(
        "active",
        &lines(
            c.query(
                &explain(format!(
                    "SELECT {} FROM tasks WHERE state IN (1, 2, 6)",
                    reads::TASK_COLUMNS
                )),
                &[],
            )
            .await
            .unwrap(),
        ),
    );
    drop(c);
    s.close().await;
}
