//! tls: the cost of TLS and API keys (issue 23). Scenario a's throughput
//! (each concurrency) and c's schedule-to-start at half load on a server
//! with TLS on (a certificate for 127.0.0.1 signed by a CA the bench makes
//! with rcgen) and a static admin token, on which the bench first creates
//! `keys` API keys with `KeysService.CreateKey`; the load uses one of them
//! (a `scheduler` key), c's worker another (a `worker` key for its task
//! name). Against the same measurements on a fresh server in plaintext
//! with no authentication, running beside it: each figure is taken in
//! windows alternating between the two ([`tls`]).
//!
//! c's worker is the raw `WorkerService` stream on both sides: the Rust
//! worker library sends no bearer token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use switchyard::pb;
use switchyard::pb::keys_service_client::KeysServiceClient;
use switchyard::pb::orchestrator_service_client::OrchestratorServiceClient;
use switchyard_client::TlsFiles;

use crate::load::{self, payload_n, payload_t, simple, MakeRequest, Pool};
use crate::scenarios::{self, Ctx, Latency, LatencyLoad};
use crate::server::{connect_with, Access};
use crate::worker::WorkerKind;

/// The task name of tls's c part.
const NAME: &str = "bench.tls";

/// The server's certificate and key, and the CA the bench trusts, in a
/// directory of their own (removed on drop).
pub struct Certs {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// What the bench's clients trust.
    pub trust: TlsFiles,
    /// The static admin token of the TLS servers.
    pub admin: String,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Certs {
    /// A CA and a server certificate for 127.0.0.1 and localhost signed by
    /// it, written under `dir`.
    pub fn generate(dir: &Path) -> Result<Certs> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "switchyard bench CA");
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate()?)?;
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        p.distinguished_name
            .push(DnType::CommonName, "switchyard bench server");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca)?;
        let (ca_file, cert_file, key_file) = (
            dir.join("ca.pem"),
            dir.join("server.pem"),
            dir.join("server.key"),
        );
        std::fs::write(&ca_file, ca.pem())?;
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok(Certs {
            dir: dir.to_path_buf(),
            cert: cert_file,
            key: key_file,
            trust: TlsFiles {
                ca_file: Some(ca_file),
                ..Default::default()
            },
            admin: format!(
                "bench-admin-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ),
        })
    }

    /// The TLS server's configuration: `[tls]` and the static admin token.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "SWITCHYARD_TLS__CERT_FILE".into(),
                self.cert.display().to_string(),
            ),
            (
                "SWITCHYARD_TLS__KEY_FILE".into(),
                self.key.display().to_string(),
            ),
            ("SWITCHYARD_AUTH__TOKENS".into(), self.admin.clone()),
        ]
    }

    fn access(&self, token: &str) -> Access {
        Access {
            tls: self.trust.clone(),
            token: Some(token.to_string()),
        }
    }
}

/// The secrets the load and the worker use.
struct Secrets {
    load: String,
    worker: String,
}

