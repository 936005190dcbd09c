//! The Switchyard server under test: a child process on a free loopback port
//! with its own data directory, so its RSS can be read from `/proc` and it can
//! be killed and restarted on the same data.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use switchyard_client::TlsFiles;
use tokio::process::{Child, Command};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The `switchyard` binary.
    pub bin: PathBuf,
    /// Extra environment (config layers), e.g. the webhook allow-list.
    pub env: Vec<(String, String)>,
    /// Record each server with `perf record` into this directory.
    pub perf_dir: Option<PathBuf>,
    /// TLS: the server serves `https://` (its `[tls]` is in `env`), and
    /// the bench trusts these files' CA.
    pub tls: Option<TlsFiles>,
}

/// How the bench's clients reach a server: TLS (an `https://` URL and the
/// CA to trust) and a bearer token.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// For an `https://` URL: the CA to trust.
    pub tls: TlsFiles,
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
}

/// Adds the bearer token, if any, to every call.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Result<Bearer> {
        token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .context("the token is not valid metadata")
            })
            .transpose()
            .map(Bearer)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// A channel with the bearer token of `access` on every call.
pub type Authed = InterceptedService<Channel, Bearer>;

/// How to stop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: the graceful drain.
    Term,
    /// SIGKILL: a crash.
    Kill,
}

impl Stop {
    pub fn name(self) -> &'static str {
        match self {
            Stop::Term => "SIGTERM",
            Stop::Kill => "SIGKILL",
        }
    }
}

/// A running server.
pub struct Server {
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    log: PathBuf,
    spec: ServerSpec,
    perf: Option<Child>,
    /// From spawn to health SERVING.
    pub ready_in: Duration,
}

/// A free loopback port (bound, read, released: the small race is accepted).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    Ok(l.local_addr()?.port())
}

