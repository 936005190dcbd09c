//! Flow rules ⇄ protobuf (`FlowService`): the rules in force as a listing,
//! and the checks of a request's fields the flow component does not make.

use std::time::Duration;

use crate::core::CoreError;
use crate::domain::flow::FlowRules;
use crate::domain::namespace;
use crate::pb;

/// A `SetRateLimit` request's rate limit, checked for what the flow
/// component does not check itself (the interval's form).
pub struct RateLimitArgs {
    /// The pattern.
    pub pattern: String,
    /// Starts per interval, as sent.
    pub rate: i64,
    /// The interval.
    pub interval: Duration,
    /// The burst, as sent.
    pub burst: i64,
    /// One bucket per concurrency key.
    pub per_key: bool,
}

/// The rate limit of a `SetRateLimit` request.
pub fn rate_limit(r: Option<pb::RateLimit>) -> Result<RateLimitArgs, CoreError> {
    let r = r.ok_or_else(|| CoreError::field("rate_limit", "is required"))?;
    let d = r
        .interval
        .ok_or_else(|| CoreError::field("rate_limit.interval", "is required"))?;
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(CoreError::field(
            "rate_limit.interval",
            "must be a non-negative duration (nanos 0 to 999,999,999)",
        ));
    }
    Ok(RateLimitArgs {
        pattern: r.pattern,
        rate: i64::from(r.rate),
        interval: Duration::new(d.seconds as u64, d.nanos as u32),
        burst: i64::from(r.burst),
        per_key: r.per_key,
    })
}

/// A `SetConcurrencyPolicy` request's policy, as sent (the flow component
/// checks it).
pub struct PolicyArgs {
    /// The pattern.
    pub pattern: String,
    /// The limit per key.
    pub limit: i64,
    /// Keys and their weights.
    pub weights: Vec<(String, i64)>,
}

/// The policy of a `SetConcurrencyPolicy` request.
pub fn policy(p: Option<pb::ConcurrencyPolicy>) -> Result<PolicyArgs, CoreError> {
    let p = p.ok_or_else(|| CoreError::field("policy", "is required"))?;
    Ok(PolicyArgs {
        pattern: p.pattern,
        limit: i64::from(p.limit),
        weights: p
            .weights
            .into_iter()
            .map(|(k, w)| (k, i64::from(w)))
            .collect(),
    })
}

/// The rules of namespace `ns` in force, as `ListFlowRules` answers them
/// (bare patterns and names), with the tokens of each rate limit (its
/// pattern qualified by its namespace, tokens; see `Core::rate_tokens`).
pub fn rules(r: &FlowRules, tokens: &[(String, f64)], ns: &str) -> pb::ListFlowRulesResponse {
    pb::ListFlowRulesResponse {
        policies: r
            .policies
            .iter()
            .filter(|p| *p.namespace == *ns)
            .map(|p| pb::ConcurrencyPolicy {
                pattern: p.pattern.clone(),
                limit: p.limit.min(i32::MAX as u32) as i32,
                from_config: p.from_config,
                weights: p
                    .weights
                    .iter()
                    .map(|(k, w)| (k.clone(), (*w).min(i32::MAX as u32) as i32))
                    .collect(),
            })
            .collect(),
        default_limit: r
            .default_limit
            .filter(|_| ns == namespace::DEFAULT)
            .unwrap_or(0),
        paused: r.paused_in(ns).cloned().collect(),
        rate_limits: r
            .rate_limits
            .iter()
            .filter(|l| *l.namespace == *ns)
            .map(|l| pb::RateLimit {
                pattern: l.pattern.clone(),
                rate: l.rate.min(i32::MAX as u32) as i32,
                interval: Some(prost_types::Duration {
                    seconds: l.interval.as_secs() as i64,
                    nanos: l.interval.subsec_nanos() as i32,
                }),
                burst: l.burst.min(i32::MAX as u32) as i32,
                per_key: l.per_key,
                from_config: l.from_config,
                tokens: tokens
                    .iter()
                    .find(|(p, _)| *p == namespace::qualify(&l.pattern, ns))
                    .map_or(f64::from(l.burst), |(_, t)| *t),
            })
            .collect(),
    }
}
