//! The one mapping from core errors to gRPC statuses. Each code is chosen on
//! purpose; field errors carry `google.rpc.BadRequest` details.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::core::{CoreError, FieldViolation};
use crate::domain::text;
use crate::store::StoreError;

/// The most field violations one status carries; the rest are counted.
pub const MAX_VIOLATIONS: usize = 20;
/// The most bytes of one violation's description (and of its field name).
const MAX_VIOLATION_BYTES: usize = 256;

/// INVALID_ARGUMENT with `google.rpc.BadRequest` details. Its size is
/// bounded whatever the request held: at most [`MAX_VIOLATIONS`] violations,
/// each cut short, so a request with 100,000 bad ids gets a short answer
/// that standard clients (16 KiB of metadata) can read.
fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let shown = &violations[..violations.len().min(MAX_VIOLATIONS)];
    let cut = |v: &FieldViolation| {
        (
            text::cut(&v.field, MAX_VIOLATION_BYTES),
            text::cut(&v.description, MAX_VIOLATION_BYTES),
        )
    };
    let mut msg = shown
        .iter()
        .map(|v| {
            let (f, d) = cut(v);
            format!("{f}: {d}")
        })
        .collect::<Vec<_>>()
        .join("; ");
    if violations.len() > shown.len() {
        msg.push_str(&format!(
            "; and {} more violations",
            violations.len() - shown.len()
        ));
    }
    let mut details = ErrorDetails::new();
    for v in shown {
        let (f, d) = cut(v);
        details.add_bad_request_violation(f, d);
    }
    Status::with_error_details(Code::InvalidArgument, msg, details)
}

impl From<CoreError> for Status {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::InvalidArgument(violations) => invalid_argument(&violations),
            CoreError::NotFound(id) => {
                Status::not_found(format!("task {} not found", text::prefix(&id, 64)))
            }
            CoreError::Removed(m) | CoreError::Absent(m) => Status::not_found(text::cut(&m, 1024)),
            CoreError::AlreadyExists(m) => Status::already_exists(text::cut(&m, 1024)),
            CoreError::FailedPrecondition(m) => Status::failed_precondition(text::cut(&m, 1024)),
            CoreError::ResourceExhausted(m) => Status::resource_exhausted(text::cut(&m, 1024)),
            CoreError::Unavailable(m) => Status::unavailable(text::cut(&m, 1024)),
            CoreError::Store(e) => match &*e {
                StoreError::Closed => Status::unavailable("the store is closed"),
                // Not UNAVAILABLE: retrying soon does not help, an operator
                // must free space.
                e @ StoreError::Full(_) => {
                    Status::resource_exhausted(text::cut(&e.to_string(), 1024))
                }
                e @ (StoreError::Unavailable(_) | StoreError::Fenced { .. }) => {
                    Status::unavailable(text::cut(&e.to_string(), 1024))
                }
                e if e.is_transient() => Status::unavailable(text::cut(&e.to_string(), 1024)),
                StoreError::Corrupt { id, reason } => Status::data_loss(format!(
                    "task {}: its stored row cannot be read back ({}); it is quarantined",
                    text::prefix(id, 64),
                    text::cut(reason, 256)
                )),
                other => {
                    tracing::error!(cause = %other, "store error");
                    Status::internal(text::cut(&format!("store error: {other}"), 1024))
                }
            },
        }
    }
}

/// The most field violations one refused item of a `ScheduleTasks`
/// answer carries (the message counts the rest).
pub const MAX_ITEM_VIOLATIONS: usize = 4;
/// The most bytes of a refused item's message, and of each of its
/// violations' field and description: with [`MAX_ITEM_VIOLATIONS`], 1,000
/// refused items answer in well under the 4 MiB message limit.
const MAX_ITEM_BYTES: usize = 200;

