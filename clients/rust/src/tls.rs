//! TLS for the client and the worker: which CAs to trust (`ca_file`, else
//! the system's roots) and which client certificate to show (`cert_file`
//! and `key_file`, for mTLS). Applies to `https://` URLs only; an `http://`
//! URL with any of these files set is refused, so a forgotten scheme does
//! not send in plaintext what was meant to be encrypted.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The files of a TLS connection. All optional: an empty value over
/// `https://` trusts the system's roots and shows no certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CAs to trust, PEM (instead of the system's roots).
    pub ca_file: Option<PathBuf>,
    /// The client certificate chain, PEM (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key, PEM (with `cert_file`).
    pub key_file: Option<PathBuf>,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

impl TlsFiles {
    /// Whether no file is set.
    pub fn is_empty(&self) -> bool {
        *self == TlsFiles::default()
    }

    /// The tonic TLS configuration, reading the files now.
    pub fn client_config(&self) -> Result<ClientTlsConfig, String> {
        let mut c = ClientTlsConfig::new();
        c = match &self.ca_file {
            Some(p) => c.ca_certificate(Certificate::from_pem(read("the CA file", p)?)),
            None => c.with_native_roots(),
        };
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Ok(c.identity(Identity::from_pem(
                read("the certificate file", cert)?,
                read("the key file", key)?,
            ))),
            (None, None) => Ok(c),
            (Some(_), None) => Err("a client certificate needs its key file too".into()),
            (None, Some(_)) => Err("a key file needs its client certificate file too".into()),
        }
    }

    /// `endpoint` with TLS when its URL is `https://`; an `http://` URL
    /// with files set is refused.
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, String> {
        match endpoint.uri().scheme_str() {
            Some("https") => endpoint
                .tls_config(self.client_config()?)
                .map_err(|e| e.to_string()),
            _ if self.is_empty() => Ok(endpoint),
            _ => Err(format!(
                "{}: TLS files are set but the URL is not https://",
                endpoint.uri()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str) -> Endpoint {
        Endpoint::from_shared(url.to_string()).unwrap()
    }

    #[test]
    fn plain_urls_with_tls_files_are_refused() {
        let files = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        assert!(files.apply(ep("http://127.0.0.1:1")).is_err());
        assert!(TlsFiles::default().apply(ep("http://127.0.0.1:1")).is_ok());
    }

    #[test]
    fn missing_files_and_half_identities_are_named() {
        let files = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = files.apply(ep("https://127.0.0.1:1")).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let half = TlsFiles {
            cert_file: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(half.client_config().unwrap_err().contains("key file"));
    }
}
