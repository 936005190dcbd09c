//! Flow control: the rules that hold a runnable task in Switchyard before
//! any engine sees it.
//!
//! Owns what a rule says (a concurrency policy per name or queue pattern,
//! the default limit per key, a rate limit per name or queue pattern, the
//! paused names) and the pure questions over them: which limit a task's
//! key has, which rate limit a task falls under, whether a task is paused,
//! and the token bucket's arithmetic ([`Bucket`]). It decides nothing
//! about when a task runs: the core counts the running tasks of each key,
//! keeps the buckets, and holds what the rules say to hold.
//!
//! Every rule belongs to one namespace (`domain::namespace`; the
//! configuration's to `default`) and applies only to that namespace's
//! tasks, whatever its pattern (`*` included): each policy and rate limit
//! carries its namespace, and the paused names are kept per namespace. A
//! lookup reads the task's namespace once and compares it before any
//! pattern, with no allocation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::namespace;
use super::{Target, TaskSpec};

/// A task's concurrency key (`TaskSpec::concurrency_key`); outside
/// `default` qualified by its namespace behind a reserved prefix
/// (`namespace::qualify_key`), so keys of two namespaces never share a
/// count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(pub Box<str>);

/// The longest `TaskOptions.concurrency_key`.
pub const MAX_KEY_BYTES: usize = 256;
/// The longest policy pattern.
pub const MAX_PATTERN_BYTES: usize = 200;
/// The most concurrency policies a namespace holds (config and run time).
pub const MAX_POLICIES: usize = 1000;
/// The most paused names a namespace holds.
pub const MAX_PAUSED: usize = 1000;
/// The largest limit per key a policy may give.
pub const MAX_LIMIT: u32 = 1_000_000;
/// The most rate limits a namespace holds (config and run time).
pub const MAX_RATE_LIMITS: usize = 1000;
/// The most starts per interval a rate limit may allow.
pub const MAX_RATE: u32 = 1_000_000;
/// The largest burst of a rate limit.
pub const MAX_BURST: u32 = 1_000_000;
/// The shortest interval of a rate limit.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// The longest interval of a rate limit.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The most keys with a weight in one policy.
pub const MAX_WEIGHTS: usize = 100;
/// The largest weight of a key: its turns per round.
pub const MAX_WEIGHT: u32 = 100;

/// A concurrency policy: at most `limit` tasks of one concurrency key run
/// at once among the tasks of its namespace whose name (or, for SIMPLE
/// tasks, queue) matches `pattern` (`*` any run of characters, `?` one).
#[derive(Debug, Clone)]
pub struct ConcurrencyPolicy {
    /// The pattern as written; with the namespace, it names the policy.
    pub pattern: String,
    /// The namespace whose tasks it applies to (`default` for the
    /// configuration's).
    pub namespace: Box<str>,
    matcher: globset::GlobMatcher,
    /// Tasks of one key running at once, at least 1.
    pub limit: u32,
    /// Whether it comes from the configuration (else it was set at run
    /// time and is kept in the store).
    pub from_config: bool,
    /// Turns per round of fairness of some keys (1 to [`MAX_WEIGHT`]); a
    /// key not here has 1. At most [`MAX_WEIGHTS`] keys.
    pub weights: BTreeMap<String, u32>,
}

impl PartialEq for ConcurrencyPolicy {
    fn eq(&self, o: &Self) -> bool {
        self.pattern == o.pattern
            && self.namespace == o.namespace
            && self.limit == o.limit
            && self.from_config == o.from_config
            && self.weights == o.weights
    }
}

/// Checks a policy's weights: at most [`MAX_WEIGHTS`] keys, each a
/// non-empty concurrency key, each weight 1 to [`MAX_WEIGHT`].
pub fn check_weights(
    weights: impl IntoIterator<Item = (String, i64)>,
) -> Result<BTreeMap<String, u32>, String> {
    let mut out = BTreeMap::new();
    for (key, w) in weights {
        if out.len() >= MAX_WEIGHTS {
            return Err(format!("must hold at most {MAX_WEIGHTS} keys"));
        }
        if key.is_empty() {
            return Err("must not have an empty key".into());
        }
        check_key(&key).map_err(|e| format!("key {e}"))?;
        if !(1..=i64::from(MAX_WEIGHT)).contains(&w) {
            return Err(format!(
                "must give each key a weight between 1 and {MAX_WEIGHT}, got {w}"
            ));
        }
        out.insert(key, w as u32);
    }
    Ok(out)
}

