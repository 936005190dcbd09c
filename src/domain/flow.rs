//! Flow control: the rules that hold a runnable task in Switchyard before
//! any engine sees it.
//!
//! Owns what a rule says (a concurrency policy per name or queue pattern,
//! the default limit per key, the paused names) and the pure questions
//! over them: which limit a task's key has, whether a task is paused. It
//! decides nothing about when a task runs: the core counts the running
//! tasks of each key and holds what the rules say to hold.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Target, TaskSpec};

/// A task's concurrency key (`TaskSpec::concurrency_key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(pub Box<str>);

/// The longest `TaskOptions.concurrency_key`.
pub const MAX_KEY_BYTES: usize = 256;
/// The longest policy pattern.
pub const MAX_PATTERN_BYTES: usize = 200;
/// The most concurrency policies a server holds (config and run time).
pub const MAX_POLICIES: usize = 1000;
/// The most paused names a server holds.
pub const MAX_PAUSED: usize = 1000;
/// The largest limit per key a policy may give.
pub const MAX_LIMIT: u32 = 1_000_000;

/// A concurrency policy: at most `limit` tasks of one concurrency key run
/// at once among the tasks whose name (or, for SIMPLE tasks, queue)
/// matches `pattern` (`*` any run of characters, `?` one).
#[derive(Debug, Clone)]
pub struct ConcurrencyPolicy {
    /// The pattern as written; it names the policy.
    pub pattern: String,
    matcher: globset::GlobMatcher,
    /// Tasks of one key running at once, at least 1.
    pub limit: u32,
    /// Whether it comes from the configuration (else it was set at run
    /// time and is kept in the store).
    pub from_config: bool,
}

impl PartialEq for ConcurrencyPolicy {
    fn eq(&self, o: &Self) -> bool {
        self.pattern == o.pattern && self.limit == o.limit && self.from_config == o.from_config
    }
}

/// Checks a policy's pattern: not empty, bounded, a valid glob.
pub fn check_pattern(pattern: &str) -> Result<globset::GlobMatcher, String> {
    if pattern.is_empty() {
        return Err("must not be empty".into());
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

impl ConcurrencyPolicy {
    /// A policy; the pattern must be valid and the limit at least 1.
    pub fn new(pattern: &str, limit: i64, from_config: bool) -> Result<Self, String> {
        let matcher = check_pattern(pattern).map_err(|e| format!("pattern {e}"))?;
        let limit = check_limit(limit).map_err(|e| format!("limit {e}"))?;
        Ok(ConcurrencyPolicy {
            pattern: pattern.to_string(),
            matcher,
            limit,
            from_config,
        })
    }

    fn matches(&self, name: &str, queue: Option<&str>) -> bool {
        self.matcher.is_match(name) || queue.is_some_and(|q| self.matcher.is_match(q))
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

/// Every flow rule the server holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowRules {
    /// The limit per key of keyed tasks no policy matches; `None`: no limit
    /// (their keys are still served round-robin).
    pub default_limit: Option<u32>,
    /// Policies, the first match wins. Run-time policies come before the
    /// configuration's, so one set at run time overrides the file.
    pub policies: Vec<ConcurrencyPolicy>,
    /// Paused task names and queues: their pending tasks wait.
    pub paused: BTreeSet<String>,
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
        let (name, queue) = names(spec);
        if let Some(p) = self.policies.iter().find(|p| p.matches(name, queue)) {
            return Some(KeyLimit {
                rule: Some(&p.pattern),
                limit: p.limit,
            });
        }
        self.default_limit
            .map(|limit| KeyLimit { rule: None, limit })
    }

    /// The paused name or queue that holds the task, if any.
    pub fn paused_by(&self, spec: &TaskSpec) -> Option<&str> {
        if self.paused.is_empty() {
            return None;
        }
        let (name, queue) = names(spec);
        if let Some(p) = self.paused.get(name) {
            return Some(p);
        }
        queue.and_then(|q| self.paused.get(q)).map(String::as_str)
    }

    /// The policy with this pattern, if any.
    pub fn policy(&self, pattern: &str) -> Option<&ConcurrencyPolicy> {
        self.policies.iter().find(|p| p.pattern == pattern)
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
            paused: BTreeSet::new(),
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
    fn a_pause_holds_a_name_or_a_queue() {
        let r = FlowRules {
            paused: ["emails".to_string()].into(),
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
}
