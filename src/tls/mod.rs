//! TLS on the server's two ports (`[tls]`): the section, the rustls server
//! configurations built from it, the accept loops that hand TLS streams to
//! tonic and to the admin server, and the per-service client-certificate
//! check for workers.
//!
//! It owns reading the certificate, key and CA files and reloading the
//! certificate when its files change ([`files`], through [`crate::reload`]). It must not touch
//! requests beyond their peer certificates, the core or the store; the
//! server decides where the acceptors and gates go.
//!
//! mTLS design: one handshake verifier for the port, whose roots are
//! `client_ca_file` and `worker_client_ca_file` together, required with
//! `client_auth = "require"` and optional otherwise. Then, per service:
//! with `worker_client_ca_file` set, `WorkerService` calls need a
//! certificate that chains to that CA ([`Gate`]); and with
//! `client_auth = "require"` too, `OrchestratorService` calls need one
//! that chains to `client_ca_file`, so a worker's certificate cannot
//! schedule or cancel. Health and reflection answer any handshake.

mod accept;
mod files;
mod gate;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};

pub use accept::{incoming, TlsListener};
pub use gate::Gate;

/// Whether a client must show a certificate (`tls.client_auth`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for and verified if given; none is accepted.
    Optional,
    /// A certificate that chains to a configured CA is required.
    Require,
}

/// `[tls]`: TLS on the gRPC port and the admin port (both, with the same
/// certificate). Off unless `cert_file` and `key_file` are set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM (the leaf first). Read again
    /// when its modification time, size or inode changes (looked at, at most,
    /// once a second, when a connection arrives): a rotated certificate is
    /// served without a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    /// Reloaded with `cert_file`; a pair that does not match keeps the old
    /// one (and logs why) until both files are written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The CAs, PEM, whose client certificates are accepted (mTLS); read
    /// at start-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// `none` (default), `optional` or `require`: whether a client must
    /// show a certificate from `client_ca_file` (on both ports).
    pub client_auth: ClientAuth,
    /// The CAs, PEM, of workers' client certificates: when set,
    /// `WorkerService` calls need a certificate that chains to one of them,
    /// whatever `client_auth` says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_client_ca_file: Option<PathBuf>,
}

/// Why the TLS settings cannot be used; each names its setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds nothing usable.
    #[error("tls.{setting} ({path}): {cause}")]
    File {
        /// The setting, e.g. `cert_file`.
        setting: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        cause: String,
    },
    /// The settings do not fit together.
    #[error("tls: {0}")]
    Settings(String),
}