/// Checks a policy's pattern: not empty, bounded, a valid glob, without
/// `@` (no name holds one; inside the server it separates a rule's
/// pattern from its namespace, see `domain::namespace`).
pub fn check_pattern(pattern: &str) -> Result<globset::GlobMatcher, String> {
    if pattern.is_empty() {
        return Err("must not be empty".into());
    }
    if pattern.contains(namespace::SEP) {
        return Err(format!(
            "must not hold {:?} (no task name or queue holds one)",
            namespace::SEP
        ));
    }
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "must be at most {MAX_PATTERN_BYTES} bytes, got {}",
            pattern.len()
        ));
    }
    globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("is not a valid pattern: {e}"))
}

/// Checks a limit per key: 1 to [`MAX_LIMIT`].
pub fn check_limit(limit: i64) -> Result<u32, String> {
    if !(1..=i64::from(MAX_LIMIT)).contains(&limit) {
        return Err(format!("must be between 1 and {MAX_LIMIT}, got {limit}"));
    }
    Ok(limit as u32)
}

/// Checks a concurrency key: at most [`MAX_KEY_BYTES`].
pub fn check_key(key: &str) -> Result<(), String> {
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "must be at most {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        ));
    }
    Ok(())
}

/// Checks a rate: 1 to [`MAX_RATE`] starts per interval.
pub fn check_rate(rate: i64) -> Result<u32, String> {
    if !(1..=i64::from(MAX_RATE)).contains(&rate) {
        return Err(format!("must be between 1 and {MAX_RATE}, got {rate}"));
    }
    Ok(rate as u32)
}

/// Checks a burst: 1 to [`MAX_BURST`] starts at once.
pub fn check_burst(burst: i64) -> Result<u32, String> {
    if !(1..=i64::from(MAX_BURST)).contains(&burst) {
        return Err(format!("must be between 1 and {MAX_BURST}, got {burst}"));
    }
    Ok(burst as u32)
}

/// Checks an interval: 1 ms to 24 h.
pub fn check_interval(interval: Duration) -> Result<Duration, String> {
    if interval < MIN_INTERVAL || interval > MAX_INTERVAL {
        return Err(format!(
            "must be between 1ms and 24h, got {}",
            humantime::format_duration(interval)
        ));
    }
    Ok(interval)
}

/// A rate limit: at most `rate` tasks start per `interval` among the tasks
/// of its namespace whose name (or, for SIMPLE tasks, queue) matches
/// `pattern`, with up to
/// `burst` at once after a quiet time (a token bucket of `burst` tokens
/// that gains `rate` per `interval`). With `per_key`, each concurrency key
/// has its own bucket (tasks without a key share one).
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// The pattern as written; with the namespace, it names the rate
    /// limit.
    pub pattern: String,
    /// The namespace whose tasks it applies to (`default` for the
    /// configuration's).
    pub namespace: Box<str>,
    matcher: globset::GlobMatcher,
    /// Starts per interval, at least 1.
    pub rate: u32,
    /// The interval, 1 ms to 24 h.
    pub interval: Duration,
    /// The bucket's size: starts at once, at least 1.
    pub burst: u32,
    /// One bucket per concurrency key.
    pub per_key: bool,
    /// Whether it comes from the configuration (else it was set at run
    /// time and is kept in the store).
    pub from_config: bool,
}

impl PartialEq for RateLimit {
    fn eq(&self, o: &Self) -> bool {
        self.pattern == o.pattern
            && self.namespace == o.namespace
            && self.from_config == o.from_config
            && self.same_bucket(o)
    }
}

impl RateLimit {
    /// A rate limit; an error names the bad part (`pattern`, `rate`,
    /// `interval`, `burst`).
    pub fn new(
        pattern: &str,
        rate: i64,
        interval: Duration,
        burst: i64,
        per_key: bool,
        from_config: bool,
    ) -> Result<Self, String> {
        let matcher = check_pattern(pattern).map_err(|e| format!("pattern {e}"))?;
        let rate = check_rate(rate).map_err(|e| format!("rate {e}"))?;
        let interval = check_interval(interval).map_err(|e| format!("interval {e}"))?;
        let burst = check_burst(burst).map_err(|e| format!("burst {e}"))?;
        Ok(RateLimit {
            pattern: pattern.to_string(),
            namespace: namespace::DEFAULT.into(),
            matcher,
            rate,
            interval,
            burst,
            per_key,
            from_config,
        })
    }

