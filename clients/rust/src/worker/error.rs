//! The worker's two error types: [`HandlerError`], what a handler returns when
//! a task's attempt fails (and what should happen next), and [`WorkerError`],
//! why [`Worker::run`](super::Worker::run) stopped.
use std::fmt;
use std::time::Duration;

/// The most bytes of `details` sent to the server (the server cuts there too).
pub(crate) const MAX_DETAILS_BYTES: usize = 8 * 1024;

/// A failed attempt, as a handler reports it. Becomes a `Fail` message.
///
/// It says what happens next: [`retryable`](Self::retryable) lets the server
/// retry if attempts remain (after the task's backoff, or after
/// [`retry_after`](Self::retry_after) if set); [`fatal`](Self::fatal) fails the
/// task for good.
///
/// `?` works on [`anyhow::Error`] (retryable) and [`serde_json::Error`]
/// (fatal: a payload that does not parse will not parse next time either).
/// For other errors, go through `anyhow` or build one explicitly:
///
/// ```
/// use std::time::Duration;
/// use switchyard_client::worker::HandlerError;
///
/// let err = HandlerError::retryable("upstream answered 503")
///     .with_kind("http_503")
///     .with_details("GET https://example.com/api")
///     .retry_after(Duration::from_secs(30));
/// assert!(err.retryable);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerError {
    /// A short, human-readable message (`Fail.message`).
    pub message: String,
    /// The error's kind or class (`Fail.kind`), `"error"` unless set.
    pub kind: String,
    /// A stack trace or other detail (`Fail.details`); cut at 8 KiB.
    pub details: String,
    /// `true`: retry if attempts remain. `false`: fail the task for good.
    pub retryable: bool,
    /// Overrides the task's backoff before the next attempt.
    pub retry_after: Option<Duration>,
}

impl HandlerError {
    /// An error that allows another attempt, of kind `"error"`.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: "error".to_owned(),
            details: String::new(),
            retryable: true,
            retry_after: None,
        }
    }

    /// An error that fails the task for good, of kind `"error"`.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            ..Self::retryable(message)
        }
    }

    /// Sets the kind (`Fail.kind`), for example `"timeout"` or `"http_503"`.
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// Sets the details (`Fail.details`), for example a stack trace.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Asks the server to wait this long before the next attempt instead of
    /// the task's backoff. Only meaningful on a retryable error.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for HandlerError {}

/// Retryable, kind `"error"`; the message is the whole chain on one line
/// (`{:#}`) and the details the multi-line chain (`{:?}`, with a backtrace if
/// one was captured).
impl From<anyhow::Error> for HandlerError {
    fn from(err: anyhow::Error) -> Self {
        Self::retryable(format!("{err:#}")).with_details(format!("{err:?}"))
    }
}

/// Fatal, kind `"json"`: the usual source is a payload that does not match
/// the handler's input type, which no retry fixes.
impl From<serde_json::Error> for HandlerError {
    fn from(err: serde_json::Error) -> Self {
        Self::fatal(err.to_string()).with_kind("json")
    }
}

/// Why [`Worker::run`](super::Worker::run) (or
/// [`WorkerHandle::join`](super::WorkerHandle::join)) returned an error.
///
/// Lost connections are not errors: the worker reconnects with backoff until
/// it is shut down. Only what a retry cannot fix ends it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The worker was built without any handler.
    #[error("the worker has no handler: register at least one task name")]
    NoHandlers,
    /// A builder setting is out of range.
    #[error("invalid worker configuration: {0}")]
    InvalidConfig(String),
    /// The server URL does not parse, is neither `http://` nor `https://`,
    /// or its TLS files cannot be used.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server refused the registration with a status a retry cannot fix
    /// (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `PERMISSION_DENIED`,
    /// `UNAUTHENTICATED`, `UNIMPLEMENTED`, `ALREADY_EXISTS`, `OUT_OF_RANGE`).
    #[error("the server refused the registration: {0}")]
    Refused(#[source] tonic::Status),
    /// The server answered `Register` with `Rejected`.
    #[error("the server rejected the registration ({code}): {message}")]
    Rejected {
        /// The gRPC code name the server gave.
        code: String,
        /// Why.
        message: String,
    },
    /// The server broke the protocol (for example its first message was not
    /// `Registered`).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// [`WorkerHandle::abort`](super::WorkerHandle::abort) was called.
    #[error("the worker was aborted")]
    Aborted,
    /// The task running the worker panicked.
    #[error("the worker task failed: {0}")]
    Join(#[source] tokio::task::JoinError),
}

/// Cuts `s` to at most `max` bytes, on a character boundary. No `…` is
/// added, on purpose (unlike `pb::codec`'s `cut` and the server's
/// `text::cut`): the result fills a field the server bounds to the same
/// size, so it must fit exactly, or the server would cut it again.
pub(crate) fn truncate_utf8(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn constructors_and_builders() {
        let err = HandlerError::fatal("bad input")
            .with_kind("validation")
            .with_details("field x")
            .retry_after(Duration::from_secs(3));
        assert_eq!(err.message, "bad input");
        assert_eq!(err.kind, "validation");
        assert_eq!(err.details, "field x");
        assert!(!err.retryable);
        assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(err.to_string(), "validation: bad input");

        let err = HandlerError::retryable("try again");
        assert!(err.retryable);
        assert_eq!(err.kind, "error");
        assert!(err.details.is_empty());
        assert_eq!(err.retry_after, None);
    }

    #[test]
    fn anyhow_errors_are_retryable_with_the_chain() {
        fn failing() -> anyhow::Result<()> {
            Err(std::io::Error::other("disk on fire")).context("writing the report")
        }
        let err = HandlerError::from(failing().unwrap_err());
        assert!(err.retryable);
        assert_eq!(err.kind, "error");
        assert_eq!(err.message, "writing the report: disk on fire");
        assert!(err.details.contains("Caused by"), "{}", err.details);
        assert!(err.details.contains("disk on fire"), "{}", err.details);
    }

    #[test]
    fn json_errors_are_fatal() {
        fn parse() -> Result<u32, HandlerError> {
            Ok(serde_json::from_value::<u32>(serde_json::json!("x"))?)
        }
        let err = parse().unwrap_err();
        assert!(!err.retryable);
        assert_eq!(err.kind, "json");
        assert!(err.message.contains("expected u32"), "{}", err.message);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_utf8("abc".into(), 8), "abc");
        assert_eq!(truncate_utf8("abcdef".into(), 3), "abc");
        // 'é' is two bytes: cutting at 2 would split it.
        assert_eq!(truncate_utf8("aé".into(), 2), "a");
        assert_eq!(truncate_utf8("é".into(), 0), "");
    }
}