/// Whether the server accepts this environment as configuration
/// (`switchyard config` exits 0 with it), so optional sections of executors
/// that do not exist yet are dropped instead of failing the start.
pub fn config_accepts(bin: &Path, env: &[(String, String)]) -> Result<bool, String> {
    let out = std::process::Command::new(bin)
        .arg("config")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(true)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

impl Server {
    /// Starts a server on `data_dir` and waits for health SERVING.
    pub async fn start(
        spec: &ServerSpec,
        data_dir: &Path,
        ready_timeout: Duration,
    ) -> Result<Server> {
        Server::start_as(spec, data_dir, ready_timeout, true).await
    }

    /// Starts a replica that should stand by (PostgreSQL, another replica
    /// leads): waits until health answers, NOT_SERVING.
    pub async fn start_standby(
        spec: &ServerSpec,
        data_dir: &Path,
        ready_timeout: Duration,
    ) -> Result<Server> {
        Server::start_as(spec, data_dir, ready_timeout, false).await
    }

    async fn start_as(
        spec: &ServerSpec,
        data_dir: &Path,
        ready_timeout: Duration,
        serving: bool,
    ) -> Result<Server> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = data_dir.join("server.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let started = Instant::now();
        let child = Command::new(&spec.bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (run `cargo build --release --bins`)",
                    spec.bin.display()
                )
            })?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the server exited at once"))?;
        let scheme = if spec.tls.is_some() { "https" } else { "http" };
        let mut server = Server {
            child,
            pid,
            url: format!("{scheme}://{addr}"),
            data_dir: data_dir.to_path_buf(),
            log,
            spec: spec.clone(),
            ready_in: Duration::ZERO,
            perf: None,
        };
        server.wait_health(started, ready_timeout, serving).await?;
        server.ready_in = started.elapsed();
        if let Some(dir) = &spec.perf_dir {
            server.perf = Some(start_perf(dir, pid)?);
        }
        Ok(server)
    }

    /// Waits for health SERVING (`serving`), or for any answer (a standby's
    /// NOT_SERVING).
    async fn wait_health(
        &mut self,
        started: Instant,
        timeout: Duration,
        serving: bool,
    ) -> Result<()> {
        let deadline = started + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the server exited with {status} before it was ready; log:\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the server was not SERVING within {timeout:?}; log:\n{}",
                    self.log_tail()
                );
            }
            let endpoint = Endpoint::from_shared(self.url.clone())?
                .connect_timeout(Duration::from_millis(200));
            let endpoint = match &self.spec.tls {
                Some(files) => files.apply(endpoint).map_err(|e| anyhow!("TLS: {e}"))?,
                None => endpoint,
            };
            if let Ok(ch) = endpoint.connect().await {
                let mut health = HealthClient::new(ch);
                // The listener is bound before the store is loaded, so a
                // check may wait in the backlog until the server serves.
                let check = health.check(HealthCheckRequest {
                    service: String::new(),
                });
                if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), check).await {
                    if !serving || resp.get_ref().status == ServingStatus::Serving as i32 {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A channel to the server (one HTTP/2 connection).
    pub async fn channel(&self) -> Result<Channel> {
        connect(&self.url).await
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident set size now, in bytes (`VmRSS`).
    pub fn rss_bytes(&self) -> Option<u64> {
        proc_status_kib(self.pid, "VmRSS:").map(|k| k * 1024)
    }

    /// Peak resident set size, in bytes (`VmHWM`).
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        proc_status_kib(self.pid, "VmHWM:").map(|k| k * 1024)
    }

    /// Size of the data directory's files, in bytes.
    pub fn disk_bytes(&self) -> u64 {
        std::fs::read_dir(&self.data_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("switchyard"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Stops the server with `how` and waits for the process to end; returns
    /// how long that took.
    pub async fn stop(mut self, how: Stop) -> Result<Duration> {
        if let Some(mut perf) = self.perf.take() {
            if let Some(id) = perf.id() {
                let _ = std::process::Command::new("kill")
                    .arg("-INT")
                    .arg(id.to_string())
                    .status();
            }
            let _ = tokio::time::timeout(Duration::from_secs(60), perf.wait()).await;
        }
        let t = Instant::now();
        let sig = match how {
            Stop::Term => "-TERM",
            Stop::Kill => "-KILL",
        };
        let _ = std::process::Command::new("kill")
            .arg(sig)
            .arg(self.pid.to_string())
            .status();
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(r) => {
                r?;
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("the server did not stop within 60 s after {}", how.name());
            }
        }
        Ok(t.elapsed())
    }

    /// SIGKILL now (no `kill` process in between, so the caller's clock
    /// reading just before is the moment of the kill), then waits for the
    /// process to end.
    pub async fn kill_now(mut self) -> Result<()> {
        if let Some(mut perf) = self.perf.take() {
            let _ = perf.start_kill();
        }
        self.child.start_kill()?;
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .map_err(|_| anyhow!("the server did not end within 60 s of SIGKILL"))??;
        Ok(())
    }

    /// Stops with `how`, starts again on the same data directory and waits
    /// for SERVING. Returns the new server and the time from the signal to
    /// SERVING.
    pub async fn restart(self, how: Stop, ready_timeout: Duration) -> Result<(Server, Duration)> {
        let t = Instant::now();
        let spec = self.spec.clone();
        let dir = self.data_dir.clone();
        self.stop(how).await?;
        let s = Server::start(&spec, &dir, ready_timeout).await?;
        Ok((s, t.elapsed()))
    }
}

/// One health check of `channel` (the whole server's status), or `None`
/// if it does not answer within `timeout`.
pub async fn health(channel: Channel, timeout: Duration) -> Option<ServingStatus> {
    let mut health = HealthClient::new(channel);
    let check = health.check(HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(resp)) => ServingStatus::try_from(resp.get_ref().status).ok(),
        _ => None,
    }
}

/// `perf record` of `pid` (DWARF call graphs: the release build keeps line
/// tables but no frame pointers) into `dir/server-<pid>.perf.data`.
fn start_perf(dir: &Path, pid: u32) -> Result<Child> {
    std::fs::create_dir_all(dir)?;
    let out = dir.join(format!("server-{pid}.perf.data"));
    Command::new("perf")
        .args([
            "record",
            "-F",
            "499",
            "--call-graph",
            "dwarf,32768",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting perf record (apt-get install linux-perf)")
}

/// Connects one HTTP/2 connection to `url`.
pub async fn connect(url: &str) -> Result<Channel> {
    connect_tls(url, &TlsFiles::default()).await
}

/// Connects one HTTP/2 connection to `url`, over TLS trusting `tls`'s CA
/// if the URL is `https://`.
pub async fn connect_tls(url: &str, tls: &TlsFiles) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    // No adaptive window: with it, hyper starts the connection's window at
    // HTTP/2's 64 KiB, and h2 (0.4.16 and later) allows the small DATA
    // frames that wait unread on a connection half its window of framing
    // overhead (about 160 answers of a few dozen bytes). When the machine
    // stalled, a burst of answers waited for the calls' tasks, and the
    // bench's own h2 closed its connection with ENHANCE_YOUR_CALM: every
    // call on it failed ("h2 protocol error"). hyper's fixed windows (5 MiB
    // for the connection) leave room for about 12,000.
    tls.apply(endpoint)
        .map_err(|e| anyhow!("TLS: {e}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// [`connect_tls`] with `access`'s bearer token on every call.
pub async fn connect_with(url: &str, access: &Access) -> Result<Authed> {
    let ch = connect_tls(url, &access.tls).await?;
    Ok(InterceptedService::new(
        ch,
        Bearer::new(access.token.as_deref())?,
    ))
}

/// CPU time (user + system, every thread) a process has used, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is 3rd,
    // utime the 14th and stime the 15th field of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