    /// The rate limit in namespace `ns` (else `default`'s).
    pub fn in_namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.into();
        self
    }

    fn matches(&self, ns: &str, name: &str, queue: Option<&str>) -> bool {
        *self.namespace == *ns
            && (self.matcher.is_match(name) || queue.is_some_and(|q| self.matcher.is_match(q)))
    }

    /// Whether it applies to the tasks of a queue key (a task name, or a
    /// SIMPLE task's queue, qualified by its namespace as the core keys
    /// queues): the key is of its namespace and its pattern matches the
    /// bare name.
    pub fn applies_to(&self, queue: &str) -> bool {
        let (name, ns) = namespace::split(queue);
        *self.namespace == *ns && self.matcher.is_match(name)
    }

    /// Whether `o` fills its buckets the same way (a bucket then survives
    /// a change of the rules).
    pub fn same_bucket(&self, o: &Self) -> bool {
        self.rate == o.rate
            && self.interval == o.interval
            && self.burst == o.burst
            && self.per_key == o.per_key
    }

    /// Microseconds between two tokens.
    pub fn emission_micros(&self) -> f64 {
        self.interval.as_micros() as f64 / f64::from(self.rate)
    }
}

/// A token bucket, kept as the time its next start is due if it starts
/// back to back (GCRA's "theoretical arrival time"): a start at `now` is
/// allowed while `tat - now` stays within the burst's tolerance, and moves
/// `tat` on by one token's time. A bucket with `tat <= now` is full.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bucket {
    /// Microseconds since the epoch.
    pub tat: f64,
}

impl Bucket {
    /// Takes a token at `now` (microseconds): `Ok` if one was there, else
    /// `Err(when)`, the first time one is.
    pub fn take(&mut self, rule: &RateLimit, now: i64) -> Result<(), i64> {
        let t = rule.emission_micros();
        let tolerance = t * f64::from(rule.burst - 1);
        let now_f = now as f64;
        let tat = self.tat.max(now_f);
        if tat - now_f > tolerance {
            return Err((tat - tolerance).ceil() as i64);
        }
        self.tat = tat + t;
        Ok(())
    }

    /// Reserves the next token for a start that waits for it: `Ok` with
    /// the time it is due (`now` if one is there), the bucket moving on as
    /// if it was taken then; `Err` with that time, reserving nothing, when
    /// it is more than `max_wait` microseconds away.
    pub fn reserve(&mut self, rule: &RateLimit, now: i64, max_wait: i64) -> Result<i64, i64> {
        let t = rule.emission_micros();
        let tolerance = t * f64::from(rule.burst - 1);
        let now_f = now as f64;
        let tat = self.tat.max(now_f);
        let at = ((tat - tolerance).max(now_f)).ceil() as i64;
        if at.saturating_sub(now) > max_wait {
            return Err(at);
        }
        self.tat = tat + t;
        Ok(at)
    }

    /// The tokens there at `now`: 0 to the burst.
    pub fn tokens(&self, rule: &RateLimit, now: i64) -> f64 {
        let t = rule.emission_micros();
        let now_f = now as f64;
        let used = (self.tat - now_f).max(0.0) / t;
        (f64::from(rule.burst) - used).clamp(0.0, f64::from(rule.burst))
    }

    /// Whether the bucket is full at `now` (it may then be forgotten).
    pub fn full(&self, now: i64) -> bool {
        self.tat <= now as f64
    }
}

impl ConcurrencyPolicy {
    /// A policy; the pattern must be valid and the limit at least 1.
    pub fn new(pattern: &str, limit: i64, from_config: bool) -> Result<Self, String> {
        let matcher = check_pattern(pattern).map_err(|e| format!("pattern {e}"))?;
        let limit = check_limit(limit).map_err(|e| format!("limit {e}"))?;
        Ok(ConcurrencyPolicy {
            pattern: pattern.to_string(),
            namespace: namespace::DEFAULT.into(),
            matcher,
            limit,
            from_config,
            weights: BTreeMap::new(),
        })
    }

