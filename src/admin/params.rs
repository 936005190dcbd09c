//! The admin routes' query parameters: one table ([`Param`]) that both the
//! parser and the OpenAPI document ([`super::openapi`]) read, so what a
//! route takes and what the document says it takes cannot drift.
//!
//! Names are the clients' (camelCase: `userId`, `pageToken`, `afterLine`);
//! the names of earlier versions (`user`, `user_id`, `page_token`, …) are
//! still read, as deprecated aliases. A name a route does not take is a 400
//! naming it, so a typo never silently widens a filter; so is a bad value.
//! Lists (`taskId`, `name`, `type`, `state`, `source`) repeat or take
//! comma-separated values (empty pieces are skipped); enum values are the
//! dialect's lower-case words (`running`), or, for compatibility, the proto
//! names (`TASK_STATE_RUNNING`).

use crate::app::convert;
use crate::domain::rules::{
    MAX_ERROR_KIND_BYTES, MAX_FILTER_VALUES, MAX_NAME_BYTES, MAX_OWNER_BYTES, MAX_REASON_BYTES,
};
use crate::domain::{Source, TaskFilter, TaskState, TaskType};

use super::error::ApiError;
use super::metrics::{source_name, type_name};

/// Which enum a word parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Words {
    /// `simple`, `complex`, `integration`.
    TaskType,
    /// `pending`, `running`, …
    TaskState,
    /// `embedded`, `bullmq`, `temporal`, `n8n`.
    Source,
}

const SOURCES: [Source; 4] = [
    Source::Embedded,
    Source::Bullmq,
    Source::Temporal,
    Source::N8n,
];

impl Words {
    /// The words, in the proto's order.
    pub fn words(self) -> Vec<&'static str> {
        match self {
            Words::TaskType => TaskType::ALL.iter().map(|t| type_name(*t)).collect(),
            Words::TaskState => TaskState::ALL.iter().map(|s| s.as_str()).collect(),
            Words::Source => SOURCES.iter().map(|s| source_name(*s)).collect(),
        }
    }

    /// The proto names' prefix (`TASK_STATE_`).
    pub fn proto_prefix(self) -> &'static str {
        match self {
            Words::TaskType => "TASK_TYPE_",
            Words::TaskState => "TASK_STATE_",
            Words::Source => "TASK_SOURCE_",
        }
    }

    /// The index in [`Words::words`] of `v`: a word, or its proto name.
    fn find(self, v: &str) -> Option<usize> {
        let prefix = self.proto_prefix();
        self.words().iter().position(|w| {
            v == *w || v.strip_prefix(prefix) == Some(w.to_ascii_uppercase().as_str())
        })
    }
}

/// What values a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A user or session id: at most `MAX_OWNER_BYTES` bytes; empty means
    /// no filter.
    Owner,
    /// A schedule id: a name (1 to `MAX_NAME_BYTES` bytes of letters,
    /// digits and `_ - . : /`); empty means none.
    Name,
    /// Task names, as [`Shape::Name`], a list.
    Names,
    /// Task ids (UUIDs), a list.
    Ids,
    /// One task id (a UUID); empty means none.
    Id,
    /// Enum words, a list.
    Words(Words),
    /// A non-negative integer up to `max`; absent or 0 means `default`.
    Count {
        /// The value when absent or 0.
        default: u64,
        /// The largest value taken.
        max: u64,
    },
    /// A non-negative integer (a line or sequence number); absent means 0.
    Position,
    /// `true`/`false` (also `1`/`0`, `yes`/`no`); absent means false.
    Flag,
    /// Free text of at most `MAX_REASON_BYTES` bytes.
    Reason,
    /// Free text of at most `max` bytes; empty means none.
    Text {
        /// The most bytes taken.
        max: usize,
    },
}

/// One query parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Its name.
    pub name: &'static str,
    /// Deprecated names read the same way.
    pub aliases: &'static [&'static str],
    /// Its values.
    pub shape: Shape,
    /// What it means.
    pub doc: &'static str,
}

impl Param {
    const fn new(name: &'static str, shape: Shape, doc: &'static str) -> Param {
        Param {
            name,
            aliases: &[],
            shape,
            doc,
        }
    }

    const fn or(mut self, aliases: &'static [&'static str]) -> Param {
        self.aliases = aliases;
        self
    }

    fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.name).chain(self.aliases.iter().copied())
    }

    /// Whether it takes a list of values.
    pub fn is_list(&self) -> bool {
        matches!(self.shape, Shape::Names | Shape::Ids | Shape::Words(_))
    }
}

/// `userId`: only this user's tasks.
pub const USER_ID: Param =
    Param::new("userId", Shape::Owner, "Only the tasks of this user.").or(&["user", "user_id"]);