/// The server side of TLS, built once at start-up from `[tls]`.
#[derive(Clone)]
pub struct ServerTls {
    /// For the gRPC port (ALPN `h2`).
    pub grpc: tokio_rustls::TlsAcceptor,
    /// For the admin port (ALPN `h2`, `http/1.1`).
    pub admin: tokio_rustls::TlsAcceptor,
    /// The check on `WorkerService` calls (`worker_client_ca_file`).
    pub workers: Gate,
    /// The check on `OrchestratorService` calls.
    pub orchestrator: Gate,
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Builds the server side, reading every file now, or `None` when TLS
    /// is off. Every problem names its setting.
    pub fn server(&self) -> Result<Option<ServerTls>, TlsError> {
        let (cert, key) = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            (None, None) => {
                if self.client_ca_file.is_some()
                    || self.worker_client_ca_file.is_some()
                    || self.client_auth != ClientAuth::None
                {
                    return Err(TlsError::Settings(
                        "client certificates need TLS: set tls.cert_file and tls.key_file".into(),
                    ));
                }
                return Ok(None);
            }
            (Some(_), None) => {
                return Err(TlsError::Settings(
                    "tls.cert_file is set but tls.key_file is not".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(TlsError::Settings(
                    "tls.key_file is set but tls.cert_file is not".into(),
                ))
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // The settings' combination first, then the files.
        let clients = self.client_roots()?;
        let resolver = Arc::new(files::ReloadingCert::load(cert, key, provider.clone())?);
        let workers = match &self.worker_client_ca_file {
            Some(p) => Some(files::roots("worker_client_ca_file", p)?),
            None => None,
        };
        let verifier = self.handshake_verifier(&clients, &workers, &provider)?;
        let config = |alpn: &[&[u8]]| -> Result<tokio_rustls::TlsAcceptor, TlsError> {
            let b = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Settings(e.to_string()))?;
            let b = match &verifier {
                Some(v) => b.with_client_cert_verifier(v.clone()),
                None => b.with_no_client_auth(),
            };
            let mut c = b.with_cert_resolver(resolver.clone());
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(tokio_rustls::TlsAcceptor::from(Arc::new(c)))
        };
        let gate = |roots: Option<RootCertStore>, what: &'static str| match roots {
            Some(r) => Gate::requiring(r, provider.clone(), what),
            None => Ok(Gate::open()),
        };
        let orchestrator_roots = match (&workers, self.client_auth) {
            (Some(_), ClientAuth::Require) => clients.clone(),
            _ => None,
        };
        Ok(Some(ServerTls {
            grpc: config(&[b"h2"])?,
            admin: config(&[b"h2", b"http/1.1"])?,
            workers: gate(workers, "tls.worker_client_ca_file")?,
            orchestrator: gate(orchestrator_roots, "tls.client_ca_file")?,
        }))
    }

    /// The handshake's client-certificate verifier: the client and worker
    /// CAs together, required with `client_auth = "require"`, else optional;
    /// `None` without any CA.
    fn handshake_verifier(
        &self,
        clients: &Option<RootCertStore>,
        workers: &Option<RootCertStore>,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, TlsError> {
        if clients.is_none() && workers.is_none() {
            return Ok(None);
        }
        let mut all = RootCertStore::empty();
        for r in [clients, workers].into_iter().flatten() {
            all.roots.extend(r.roots.iter().cloned());
        }
        let b = WebPkiClientVerifier::builder_with_provider(Arc::new(all), provider.clone());
        let b = match self.client_auth {
            ClientAuth::Require => b,
            _ => b.allow_unauthenticated(),
        };
        b.build()
            .map(Some)
            .map_err(|e| TlsError::Settings(e.to_string()))
    }

    /// The client CAs, checked against `client_auth`.
    fn client_roots(&self) -> Result<Option<RootCertStore>, TlsError> {
        match (&self.client_ca_file, self.client_auth) {
            (None, ClientAuth::None) => Ok(None),
            (None, _) => Err(TlsError::Settings(
                "tls.client_auth asks for client certificates but tls.client_ca_file is not set"
                    .into(),
            )),
            (Some(_), ClientAuth::None) => Err(TlsError::Settings(
                "tls.client_ca_file is set but tls.client_auth is \"none\": set it to \"optional\" \
                 or \"require\""
                    .into(),
            )),
            (Some(p), _) => files::roots("client_ca_file", p).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(c: TlsConfig) -> String {
        match c.server() {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{c:?} was accepted"),
        }
    }

    #[test]
    fn off_by_default() {
        assert!(!TlsConfig::default().enabled());
        assert!(TlsConfig::default().server().unwrap().is_none());
    }

    #[test]
    fn client_certificates_need_tls_and_a_mode_and_a_ca() {
        let ca = Some(PathBuf::from("/nonexistent/ca.pem"));
        let no_server_cert = TlsConfig {
            worker_client_ca_file: ca.clone(),
            ..Default::default()
        };
        assert!(refusal(no_server_cert).contains("tls.cert_file"));
        let with_cert = TlsConfig {
            cert_file: Some("/nonexistent/c.pem".into()),
            key_file: Some("/nonexistent/k.pem".into()),
            ..Default::default()
        };
        let e = refusal(TlsConfig {
            client_ca_file: ca,
            ..with_cert.clone()
        });
        assert!(e.contains("tls.client_auth"), "{e}");
        let e = refusal(TlsConfig {
            key_file: None,
            ..with_cert
        });
        assert!(e.contains("tls.key_file"), "{e}");
    }
}
