//! Flow rules set at run time: concurrency policies, rate limits and
//! paused names.
//!
//! Owns the rules an operator sets through `FlowService` (kept through
//! [`db`], so they hold after a restart and on a new leader), merged with
//! the configuration's (`[flow]`), and hands the whole set to the core,
//! which enforces it (`core::flow`) for every engine.
//!
//! Every rule belongs to a namespace: the caller's when set at run time,
//! `default` for the configuration's. A stored row names it by its pattern
//! (or paused name) qualified by the namespace, `pattern@ns` outside
//! `default` (`domain::namespace::qualify`; patterns and names hold no
//! `@`), so the tables of both stores are as they were. Each namespace
//! has its own bounds ([`flow::MAX_POLICIES`], [`flow::MAX_RATE_LIMITS`],
//! [`flow::MAX_PAUSED`]), so one namespace's rules never crowd out
//! another's.
//!
//! Must not: hold or release a task itself (the core does), touch the task
//! store, or know about gRPC.

mod db;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::core::{Core, CoreError};
use crate::domain::flow::{self, ConcurrencyPolicy, FlowRules, RateLimit};
use crate::domain::namespace::{self, DEFAULT};
use crate::domain::rules;
use crate::store::postgres::flow::FlowRow;
use crate::store::StoreError;
pub use db::Db;

/// The file of `flow.db` in the data directory (SQLite store).
pub const FILE: &str = "flow.db";

const KIND_CONCURRENCY: &str = "concurrency";
const KIND_PAUSED: &str = "paused";
const KIND_RATE: &str = "rate";

/// A stored concurrency policy's value (`flow_rules.value`): its limit as
/// a number, or, with weights, `{"limit": N, "weights": {"key": W}}`.
#[derive(serde::Deserialize, serde::Serialize)]
struct PolicyValue {
    limit: i64,
    #[serde(default)]
    weights: std::collections::BTreeMap<String, i64>,
}

impl PolicyValue {
    fn parse(pattern: &str, value: &str) -> Result<ConcurrencyPolicy, String> {
        let v = if value.trim_start().starts_with('{') {
            serde_json::from_str::<PolicyValue>(value).map_err(|e| e.to_string())?
        } else {
            PolicyValue {
                limit: value.parse::<i64>().unwrap_or(0),
                weights: Default::default(),
            }
        };
        ConcurrencyPolicy::new(pattern, v.limit, false)?.with_weights(v.weights)
    }

    /// The stored text: the bare limit without weights (as before weights
    /// existed), else the JSON object.
    fn text(limit: u32, weights: &std::collections::BTreeMap<String, u32>) -> String {
        if weights.is_empty() {
            return limit.to_string();
        }
        serde_json::json!({ "limit": limit, "weights": weights }).to_string()
    }
}

/// A stored rate limit's value (`flow_rules.value`, JSON).
#[derive(serde::Deserialize)]
struct RateValue {
    rate: i64,
    interval_us: u64,
    burst: i64,
    #[serde(default)]
    per_key: bool,
}

impl RateValue {
    fn parse(pattern: &str, value: &str) -> Result<RateLimit, String> {
        let v: RateValue = serde_json::from_str(value).map_err(|e| e.to_string())?;
        RateLimit::new(
            pattern,
            v.rate,
            Duration::from_micros(v.interval_us),
            v.burst,
            v.per_key,
            false,
        )
    }
}

/// The flow rules: the configuration's, and those set at run time.
#[derive(Clone)]
pub struct FlowControl {
    inner: Arc<Inner>,
}

struct Inner {
    core: Core,
    db: Db,
    /// The configuration's rules (policies marked `from_config`).
    config: FlowRules,
    /// The rows set at run time, in the order first set; one change at a
    /// time (the store, then the core).
    rows: Mutex<Vec<FlowRow>>,
}

impl FlowControl {
    /// Opens `flow.db` in `data_dir`.
    pub fn open_sqlite(data_dir: &Path) -> Result<Db, StoreError> {
        Db::open_sqlite(&data_dir.join(FILE))
    }

