//! A call's settings: the credentials, timeouts and credential hosts of
//! each configured source (`webhook.sources.*`) and host (`webhook.hosts.*`),
//! prepared once at start, and the pick of one call's client, timeout and
//! credentials (the host's settings win over the source's, which win over
//! the global ones).
//!
//! It owns where credentials may go (a source's only to its `auth_hosts`,
//! else the n8n host); it must not send anything, and nothing it logs or
//! returns may contain a secret (header values are marked sensitive).

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;

use super::call::Failure;
use super::{guard, host_port, invalid, Executor};
use super::{load_secret, AuthConfig, AuthKind, SourceConfig, WebhookConfig};
use crate::core::CoreError;
use crate::domain::flow::RateLimit;
use crate::domain::FailureKind;

/// Credentials ready to send.
pub(super) struct Auth {
    pub(super) name: HeaderName,
    pub(super) value: HeaderValue,
}

/// One source's or host's prepared settings.
#[derive(Default)]
pub(super) struct Settings {
    pub(super) auth: Option<Auth>,
    pub(super) auth_hosts: Vec<String>,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) timeout: Option<Duration>,
    /// A host entry's pace (`rate_limit`).
    pub(super) pace: Option<RateLimit>,
}

/// What a call uses, picked from the host's, the source's and the global
/// settings.
pub(super) struct CallSettings<'a> {
    pub(super) client: &'a reqwest::Client,
    pub(super) timeout: Duration,
    pub(super) auth: Option<&'a Auth>,
    /// The host entry's name and rate limit, if it has one.
    pub(super) pace: Option<(&'a str, &'a RateLimit)>,
}

fn prepare_auth(
    field: &str,
    a: &AuthConfig,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Auth, CoreError> {
    let secret = load_secret(a.value_env.as_deref(), a.value_file.as_deref(), getenv)
        .map_err(|e| invalid(field, e))?;
    let (name, value) = match a.kind {
        AuthKind::Header => {
            let n = a
                .name
                .as_deref()
                .ok_or_else(|| invalid(field, "header auth needs `name`"))?;
            let name = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| invalid(field, format!("{n:?} is not a valid header name")))?;
            (name, secret.expose().to_string())
        }
        AuthKind::Basic => {
            let user = a
                .user
                .as_deref()
                .ok_or_else(|| invalid(field, "basic auth needs `user`"))?;
            if user.contains(':') {
                return Err(invalid(field, "a basic-auth user name cannot contain ':'"));
            }
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", secret.expose()));
            (reqwest::header::AUTHORIZATION, format!("Basic {token}"))
        }
        AuthKind::Bearer => (
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", secret.expose()),
        ),
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        invalid(
            field,
            "the secret is not a valid header value (control characters?)",
        )
    })?;
    value.set_sensitive(true);
    Ok(Auth { name, value })
}

fn prepare_settings(
    field: &str,
    s: &SourceConfig,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, CoreError> {
    let auth = match &s.auth {
        Some(a) => Some(prepare_auth(&format!("{field}.auth"), a, getenv)?),
        None => None,
    };
    let auth_hosts = s
        .auth_hosts
        .iter()
        .map(|h| match h.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => {
                format!("{}:{port}", guard::normalize_host(host))
            }
            _ => guard::normalize_host(h),
        })
        .collect();
    for (name, d) in [
        ("connect_timeout", s.connect_timeout),
        ("timeout", s.timeout),
    ] {
        if d.is_some_and(|d| d.is_zero()) {
            return Err(invalid(&format!("{field}.{name}"), "must be more than 0"));
        }
    }
    let pace = match &s.rate_limit {
        None => None,
        Some(r) => Some(
            RateLimit::new(
                "*",
                i64::from(r.rate),
                r.interval,
                i64::from(r.burst),
                false,
                true,
            )
            .map_err(|e| invalid(&format!("{field}.rate_limit"), e))?,
        ),
    };
    Ok(Settings {
        auth,
        auth_hosts,
        connect_timeout: s.connect_timeout,
        timeout: s.timeout,
        pace,
    })
}

/// Prepared settings by source name, or by host.
pub(super) type ByName = HashMap<String, Settings>;

/// The settings of every configured source and host (hosts by
/// `host[:port]`, normalised).
pub(super) fn prepare_all(
    cfg: &WebhookConfig,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<(ByName, ByName), CoreError> {
    let mut sources = HashMap::new();
    for (name, s) in &cfg.sources {
        if s.rate_limit.is_some() {
            return Err(invalid(
                &format!("webhook.sources.{name}.rate_limit"),
                "a rate limit is taken from a host entry (webhook.hosts); for a source's \
                 tasks, give their name a [[flow.rate_limit]]",
            ));
        }
        sources.insert(
            name.clone(),
            prepare_settings(&format!("webhook.sources.{name}"), s, getenv)?,
        );
    }
    let mut hosts = HashMap::new();
    for (name, s) in &cfg.hosts {
        let key = match name.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => {
                format!("{}:{p}", guard::normalize_host(h))
            }
            _ => guard::normalize_host(name),
        };
        hosts.insert(
            key,
            prepare_settings(&format!("webhook.hosts.{name}"), s, getenv)?,
        );
    }
    Ok((sources, hosts))
}

