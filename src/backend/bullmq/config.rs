//! The `[bullmq]` section of the configuration, and the Redis URL it makes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where Redis is and which SIMPLE tasks go to BullMQ.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BullmqConfig {
    /// Run the BullMQ backend. Default false.
    pub enabled: bool,
    /// Redis: `redis://[:password@]host:port[/db]`, or `rediss://` for TLS.
    /// Default: the `REDIS_URL` environment variable, else
    /// `redis://127.0.0.1:6379`.
    pub url: String,
    /// BullMQ's key prefix: keys are `<prefix>:<queue>:…`. Default `bull`,
    /// as in BullMQ; it must match the Node workers' `prefix`.
    pub prefix: String,
    /// The queues whose SIMPLE tasks run on BullMQ (a task's queue is its
    /// `target.simple.queue`, else its name); `*` routes every SIMPLE task.
    /// Other queues stay on the embedded engine.
    pub queues: Vec<String>,
    /// Use TLS even if `url` says `redis://`. Default false.
    pub tls: bool,
    /// Accept any server certificate (self-signed test servers only).
    /// Default false.
    pub tls_insecure: bool,
    /// The name of an environment variable holding the Redis password (it
    /// replaces a password in `url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// How long connecting may take before Redis counts as unreachable.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one command may take before Redis counts as unreachable.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How long the cancel marker of an active job
    /// (`<prefix>:<queue>:<job id>:switchyard:cancel`) lives, so that a
    /// worker that looks only when it starts the job still sees it.
    #[serde(with = "humantime_serde")]
    pub cancel_ttl: Duration,
}

impl Default for BullmqConfig {
    fn default() -> Self {
        BullmqConfig {
            enabled: false,
            url: std::env::var("REDIS_URL")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            prefix: "bull".into(),
            queues: Vec::new(),
            tls: false,
            tls_insecure: false,
            password_env: None,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(3),
            cancel_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl BullmqConfig {
    /// The URL to connect with: `url` with TLS turned on if asked, the
    /// password from `password_env`, and `#insecure` for `tls_insecure`.
    pub fn connection_url(&self) -> Result<String, String> {
        let mut u =
            url::Url::parse(&self.url).map_err(|e| format!("bullmq.url {:?}: {e}", self.url))?;
        match u.scheme() {
            "redis" if self.tls => u
                .set_scheme("rediss")
                .map_err(|_| "bullmq.url: cannot switch to rediss".to_string())?,
            "redis" | "rediss" => {}
            s => {
                return Err(format!(
                    "bullmq.url: scheme {s:?} is not redis:// or rediss://"
                ))
            }
        }
        if let Some(var) = &self.password_env {
            let pw =
                std::env::var(var).map_err(|_| format!("bullmq.password_env: {var} is not set"))?;
            u.set_password(Some(&pw))
                .map_err(|_| "bullmq.url: cannot carry a password".to_string())?;
        }
        if self.tls_insecure && u.scheme() == "rediss" {
            u.set_fragment(Some("insecure"));
        }
        Ok(u.to_string())
    }

    /// `url` without its password, for logs.
    pub fn redacted_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                u.to_string()
            }
            Err(_) => "(invalid url)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_and_valid() {
        let c = BullmqConfig::default();
        assert!(!c.enabled);
        assert_eq!(c.prefix, "bull");
        assert!(c.connection_url().is_ok());
    }

    #[test]
    fn tls_and_password_shape_the_url() {
        let c = BullmqConfig {
            url: "redis://:old@example.test:6380/2".into(),
            tls: true,
            tls_insecure: true,
            password_env: Some("SYTEST_BULLMQ_PW".into()),
            ..Default::default()
        };
        std::env::set_var("SYTEST_BULLMQ_PW", "s3cr/t");
        let u = c.connection_url().unwrap();
        assert_eq!(u, "rediss://:s3cr%2Ft@example.test:6380/2#insecure");
        assert_eq!(c.redacted_url(), "redis://:***@example.test:6380/2");
        let bad = BullmqConfig {
            url: "http://x".into(),
            ..Default::default()
        };
        assert!(bad.connection_url().is_err());
    }
}