/// `sessionId`.
pub const SESSION_ID: Param =
    Param::new("sessionId", Shape::Owner, "Only the tasks of this session.")
        .or(&["session", "session_id"]);
/// `scheduleId`: a schedule's fires.
pub const SCHEDULE_ID: Param = Param::new(
    "scheduleId",
    Shape::Name,
    "Only the tasks this schedule fired.",
)
.or(&["schedule"]);
/// `taskId`: these tasks.
pub const TASK_IDS: Param =
    Param::new("taskId", Shape::Ids, "Only these tasks (UUIDs).").or(&["id", "task_id"]);
/// `name`.
pub const NAMES: Param = Param::new("name", Shape::Names, "Only tasks of these names.");
/// `type`.
pub const TYPES: Param = Param::new(
    "type",
    Shape::Words(Words::TaskType),
    "Only tasks of these types.",
);
/// `state`.
pub const STATES: Param = Param::new(
    "state",
    Shape::Words(Words::TaskState),
    "Only tasks now in these states.",
);
/// `source`.
pub const SOURCES_P: Param = Param::new(
    "source",
    Shape::Words(Words::Source),
    "Only tasks run by these engines.",
);
/// `errorKind`: the kind of a task's last error.
pub const ERROR_KIND: Param = Param::new(
    "errorKind",
    Shape::Text {
        max: MAX_ERROR_KIND_BYTES,
    },
    "Only tasks whose last error has this kind (the README's failure kinds, or a worker's own).",
)
.or(&["error_kind"]);
/// The task filter's parameters (`…/tasks`, `…/events`, `…/logs`).
pub const FILTER: [Param; 9] = [
    USER_ID,
    SESSION_ID,
    SCHEDULE_ID,
    ERROR_KIND,
    TASK_IDS,
    NAMES,
    TYPES,
    STATES,
    SOURCES_P,
];

/// `limit` of `…/tasks`: as `ListTasks`' page size.
pub const PAGE_LIMIT: Param = Param::new(
    "limit",
    Shape::Count {
        default: crate::app::list::PAGE_SIZE.0 as u64,
        max: crate::app::list::PAGE_SIZE.1 as u64,
    },
    "Tasks in the page, newest first.",
);
/// `pageToken`: the previous page's `nextPageToken`.
pub const PAGE_TOKEN: Param = Param::new(
    "pageToken",
    Shape::Id,
    "The previous page's `nextPageToken`; absent for the first page.",
)
.or(&["page_token", "cursor"]);
/// `limit` of a log: as `GetTaskLogs`.
pub const LOG_LIMIT: Param = Param::new(
    "limit",
    Shape::Count {
        default: 200,
        max: 5000,
    },
    "Log lines in the answer.",
);
/// `afterLine`: lines after this one.
pub const AFTER_LINE: Param = Param::new(
    "afterLine",
    Shape::Position,
    "Only lines after this line number (the last one read; with several tasks, of each task).",
)
.or(&["after_line"]);
/// `tasks` of `…/logs`: how many of the newest matching tasks to read.
pub const LOG_TASKS: Param = Param::new(
    "tasks",
    Shape::Count {
        default: 20,
        max: 100,
    },
    "How many of the newest matching tasks the log is read from.",
);
/// `force` of a cancel.
pub const FORCE: Param = Param::new(
    "force",
    Shape::Flag,
    "Cancel a running task at once, without waiting for its worker.",
);
/// `reason` of a cancel.
pub const REASON: Param = Param::new("reason", Shape::Reason, "Why, for the task's log.");
/// `fromStep` of `…/tasks/{id}/replay`.
pub const FROM_STEP: Param = Param::new(
    "fromStep",
    Shape::Text {
        max: crate::executor::workflow::definition::MAX_STEP_ID,
    },
    "The step to replay from (required): it, the steps after it and those depending on them run again.",
)
.or(&["from_step"]);
/// `after` of `…/events`: resume after this sequence number.
pub const EVENTS_AFTER: Param = Param::new(
    "after",
    Shape::Position,
    "Resume after this event sequence number (the `Last-Event-ID` header wins).",
);
/// `snapshot` of `…/events`.
pub const SNAPSHOT: Param = Param::new(
    "snapshot",
    Shape::Flag,
    "First send every active task matching the filter.",
);
/// `limit` of `…/schedules`.
pub const SCHEDULE_LIMIT: Param = Param::new(
    "limit",
    Shape::Count {
        default: 50,
        max: 1000,
    },
    "Schedules in the page, by id.",
);
/// `after` of `…/schedules`: the previous page's `next`.
pub const SCHEDULE_AFTER: Param = Param::new(
    "after",
    Shape::Name,
    "The previous page's `next`; absent for the first page.",
);

