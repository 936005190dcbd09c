//! The per-service client-certificate check: a tonic interceptor that lets
//! a call through only if its connection showed a certificate that chains
//! to the gate's CAs (`tls.worker_client_ca_file` for `WorkerService`).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::UnixTime;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::TlsError;

/// Lets every call through, or only those with a certificate of its CAs.
#[derive(Clone)]
pub struct Gate(Option<(Arc<dyn ClientCertVerifier>, &'static str)>);

impl Gate {
    /// A gate that checks nothing.
    pub fn open() -> Gate {
        Gate(None)
    }

    /// A gate that needs a certificate chaining to `roots`; `setting`
    /// names them in refusals.
    pub(super) fn requiring(
        roots: RootCertStore,
        provider: Arc<CryptoProvider>,
        setting: &'static str,
    ) -> Result<Gate, TlsError> {
        let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError::Settings(format!("{setting}: {e}")))?;
        Ok(Gate(Some((v, setting))))
    }
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some((verifier, setting)) = &self.0 else {
            return Ok(req);
        };
        let certs = req.peer_certs();
        let Some((leaf, chain)) = certs.as_deref().and_then(|c| c.split_first()) else {
            return Err(tonic::Status::unauthenticated(format!(
                "this service needs a client certificate issued by a CA of {setting}"
            )));
        };
        match verifier.verify_client_cert(leaf, chain, UnixTime::now()) {
            Ok(_) => Ok(req),
            Err(e) => Err(tonic::Status::permission_denied(format!(
                "the client certificate is not accepted by this service ({setting}): {e}"
            ))),
        }
    }
}
