//! The PEM files of `[tls]`: CA bundles read once, and the server's
//! certificate and key, read again when either file changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::TlsError;
use crate::reload::{Reloading, RECHECK_EVERY};

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

/// The server's certificate, served from memory and read again from its
/// files when they change ([`crate::reload`]). A pair that cannot be used
/// (half written, mismatched) keeps the one before and is tried again when
/// a file changes once more.
#[derive(Debug)]
pub(super) struct ReloadingCert(Reloading<Arc<CertifiedKey>>);

impl ReloadingCert {
    /// Reads both files now: an error here stops the start-up.
    pub(super) fn load(
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<ReloadingCert, TlsError> {
        let files = vec![cert.clone(), key.clone()];
        Reloading::load("TLS certificate", files, RECHECK_EVERY, move || {
            certified_key(&cert, &key, &provider)
        })
        .map(ReloadingCert)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}