/// `name` of `…/flow/pause` and `…/flow/resume`: what to pause or resume.
pub const PAUSE_NAME: Param = Param::new(
    "name",
    Shape::Name,
    "The task name or queue to pause or resume (required; the rules of a task name).",
);

/// A parsed query: every value checked against its parameter's shape.
pub struct Params(Vec<(Param, String, String)>);

impl Params {
    /// Parses the query. A name none of `params` has (but `access_token`,
    /// taken by the auth check) is refused, and so is a value its
    /// parameter does not take, naming the parameter as the request did.
    pub fn parse(query: Option<&str>, params: &[Param]) -> Result<Params, ApiError> {
        let mut out = Vec::new();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if k == "access_token" {
                continue;
            }
            let Some(p) = params.iter().find(|p| p.names().any(|n| n == k)) else {
                return Err(ApiError::field(
                    crate::domain::text::cut(&k, 64),
                    "is not a parameter of this route",
                ));
            };
            check(p, &k, &v)?;
            out.push((*p, k.into_owned(), v.into_owned()));
        }
        let params = Params(out);
        for p in params_of(&params) {
            let n = params.many(&p).len();
            if n > MAX_FILTER_VALUES {
                return Err(ApiError::field(
                    p.name,
                    format!("at most {MAX_FILTER_VALUES} values, got {n}"),
                ));
            }
        }
        Ok(params)
    }

    /// The last value given for `p` (under any of its names), if not empty.
    pub fn one(&self, p: &Param) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(q, _, _)| q.name == p.name)
            .map(|(_, _, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Every value of the list `p`, with the name it was given under;
    /// commas split values, empty pieces are skipped.
    pub fn many(&self, p: &Param) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .filter(|(q, _, _)| q.name == p.name)
            .flat_map(|(_, k, v)| v.split(',').map(move |x| (k.as_str(), x)))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    /// A [`Shape::Count`]: its default when absent or 0.
    pub fn count(&self, p: &Param) -> u64 {
        let Shape::Count { default, .. } = p.shape else {
            return 0;
        };
        match self.one(p).and_then(|v| v.parse::<u64>().ok()) {
            None | Some(0) => default,
            Some(n) => n,
        }
    }

    /// A [`Shape::Position`]: 0 when absent.
    pub fn position(&self, p: &Param) -> u64 {
        self.one(p).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// A [`Shape::Flag`].
    pub fn flag(&self, p: &Param) -> bool {
        matches!(self.one(p), Some("true" | "1" | "yes"))
    }

    /// The task filter of the [`FILTER`] parameters given.
    pub fn filter(&self) -> Result<TaskFilter, ApiError> {
        let mut f = TaskFilter {
            user_id: self.one(&USER_ID).map(str::to_string),
            session_id: self.one(&SESSION_ID).map(str::to_string),
            schedule_id: self.one(&SCHEDULE_ID).map(str::to_string),
            error_kind: self
                .one(&ERROR_KIND)
                .filter(|k| !k.is_empty())
                .map(str::to_string),
            ..Default::default()
        };
        for (k, v) in self.many(&TASK_IDS) {
            f.task_ids.push(convert::parse_id(k, v)?);
        }
        f.names = self
            .many(&NAMES)
            .into_iter()
            .map(|(_, v)| v.to_string())
            .collect();
        for (_, v) in self.many(&TYPES) {
            if let Some(i) = Words::TaskType.find(v) {
                f.task_types.push(TaskType::ALL[i]);
            }
        }
        for (_, v) in self.many(&STATES) {
            if let Some(i) = Words::TaskState.find(v) {
                f.states.push(TaskState::ALL[i]);
            }
        }
        for (_, v) in self.many(&SOURCES_P) {
            if let Some(i) = Words::Source.find(v) {
                f.sources.push(SOURCES[i]);
            }
        }
        Ok(f)
    }
}

/// The list parameters given, once each.
fn params_of(params: &Params) -> Vec<Param> {
    let mut out: Vec<Param> = Vec::new();
    for (p, _, _) in &params.0 {
        if p.is_list() && !out.iter().any(|q| q.name == p.name) {
            out.push(*p);
        }
    }
    out
}

/// Checks one value of `p`, given as `k`.
fn check(p: &Param, k: &str, v: &str) -> Result<(), ApiError> {
    let bad = |why: String| Err(ApiError::field(k, why));
    match p.shape {
        Shape::Owner => convert::check_owner(k, v).map_err(ApiError::from),
        Shape::Reason => {
            if v.len() > MAX_REASON_BYTES {
                return bad(format!(
                    "must be at most {MAX_REASON_BYTES} bytes, got {}",
                    v.len()
                ));
            }
            Ok(())
        }
        Shape::Text { max } => {
            if v.len() > max {
                return bad(format!("must be at most {max} bytes, got {}", v.len()));
            }
            Ok(())
        }
        Shape::Name => {
            if v.is_empty() {
                return Ok(());
            }
            convert::check_name(v).map_err(|e| ApiError::field(k, e))
        }
        Shape::Names => {
            for x in v.split(',').filter(|x| !x.is_empty()) {
                convert::check_name(x).map_err(|e| ApiError::field(k, e))?;
            }
            Ok(())
        }
        Shape::Id => {
            if v.is_empty() {
                return Ok(());
            }
            convert::parse_id(k, v).map(|_| ()).map_err(ApiError::from)
        }
        Shape::Ids => {
            for x in v.split(',').filter(|x| !x.is_empty()) {
                convert::parse_id(k, x)?;
            }
            Ok(())
        }
        Shape::Words(w) => {
            for x in v.split(',').filter(|x| !x.is_empty()) {
                if w.find(x).is_none() {
                    return bad(format!(
                        "{} is not one of {}",
                        crate::domain::text::quote(x),
                        w.words().join(", ")
                    ));
                }
            }
            Ok(())
        }
        Shape::Count { max, .. } => match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(()),
            Ok(_) => bad(format!("must be at most {max}")),
            Err(_) => bad(format!(
                "{} is not an integer from 0 to {max}",
                crate::domain::text::quote(v)
            )),
        },
        Shape::Position => match v.parse::<u64>() {
            Ok(_) => Ok(()),
            Err(_) => bad(format!(
                "{} is not a non-negative integer",
                crate::domain::text::quote(v)
            )),
        },
        Shape::Flag => match v {
            "true" | "1" | "yes" | "false" | "0" | "no" => Ok(()),
            _ => bad(format!(
                "{} is not true or false",
                crate::domain::text::quote(v)
            )),
        },
    }
}

/// The most bytes of a name, for the OpenAPI document.
pub const NAME_BYTES: usize = MAX_NAME_BYTES;
/// The most bytes of a user or session id, for the OpenAPI document.
pub const OWNER_BYTES: usize = MAX_OWNER_BYTES;
/// The most bytes of a reason, for the OpenAPI document.
pub const REASON_BYTES: usize = MAX_REASON_BYTES;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str, ps: &[Param]) -> Result<Params, ApiError> {
        Params::parse(Some(q), ps)
    }

    #[test]
    fn filters_take_the_clients_names_and_the_old_ones() {
        let p = parse(
            "userId=u1&sessionId=s&state=pending,running&type=TASK_TYPE_SIMPLE&source=bullmq&name=a&name=b",
            &FILTER,
        )
        .unwrap();
        let f = p.filter().unwrap();
        assert_eq!(f.user_id.as_deref(), Some("u1"));
        assert_eq!(f.session_id.as_deref(), Some("s"));
        assert_eq!(f.states, vec![TaskState::Pending, TaskState::Running]);
        assert_eq!(f.task_types, vec![TaskType::Simple]);
        assert_eq!(f.sources, vec![Source::Bullmq]);
        assert_eq!(f.names, vec!["a", "b"]);
        let old = parse("user=u2&schedule=nightly", &FILTER)
            .unwrap()
            .filter()
            .unwrap();
        assert_eq!(old.user_id.as_deref(), Some("u2"));
        assert_eq!(old.schedule_id.as_deref(), Some("nightly"));
    }

    #[test]
    fn bad_values_name_their_parameter() {
        for (q, field) in [
            ("state=PENDING", "state"),
            ("state=Pending", "state"),
            ("limit=-1", "limit"),
            ("limit=1001", "limit"),
            ("taskId=x", "taskId"),
            ("name=a%20b", "name"),
            ("bogus=1", "bogus"),
            ("user_id=", "none"),
        ] {
            match parse(q, &[FILTER.as_slice(), &[PAGE_LIMIT][..]].concat()) {
                Ok(_) => assert_eq!(field, "none", "{q} was taken"),
                Err(e) => assert_eq!(e.body().field.as_deref(), Some(field), "{q}"),
            }
        }
    }

    #[test]
    fn words_are_the_dialects() {
        use crate::pb::dialect::enum_word_of;
        for (w, full) in [
            (Words::TaskState, "switchyard.v1.TaskState"),
            (Words::TaskType, "switchyard.v1.TaskType"),
            (Words::Source, "switchyard.v1.TaskSource"),
        ] {
            for (i, word) in w.words().iter().enumerate() {
                assert_eq!(*word, enum_word_of(full, i as i32 + 1), "{full}");
            }
        }
    }
}