/// One refused item of a `ScheduleTasks` answer: the code and message
/// `ScheduleTask` would have answered for it alone (the same mapping), its
/// first field and its violations, each bounded.
pub fn item_error(index: usize, e: CoreError) -> crate::pb::ScheduleTasksResult {
    let violations = match &e {
        CoreError::InvalidArgument(vs) => vs.clone(),
        _ => Vec::new(),
    };
    let status = Status::from(e);
    let shown = &violations[..violations.len().min(MAX_ITEM_VIOLATIONS)];
    let mut message = text::cut(status.message(), MAX_ITEM_BYTES);
    if violations.len() > shown.len() {
        message = format!(
            "{}; {} violations in all",
            text::cut(status.message(), MAX_ITEM_BYTES - 32),
            violations.len()
        );
    }
    crate::pb::ScheduleTasksResult {
        index: index as u32,
        outcome: Some(crate::pb::schedule_tasks_result::Outcome::Error(
            crate::pb::ScheduleTaskError {
                code: status.code() as i32,
                message,
                field: shown
                    .first()
                    .map(|v| text::cut(&v.field, MAX_ITEM_BYTES))
                    .unwrap_or_default(),
                violations: shown
                    .iter()
                    .map(|v| crate::pb::ItemFieldViolation {
                        field: text::cut(&v.field, MAX_ITEM_BYTES),
                        description: text::cut(&v.description, MAX_ITEM_BYTES),
                    })
                    .collect(),
            },
        )),
    }
}

/// tonic answers a request larger than the decoding limit with
/// OUT_OF_RANGE ("decoded message length too large"), before any handler
/// runs. The gRPC status guide, and every other limit of ours, say
/// RESOURCE_EXHAUSTED: this rewrites that one answer (a trailers-only
/// response, so its status is in the headers). Nothing of ours answers
/// OUT_OF_RANGE, and the message is matched too.
pub fn resize_status<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers_mut();
    let too_large = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message").is_some_and(|m| {
            m.to_str()
                .is_ok_and(|m| m.contains("message%20length%20too%20large"))
        });
    if too_large {
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_violations() {
        let s: Status = CoreError::field("options.attempts", "must be at most 100").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        let d = s.get_error_details();
        let br = d.bad_request().expect("bad request details");
        assert_eq!(br.field_violations[0].field, "options.attempts");
    }

    #[test]
    fn a_refused_item_keeps_its_code_field_and_a_bounded_size() {
        use crate::pb::schedule_tasks_result::Outcome;
        let many: Vec<FieldViolation> = (0..64)
            .map(|i| FieldViolation {
                field: "options.labels".into(),
                description: format!("label {i}: {}", "x".repeat(1000)),
            })
            .collect();
        let r = item_error(7, CoreError::InvalidArgument(many));
        assert_eq!(r.index, 7);
        let Some(Outcome::Error(e)) = r.outcome else {
            panic!("an error")
        };
        assert_eq!(e.code, Code::InvalidArgument as i32);
        assert_eq!(e.field, "options.labels");
        assert_eq!(e.violations.len(), MAX_ITEM_VIOLATIONS);
        // `cut` marks a cut with "…" (3 bytes).
        assert!(e.message.len() <= MAX_ITEM_BYTES + 3, "{}", e.message);
        assert!(e.message.contains("64 violations in all"), "{}", e.message);
        assert!(e
            .violations
            .iter()
            .all(|v| v.description.len() <= MAX_ITEM_BYTES + 3));
        let r = item_error(0, CoreError::FailedPrecondition("no executor".into()));
        let Some(Outcome::Error(e)) = r.outcome else {
            panic!("an error")
        };
        assert_eq!(e.code, Code::FailedPrecondition as i32);
        assert!(e.field.is_empty() && e.violations.is_empty());
    }

    #[test]
    fn codes_are_deliberate() {
        assert_eq!(
            Status::from(CoreError::NotFound("x".into())).code(),
            Code::NotFound
        );
        assert_eq!(
            Status::from(CoreError::Unavailable("draining".into())).code(),
            Code::Unavailable
        );
        assert_eq!(
            Status::from(CoreError::FailedPrecondition("no".into())).code(),
            Code::FailedPrecondition
        );
        let full = Status::from(CoreError::from(StoreError::Full("SQLITE_FULL".into())));
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert!(
            full.message().contains("disk is full"),
            "{}",
            full.message()
        );
    }
}
