//! The one mapping from core errors to gRPC statuses. Each code is chosen on
//! purpose; field errors carry `google.rpc.BadRequest` details.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::core::CoreError;
use crate::store::StoreError;

impl From<CoreError> for Status {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::InvalidArgument(violations) => {
                let msg = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                let mut details = ErrorDetails::new();
                for v in &violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                Status::with_error_details(Code::InvalidArgument, msg, details)
            }
            CoreError::NotFound(id) => Status::not_found(format!("task {id} not found")),
            CoreError::FailedPrecondition(m) => Status::failed_precondition(m),
            CoreError::ResourceExhausted(m) => Status::resource_exhausted(m),
            CoreError::Unavailable(m) => Status::unavailable(m),
            CoreError::Store(e) => match &*e {
                StoreError::Closed => Status::unavailable("the store is closed"),
                other => {
                    tracing::error!(cause = %other, "store error");
                    Status::internal(format!("store error: {other}"))
                }
            },
        }
    }
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
    }
}