/// Creates `n` keys with the admin token: the first a `scheduler` key (the
/// load's), the second a `worker` key for [`NAME`] (c's worker's), the
/// rest of every role, 32 calls at a time.
async fn create_keys(url: &str, certs: &Certs, n: usize) -> Result<Secrets> {
    let ch = connect_with(url, &certs.access(&certs.admin)).await?;
    let kc = KeysServiceClient::new(ch);
    let req = |i: usize| {
        let role = match i {
            0 => pb::KeyRole::Scheduler,
            1 => pb::KeyRole::Worker,
            _ => [
                pb::KeyRole::Scheduler,
                pb::KeyRole::Reader,
                pb::KeyRole::Operator,
                pb::KeyRole::Worker,
            ][i % 4],
        };
        let names = match (role, i) {
            (pb::KeyRole::Worker, 1) => vec![NAME.to_string()],
            (pb::KeyRole::Worker, _) => vec!["bench.other".to_string()],
            _ => Vec::new(),
        };
        pb::CreateKeyRequest {
            role: role as i32,
            user_id: String::new(),
            names,
            expires_in: None,
            ..Default::default()
        }
    };
    let made: Vec<Result<(usize, String), tonic::Status>> = futures::stream::iter(0..n.max(2))
        .map(|i| {
            let mut kc = kc.clone();
            let r = req(i);
            async move { kc.create_key(r).await.map(|r| (i, r.into_inner().secret)) }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let (mut load, mut worker) = (None, None);
    for m in made {
        match m {
            Ok((0, s)) => load = Some(s),
            Ok((1, s)) => worker = Some(s),
            Ok(_) => {}
            Err(e) => bail!("CreateKey: {:?}: {}", e.code(), e.message()),
        }
    }
    // Authentication is on: a call without a key is refused.
    let ch = connect_with(
        url,
        &Access {
            tls: certs.trust.clone(),
            token: None,
        },
    )
    .await?;
    match OrchestratorServiceClient::new(ch)
        .get_metrics(pb::GetMetricsRequest {})
        .await
    {
        Err(s) if s.code() == tonic::Code::Unauthenticated => {}
        other => bail!("a call without a key was not refused: {other:?}"),
    }
    Ok(Secrets {
        load: load.ok_or_else(|| anyhow!("no load key"))?,
        worker: worker.ok_or_else(|| anyhow!("no worker key"))?,
    })
}

/// Measurements per side and concurrency (or latency) in one run, taken
/// in turn: plaintext, TLS, TLS, plaintext, … so that a machine that slows
/// down or speeds up during the run weighs on both sides alike.
const SLICES: usize = 4;

/// The same for c's latency: twice as many windows, each half c's window.
const LATENCY_SLICES: usize = 2 * SLICES;

/// The median of `values` (NaN if there are none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    crate::report::Stat::of(&v).map_or(f64::NAN, |s| s.median)
}

/// Whether slice `i`'s first measurement is TLS's: ABBA order.
fn tls_first(i: usize) -> bool {
    i % 2 == 1
}

/// A server of each kind for one measurement: plaintext without auth, and
/// TLS with `keys` API keys; `Some(secrets)` for TLS's. With no `keys`
/// (the control), the second is plaintext without auth too.
async fn servers(
    ctx: &Ctx,
    certs: &Certs,
    keys: Option<usize>,
    tag: &str,
) -> Result<[(scenarios::Fresh, Option<Secrets>); 2]> {
    let plain = ctx.fresh(&format!("{tag}-plain")).await?;
    let Some(keys) = keys else {
        return match ctx.fresh(&format!("{tag}-control")).await {
            Ok(other) => Ok([(plain, None), (other, None)]),
            Err(e) => {
                plain.done().await;
                Err(e)
            }
        };
    };
    let secure = match ctx.fresh_tls(tag, &certs.env(), certs.trust.clone()).await {
        Ok(f) => f,
        Err(e) => {
            plain.done().await;
            return Err(e);
        }
    };
    match create_keys(&secure.server.url, certs, keys).await {
        Ok(s) => Ok([(plain, None), (secure, Some(s))]),
        Err(e) => {
            plain.done().await;
            secure.done().await;
            Err(e)
        }
    }
}

/// Rates measured in equal windows, as one: the mean rate, and CPU per
/// operation weighted by each window's operations.
fn mean_rate(rates: &[load::Rate]) -> load::Rate {
    let n = rates.len().max(1) as f64;
    let ops: f64 = rates
        .iter()
        .map(|r| r.per_sec)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    let per_op =
        |f: fn(&load::Rate) -> f64| rates.iter().map(|r| f(r) * r.per_sec).sum::<f64>() / ops;
    load::Rate {
        per_sec: rates.iter().map(|r| r.per_sec).sum::<f64>() / n,
        server_cpu_us: per_op(|r| r.server_cpu_us),
        bench_cpu_us: per_op(|r| r.bench_cpu_us),
        db_cpu_us: None,
    }
}

/// One run of tls: a at each concurrency, then c at `rate` if given. Each
/// is measured on two servers running side by side, plaintext without auth
/// and TLS with keys, in windows taken in turn (ABBA), so that the ratio
/// compares the two under the same machine conditions: a's rate is the
/// mean of [`SLICES`] windows per side; c's quantiles are the medians over
/// [`LATENCY_SLICES`] windows per side, and its p99 ratio the median of
/// each TLS window's p99 over the plaintext window beside it, so that one
/// window in which the machine stalled does not decide the run. With no
/// `keys`, the control: the second side is plaintext without auth too.
pub async fn tls(
    ctx: &Ctx,
    certs: &Certs,
    keys: Option<usize>,
    rate: Option<f64>,
) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    // The run's window, cut into slices; a shorter warm-up before each
    // slice but the first (the connections stay open between slices).
    let slice = ctx.plan.window * 2 / SLICES as u32;
    let rewarm = ctx.plan.warmup / 4;
    let make: MakeRequest = Arc::new(|seq| simple("bench.a", payload_n(seq)));
    for &c in &ctx.plan.inflight {
        let sides = servers(ctx, certs, keys, "tls").await?;
        let r = async {
            let mut pools = Vec::new();
            for (f, secrets) in &sides {
                let access = match secrets {
                    Some(s) => certs.access(&s.load),
                    None => Access::default(),
                };
                pools.push(Pool::with_access(&f.server.url, c, &access).await?);
            }
            let mut rates: [Vec<load::Rate>; 2] = Default::default();
            for i in 0..SLICES {
                let warmup = if i == 0 { ctx.plan.warmup } else { rewarm };
                let order = if tls_first(i) { [1, 0] } else { [0, 1] };
                for side in order {
                    let pid = sides[side].0.server.pid();
                    let r = load::schedule_rate(
                        &pools[side],
                        pid,
                        c,
                        (warmup, slice),
                        make.clone(),
                        false,
                    )
                    .await?;
                    rates[side].push(r);
                }
            }
            anyhow::Ok(rates)
        }
        .await;
        for (f, _) in sides {
            f.done().await;
        }
        let [plain, secure] = r.with_context(|| format!("tls: a at {c} in flight"))?;
        scenarios::push_rate(&mut out, &format!("tls.plain.c{c}"), mean_rate(&plain));
        scenarios::push_rate(&mut out, &format!("tls.c{c}"), mean_rate(&secure));
    }
    let Some(rate) = rate else { return Ok(out) };
    let sides = servers(ctx, certs, keys, "tls-c").await?;
    let r = async {
        let make: MakeRequest = Arc::new(|t| simple(NAME, payload_t(t)));
        let loads: Vec<LatencyLoad> = sides
            .iter()
            .map(|(_, secrets)| {
                let mut load = LatencyLoad::plain(ctx, NAME, make.clone());
                load.worker.0 = WorkerKind::Raw;
                if let Some(s) = secrets {
                    load.producer = certs.access(&s.load);
                    load.worker.1 = certs.access(&s.worker);
                }
                load
            })
            .collect();
        // Latency windows of half c's window, twice as many as a's: a
        // tail is what differs least between two windows of one side.
        let times = (ctx.plan.lat_warmup, ctx.plan.lat_window / 2);
        let mut slices: [Vec<Latency>; 2] = Default::default();
        for i in 0..LATENCY_SLICES {
            let order = if tls_first(i) { [1, 0] } else { [0, 1] };
            for side in order {
                let url = &sides[side].0.server.url;
                let l = scenarios::latency_with(ctx, url, rate, times, &loads[side]).await?;
                slices[side].push(l);
            }
        }
        anyhow::Ok(slices)
    }
    .await;
    for (f, _) in sides {
        f.done().await;
    }
    let [plain, secure] = r.context("tls: schedule-to-start")?;
    for (tag, side) in [("tls.plain", &plain), ("tls", &secure)] {
        for (q, f) in [
            ("p50", (|l: &Latency| l.p50) as fn(&Latency) -> f64),
            ("p99", |l| l.p99),
            ("p999", |l| l.p999),
        ] {
            out.push((format!("{tag}.50.{q}"), median(side.iter().map(f))));
        }
    }
    // Each TLS window against the plaintext window next to it in time.
    let ratios = plain
        .iter()
        .zip(&secure)
        .filter(|(p, _)| p.p99 > 0.0)
        .map(|(p, s)| s.p99 / p.p99);
    out.push(("tls.50.p99_ratio".into(), median(ratios)));
    Ok(out)
}
