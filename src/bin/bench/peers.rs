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

/// A Redis for BullMQ: the one at `url` if it answers, else a
/// `redis-server` of our own on a free port, without persistence.
pub struct Redis {
    pub url: String,
    pub own: Option<Child>,
}

impl Redis {
    pub async fn find_or_start(url: Option<String>, dir: &Path) -> Result<Redis> {
        let url = url.unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        if reachable(&url) {
            return Ok(Redis { url, own: None });
        }
        let port = free_port()?;
        std::fs::create_dir_all(dir)?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!("nothing answers at {url} and redis-server could not be started")
            })?;
        let own = format!("redis://127.0.0.1:{port}");
        for _ in 0..200 {
            if reachable(&own) {
                eprintln!("bench: nothing answers at {url}; using our own redis-server at {own}");
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
