//! PostgreSQL for the bench's PostgreSQL parts (pa, pb, pc, failover): a
//! schema of its own per measurement (`swbench_<pid>_<n>`, dropped after it),
//! the lease row of a schema, and the CPU that PostgreSQL's processes use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::{Client, NoTls};

/// The database the PostgreSQL parts use.
#[derive(Debug)]
pub struct Pg {
    pub url: String,
    seq: AtomicU64,
}

/// A schema name as an SQL identifier.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl Pg {
    pub fn new(url: &str) -> Pg {
        Pg {
            url: url.to_string(),
            seq: AtomicU64::new(0),
        }
    }

    /// One connection, driven on a task.
    pub async fn connect(&self) -> Result<Client> {
        let mut cfg: tokio_postgres::Config = self.url.parse().context("DATABASE_URL")?;
        cfg.connect_timeout(Duration::from_secs(5));
        cfg.application_name("switchyard bench");
        let (client, conn) = cfg
            .connect(NoTls)
            .await
            .with_context(|| format!("connecting to {}", redact(&self.url)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// `server_version` and `synchronous_commit`: whether the database
    /// answers, and what a commit waits for.
    pub async fn settings(&self) -> Result<(String, String)> {
        let c = self.connect().await?;
        let v = c.query_one("SHOW server_version", &[]).await?;
        let s = c.query_one("SHOW synchronous_commit", &[]).await?;
        Ok((v.get(0), s.get(0)))
    }

    /// A schema name no other measurement of this process uses (the server
    /// creates it).
    pub fn schema_name(&self) -> String {
        format!(
            "swbench_{}_{}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Drops `schema` and everything in it.
    pub async fn drop_schema(&self, schema: &str) -> Result<()> {
        let c = self.connect().await?;
        c.batch_execute(&format!(
            "SET client_min_messages = warning; DROP SCHEMA IF EXISTS {} CASCADE",
            quote(schema)
        ))
        .await
        .with_context(|| format!("dropping schema {schema}"))?;
        Ok(())
    }

    /// Drops the schemas that bench processes no longer running left behind
    /// (`swbench_<pid>_<n>` and the peer's `swbench_gw_<pid>_<n>`).
    pub async fn drop_stale(&self) -> Result<usize> {
        let c = self.connect().await?;
        let rows = c
            .query(
                "SELECT nspname FROM pg_namespace WHERE nspname ~ '^swbench_(gw_)?[0-9]+_[0-9]+$'",
                &[],
            )
            .await?;
        let mut n = 0;
        for r in rows {
            let name: String = r.get(0);
            let pid = name
                .trim_start_matches("swbench_")
                .trim_start_matches("gw_")
                .split('_')
                .next()
                .unwrap_or("");
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            self.drop_schema(&name).await?;
            n += 1;
        }
        Ok(n)
    }
}

/// The lease row of partition 0 in `schema`: who leads, under which term,
/// since when (microseconds since the Unix epoch, the database's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub term: i64,
    pub holder: String,
    pub acquired_at_us: i64,
}

pub async fn lease(c: &Client, schema: &str) -> Result<Option<LeaseRow>> {
    let row = c
        .query_opt(
            &format!(
                "SELECT term, holder, (extract(epoch FROM acquired_at) * 1000000)::int8 \
                 FROM {}.leases WHERE partition = 0",
                quote(schema)
            ),
            &[],
        )
        .await?;
    Ok(row.map(|r| LeaseRow {
        term: r.get(0),
        holder: r.get(1),
        acquired_at_us: r.get(2),
    }))
}

/// The URL without its password.
pub fn redact(url: &str) -> String {
    switchyard::store::postgres::redact(url)
}

/// CPU seconds (user + system) of every `postgres` process on the machine:
/// the backends of every connection, the WAL writer, the checkpointer.
/// Backends that exit within a window take their CPU with them; the
/// connections measured stay open across the windows. Other clients of the
/// same PostgreSQL count too.
pub fn postgres_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            (&stat[open + 1..close] == "postgres").then_some(())?;
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            crate::server::cpu_secs(pid)
        })
        .sum()
}