    /// The policy with these weights (see [`check_weights`]); an error
    /// starts with `weights`.
    pub fn with_weights(
        mut self,
        weights: impl IntoIterator<Item = (String, i64)>,
    ) -> Result<Self, String> {
        self.weights = check_weights(weights).map_err(|e| format!("weights {e}"))?;
        Ok(self)
    }

    /// The policy in namespace `ns` (else `default`'s).
    pub fn in_namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.into();
        self
    }

    fn matches(&self, ns: &str, name: &str, queue: Option<&str>) -> bool {
        *self.namespace == *ns
            && (self.matcher.is_match(name) || queue.is_some_and(|q| self.matcher.is_match(q)))
    }
}

/// The limit that holds a task's key, and the rule that gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimit<'a> {
    /// The policy's pattern, or `None` for the default.
    pub rule: Option<&'a str>,
    /// Tasks of the key running at once.
    pub limit: u32,
}

/// Paused task names and queues, per namespace: namespace → names.
pub type Paused = BTreeMap<String, BTreeSet<String>>;

/// Every flow rule the server holds, of every namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowRules {
    /// The limit per key of `default`'s keyed tasks no policy matches
    /// (the configuration's `default_limit`); `None`: no limit (their
    /// keys are still served round-robin). Other namespaces have none.
    pub default_limit: Option<u32>,
    /// Policies, the first match of the task's namespace wins. Run-time
    /// policies come before the configuration's, so one set at run time
    /// overrides the file.
    pub policies: Vec<ConcurrencyPolicy>,
    /// Paused task names and queues of each namespace: their pending tasks
    /// of that namespace wait.
    pub paused: Paused,
    /// Rate limits, the first match of the task's namespace wins;
    /// run-time ones come before the configuration's.
    pub rate_limits: Vec<RateLimit>,
}

/// Serialised form of a held task's rule, for a task's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Hold {
    /// The rule: a policy's pattern, `default` for the default limit, or
    /// the paused name or queue.
    pub rule: String,
    /// The task's concurrency key, if the rule is a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The limit per key (0 for a pause).
    #[serde(default)]
    pub limit: u32,
    /// Tasks of the key running now (0 for a pause).
    #[serde(default)]
    pub running: u32,
    /// Tasks of the key ahead of this one in its queue, where the status
    /// counted them (`GetTaskStatus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ahead: Option<u64>,
    /// RATE_LIMITED only: when the task may start (microseconds since the
    /// epoch), the time of the token it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start: Option<i64>,
    /// RATE_LIMITED only: the rate limit's starts per interval, its
    /// interval (ms) and its burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<(u32, u64, u32)>,
}

/// The name and, for SIMPLE tasks, the queue a rule is matched against.
pub fn names(spec: &TaskSpec) -> (&str, Option<&str>) {
    let queue = match &spec.target {
        Target::Simple { queue } => queue.as_deref(),
        _ => None,
    };
    (&spec.name, queue)
}

