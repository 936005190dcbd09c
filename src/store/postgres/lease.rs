//! Leadership: a lease per partition in PostgreSQL, with a term that grows
//! at every takeover.
//!
//! A replica takes the lease when it is free or has lapsed (on the
//! database's clock), which adds one to the term; the leader renews it
//! well before it lapses. Renewing checks the term, so a leader that was
//! paused past its lease learns it lost it; and the writer's fence
//! (`switchyard_fence`, which locks the lease row in every write
//! transaction) makes sure it wrote nothing after the takeover even before
//! it learns.

use std::time::Duration;

use tokio::sync::Mutex;

use super::{connect, pg_config, PgOptions};
use crate::store::StoreError;

/// One partition's lease as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRow {
    /// The partition.
    pub partition: i32,
    /// Its term.
    pub term: i64,
    /// The replica holding it.
    pub holder: String,
    /// Where that replica serves gRPC.
    pub address: String,
    /// Milliseconds since it was last renewed.
    pub renewed_ms_ago: f64,
    /// Milliseconds until it lapses (negative: lapsed).
    pub expires_in_ms: f64,
    /// Milliseconds since this term began.
    pub held_for_ms: f64,
}

/// A replica as it last said it was alive.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRow {
    /// Its id.
    pub id: String,
    /// Where it serves gRPC.
    pub address: String,
    /// Milliseconds since it last said so.
    pub seen_ms_ago: f64,
    /// Milliseconds since it started.
    pub up_ms: f64,
}

/// Leadership of one partition for this replica.
pub struct Lease {
    cfg: tokio_postgres::Config,
    client: Mutex<Option<tokio_postgres::Client>>,
    /// This replica's id.
    pub replica: String,
    /// Where this replica serves gRPC (what standbys forward to).
    pub address: String,
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
    /// The partition.
    pub partition: i32,
}

/// What a replica is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// It leads under this term.
    Leader(i64),
    /// Another replica leads (or nobody does yet).
    Standby,
}

impl Lease {
    /// A lease handle with its own connection (renewals must not queue
    /// behind reads).
    pub fn new(opts: &PgOptions, address: String, ttl: Duration) -> Result<Lease, StoreError> {
        Ok(Lease {
            cfg: pg_config(opts, "lease")?,
            client: Mutex::new(None),
            replica: opts.replica.clone(),
            address,
            ttl,
            partition: 0,
        })
    }

    async fn run<T>(
        &self,
        f: impl for<'c> FnOnce(
            &'c tokio_postgres::Client,
        )
            -> futures::future::BoxFuture<'c, Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(
                connect(&self.cfg)
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?,
            );
        }
        let c = guard.as_ref().expect("just set");
        let out = tokio::time::timeout(self.ttl, f(c)).await;
        match out {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.code().is_none() {
                    *guard = None;
                }
                Err(StoreError::Pg(e))
            }
            Err(_) => {
                *guard = None;
                Err(StoreError::Unavailable(format!(
                    "the lease query took longer than {}",
                    crate::domain::text::duration(self.ttl)
                )))
            }
        }
    }

    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64()
    }

    /// Says this replica is alive, and takes the lease if it is free or
    /// lapsed.
    pub async fn try_acquire(&self) -> Result<Leadership, StoreError> {
        let (p, me, addr, ttl) = (
            self.partition,
            self.replica.clone(),
            self.address.clone(),
            self.ttl_secs(),
        );
        self.run(move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO replicas (id, address, started_at, seen_at)
                     VALUES ($1, $2, now(), now())
                     ON CONFLICT (id) DO UPDATE SET seen_at = now(), address = EXCLUDED.address",
                    &[&me, &addr],
                )
                .await?;
                c.execute(
                    "DELETE FROM replicas WHERE seen_at < now() - interval '1 hour'",
                    &[],
                )
                .await?;
                let row = c
                    .query_opt(
                        "INSERT INTO leases (partition, term, holder, address, acquired_at, renewed_at, expires_at)
                         VALUES ($1, 1, $2, $3, now(), now(), now() + make_interval(secs => $4))
                         ON CONFLICT (partition) DO UPDATE
                           SET term = leases.term + 1, holder = EXCLUDED.holder,
                               address = EXCLUDED.address, acquired_at = now(),
                               renewed_at = now(), expires_at = EXCLUDED.expires_at
                           WHERE leases.expires_at < now()
                         RETURNING term",
                        &[&p, &me, &addr, &ttl],
                    )
                    .await?;
                Ok(match row {
                    Some(r) => Leadership::Leader(r.get(0)),
                    None => Leadership::Standby,
                })
            })
        })
        .await
    }

    /// Renews the lease of `term`: `Ok(false)` if it is no longer ours.
    pub async fn renew(&self, term: i64) -> Result<bool, StoreError> {
        let (p, me, ttl) = (self.partition, self.replica.clone(), self.ttl_secs());
        self.run(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "UPDATE leases SET renewed_at = now(),
                                expires_at = now() + make_interval(secs => $4)
                         WHERE partition = $1 AND term = $2 AND holder = $3",
                        &[&p, &term, &me, &ttl],
                    )
                    .await?;
                c.execute("UPDATE replicas SET seen_at = now() WHERE id = $1", &[&me])
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    /// Lets the lease of `term` lapse now (a clean shutdown), so a standby
    /// takes over at once instead of after the lease's length.
    pub async fn release(&self, term: i64) -> Result<(), StoreError> {
        let (p, me) = (self.partition, self.replica.clone());
        self.run(move |c| {
            Box::pin(async move {
                c.execute(
                    "UPDATE leases SET expires_at = now() - interval '1 millisecond'
                     WHERE partition = $1 AND term = $2 AND holder = $3",
                    &[&p, &term, &me],
                )
                .await?;
                c.execute("DELETE FROM replicas WHERE id = $1", &[&me])
                    .await?;
                Ok(())
            })
        })
        .await
    }

    /// The leases and the replicas, as stored now.
    pub async fn status(&self) -> Result<(Vec<LeaseRow>, Vec<ReplicaRow>), StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let leases = c
                    .query(
                        "SELECT partition, term, holder, address,
                                (extract(epoch FROM now() - renewed_at) * 1000)::float8,
                                (extract(epoch FROM expires_at - now()) * 1000)::float8,
                                (extract(epoch FROM now() - acquired_at) * 1000)::float8
                         FROM leases ORDER BY partition",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(|r| LeaseRow {
                        partition: r.get(0),
                        term: r.get(1),
                        holder: r.get(2),
                        address: r.get(3),
                        renewed_ms_ago: r.get(4),
                        expires_in_ms: r.get(5),
                        held_for_ms: r.get(6),
                    })
                    .collect();
                let replicas = c
                    .query(
                        "SELECT id, address,
                                (extract(epoch FROM now() - seen_at) * 1000)::float8,
                                (extract(epoch FROM now() - started_at) * 1000)::float8
                         FROM replicas ORDER BY started_at",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(|r| ReplicaRow {
                        id: r.get(0),
                        address: r.get(1),
                        seen_ms_ago: r.get(2),
                        up_ms: r.get(3),
                    })
                    .collect();
                Ok((leases, replicas))
            })
        })
        .await
    }

    /// The current leader of this partition, if its lease holds.
    pub async fn leader(&self) -> Result<Option<LeaseRow>, StoreError> {
        let (leases, _) = self.status().await?;
        Ok(leases
            .into_iter()
            .find(|l| l.partition == self.partition && l.expires_in_ms > 0.0))
    }
}
