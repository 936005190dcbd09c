//! Deduplication windows and debounce: the rules that decide, when a task
//! is scheduled, whether it is new, an existing task, or the task that
//! replaces the pending ones of its key.
//!
//! Owns what a task asks for (`TaskSpec::dedup`: an idempotency key's
//! window, a debounce key with its quiet period and mode), their bounds,
//! the reserved idempotency key a THROTTLE key is kept under, and the pure
//! questions over them (whether a key's window has passed, which of two
//! pending tasks of a debounce key survives). It decides nothing itself:
//! the store keeps the keys, the core supersedes and answers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{add_micros, Micros, TaskSpec};

/// The longest `TaskOptions.debounce.key`.
pub const MAX_KEY_BYTES: usize = 256;
/// The longest `TaskOptions.debounce.period`.
pub const MAX_PERIOD: Duration = Duration::from_secs(30 * 86_400);
/// The longest `TaskOptions.idempotency_ttl`.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);
/// The first character of the idempotency key a THROTTLE key is kept
/// under; a caller's idempotency key may not start with it.
pub const RESERVED: char = '\u{1}';
/// The idempotency key of a THROTTLE key is this prefix and the key.
const THROTTLE_PREFIX: &str = "\u{1}throttle:";

/// What a debounce key does with a newer task of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The newest task wins: the pending, never started tasks of the key
    /// end CANCELLED (`superseded`), and the newest starts once the quiet
    /// period has passed without a newer one.
    Debounce,
    /// The first task wins: for the period after it was scheduled, a task
    /// of the key is not created; the caller gets the first's id.
    Throttle,
}

/// A task's debounce key (`TaskOptions.debounce`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Debounce {
    /// The key, 1 to [`MAX_KEY_BYTES`] bytes.
    pub key: Box<str>,
    /// The quiet period (DEBOUNCE) or the window (THROTTLE), more than zero
    /// and at most [`MAX_PERIOD`].
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// What a newer task of the key does.
    pub mode: Mode,
}

/// A task's deduplication and debounce options (boxed in the spec: most
/// tasks have none, and then the field costs one pointer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Dedup {
    /// How long after scheduling the idempotency key matches this task;
    /// `None`: as long as the task is kept.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// The debounce key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<Debounce>,
}

/// The idempotency key a THROTTLE key is kept under (see [`RESERVED`]).
pub fn throttle_key(key: &str) -> Box<str> {
    format!("{THROTTLE_PREFIX}{key}").into_boxed_str()
}

/// Whether an idempotency key is one Switchyard made (a THROTTLE key's),
/// not the caller's: status does not show it.
pub fn is_reserved(idempotency_key: &str) -> bool {
    idempotency_key.starts_with(RESERVED)
}

/// Checks a debounce key: 1 to [`MAX_KEY_BYTES`] bytes.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("must not be empty".into());
    }
    if key.starts_with(RESERVED) {
        return Err("must not start with U+0001 (reserved for the server's own keys)".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "must be at most {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        ));
    }
    Ok(())
}

impl TaskSpec {
    /// The task's debounce key, when its mode is DEBOUNCE.
    pub fn debounce_key(&self) -> Option<&str> {
        match self.dedup.as_deref()?.debounce.as_ref()? {
            Debounce {
                key,
                mode: Mode::Debounce,
                ..
            } => Some(key),
            _ => None,
        }
    }

    /// The debounce mode, if the task has a debounce key.
    pub fn debounce_mode(&self) -> Option<Mode> {
        Some(self.dedup.as_deref()?.debounce.as_ref()?.mode)
    }

    /// How long after scheduling the task's idempotency key matches it:
    /// its THROTTLE period, else its `ttl`; `None` for as long as it is
    /// kept.
    pub fn key_window(&self) -> Option<Duration> {
        let d = self.dedup.as_deref()?;
        match &d.debounce {
            Some(Debounce {
                period,
                mode: Mode::Throttle,
                ..
            }) => Some(*period),
            _ => d.ttl,
        }
    }
}

/// Whether the idempotency key of a task scheduled at `created_at` with
/// `spec` no longer matches it at `now`: its window has passed.
pub fn key_expired(spec: &TaskSpec, created_at: Micros, now: Micros) -> bool {
    spec.key_window()
        .is_some_and(|w| add_micros(created_at, w) <= now)
}

/// Of two pending tasks of one debounce key, by their sequence numbers:
/// whether the one at `seq` replaces the one at `other` (the newer one, the
/// higher sequence, wins).
pub fn supersedes(seq: u64, other: u64) -> bool {
    seq > other
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Target, TaskType};

    fn spec(dedup: Option<Dedup>) -> TaskSpec {
        TaskSpec {
            dedup: dedup.map(Box::new),
            ..TaskSpec::new("t", TaskType::Simple, Target::Simple { queue: None })
        }
    }

    #[test]
    fn a_key_without_a_window_never_expires() {
        assert!(!key_expired(&spec(None), 0, i64::MAX));
    }

    #[test]
    fn a_ttl_expires_at_its_end_not_before() {
        let s = spec(Some(Dedup {
            ttl: Some(Duration::from_secs(2)),
            debounce: None,
        }));
        assert!(!key_expired(&s, 1_000_000, 2_999_999));
        assert!(key_expired(&s, 1_000_000, 3_000_000));
    }

    #[test]
    fn a_throttle_window_is_its_period_and_debounce_keys_only_debounce() {
        let throttle = spec(Some(Dedup {
            ttl: None,
            debounce: Some(Debounce {
                key: "k".into(),
                period: Duration::from_secs(1),
                mode: Mode::Throttle,
            }),
        }));
        assert_eq!(throttle.key_window(), Some(Duration::from_secs(1)));
        assert_eq!(throttle.debounce_key(), None);
        let debounce = spec(Some(Dedup {
            ttl: None,
            debounce: Some(Debounce {
                key: "k".into(),
                period: Duration::from_secs(1),
                mode: Mode::Debounce,
            }),
        }));
        assert_eq!(debounce.key_window(), None);
        assert_eq!(debounce.debounce_key(), Some("k"));
    }

    #[test]
    fn throttle_keys_are_reserved_and_the_newer_task_wins() {
        assert!(is_reserved(&throttle_key("a")));
        assert!(!is_reserved("a"));
        assert!(supersedes(5, 4));
        assert!(!supersedes(4, 5));
        assert!(check_key("").is_err());
        assert!(check_key(&"x".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(check_key(&"x".repeat(MAX_KEY_BYTES)).is_ok());
    }

    #[test]
    fn the_options_read_back_from_their_json() {
        let d = Dedup {
            ttl: Some(Duration::from_millis(1500)),
            debounce: Some(Debounce {
                key: "k".into(),
                period: Duration::from_secs(3),
                mode: Mode::Debounce,
            }),
        };
        let j = serde_json::to_string(&d).expect("json");
        assert_eq!(serde_json::from_str::<Dedup>(&j).expect("back"), d);
    }
}
