//! Errors of the admin routes as HTTP. There is one decision per error: a
//! [`CoreError`] becomes a gRPC status through `app::status` (the one
//! deliberate mapping), and the status's code becomes an HTTP status here by
//! a fixed table, with the same body everywhere:
//! `{"code": "INVALID_ARGUMENT", "message": "…", "field": "limit"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tonic::Code;
use tonic_types::StatusExt;

use crate::core::CoreError;

/// The JSON body of every error.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The gRPC code's name (`NOT_FOUND`).
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// The offending request field, for bad input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    /// A bad request naming `field`.
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> ApiError {
        CoreError::field(field, description).into()
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON body.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

/// The HTTP status of a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        // The task's state does not allow it: a conflict with the resource.
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

use crate::pb::code_name;

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        let field = s
            .get_details_bad_request()
            .and_then(|b| b.field_violations.into_iter().next())
            .map(|v| v.field);
        ApiError {
            status: http_status(s.code()),
            body: ErrorBody {
                code: code_name(s.code()),
                message: s.message().to_string(),
                field,
            },
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        tonic::Status::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_keep_their_grpc_meaning() {
        let e: ApiError = CoreError::field("limit", "must be at most 1000").into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body.code, "INVALID_ARGUMENT");
        assert_eq!(e.body.field.as_deref(), Some("limit"));
        let e: ApiError = CoreError::NotFound("x".into()).into();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(e.body.field.is_none());
        let e: ApiError = CoreError::FailedPrecondition("no".into()).into();
        assert_eq!(e.status, StatusCode::CONFLICT);
        let e: ApiError = CoreError::ResourceExhausted("full".into()).into();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        let e: ApiError = CoreError::Unavailable("draining".into()).into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
