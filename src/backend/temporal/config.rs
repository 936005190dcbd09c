//! The `[temporal]` section of the configuration, and turning it into the
//! client's connection options.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_client::{
    ClientTlsOptions, ConnectionOptions, GrpcCompression, RetryOptions, TlsOptions, Url,
};

/// Where Temporal is and what goes there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TemporalConfig {
    /// Run the Temporal backend. Default false.
    pub enabled: bool,
    /// The frontend's gRPC address: `host:port` or a URL. Default: the
    /// `TEMPORAL_ADDRESS` environment variable, else `http://127.0.0.1:7233`.
    pub address: String,
    /// The namespace workflows start in. Default `default`.
    pub namespace: String,
    /// TLS (and mTLS) to the frontend.
    pub tls: TemporalTls,
    /// The name of an environment variable that holds an API key (Temporal
    /// Cloud). Setting it turns TLS on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// The workflow types of COMPLEX tasks that run on Temporal instead of
    /// the embedded workflow engine; `*` routes every COMPLEX task.
    pub workflow_types: Vec<String>,
    /// The task queue of tasks that do not name one. Without it such tasks
    /// fail (non-retryably) with a message that says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_task_queue: Option<String>,
    /// How often a running workflow is described to report its pending
    /// activities as progress (jittered by ±20%). `0s` turns it off; each
    /// workflow then costs one long poll and nothing else.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// At most this many of those describes per second over all followed
    /// workflows: with many workflows each is described less often
    /// (`0` = no cap).
    pub progress_describes_per_second: u32,
    /// How long connecting may take before the attempt counts as
    /// unreachable.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A Keyword search attribute that receives the task's user id (it must
    /// be registered in the namespace). The memo always carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_search_attribute: Option<String>,
    /// A Keyword search attribute that receives the task's session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_search_attribute: Option<String>,
    /// The identity recorded in Temporal's history for starts, cancels and
    /// terminations.
    pub identity: String,
    /// Gzip the gRPC requests (worth it for large payloads over a slow
    /// link). Default false.
    pub gzip: bool,
}

/// TLS settings. Files are PEM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TemporalTls {
    /// Use TLS. Implied by any of the files below or by an API key.
    pub enabled: bool,
    /// The client certificate, for mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key, for mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// A CA certificate to verify the server with (default: the system's
    /// roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_ca_cert: Option<PathBuf>,
    /// The name to verify the server's certificate against (default: the
    /// address's host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl Default for TemporalConfig {
    fn default() -> Self {
        TemporalConfig {
            enabled: false,
            address: std::env::var("TEMPORAL_ADDRESS")
                .ok()
                .filter(|a| !a.trim().is_empty())
                .unwrap_or_else(|| "http://127.0.0.1:7233".into()),
            namespace: "default".into(),
            tls: TemporalTls::default(),
            api_key_env: None,
            workflow_types: Vec::new(),
            default_task_queue: None,
            progress_interval: Duration::from_secs(5),
            progress_describes_per_second: 20,
            connect_timeout: Duration::from_secs(5),
            user_search_attribute: None,
            session_search_attribute: None,
            identity: "switchyard".into(),
            gzip: false,
        }
    }
}

impl TemporalTls {
    fn wanted(&self) -> bool {
        self.enabled
            || self.client_cert.is_some()
            || self.client_key.is_some()
            || self.server_ca_cert.is_some()
    }
}

impl TemporalConfig {
    /// The address as a URL: `host:port` gets `http://`, or `https://` when
    /// TLS is on.
    pub fn url(&self) -> Result<Url, String> {
        let a = self.address.trim();
        let s = if a.contains("://") {
            a.to_string()
        } else if self.tls.wanted() || self.api_key_env.is_some() {
            format!("https://{a}")
        } else {
            format!("http://{a}")
        };
        Url::parse(&s).map_err(|e| format!("temporal.address {a:?} is not a valid address: {e}"))
    }

    /// The client's connection options: reads the TLS files and the API key
    /// now, so that a mistake stops the server at start-up.
    pub fn connection_options(&self) -> Result<ConnectionOptions, String> {
        let url = self.url()?;
        let read = |what: &str, p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| format!("temporal.tls.{what}: cannot read {}: {e}", p.display()))
        };
        let tls = if self.tls.wanted() || url.scheme() == "https" {
            let client = match (&self.tls.client_cert, &self.tls.client_key) {
                (Some(c), Some(k)) => Some(
                    ClientTlsOptions::builder()
                        .client_cert(read("client_cert", c)?)
                        .client_private_key(read("client_key", k)?)
                        .build(),
                ),
                (None, None) => None,
                _ => return Err("temporal.tls: client_cert and client_key go together".into()),
            };
            let ca = self
                .tls
                .server_ca_cert
                .as_ref()
                .map(|p| read("server_ca_cert", p))
                .transpose()?;
            Some(
                TlsOptions::builder()
                    .maybe_server_root_ca_cert(ca)
                    .maybe_domain(self.tls.domain.clone())
                    .maybe_client_tls_options(client)
                    .build(),
            )
        } else {
            None
        };
        let api_key = match &self.api_key_env {
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| format!("temporal.api_key_env names {var}, which is not set"))?,
            ),
            None => None,
        };
        // In-call retries stay short: a longer outage is the outbox's job
        // (the task waits as ENGINE_UNREACHABLE and is offered again).
        let retry = RetryOptions::builder()
            .initial_interval(Duration::from_millis(100))
            .max_interval(Duration::from_secs(1))
            .max_elapsed_time(Some(Duration::from_secs(2)))
            .max_retries(6)
            .build();
        Ok(ConnectionOptions::new(url)
            .identity(self.identity.clone())
            .maybe_tls_options(tls)
            .maybe_api_key(api_key)
            .connect_timeout(self.connect_timeout)
            .retry_options(retry)
            .grpc_compression(if self.gzip {
                GrpcCompression::Gzip
            } else {
                GrpcCompression::None
            })
            .build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = TemporalConfig {
            address: "http://127.0.0.1:7233".into(),
            ..Default::default()
        };
        assert!(!c.enabled);
        assert_eq!(c.namespace, "default");
        assert_eq!(c.url().unwrap().as_str(), "http://127.0.0.1:7233/");
        assert!(c.connection_options().is_ok());
        let back: TemporalConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn host_port_addresses_get_a_scheme() {
        let mut c = TemporalConfig {
            address: "temporal.example:7233".into(),
            ..Default::default()
        };
        assert_eq!(c.url().unwrap().scheme(), "http");
        c.tls.enabled = true;
        assert_eq!(c.url().unwrap().scheme(), "https");
    }

    #[test]
    fn missing_files_and_keys_are_start_up_errors() {
        let c = TemporalConfig {
            api_key_env: Some("SWITCHYARD_TEST_SURELY_UNSET_KEY".into()),
            ..Default::default()
        };
        assert!(c.connection_options().unwrap_err().contains("not set"));
        let mut c = TemporalConfig::default();
        c.tls.client_cert = Some("/nonexistent/cert.pem".into());
        assert!(c.connection_options().unwrap_err().contains("client_cert"));
    }
}
