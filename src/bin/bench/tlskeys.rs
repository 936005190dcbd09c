//! tls: the cost of TLS and API keys (issue 23). Scenario a's throughput
//! (each concurrency) and c's schedule-to-start at half load on a server
//! with TLS on (a certificate for 127.0.0.1 signed by a CA the bench makes
//! with rcgen) and a static admin token, on which the bench first creates
//! `keys` API keys with `KeysService.CreateKey`; the load uses one of them
//! (a `scheduler` key), c's worker another (a `worker` key for its task
//! name). Against the same measurements on a fresh server in plaintext
//! with no authentication, in the same run, alternating.
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

/// One run of tls: a at each concurrency, then c at `rate` if given; each
/// measurement plaintext without auth, then with TLS and keys.
pub async fn tls(
    ctx: &Ctx,
    certs: &Certs,
    keys: usize,
    rate: Option<f64>,
) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    let times = (ctx.plan.warmup, ctx.plan.window);
    let make: MakeRequest = Arc::new(|seq| simple("bench.a", payload_n(seq)));
    for &c in &ctx.plan.inflight {
        for secure in [false, true] {
            let f = if secure {
                ctx.fresh_tls("tls", &certs.env(), certs.trust.clone())
                    .await?
            } else {
                ctx.fresh("tls-plain").await?
            };
            let r = async {
                let access = if secure {
                    let s = create_keys(&f.server.url, certs, keys).await?;
                    certs.access(&s.load)
                } else {
                    Access::default()
                };
                let pool = Pool::with_access(&f.server.url, c, &access).await?;
                load::schedule_rate(&pool, f.server.pid(), c, times, make.clone(), false).await
            }
            .await;
            f.done().await;
            let id = if secure {
                format!("tls.c{c}")
            } else {
                format!("tls.plain.c{c}")
            };
            scenarios::push_rate(&mut out, &id, r.with_context(|| format!("tls: {id}"))?);
        }
    }
    let Some(rate) = rate else { return Ok(out) };
    let mut p99 = [0.0; 2];
    for (i, secure) in [false, true].into_iter().enumerate() {
        let f = if secure {
            ctx.fresh_tls("tls-c", &certs.env(), certs.trust.clone())
                .await?
        } else {
            ctx.fresh("tls-c-plain").await?
        };
        let r = async {
            let make: MakeRequest = Arc::new(|t| simple(NAME, payload_t(t)));
            let mut load = LatencyLoad::plain(ctx, NAME, make);
            load.worker.0 = WorkerKind::Raw;
            if secure {
                let s = create_keys(&f.server.url, certs, keys).await?;
                load.producer = certs.access(&s.load);
                load.worker.1 = certs.access(&s.worker);
            }
            let times = (ctx.plan.lat_warmup, ctx.plan.lat_window);
            scenarios::latency_with(ctx, &f.server.url, rate, times, &load).await
        }
        .await;
        f.done().await;
        let tag = if secure { "tls" } else { "tls.plain" };
        let l: Latency = r.with_context(|| format!("{tag}: schedule-to-start"))?;
        for (q, v) in [("p50", l.p50), ("p99", l.p99), ("p999", l.p999)] {
            out.push((format!("{tag}.50.{q}"), v));
        }
        p99[i] = l.p99;
    }
    if p99[0] > 0.0 {
        out.push(("tls.50.p99_ratio".into(), p99[1] / p99[0]));
    }
    Ok(out)
}