impl Executor {
    /// Picks the client, timeout and credentials of a call: the host's
    /// settings win over the source's, which win over the global ones.
    pub(super) fn settings(
        &self,
        url: &Url,
        source: Option<&str>,
    ) -> Result<CallSettings<'_>, Failure> {
        let s = source.and_then(|s| self.sources.get(s));
        let (entry, hp) = if self.hosts.is_empty() && s.is_none_or(|s| s.auth.is_none()) {
            (None, String::new())
        } else {
            let hp = host_port(url);
            let host = guard::normalize_host(url.host_str().unwrap_or_default());
            (
                self.hosts
                    .get_key_value(&hp)
                    .or_else(|| self.hosts.get_key_value(&host)),
                hp,
            )
        };
        let h = entry.map(|(_, h)| h);
        let pace = entry.and_then(|(k, h)| h.pace.as_ref().map(|r| (k.as_str(), r)));
        let connect_timeout = h
            .and_then(|h| h.connect_timeout)
            .or(s.and_then(|s| s.connect_timeout))
            .unwrap_or(self.connect_timeout);
        let timeout = h
            .and_then(|h| h.timeout)
            .or(s.and_then(|s| s.timeout))
            .unwrap_or(self.timeout);
        let client = self
            .clients
            .get(&connect_timeout)
            .or_else(|| self.clients.get(&self.connect_timeout))
            .or_else(|| self.clients.values().next())
            .ok_or_else(|| Failure::new(FailureKind::ConnectError, true, "no HTTP client"))?;
        let auth = match (h.and_then(|h| h.auth.as_ref()), s) {
            (Some(a), _) => Some(a),
            (None, Some(s)) => match &s.auth {
                Some(a) => {
                    let host = hp.rsplit_once(':').map(|(h, _)| h).unwrap_or(&hp);
                    let allowed = if s.auth_hosts.is_empty() {
                        self.n8n_origin.as_deref() == Some(hp.as_str())
                    } else {
                        s.auth_hosts.iter().any(|a| *a == hp || a == host)
                    };
                    if !allowed {
                        let name = source.unwrap_or_default();
                        let to = if s.auth_hosts.is_empty() {
                            format!(
                                "the n8n host ({})",
                                self.n8n_origin.as_deref().unwrap_or("none configured")
                            )
                        } else {
                            s.auth_hosts.join(", ")
                        };
                        return Err(Failure::new(
                            FailureKind::AuthRefused,
                            false,
                            format!(
                                "the credentials of source {name:?} are only sent to {to}, not to {hp}; list the host \
                                 in webhook.sources.{name}.auth_hosts to allow it"
                            ),
                        ));
                    }
                    Some(a)
                }
                None => None,
            },
            (None, None) => None,
        };
        Ok(CallSettings {
            client,
            timeout,
            auth,
            pace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_bearer_auth_become_sensitive_headers() {
        let env = |k: &str| (k == "PW").then(|| "pa55".to_string());
        let basic = prepare_auth(
            "f",
            &AuthConfig {
                kind: AuthKind::Basic,
                name: None,
                user: Some("sy".into()),
                value_env: Some("PW".into()),
                value_file: None,
            },
            &env,
        )
        .unwrap();
        assert_eq!(basic.name, reqwest::header::AUTHORIZATION);
        assert_eq!(basic.value.to_str().unwrap(), "Basic c3k6cGE1NQ==");
        assert!(basic.value.is_sensitive());
        assert!(!format!("{:?}", basic.value).contains("c3k6"));
        let header = AuthConfig {
            kind: AuthKind::Header,
            name: None,
            user: None,
            value_env: Some("PW".into()),
            value_file: None,
        };
        let e = prepare_auth("webhook.hosts.h.auth", &header, &env)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("webhook.hosts.h.auth") && e.contains("name"),
            "{e}"
        );
        assert!(!e.contains("pa55"));
    }

    #[test]
    fn a_rate_limit_is_taken_from_a_host_checked_and_refused_on_a_source() {
        use super::super::HostRateConfig;
        let env = |_: &str| -> Option<String> { None };
        let rate = |rate, burst| SourceConfig {
            rate_limit: Some(HostRateConfig {
                rate,
                interval: Duration::from_secs(1),
                burst,
            }),
            ..SourceConfig::default()
        };
        let mut cfg = WebhookConfig::default();
        cfg.hosts.insert("api.example.com".into(), rate(50, 10));
        let (_, hosts) = prepare_all(&cfg, &env).unwrap();
        let pace = hosts["api.example.com"].pace.as_ref().unwrap();
        assert_eq!((pace.rate, pace.burst), (50, 10));

        cfg.hosts.insert("api.example.com".into(), rate(0, 1));
        let e = prepare_all(&cfg, &env).err().unwrap().to_string();
        assert!(
            e.contains("webhook.hosts.api.example.com.rate_limit"),
            "{e}"
        );
        cfg.hosts.insert("api.example.com".into(), rate(1, 0));
        let e = prepare_all(&cfg, &env).err().unwrap().to_string();
        assert!(e.contains("burst"), "{e}");

        cfg.hosts.clear();
        cfg.sources.insert("github".into(), rate(5, 1));
        let e = prepare_all(&cfg, &env).err().unwrap().to_string();
        assert!(e.contains("webhook.sources.github.rate_limit"), "{e}");
    }
}
