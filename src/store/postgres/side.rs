//! A connection of its own for the small tables beside the task rows
//! (`schedules`, `flow_rules`): opened on first use and again after it was
//! lost; every write one transaction fenced by the leader's term, as the
//! task writer's are, so a deposed leader changes nothing. Owns no SQL of
//! those tables.

use tokio::sync::Mutex;

use super::{connect, pg_config, Fence, PgStore};
use crate::store::StoreError;

/// One side connection.
pub struct SideConn {
    cfg: tokio_postgres::Config,
    fence: Option<Fence>,
    client: Mutex<Option<tokio_postgres::Client>>,
}

impl SideConn {
    /// A connection to `store`'s schema (named `what` to the server),
    /// writing under its fence.
    pub fn open(store: &PgStore, what: &str) -> Result<SideConn, StoreError> {
        Ok(SideConn {
            cfg: pg_config(store.options(), what)?,
            fence: store.fence(),
            client: Mutex::new(None),
        })
    }

    /// The fence's term (0 without one): the `term` column of a write.
    pub fn term(&self) -> i64 {
        self.fence.as_ref().map_or(0, |f| f.term)
    }

    /// Runs `f` on the client, connecting first if needed.
    pub async fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&mut tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(connect(&self.cfg).await.map_err(StoreError::from)?);
        }
        let Some(c) = guard.as_mut() else {
            return Err(StoreError::Unavailable(
                "cannot connect to the database".into(),
            ));
        };
        f(c).await.map_err(StoreError::from)
    }

    /// Runs `f` in a transaction that first checks the fence.
    pub async fn fenced(
        &self,
        f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error>,
    ) -> Result<(), StoreError> {
        let fence = self.fence.clone();
        self.with_client(async |c| {
            let tx = c.transaction().await?;
            if let Some(f) = &fence {
                f.check(&tx).await?;
            }
            f(&tx).await?;
            tx.commit().await
        })
        .await
    }
}
