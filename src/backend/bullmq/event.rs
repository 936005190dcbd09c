//! One entry of a BullMQ queue's events stream (`<prefix>:<queue>:events`),
//! parsed once, where it is read, into a typed [`Event`], straight from the
//! `XREAD` reply's values ([`read_reply`]: only the fields read here are
//! copied).
//!
//! It owns the names and fields of BullMQ's events that the follower reads
//! (`event`, `jobId`, `delay`, `data`, `returnvalue`, `failedReason`); it
//! must not decide what an event means for a task (the follower does) nor
//! talk to Redis (the reader does).

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
    /// Parses an entry from its id and its field/value pairs as Redis sent
    /// them: only the fields read here are copied, and one that is not
    /// text counts as absent. Of a repeated field the last counts.
    pub fn from_fields<'a>(
        id: String,
        fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Entry {
        let (mut job_id, mut name, mut delay, mut data, mut returnvalue, mut reason) =
            (None, None, None, None, None, None);
        for (f, v) in fields {
            let slot = match f {
                b"jobId" => &mut job_id,
                b"event" => &mut name,
                b"delay" => &mut delay,
                b"data" => &mut data,
                b"returnvalue" => &mut returnvalue,
                b"failedReason" => &mut reason,
                _ => continue,
            };
            *slot = std::str::from_utf8(v).ok().map(str::to_owned);
        }
        let name = name.unwrap_or_default();
        let event = match name.as_str() {
            "waiting" => Event::Waiting,
            "waiting-children" => Event::WaitingChildren,
            "delayed" => Event::Delayed {
                until_ms: delay.and_then(|d| d.parse::<i64>().ok()),
            },
            "active" => Event::Active,
            "progress" => Event::Progress {
                data: data.unwrap_or_default(),
            },
            "completed" => Event::Completed { returnvalue },
            "failed" => Event::Failed { reason },
            "removed" => Event::Removed,
            "stalled" => Event::Stalled,
            _ => Event::Other(name),
        };
        Entry { id, job_id, event }
    }
}

/// A reply's text, as bytes (anything else is not text).
fn text(v: &redis::Value) -> Option<&[u8]> {
    match v {
        redis::Value::BulkString(b) => Some(b.as_slice()),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The entries of an `XREAD` reply for one stream, in stream order, read
/// straight from the reply (RESP2 arrays or RESP3 maps); `Nil` (the block
/// timed out) has none.
pub fn read_reply(v: redis::Value) -> Result<Vec<Entry>, String> {
    use redis::Value;
    let streams: Vec<Value> = match v {
        Value::Nil => return Ok(Vec::new()),
        // [[key, entries], ...]
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => Ok(kv.pop().unwrap_or(Value::Nil)),
                other => Err(format!("unexpected stream in an XREAD reply: {other:?}")),
            })
            .collect::<Result<_, _>>()?,
        // {key: entries, ...}
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        other => return Err(format!("unexpected XREAD reply: {other:?}")),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            return Err(format!("unexpected entries in an XREAD reply: {entries:?}"));
        };
        out.reserve(entries.len());
        for e in entries {
            let Value::Array(mut e) = e else {
                return Err(format!("unexpected entry in an XREAD reply: {e:?}"));
            };
            let fields = if e.len() == 2 { e.pop() } else { None };
            let id = match e.pop() {
                Some(Value::BulkString(b)) => String::from_utf8(b).map_err(|e| e.to_string())?,
                Some(Value::SimpleString(s)) => s,
                other => return Err(format!("unexpected entry id in an XREAD reply: {other:?}")),
            };
            let entry = match &fields {
                Some(Value::Array(kv)) => Entry::from_fields(
                    id,
                    kv.chunks_exact(2)
                        .filter_map(|p| Some((text(&p[0])?, text(&p[1])?))),
                ),
                Some(Value::Map(kv)) => Entry::from_fields(
                    id,
                    kv.iter().filter_map(|(f, v)| Some((text(f)?, text(v)?))),
                ),
                _ => Entry::from_fields(id, std::iter::empty()),
            };
            out.push(entry);
        }
    }
    Ok(out)
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
    use redis::Value;

    fn parse(fields: &[(&str, &str)]) -> Entry {
        Entry::from_fields(
            "1700000000000-0".into(),
            fields.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        )
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn an_xread_reply_in_resp2_and_resp3() {
        let entries = Value::Array(vec![
            entry("1-0", &["event", "added", "jobId", "a", "name", "n"]),
            entry("1-1", &["event", "waiting", "jobId", "a", "prev", "x"]),
            entry("2-0", &["event", "delayed", "jobId", "b", "delay", "9"]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("q:events"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk("q:events"), entries)]);
        for reply in [resp2, resp3] {
            let got = read_reply(reply).unwrap();
            let ids: Vec<_> = got.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids, ["1-0", "1-1", "2-0"]);
            assert_eq!(got[0].event, Event::Other("added".into()));
            assert_eq!(got[1].event, Event::Waiting);
            assert_eq!(got[1].job_id.as_deref(), Some("a"));
            assert_eq!(got[2].event, Event::Delayed { until_ms: Some(9) });
        }
        assert_eq!(read_reply(Value::Nil).unwrap(), Vec::new());
    }

    #[test]
    fn a_field_that_is_not_text_is_absent_and_the_last_repeat_counts() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("q:events"),
            Value::Array(vec![Value::Array(vec![
                bulk("3-0"),
                Value::Array(vec![
                    bulk("event"),
                    bulk("failed"),
                    bulk("jobId"),
                    Value::BulkString(vec![0xff, 0xfe]),
                    bulk("failedReason"),
                    bulk("first"),
                    bulk("failedReason"),
                    bulk("second"),
                    bulk("odd"),
                ]),
            ])]),
        ])]);
        let got = read_reply(reply).unwrap();
        assert_eq!(got[0].job_id, None);
        assert_eq!(
            got[0].event,
            Event::Failed {
                reason: Some("second".into())
            }
        );
    }

    #[test]
    fn a_reply_of_another_shape_is_an_error() {
        assert!(read_reply(Value::Int(3)).is_err());
        assert!(read_reply(Value::Array(vec![bulk("q:events")])).is_err());
        let bad_entry = Value::Array(vec![Value::Array(vec![
            bulk("q:events"),
            Value::Array(vec![Value::Int(1)]),
        ])]);
        assert!(read_reply(bad_entry).is_err());
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
