//! Settings of the INTEGRATION executor (`[webhook]` in the config file) and
//! the secrets they name.
//!
//! Secrets are never written in the config: an entry names an environment
//! variable (`value_env`) or a file (`value_file`), read once at start-up. So
//! `switchyard config` prints references, never values, and a [`Secret`]
//! prints as `***` in any `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The INTEGRATION executor's settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Run the executor. Default true.
    pub enabled: bool,
    /// Calls in flight at once, all hosts together (the executor's slots).
    /// Default 256.
    pub concurrency: u32,
    /// Calls in flight at once to one host (`host:port`). Default 64. At most
    /// as many more calls may wait for that host; beyond that a call fails
    /// with the retryable kind `host_busy`, so one slow partner cannot hold
    /// every slot.
    pub per_host_concurrency: u32,
    /// n8n's base URL (`https://n8n.example.com`); a task that names only a
    /// `workflow_id` is sent to `{n8n_base_url}/webhook/{path}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n8n_base_url: Option<String>,
    /// Maps a workflow id to its webhook path (the Webhook node's "Path");
    /// an id not in the map is its own path.
    pub workflow_paths: BTreeMap<String, String>,
    /// Destinations exempt from the SSRF guard: exact host names
    /// (`n8n.internal`), IP addresses (`127.0.0.1`, `::1`) or CIDRs
    /// (`10.1.0.0/16`). Empty by default: loopback, private, link-local,
    /// CGNAT, multicast and cloud-metadata addresses are refused.
    pub allow_hosts: Vec<String>,
    /// The server's own listen addresses (gRPC, admin), set at start-up, not
    /// configured: a webhook may reach them only through an `allow_hosts`
    /// entry that names the port.
    #[serde(skip)]
    pub own_addresses: Vec<std::net::SocketAddr>,
    /// Time to establish a connection (TCP and TLS). Default 5s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time for a whole call: connect, send, redirects and reading the
    /// response. Default 30s. A call that passes it after its request was
    /// sent fails with kind `no_response`: the outcome is unknown.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Redirects followed per call, each re-checked by the SSRF guard.
    /// Default 3; 0 treats a redirect as an error.
    pub max_redirects: u32,
    /// Largest response body kept as the result. Default 1 MiB; a larger one
    /// fails the call (kind `response_too_large`, not retried).
    pub max_response_bytes: u64,
    /// An environment variable holding the HMAC-SHA256 signing secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret_env: Option<String>,
    /// A file holding the signing secret (trailing newline ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret_file: Option<PathBuf>,
    /// Extra CAs (PEM, one or more) trusted for `https://` webhooks, besides
    /// the built-in roots: a partner's private or self-signed CA. Read at
    /// start-up; an unreadable file or one without a certificate stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The local address outgoing calls are made from (default: chosen by
    /// the system).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_address: Option<IpAddr>,
    /// Settings per `integration_source` (`github`, `jenkins`, ...).
    pub sources: BTreeMap<String, SourceConfig>,
    /// Settings per destination host (`n8n.example.com` or
    /// `n8n.example.com:5678`). A field set here wins over the source's;
    /// `rate_limit` is taken from a host entry only.
    pub hosts: BTreeMap<String, SourceConfig>,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

fn one() -> u32 {
    1
}

/// A host's pace (`[webhook.hosts."h".rate_limit]`): at most `rate` calls
/// to the host start per `interval`, up to `burst` at once. A call waits
/// in the webhook caller for its token (its task is RUNNING meanwhile);
/// one whose token is further away than its timeout fails with the
/// retryable kind `host_busy` and is offered again later, without using an
/// attempt. To hold tasks PENDING (`RATE_LIMITED`) instead, give their
/// name a rate limit (`[[flow.rate_limit]]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostRateConfig {
    /// Calls per interval, 1 to 1,000,000.
    pub rate: u32,
    /// The interval, 1 ms to 24 h. Default 1s.
    #[serde(default = "one_second", with = "humantime_serde")]
    pub interval: Duration,
    /// Calls at once after a quiet time, 1 to 1,000,000. Default 1.
    #[serde(default = "one")]
    pub burst: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            enabled: true,
            concurrency: 256,
            per_host_concurrency: 64,
            n8n_base_url: None,
            workflow_paths: BTreeMap::new(),
            allow_hosts: Vec::new(),
            own_addresses: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_redirects: 3,
            max_response_bytes: 1 << 20,
            signing_secret_env: None,
            signing_secret_file: None,
            ca_file: None,
            local_address: None,
            sources: BTreeMap::new(),
            hosts: BTreeMap::new(),
        }
    }
}

