//! How long ended tasks are kept: the retention policy.
//!
//! Owns the rules that say, for a task that has ended, when it may be
//! removed (an age per final state, from the task's own options, from the
//! first matching rule, or from the defaults) and how many ended tasks of
//! one name are kept at most (a count cap per final state). It decides
//! nothing about when removal runs: the store stamps each ended row with
//! its removal time ([`RetentionPolicy::purge_at`]) and the core's sweeper
//! removes what is due.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Micros, Target, TaskSpec, TaskState};

/// A task's own retention (its `TaskOptions.retention`): how long it is
/// kept after it ends, per final state. A field left `None` uses the
/// server's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Retention {
    /// After COMPLETED.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub completed: Option<Duration>,
    /// After FAILED.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub failed: Option<Duration>,
    /// After CANCELLED or COMPENSATED.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cancelled: Option<Duration>,
}

impl Retention {
    /// The age set for a final state, if any.
    pub fn for_state(&self, state: TaskState) -> Option<Duration> {
        match state {
            TaskState::Completed => self.completed,
            TaskState::Failed => self.failed,
            TaskState::Cancelled | TaskState::Compensated => self.cancelled,
            _ => None,
        }
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.completed.is_none() && self.failed.is_none() && self.cancelled.is_none()
    }
}

/// Count caps per final state: at most this many ended tasks of one name
/// are kept (the oldest go first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Caps {
    /// COMPLETED tasks kept per name.
    pub completed: Option<u64>,
    /// FAILED tasks kept per name.
    pub failed: Option<u64>,
    /// CANCELLED and COMPENSATED tasks kept per name (each state counted
    /// on its own).
    pub cancelled: Option<u64>,
}

impl Caps {
    /// The cap of a final state, if any.
    pub fn for_state(&self, state: TaskState) -> Option<u64> {
        match state {
            TaskState::Completed => self.completed,
            TaskState::Failed => self.failed,
            TaskState::Cancelled | TaskState::Compensated => self.cancelled,
            _ => None,
        }
    }
}

/// A rule for the tasks whose name (or, for SIMPLE tasks, queue) matches a
/// glob pattern (`*` any run of characters, `?` one).
#[derive(Debug, Clone)]
pub struct RetentionRule {
    /// The pattern as written.
    pub pattern: String,
    matcher: globset::GlobMatcher,
    /// Ages; a field left `None` falls through to the defaults, and
    /// `Duration::MAX` keeps tasks for ever.
    pub keep: Retention,
    /// Count caps; a field left `None` falls through to the defaults.
    pub caps: Caps,
}

impl RetentionRule {
    /// A rule; the pattern must be a valid glob.
    pub fn new(pattern: &str, keep: Retention, caps: Caps) -> Result<Self, String> {
        let matcher = globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("retention rule pattern {pattern:?}: {e}"))?
            .compile_matcher();
        Ok(RetentionRule {
            pattern: pattern.to_string(),
            matcher,
            keep,
            caps,
        })
    }

    fn matches(&self, name: &str, queue: Option<&str>) -> bool {
        self.matcher.is_match(name) || queue.is_some_and(|q| self.matcher.is_match(q))
    }
}

/// The server's retention policy.
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    /// Ages used when neither the task nor a rule sets one; `None` keeps
    /// tasks of that state for ever.
    pub keep: Retention,
    /// Count caps used when no rule sets one.
    pub caps: Caps,
    /// Rules, the first match wins (field by field).
    pub rules: Vec<RetentionRule>,
}

impl RetentionPolicy {
    /// The defaults a new server runs with: completed tasks are kept 7
    /// days, failed and cancelled ones 30 days, with no count cap.
    pub fn standard() -> Self {
        RetentionPolicy {
            keep: Retention {
                completed: Some(Duration::from_secs(7 * 86_400)),
                failed: Some(Duration::from_secs(30 * 86_400)),
                cancelled: Some(Duration::from_secs(30 * 86_400)),
            },
            caps: Caps::default(),
            rules: Vec::new(),
        }
    }

    fn rule(&self, name: &str, queue: Option<&str>) -> Option<&RetentionRule> {
        self.rules.iter().find(|r| r.matches(name, queue))
    }

    /// How long a task that ended in `state` is kept: its own setting, else
    /// the first matching rule's, else the default. `None`: for ever.
    pub fn keep_for(&self, spec: &TaskSpec, state: TaskState) -> Option<Duration> {
        if let Some(d) = spec.retention.as_ref().and_then(|r| r.for_state(state)) {
            return Some(d);
        }
        let queue = match &spec.target {
            Target::Simple { queue } => queue.as_deref(),
            _ => None,
        };
        self.rule(&spec.name, queue)
            .and_then(|r| r.keep.for_state(state))
            .or_else(|| self.keep.for_state(state))
    }