    /// Reads the rules kept in `db`, merges them with the configuration's
    /// and gives them to the core. A stored row that no longer parses (a
    /// pattern of an older version) is logged and skipped.
    pub async fn start(core: Core, db: Db, config: FlowRules) -> Result<FlowControl, StoreError> {
        let rows = db.all().await?;
        let fc = FlowControl {
            inner: Arc::new(Inner {
                core,
                db,
                config,
                rows: Mutex::new(rows),
            }),
        };
        let rows = fc.inner.rows.lock().await;
        fc.apply(&rows);
        drop(rows);
        Ok(fc)
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<FlowRules> {
        self.inner.core.flow_rules()
    }

    fn apply(&self, rows: &[FlowRow]) {
        let mut rules = FlowRules {
            default_limit: self.inner.config.default_limit,
            policies: Vec::new(),
            paused: self.inner.config.paused.clone(),
            rate_limits: Vec::new(),
        };
        for r in rows {
            // The row's name is qualified by the rule's namespace.
            let (name, ns) = namespace::split(&r.name);
            match r.kind.as_str() {
                KIND_CONCURRENCY => match PolicyValue::parse(name, &r.value) {
                    Ok(p) => rules.policies.push(p.in_namespace(ns)),
                    Err(e) => {
                        tracing::warn!(pattern = %r.name, cause = %e, "a stored concurrency policy cannot be used; skipped")
                    }
                },
                KIND_PAUSED => {
                    rules
                        .paused
                        .entry(ns.to_string())
                        .or_default()
                        .insert(name.to_string());
                }
                KIND_RATE => match RateValue::parse(name, &r.value) {
                    Ok(l) => rules.rate_limits.push(l.in_namespace(ns)),
                    Err(e) => {
                        tracing::warn!(pattern = %r.name, cause = %e, "a stored rate limit cannot be used; skipped")
                    }
                },
                other => tracing::warn!(kind = other, "an unknown flow rule kind; skipped"),
            }
        }
        // The configuration's rules are `default`'s.
        for p in &self.inner.config.policies {
            if rules.policy(DEFAULT, &p.pattern).is_none() {
                rules.policies.push(p.clone());
            }
        }
        for l in &self.inner.config.rate_limits {
            if rules.rate_limit(DEFAULT, &l.pattern).is_none() {
                rules.rate_limits.push(l.clone());
            }
        }
        self.inner.core.set_flow_rules(rules);
    }

    fn next_seq(rows: &[FlowRow]) -> i64 {
        rows.iter().map(|r| r.seq).max().unwrap_or(0) + 1
    }

    /// Sets a concurrency policy of namespace `ns` (adds it, or changes
    /// the limit and weights of the one with the same pattern); returns
    /// whether one was replaced.
    pub async fn set_policy(
        &self,
        ns: &str,
        pattern: &str,
        limit: i64,
        weights: Vec<(String, i64)>,
    ) -> Result<bool, CoreError> {
        flow::check_pattern(pattern).map_err(|e| CoreError::field("policy.pattern", e))?;
        let limit = flow::check_limit(limit).map_err(|e| CoreError::field("policy.limit", e))?;
        let weights =
            flow::check_weights(weights).map_err(|e| CoreError::field("policy.weights", e))?;
        let in_config = self.inner.config.policy(ns, pattern).is_some();
        let in_file = self.in_file(ns, self.inner.config.policies.len());
        let value = PolicyValue::text(limit, &weights);
        self.put_pattern_rule(&POLICY, ns, pattern, in_config, in_file, value)
            .await
    }

    /// Deletes a policy of namespace `ns` set at run time.
    pub async fn delete_policy(&self, ns: &str, pattern: &str) -> Result<(), CoreError> {
        let in_config = self.inner.config.policy(ns, pattern).is_some();
        self.delete_pattern_rule(&POLICY, ns, pattern, in_config)
            .await
    }

    /// How many of a kind's rules the configuration gives namespace `ns`
    /// (`n` of them are the file's, all `default`'s).
    fn in_file(&self, ns: &str, n: usize) -> usize {
        if ns == DEFAULT {
            n
        } else {
            0
        }
    }

    /// The tokens left per rate limit (pattern qualified by its namespace,
    /// tokens).
    pub fn rate_tokens(&self) -> Vec<(String, f64)> {
        self.inner.core.rate_tokens()
    }

    /// Sets a rate limit of namespace `ns` (adds it, or replaces the one
    /// with the same pattern); returns whether one was replaced.
    pub async fn set_rate_limit(
        &self,
        ns: &str,
        pattern: &str,
        rate: i64,
        interval: Duration,
        burst: i64,
        per_key: bool,
    ) -> Result<bool, CoreError> {
        flow::check_pattern(pattern).map_err(|e| CoreError::field("rate_limit.pattern", e))?;
        let rate = flow::check_rate(rate).map_err(|e| CoreError::field("rate_limit.rate", e))?;
        let interval = flow::check_interval(interval)
            .map_err(|e| CoreError::field("rate_limit.interval", e))?;
        let burst =
            flow::check_burst(burst).map_err(|e| CoreError::field("rate_limit.burst", e))?;
        let value = serde_json::json!({
            "rate": rate,
            "interval_us": interval.as_micros().min(u128::from(u64::MAX)) as u64,
            "burst": burst,
            "per_key": per_key,
        });
        let in_config = self.inner.config.rate_limit(ns, pattern).is_some();
        let in_file = self.in_file(ns, self.inner.config.rate_limits.len());
        self.put_pattern_rule(&RATE, ns, pattern, in_config, in_file, value.to_string())
            .await
    }

    /// Deletes a rate limit of namespace `ns` set at run time.
    pub async fn delete_rate_limit(&self, ns: &str, pattern: &str) -> Result<(), CoreError> {
        let in_config = self.inner.config.rate_limit(ns, pattern).is_some();
        self.delete_pattern_rule(&RATE, ns, pattern, in_config)
            .await
    }

    /// How many rows of `kind` namespace `ns` holds.
    fn count_in(rows: &[FlowRow], kind: &str, ns: &str) -> usize {
        rows.iter()
            .filter(|r| r.kind == kind && namespace::split(&r.name).1 == ns)
            .count()
    }

    /// Adds or replaces the run-time rule of kind `k` of namespace `ns`
    /// with `pattern` (stored first, then applied); returns whether one
    /// was replaced. A rule of the configuration file is not changed here,
    /// and a new rule past the kind's bound in the namespace is refused.
    async fn put_pattern_rule(
        &self,
        k: &PatternKind,
        ns: &str,
        pattern: &str,
        in_config: bool,
        in_file: usize,
        value: String,
    ) -> Result<bool, CoreError> {
        let mut rows = self.inner.rows.lock().await;
        if in_config {
            return Err(CoreError::FailedPrecondition(format!(
                "{}.pattern: the {} {} comes from the configuration file \
                 ({}); change it there",
                k.field,
                k.short,
                crate::domain::text::quote(pattern),
                k.section
            )));
        }
        let key = namespace::qualify(pattern, ns);
        let at = rows.iter().position(|r| r.kind == k.kind && r.name == key);
        let count = Self::count_in(&rows, k.kind, ns) + in_file;
        if at.is_none() && count >= k.max {
            return Err(CoreError::ResourceExhausted(format!(
                "namespace {ns} holds {} {}, the most it takes",
                k.max, k.plural
            )));
        }
        let row = FlowRow {
            kind: k.kind.into(),
            name: key.into_owned(),
            value,
            seq: at.map_or_else(|| Self::next_seq(&rows), |i| rows[i].seq),
        };
        self.inner.db.put(row.clone()).await?;
        match at {
            Some(i) => rows[i] = row,
            None => rows.push(row),
        }
        self.apply(&rows);
        Ok(at.is_some())
    }

    /// Deletes the run-time rule of kind `k` of namespace `ns` with
    /// `pattern`.
    async fn delete_pattern_rule(
        &self,
        k: &PatternKind,
        ns: &str,
        pattern: &str,
        in_config: bool,
    ) -> Result<(), CoreError> {
        let mut rows = self.inner.rows.lock().await;
        let key = namespace::qualify(pattern, ns);
        let Some(at) = rows.iter().position(|r| r.kind == k.kind && r.name == key) else {
            if in_config {
                return Err(CoreError::FailedPrecondition(format!(
                    "pattern: the {} {} comes from the configuration file \
                     ({}); change it there",
                    k.short,
                    crate::domain::text::quote(pattern),
                    k.section
                )));
            }
            return Err(CoreError::field(
                "pattern",
                format!(
                    "no {} {} was set at run time",
                    k.long,
                    crate::domain::text::quote(pattern)
                ),
            ));
        };
        self.inner.db.delete(k.kind, &key).await?;
        rows.remove(at);
        self.apply(&rows);
        Ok(())
    }

    /// Pauses a task name or queue of namespace `ns`; returns whether it
    /// was paused already.
    pub async fn pause(&self, ns: &str, name: &str) -> Result<bool, CoreError> {
        rules::check_name(name).map_err(|e| CoreError::field("name", e))?;
        let key = namespace::qualify(name, ns);
        let mut rows = self.inner.rows.lock().await;
        if self.inner.config.is_paused(ns, name)
            || rows.iter().any(|r| r.kind == KIND_PAUSED && r.name == key)
        {
            return Ok(true);
        }
        if Self::count_in(&rows, KIND_PAUSED, ns) >= flow::MAX_PAUSED {
            return Err(CoreError::ResourceExhausted(format!(
                "namespace {ns} holds {} paused names, the most it takes",
                flow::MAX_PAUSED
            )));
        }
        let row = FlowRow {
            kind: KIND_PAUSED.into(),
            name: key.into_owned(),
            value: String::new(),
            seq: Self::next_seq(&rows),
        };
        self.inner.db.put(row.clone()).await?;
        rows.push(row);
        self.apply(&rows);
        Ok(false)
    }

    /// Resumes a paused task name or queue of namespace `ns`; returns
    /// whether it was paused.
    pub async fn resume(&self, ns: &str, name: &str) -> Result<bool, CoreError> {
        rules::check_name(name).map_err(|e| CoreError::field("name", e))?;
        let key = namespace::qualify(name, ns);
        let mut rows = self.inner.rows.lock().await;
        let Some(at) = rows
            .iter()
            .position(|r| r.kind == KIND_PAUSED && r.name == key)
        else {
            return Ok(false);
        };
        self.inner.db.delete(KIND_PAUSED, &key).await?;
        rows.remove(at);
        self.apply(&rows);
        Ok(true)
    }
}

/// A kind of flow rule set at run time by pattern: how its rows are kept
/// and how its errors name it.
struct PatternKind {
    /// The rows' `kind`.
    kind: &'static str,
    /// The request's field (`policy`, `rate_limit`).
    field: &'static str,
    /// The rule, briefly and in full, and the plural.
    short: &'static str,
    long: &'static str,
    plural: &'static str,
    /// Its section of the configuration file.
    section: &'static str,
    /// The most a namespace holds (configuration and run time).
    max: usize,
}

const POLICY: PatternKind = PatternKind {
    kind: KIND_CONCURRENCY,
    field: "policy",
    short: "policy",
    long: "concurrency policy",
    plural: "concurrency policies",
    section: "[[flow.concurrency]]",
    max: flow::MAX_POLICIES,
};

const RATE: PatternKind = PatternKind {
    kind: KIND_RATE,
    field: "rate_limit",
    short: "rate limit",
    long: "rate limit",
    plural: "rate limits",
    section: "[[flow.rate_limit]]",
    max: flow::MAX_RATE_LIMITS,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_policy_is_a_bare_limit_or_an_object_with_weights() {
        let p = PolicyValue::parse("a", "3").unwrap();
        assert_eq!((p.limit, p.weights.len()), (3, 0));
        let weights: std::collections::BTreeMap<String, u32> = [("k".to_string(), 4)].into();
        let text = PolicyValue::text(2, &weights);
        let p = PolicyValue::parse("a", &text).unwrap();
        assert_eq!((p.limit, p.weights), (2, weights));
        assert_eq!(PolicyValue::text(5, &Default::default()), "5");
        assert!(PolicyValue::parse("a", r#"{"limit": 1, "weights": {"k": 0}}"#).is_err());
    }
}
