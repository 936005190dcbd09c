//! The PEM files of `[tls]`: CA bundles read once, and the server's
//! certificate and key, read again when either file changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::TlsError;

/// How often, at most, the certificate's files are looked at.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

fn file_error(setting: &'static str, path: &Path, cause: impl ToString) -> TlsError {
    TlsError::File {
        setting,
        path: path.display().to_string(),
        cause: cause.to_string(),
    }
}

/// Every certificate of a PEM file (at least one).
fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    // Read first, so a missing or unreadable file says so plainly.
    let pem = std::fs::read(path).map_err(|e| file_error(setting, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(setting, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(setting, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// A CA bundle: every certificate of the file is a trusted root.
pub(super) fn roots(setting: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certificates(setting, path)? {
        store
            .add(c)
            .map_err(|e| file_error(setting, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// The certificate chain and key, checked to belong together.
fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certificates("cert_file", cert)?;
    let pem = std::fs::read(key).map_err(|e| file_error("key_file", key, e))?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| file_error("key_file", key, format!("no PEM private key: {e}")))?;
    let ck = CertifiedKey::from_der(chain, der, provider)
        .map_err(|e| file_error("key_file", key, format!("does not fit tls.cert_file: {e}")))?;
    Ok(Arc::new(ck))
}

/// What identifies a version of a file: its modification time and size.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The server's certificate, served from memory and read again from its
/// files when their stamps change. A pair that cannot be used (half
/// written, mismatched) keeps the one before and is tried again at the
/// next look.
#[derive(Debug)]
pub(super) struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' stamps when `key` was read.
    stamps: (Stamp, Stamp),
    /// Stamps whose files could not be used: not read again (nor logged
    /// again) until a file changes once more.
    refused: Option<(Stamp, Stamp)>,
    looked: Instant,
}

impl ReloadingCert {
    /// Reads both files now: an error here stops the start-up.
    pub(super) fn load(
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<ReloadingCert, TlsError> {
        let stamps = (stamp(&cert), stamp(&key));
        let loaded = certified_key(&cert, &key, &provider)?;
        Ok(ReloadingCert {
            cert,
            key,
            provider,
            state: Mutex::new(Loaded {
                key: loaded,
                stamps,
                refused: None,
                looked: Instant::now(),
            }),
        })
    }

    /// The certificate to serve now, read again first if its files changed
    /// (looked at once a second at most: two `stat` calls).
    fn current(&self) -> Arc<CertifiedKey> {
        let mut s = self.state.lock();
        if s.looked.elapsed() >= RECHECK_EVERY {
            s.looked = Instant::now();
            let now = (stamp(&self.cert), stamp(&self.key));
            if now != s.stamps && Some(now) != s.refused {
                match certified_key(&self.cert, &self.key, &self.provider) {
                    Ok(k) => {
                        s.key = k;
                        s.stamps = now;
                        s.refused = None;
                        tracing::info!(cert_file = %self.cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => {
                        s.refused = Some(now);
                        tracing::warn!(cause = %e, "TLS certificate files changed but cannot be used (yet); serving the previous certificate");
                    }
                }
            }
        }
        s.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