/// Settings of one integration source or one host. Every field is optional.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// Credentials sent with each call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Overrides `webhook.connect_timeout`.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// Overrides `webhook.timeout`.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// For a source: the hosts (`host` or `host:port`) its credentials may be
    /// sent to. Empty: only the host of `n8n_base_url`. A call of the source
    /// to any other host fails (kind `auth_refused`) rather than hand the
    /// credentials to whatever URL a task names. Ignored for a host entry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub auth_hosts: Vec<String>,
    /// For a host: at most this many calls to it start per interval (see
    /// [`HostRateConfig`]). Refused on a source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<HostRateConfig>,
}

/// How a call authenticates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// A header `name: value` (n8n's "Header Auth").
    Header,
    /// `Authorization: Basic base64(user:value)` (n8n's "Basic Auth").
    Basic,
    /// `Authorization: Bearer value`.
    Bearer,
}

/// Credentials: `{ kind = "bearer", value_env = "N8N_TOKEN" }`,
/// `{ kind = "basic", user = "switchyard", value_file = "/run/secrets/pw" }`,
/// `{ kind = "header", name = "X-N8N-Key", value_env = "N8N_KEY" }`.
/// The secret value (header value, password or token) comes from exactly one
/// of `value_env` and `value_file`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The scheme.
    pub kind: AuthKind,
    /// The header name (`header` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The user name (`basic` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// An environment variable holding the secret value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_env: Option<String>,
    /// A file holding the secret value (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_file: Option<PathBuf>,
}

/// A secret value. Its `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Reads a secret named by an environment variable or a file. `getenv` is
/// `std::env::var` in the server (a parameter so tests need not touch the
/// process environment). Errors name the variable or file, never the value.
pub fn load_secret(
    env: Option<&str>,
    file: Option<&Path>,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, String> {
    let raw = match (env, file) {
        (Some(_), Some(_)) => {
            return Err("give one of the environment variable and the file, not both".into())
        }
        (None, None) => return Err("needs an environment variable or a file".into()),
        (Some(var), None) => {
            getenv(var).ok_or_else(|| format!("the environment variable {var} is not set"))?
        }
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read the secret file {}: {}",
                path.display(),
                e.kind()
            )
        })?,
    };
    let value = raw.strip_suffix('\n').unwrap_or(&raw);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        return Err(match (env, file) {
            (Some(var), _) => format!("the environment variable {var} is empty"),
            (_, Some(path)) => format!("the secret file {} is empty", path.display()),
            _ => "the secret is empty".into(),
        });
    }
    Ok(Secret(Arc::from(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let c = WebhookConfig::default();
        let text = toml::to_string_pretty(&c).unwrap();
        assert_eq!(toml::from_str::<WebhookConfig>(&text).unwrap(), c);
    }

    #[test]
    fn a_full_config_parses() {
        let c: WebhookConfig = toml::from_str(
            r#"
            n8n_base_url = "https://n8n.example.com"
            allow_hosts = ["n8n.internal", "10.1.0.0/16"]
            timeout = "10s"
            signing_secret_env = "SIGNING"
            [workflow_paths]
            deploy = "ci/deploy"
            [sources.github]
            timeout = "2s"
            auth = { kind = "bearer", value_env = "GH_TOKEN" }
            [hosts."n8n.example.com"]
            auth = { kind = "header", name = "X-N8N-Key", value_file = "/run/secrets/n8n" }
            "#,
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.sources["github"].timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            c.sources["github"].auth.as_ref().unwrap().kind,
            AuthKind::Bearer
        );
        assert_eq!(
            c.hosts["n8n.example.com"]
                .auth
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("X-N8N-Key")
        );
        assert_eq!(c.workflow_paths["deploy"], "ci/deploy");
        assert!(
            toml::from_str::<WebhookConfig>("secret = \"x\"").is_err(),
            "unknown keys are errors"
        );
    }

    #[test]
    fn secrets_load_from_env_or_file_and_never_print() {
        let env = |k: &str| (k == "TOKEN").then(|| "s3cr3t-token".to_string());
        let s = load_secret(Some("TOKEN"), None, &env).unwrap();
        assert_eq!(s.expose(), "s3cr3t-token");
        assert!(!format!("{s:?} {s}").contains("s3cr3t"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\r\n").unwrap();
        assert_eq!(
            load_secret(None, Some(&path), &env).unwrap().expose(),
            "hunter2"
        );

        let missing = load_secret(Some("NOPE"), None, &env).unwrap_err();
        assert!(missing.contains("NOPE"), "{missing}");
        assert!(load_secret(None, None, &env).is_err());
        assert!(load_secret(Some("TOKEN"), Some(&path), &env).is_err());
        std::fs::write(&path, "\n").unwrap();
        assert!(load_secret(None, Some(&path), &env)
            .unwrap_err()
            .contains("empty"));
    }
}