impl FlowRules {
    /// The limit on a keyed task's key: the first matching policy's, else
    /// the default; `None` when nothing limits it.
    pub fn limit_for(&self, spec: &TaskSpec) -> Option<KeyLimit<'_>> {
        if self.policies.is_empty() && self.default_limit.is_none() {
            return None;
        }
        let (name, queue) = names(spec);
        let ns = spec.namespace();
        if let Some(p) = self.policies.iter().find(|p| p.matches(ns, name, queue)) {
            return Some(KeyLimit {
                rule: Some(&p.pattern),
                limit: p.limit,
            });
        }
        self.default_limit
            .filter(|_| ns == namespace::DEFAULT)
            .map(|limit| KeyLimit { rule: None, limit })
    }

    /// The weight of a keyed task's key (its turns per round of fairness):
    /// the first matching policy's weight for the key (as its caller gave
    /// it: a policy weighs bare keys), else 1.
    pub fn weight_for(&self, spec: &TaskSpec, key: &str) -> u32 {
        if self.policies.iter().all(|p| p.weights.is_empty()) {
            return 1;
        }
        let (name, queue) = names(spec);
        let ns = spec.namespace();
        self.policies
            .iter()
            .find(|p| p.matches(ns, name, queue))
            .and_then(|p| p.weights.get(namespace::unqualify_key(key)).copied())
            .unwrap_or(1)
    }

    /// The paused name or queue that holds the task, if any.
    pub fn paused_by(&self, spec: &TaskSpec) -> Option<&str> {
        if self.paused.is_empty() {
            return None;
        }
        let paused = self.paused.get(spec.namespace())?;
        let (name, queue) = names(spec);
        if let Some(p) = paused.get(name) {
            return Some(p);
        }
        queue.and_then(|q| paused.get(q)).map(String::as_str)
    }

    /// Whether `name` is paused in namespace `ns`.
    pub fn is_paused(&self, ns: &str, name: &str) -> bool {
        self.paused.get(ns).is_some_and(|p| p.contains(name))
    }

    /// The paused names of namespace `ns`.
    pub fn paused_in(&self, ns: &str) -> impl Iterator<Item = &String> {
        self.paused.get(ns).into_iter().flatten()
    }

    /// The policy of namespace `ns` with this pattern, if any.
    pub fn policy(&self, ns: &str, pattern: &str) -> Option<&ConcurrencyPolicy> {
        self.policies
            .iter()
            .find(|p| p.pattern == pattern && *p.namespace == *ns)
    }

    /// The rate limit a task falls under (the first that matches its name
    /// or queue), with its place in `rate_limits`.
    pub fn rate_for(&self, spec: &TaskSpec) -> Option<(usize, &RateLimit)> {
        if self.rate_limits.is_empty() {
            return None;
        }
        let (name, queue) = names(spec);
        let ns = spec.namespace();
        self.rate_limits
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(ns, name, queue))
    }

    /// The rate limit of namespace `ns` with this pattern, if any.
    pub fn rate_limit(&self, ns: &str, pattern: &str) -> Option<&RateLimit> {
        self.rate_limits
            .iter()
            .find(|r| r.pattern == pattern && *r.namespace == *ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskType;

    fn simple(name: &str, queue: Option<&str>) -> TaskSpec {
        TaskSpec::new(
            name,
            TaskType::Simple,
            Target::Simple {
                queue: queue.map(String::from),
            },
        )
    }

    #[test]
    fn the_first_matching_policy_gives_the_limit_else_the_default() {
        let mut r = FlowRules {
            default_limit: None,
            policies: vec![
                ConcurrencyPolicy::new("email.*", 2, false).unwrap(),
                ConcurrencyPolicy::new("*", 5, true).unwrap(),
            ],
            paused: Paused::new(),
            rate_limits: Vec::new(),
        };
        let l = r.limit_for(&simple("email.send", None)).unwrap();
        assert_eq!((l.rule, l.limit), (Some("email.*"), 2));
        let l = r.limit_for(&simple("job", Some("email.bulk"))).unwrap();
        assert_eq!(l.limit, 2, "the queue matches too");
        assert_eq!(r.limit_for(&simple("other", None)).unwrap().limit, 5);
        r.policies.pop();
        assert_eq!(r.limit_for(&simple("other", None)), None);
        r.default_limit = Some(3);
        let l = r.limit_for(&simple("other", None)).unwrap();
        assert_eq!((l.rule, l.limit), (None, 3));
    }

    #[test]
    fn a_key_s_weight_is_the_first_matching_policy_s_else_1() {
        let r = FlowRules {
            policies: vec![
                ConcurrencyPolicy::new("email.*", 2, false)
                    .unwrap()
                    .with_weights([("vip".to_string(), 3)])
                    .unwrap(),
                ConcurrencyPolicy::new("*", 5, true)
                    .unwrap()
                    .with_weights([("other".to_string(), 2)])
                    .unwrap(),
            ],
            ..Default::default()
        };
        assert_eq!(r.weight_for(&simple("email.send", None), "vip"), 3);
        assert_eq!(r.weight_for(&simple("email.send", None), "other"), 1);
        assert_eq!(r.weight_for(&simple("x", None), "other"), 2);
        assert_eq!(FlowRules::default().weight_for(&simple("x", None), "k"), 1);
        let bad = |w: Vec<(String, i64)>| {
            ConcurrencyPolicy::new("a", 1, false)
                .unwrap()
                .with_weights(w)
                .unwrap_err()
        };
        assert!(bad(vec![("k".into(), 0)]).starts_with("weights"));
        assert!(bad(vec![("k".into(), 101)]).starts_with("weights"));
        assert!(bad(vec![(String::new(), 1)]).starts_with("weights"));
        assert!(bad(vec![("k".repeat(257), 1)]).starts_with("weights"));
        assert!(bad((0..101).map(|i| (format!("k{i}"), 1)).collect()).starts_with("weights"));
    }

    fn of(ns: &str, name: &str, queue: Option<&str>) -> TaskSpec {
        let mut t = simple(name, queue);
        t.labels.insert(namespace::LABEL.into(), ns.into());
        t
    }

    #[test]
    fn a_rule_applies_only_to_the_tasks_of_its_namespace() {
        let s = Duration::from_secs(1);
        let r = FlowRules {
            default_limit: Some(7),
            policies: vec![
                ConcurrencyPolicy::new("*", 1, false)
                    .unwrap()
                    .in_namespace("acme"),
                ConcurrencyPolicy::new("mail", 3, false).unwrap(),
            ],
            paused: [("acme".to_string(), ["mail".to_string()].into())].into(),
            rate_limits: vec![RateLimit::new("*", 5, s, 1, false, false)
                .unwrap()
                .in_namespace("beta")],
        };
        // acme's `*` holds acme's tasks only.
        let l = r.limit_for(&of("acme", "mail", None)).unwrap();
        assert_eq!((l.rule, l.limit), (Some("*"), 1));
        let l = r.limit_for(&simple("mail", None)).unwrap();
        assert_eq!((l.rule, l.limit), (Some("mail"), 3));
        assert_eq!(
            r.limit_for(&of("beta", "mail", None)),
            None,
            "no default limit outside default"
        );
        assert_eq!(r.limit_for(&simple("x", None)).unwrap().limit, 7);
        // acme's pause holds acme's `mail`, by name or queue, only.
        assert_eq!(r.paused_by(&of("acme", "mail", None)), Some("mail"));
        assert_eq!(r.paused_by(&of("acme", "j", Some("mail"))), Some("mail"));
        assert_eq!(r.paused_by(&simple("mail", None)), None);
        assert_eq!(r.paused_by(&of("beta", "mail", None)), None);
        assert!(r.is_paused("acme", "mail") && !r.is_paused(namespace::DEFAULT, "mail"));
        // beta's rate limit.
        assert!(r.rate_for(&of("beta", "x", None)).is_some());
        assert!(r.rate_for(&of("acme", "x", None)).is_none());
        assert!(r.rate_for(&simple("x", None)).is_none());
        assert!(r.rate_limits[0].applies_to("x@beta"));
        assert!(!r.rate_limits[0].applies_to("x"));
        assert!(!r.rate_limits[0].applies_to("x@acme"));
        // Rules are named by namespace and pattern.
        assert!(r.policy("acme", "*").is_some());
        assert!(r.policy(namespace::DEFAULT, "*").is_none());
        assert!(r.rate_limit("beta", "*").is_some());
        assert!(r.rate_limit("acme", "*").is_none());
    }

    #[test]
    fn a_pattern_may_not_hold_the_namespace_separator() {
        assert!(check_pattern("a@acme").is_err());
        assert!(ConcurrencyPolicy::new("*@x", 1, false)
            .unwrap_err()
            .starts_with("pattern"));
    }

    #[test]
    fn a_pause_holds_a_name_or_a_queue() {
        let r = FlowRules {
            paused: [(
                namespace::DEFAULT.to_string(),
                ["emails".to_string()].into(),
            )]
            .into(),
            ..Default::default()
        };
        assert_eq!(r.paused_by(&simple("emails", None)), Some("emails"));
        assert_eq!(r.paused_by(&simple("send", Some("emails"))), Some("emails"));
        assert_eq!(r.paused_by(&simple("send", None)), None);
    }

    #[test]
    fn bad_policies_are_refused_with_the_part_named() {
        assert!(ConcurrencyPolicy::new("a", 0, false)
            .unwrap_err()
            .starts_with("limit"));
        assert!(ConcurrencyPolicy::new("a", -3, false)
            .unwrap_err()
            .starts_with("limit"));
        assert!(ConcurrencyPolicy::new("", 1, false)
            .unwrap_err()
            .starts_with("pattern"));
        assert!(ConcurrencyPolicy::new("a[", 1, false)
            .unwrap_err()
            .starts_with("pattern"));
        assert!(check_key(&"k".repeat(257)).is_err());
        assert!(check_key(&"k".repeat(256)).is_ok());
    }

    #[test]
    fn bad_rate_limits_are_refused_with_the_part_named() {
        let s = Duration::from_secs(1);
        let bad = |p: &str, r: i64, i: Duration, b: i64| {
            RateLimit::new(p, r, i, b, false, false).unwrap_err()
        };
        assert!(bad("a", 0, s, 1).starts_with("rate"));
        assert!(bad("a", -1, s, 1).starts_with("rate"));
        assert!(bad("a", 1, Duration::ZERO, 1).starts_with("interval"));
        assert!(bad("a", 1, Duration::from_secs(90_000), 1).starts_with("interval"));
        assert!(bad("a", 1, s, 0).starts_with("burst"));
        assert!(bad("a", 1, s, 1_000_001).starts_with("burst"));
        assert!(bad("a[", 1, s, 1).starts_with("pattern"));
        assert!(RateLimit::new("a", 1, s, 1, true, false).is_ok());
    }

    #[test]
    fn a_bucket_gives_its_burst_then_one_token_per_emission_interval() {
        // 10 per second, burst 3: 3 at once, then one every 100 ms.
        let r = RateLimit::new("a", 10, Duration::from_secs(1), 3, false, false).unwrap();
        let mut b = Bucket::default();
        let t0 = 1_000_000_000i64;
        assert_eq!(b.tokens(&r, t0), 3.0);
        for _ in 0..3 {
            b.take(&r, t0).unwrap();
        }
        let next = b.take(&r, t0).unwrap_err();
        assert_eq!(next, t0 + 100_000, "the next token is due in 100 ms");
        assert_eq!(b.take(&r, next - 1), Err(next));
        b.take(&r, next).unwrap();
        assert_eq!(b.take(&r, next), Err(next + 100_000));
        // After a quiet second the bucket is full again, and no fuller.
        assert!(b.full(next + 1_000_000));
        assert_eq!(b.tokens(&r, next + 5_000_000), 3.0);
        // Over any window of length L, at most burst + rate * L starts.
        let mut b = Bucket::default();
        let mut starts = Vec::new();
        let mut t = t0;
        while t < t0 + 2_000_000 {
            if b.take(&r, t).is_ok() {
                starts.push(t);
            }
            t += 1_000;
        }
        assert_eq!(starts.len(), 3 + 20 - 1, "{starts:?}");
    }

    #[test]
    fn a_reserved_token_is_due_one_emission_interval_after_the_last() {
        let r = RateLimit::new("*", 10, Duration::from_secs(1), 2, false, true).unwrap();
        let mut b = Bucket::default();
        let t0 = 1_000_000_000i64;
        assert_eq!(b.reserve(&r, t0, 0), Ok(t0));
        assert_eq!(b.reserve(&r, t0, 0), Ok(t0), "the burst");
        assert_eq!(
            b.reserve(&r, t0, 50_000),
            Err(t0 + 100_000),
            "due in 100 ms, more than 50: not reserved"
        );
        assert_eq!(b.reserve(&r, t0, 1_000_000), Ok(t0 + 100_000));
        assert_eq!(b.reserve(&r, t0, 1_000_000), Ok(t0 + 200_000));
    }

    #[test]
    fn the_first_matching_rate_limit_applies() {
        let s = Duration::from_secs(1);
        let r = FlowRules {
            rate_limits: vec![
                RateLimit::new("hook.*", 5, s, 1, false, false).unwrap(),
                RateLimit::new("*", 100, s, 10, true, true).unwrap(),
            ],
            ..Default::default()
        };
        assert_eq!(r.rate_for(&simple("hook.x", None)).unwrap().0, 0);
        assert_eq!(r.rate_for(&simple("j", Some("hook.q"))).unwrap().0, 0);
        assert_eq!(r.rate_for(&simple("other", None)).unwrap().0, 1);
        assert!(FlowRules::default().rate_for(&simple("x", None)).is_none());
    }
}
