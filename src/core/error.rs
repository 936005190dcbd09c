//! The core's one error type, [`CoreError`], and [`FieldViolation`].
//!
//! Owns: the error variants the API maps to gRPC codes (see `app::status`).
//! Must not: know about gRPC codes or HTTP statuses.

use std::sync::Arc;

use crate::store::StoreError;

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path, as in the proto (`options.attempts`).
    pub field: String,
    /// What is wrong.
    pub description: String,
}

/// Errors of the core; the API maps each to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A request field is invalid.
    #[error("invalid argument: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    InvalidArgument(Vec<FieldViolation>),
    /// No such task.
    #[error("task {0} not found")]
    NotFound(String),
    /// No such task, and why it is likely gone (it is older than the
    /// shortest retention): the whole message.
    #[error("{0}")]
    Removed(String),
    /// Something other than a task (a schedule) does not exist: the whole
    /// message.
    #[error("{0}")]
    Absent(String),
    /// What a create names exists already (a schedule id): the whole
    /// message.
    #[error("{0}")]
    AlreadyExists(String),
    /// The task's state does not allow the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server is shutting down or the store is closed.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(Arc<StoreError>),
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        CoreError::Store(Arc::new(e))
    }
}

impl CoreError {
    /// An invalid-argument error for one field.
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        CoreError::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }
}
