//! One entry of a BullMQ queue's events stream (`<prefix>:<queue>:events`),
//! parsed once, where it is read, into a typed [`Event`].
//!
//! It owns the names and fields of BullMQ's events that the follower reads
//! (`event`, `jobId`, `delay`, `data`, `returnvalue`, `failedReason`); it
//! must not decide what an event means for a task (the follower does) nor
//! talk to Redis (the reader does).

use std::collections::HashMap;

/// An entry of the events stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The stream id (`<ms>-<seq>`).
    pub id: String,
    /// The job it is about; some events (`drained`, …) name none.
    pub job_id: Option<String>,
    pub event: Event,
}

/// What happened to the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// In the wait list (also after a retry without backoff).
    Waiting,
    /// Waiting for its children (a flow's parent).
    WaitingChildren,
    /// Delayed; `until_ms` is when it becomes due (ms since the epoch).
    Delayed { until_ms: Option<i64> },
    /// A worker took it.
    Active,
    /// The worker reported progress (`job.updateProgress`'s JSON).
    Progress { data: String },
    /// Done; the event carries the return value as JSON.
    Completed { returnvalue: Option<String> },
    /// Failed for good (or on its way to a retry, as BullMQ says it).
    Failed { reason: Option<String> },
    /// Removed from Redis.
    Removed,
    /// Its worker stopped renewing the lock.
    Stalled,
    /// Any other event (its name, empty when the entry had none).
    Other(String),
}

impl Entry {
    /// Parses an entry from its id and its fields.
    pub fn parse(id: String, mut fields: HashMap<String, String>) -> Entry {
        let job_id = fields.remove("jobId");
        let name = fields.remove("event").unwrap_or_default();
        let event = match name.as_str() {
            "waiting" => Event::Waiting,
            "waiting-children" => Event::WaitingChildren,
            "delayed" => Event::Delayed {
                until_ms: fields.get("delay").and_then(|d| d.parse::<i64>().ok()),
            },
            "active" => Event::Active,
            "progress" => Event::Progress {
                data: fields.remove("data").unwrap_or_default(),
            },
            "completed" => Event::Completed {
                returnvalue: fields.remove("returnvalue"),
            },
            "failed" => Event::Failed {
                reason: fields.remove("failedReason"),
            },
            "removed" => Event::Removed,
            "stalled" => Event::Stalled,
            _ => Event::Other(name),
        };
        Entry { id, job_id, event }
    }
}

impl Event {
    /// BullMQ's name of the event.
    pub fn name(&self) -> &str {
        match self {
            Event::Waiting => "waiting",
            Event::WaitingChildren => "waiting-children",
            Event::Delayed { .. } => "delayed",
            Event::Active => "active",
            Event::Progress { .. } => "progress",
            Event::Completed { .. } => "completed",
            Event::Failed { .. } => "failed",
            Event::Removed => "removed",
            Event::Stalled => "stalled",
            Event::Other(name) => name,
        }
    }

    /// Whether the job has finished (its logs and error are then read).
    pub fn finishes(&self) -> bool {
        matches!(self, Event::Completed { .. } | Event::Failed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(fields: &[(&str, &str)]) -> Entry {
        let map = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Entry::parse("1700000000000-0".into(), map)
    }

    fn event_of(name: &str, more: &[(&str, &str)]) -> Event {
        let mut fields = vec![("event", name), ("jobId", "j1")];
        fields.extend_from_slice(more);
        let e = parse(&fields);
        assert_eq!(e.id, "1700000000000-0");
        assert_eq!(e.job_id.as_deref(), Some("j1"));
        assert_eq!(e.event.name(), name);
        e.event
    }

    #[test]
    fn waiting_and_waiting_children() {
        assert_eq!(event_of("waiting", &[("prev", "delayed")]), Event::Waiting);
        assert_eq!(event_of("waiting-children", &[]), Event::WaitingChildren);
    }

    #[test]
    fn delayed_carries_when_it_is_due() {
        assert_eq!(
            event_of("delayed", &[("delay", "1700000005000")]),
            Event::Delayed {
                until_ms: Some(1_700_000_005_000)
            }
        );
        assert_eq!(
            event_of("delayed", &[("delay", "soon")]),
            Event::Delayed { until_ms: None }
        );
        assert_eq!(event_of("delayed", &[]), Event::Delayed { until_ms: None });
    }

    #[test]
    fn active() {
        assert_eq!(event_of("active", &[("prev", "waiting")]), Event::Active);
    }

    #[test]
    fn progress_carries_its_data() {
        assert_eq!(
            event_of("progress", &[("data", "42")]),
            Event::Progress { data: "42".into() }
        );
        assert_eq!(
            event_of("progress", &[]),
            Event::Progress {
                data: String::new()
            }
        );
    }

    #[test]
    fn completed_carries_the_return_value() {
        let e = event_of("completed", &[("returnvalue", "{\"ok\":true}")]);
        assert_eq!(
            e,
            Event::Completed {
                returnvalue: Some("{\"ok\":true}".into())
            }
        );
        assert!(e.finishes());
        assert_eq!(
            event_of("completed", &[]),
            Event::Completed { returnvalue: None }
        );
    }

    #[test]
    fn failed_carries_the_reason() {
        let e = event_of("failed", &[("failedReason", "boom"), ("prev", "active")]);
        assert_eq!(
            e,
            Event::Failed {
                reason: Some("boom".into())
            }
        );
        assert!(e.finishes());
        assert_eq!(event_of("failed", &[]), Event::Failed { reason: None });
    }

    #[test]
    fn removed_and_stalled() {
        assert_eq!(event_of("removed", &[("prev", "wait")]), Event::Removed);
        assert_eq!(event_of("stalled", &[]), Event::Stalled);
        assert!(!Event::Removed.finishes());
    }

    #[test]
    fn an_unknown_event_keeps_its_name() {
        let e = event_of("duplicated", &[]);
        assert_eq!(e, Event::Other("duplicated".into()));
        assert!(!e.finishes());
    }

    #[test]
    fn an_entry_without_event_or_job() {
        let e = parse(&[("count", "3")]);
        assert_eq!(e.job_id, None);
        assert_eq!(e.event, Event::Other(String::new()));
        assert_eq!(e.event.name(), "");
        let drained = parse(&[("event", "drained")]);
        assert_eq!(drained.job_id, None);
        assert_eq!(drained.event, Event::Other("drained".into()));
    }
}