    /// When a task that ended at `finished_at` in `state` may be removed.
    /// `None` for a task that has not ended, is kept for ever, or is a step
    /// of a workflow (it goes with its parent).
    pub fn purge_at(
        &self,
        spec: &TaskSpec,
        state: TaskState,
        finished_at: Micros,
    ) -> Option<Micros> {
        if !state.is_final() || spec.parent_id.is_some() {
            return None;
        }
        let keep = self.keep_for(spec, state)?;
        if keep == Duration::MAX {
            // A rule's "forever".
            return None;
        }
        Some(finished_at.saturating_add(keep.as_micros().min(i64::MAX as u128) as i64))
    }

    /// The most ended tasks of `name` in `state` kept, if capped.
    pub fn max_kept(&self, name: &str, state: TaskState) -> Option<u64> {
        self.rule(name, None)
            .and_then(|r| r.caps.for_state(state))
            .or_else(|| self.caps.for_state(state))
    }

    /// The shortest age any task is kept after it ends, if every ended
    /// task is removed at some point.
    pub fn shortest(&self) -> Option<Duration> {
        let ages = |r: &Retention| [r.completed, r.failed, r.cancelled];
        ages(&self.keep)
            .into_iter()
            .chain(self.rules.iter().flat_map(|r| ages(&r.keep)))
            .flatten()
            .filter(|d| *d != Duration::MAX)
            .min()
    }

    /// The default ages, as `completed 7d, failed 30d, cancelled 30d`.
    pub fn describe(&self) -> String {
        let age = |d: Option<Duration>| match d {
            Some(d) => humantime::format_duration(d).to_string(),
            None => "forever".to_string(),
        };
        format!(
            "completed {}, failed {}, cancelled {}{}",
            age(self.keep.completed),
            age(self.keep.failed),
            age(self.keep.cancelled),
            if self.rules.is_empty() {
                ""
            } else {
                ", or as a rule says"
            }
        )
    }

    /// Whether any count cap is set (the sweeper skips the cap pass
    /// otherwise).
    pub fn has_caps(&self) -> bool {
        self.caps != Caps::default() || self.rules.iter().any(|r| r.caps != Caps::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> TaskSpec {
        TaskSpec::test_simple(name, None)
    }

    #[test]
    fn the_task_then_the_first_rule_then_the_default() {
        let mut p = RetentionPolicy::standard();
        p.rules.push(
            RetentionRule::new(
                "email.*",
                Retention {
                    completed: Some(Duration::from_secs(60)),
                    ..Default::default()
                },
                Caps {
                    completed: Some(10),
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let day = Duration::from_secs(86_400);
        assert_eq!(
            p.keep_for(&spec("email.send"), TaskState::Completed),
            Some(Duration::from_secs(60))
        );
        // The rule sets no age for FAILED: the default applies.
        assert_eq!(
            p.keep_for(&spec("email.send"), TaskState::Failed),
            Some(30 * day)
        );
        assert_eq!(
            p.keep_for(&spec("report"), TaskState::Completed),
            Some(7 * day)
        );
        let mut own = spec("email.send");
        own.retention = Some(Box::new(Retention {
            completed: Some(Duration::ZERO),
            ..Default::default()
        }));
        assert_eq!(p.keep_for(&own, TaskState::Completed), Some(Duration::ZERO));
        assert_eq!(p.purge_at(&own, TaskState::Completed, 5), Some(5));
        assert_eq!(p.purge_at(&own, TaskState::Running, 5), None);
        assert_eq!(p.max_kept("email.x", TaskState::Completed), Some(10));
        assert_eq!(p.max_kept("report", TaskState::Completed), None);
        assert!(p.has_caps());
    }

    #[test]
    fn a_workflow_step_goes_with_its_parent() {
        let p = RetentionPolicy::standard();
        let mut s = spec("step");
        s.parent_id = Some(crate::domain::TaskId::now_v7());
        assert_eq!(p.purge_at(&s, TaskState::Completed, 0), None);
    }

    #[test]
    fn a_queue_matches_too() {
        let mut p = RetentionPolicy::default();
        p.rules.push(
            RetentionRule::new(
                "mail",
                Retention {
                    completed: Some(Duration::from_secs(1)),
                    ..Default::default()
                },
                Caps::default(),
            )
            .unwrap(),
        );
        let mut s = spec("send");
        assert_eq!(p.keep_for(&s, TaskState::Completed), None);
        s.target = Target::Simple {
            queue: Some("mail".into()),
        };
        assert_eq!(
            p.keep_for(&s, TaskState::Completed),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_bad_pattern_is_refused() {
        assert!(RetentionRule::new("a[", Retention::default(), Caps::default()).is_err());
    }
}
