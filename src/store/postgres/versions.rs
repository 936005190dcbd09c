//! Workflow definitions in PostgreSQL, for callers that are not async (the
//! workflow registry writes a version before it can be used, and blocks on
//! it): one thread of its own owns a connection and a small runtime, and
//! answers requests one by one.

use std::sync::mpsc;
use std::time::Duration;

use super::{connect, pg_config, Fence, PgOptions};
use crate::store::StoreError;

/// One stored version: name, version, definition (JSON).
pub type StoredVersion = (String, u32, String);

enum Request {
    All(mpsc::Sender<Result<Vec<StoredVersion>, StoreError>>),
    Insert {
        version: StoredVersion,
        created_at: i64,
        fence: Option<Fence>,
        reply: mpsc::Sender<Result<(), StoreError>>,
    },
}

/// The workflow versions of one schema.
pub struct Versions {
    tx: parking_lot::Mutex<mpsc::Sender<Request>>,
}

impl Versions {
    /// Starts the thread (connecting on first use).
    pub fn open(opts: &PgOptions) -> Result<Versions, StoreError> {
        let cfg = pg_config(opts, "workflows")?;
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("workflow-versions".into())
            .spawn(move || serve(cfg, rx))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Versions {
            tx: parking_lot::Mutex::new(tx),
        })
    }

    fn ask<T>(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .lock()
            .send(make(reply))
            .map_err(|_| StoreError::Closed)?;
        rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            StoreError::Unavailable("the workflow versions' database did not answer".into())
        })?
    }

    /// Every stored version, by name and version.
    pub fn all(&self) -> Result<Vec<StoredVersion>, StoreError> {
        self.ask(Request::All)
    }

    /// Stores a new version, fenced by the leader's term when given.
    pub fn insert(
        &self,
        version: StoredVersion,
        created_at: i64,
        fence: Option<Fence>,
    ) -> Result<(), StoreError> {
        self.ask(|reply| Request::Insert {
            version,
            created_at,
            fence,
            reply,
        })
    }
}

fn serve(cfg: tokio_postgres::Config, rx: mpsc::Receiver<Request>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let mut client: Option<tokio_postgres::Client> = None;
    for req in rx {
        rt.block_on(async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = connect(&cfg).await.ok();
            }
            let Some(c) = client.as_mut() else {
                let down = || StoreError::Unavailable("cannot connect to the database".into());
                match req {
                    Request::All(r) => drop(r.send(Err(down()))),
                    Request::Insert { reply, .. } => drop(reply.send(Err(down()))),
                }
                return;
            };
            match req {
                Request::All(reply) => {
                    let rows = c
                        .query(
                            "SELECT name, version, definition FROM workflow_versions ORDER BY name, version",
                            &[],
                        )
                        .await
                        .map(|rows| {
                            rows.iter()
                                .map(|r| (r.get(0), r.get::<_, i32>(1).max(0) as u32, r.get(2)))
                                .collect()
                        })
                        .map_err(StoreError::from);
                    let _ = reply.send(rows);
                }
                Request::Insert {
                    version: (name, v, json),
                    created_at,
                    fence,
                    reply,
                } => {
                    let done = async {
                        let tx = c.transaction().await?;
                        if let Some(f) = &fence {
                            f.check(&tx).await?;
                        }
                        tx.execute(
                            "INSERT INTO workflow_versions (name, version, definition, created_at, term)
                             VALUES ($1, $2, $3, $4, $5)",
                            &[
                                &name,
                                &(v.min(i32::MAX as u32) as i32),
                                &json,
                                &created_at,
                                &fence.as_ref().map_or(0, |f| f.term),
                            ],
                        )
                        .await?;
                        tx.commit().await
                    }
                    .await
                    .map_err(StoreError::from);
                    let _ = reply.send(done);
                }
            }
        });
    }
}
