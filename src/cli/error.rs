//! The CLI's one error type, [`CliError`]: an exit code and a message meant for
//! a person. It owns the readable rendering of a gRPC [`Status`] (code name,
//! message, and the `google.rpc` details the server attaches); it does not
//! print anything itself except through [`CliError::report`].
use std::fmt;
use std::process::ExitCode;

use switchyard_client::error_chain;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// A failed CLI command: what to tell the user and which exit code to use.
///
/// Exit codes: [`CliError::FAILURE`] (1) when the server refused or failed the
/// request, [`CliError::USAGE`] (2) for bad input on the command line (the
/// code clap uses too), [`CliError::UNREACHABLE`] (3) when the server cannot be
/// reached. An error with an empty message (stdout was closed, as by `| head`)
/// is meant to end the program quietly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    code: u8,
    message: String,
}

impl CliError {
    /// Exit code of a request the server refused or failed.
    pub const FAILURE: u8 = 1;
    /// Exit code of bad input on the command line (malformed JSON, a label
    /// without `=`, an unreadable payload file).
    pub const USAGE: u8 = 2;
    /// Exit code when the server cannot be reached (connection refused,
    /// `UNAVAILABLE`).
    pub const UNREACHABLE: u8 = 3;

    /// An error with this exit code and message.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Bad input on the command line.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Self::USAGE, message)
    }

    /// An error status returned by the server (or by tonic on its way there).
    pub(crate) fn status(status: &Status) -> Self {
        let code = match status.code() {
            Code::Unavailable => Self::UNREACHABLE,
            _ => Self::FAILURE,
        };
        Self::new(code, describe_status(status))
    }

    /// The server at `server` cannot be reached.
    pub(crate) fn connect(server: &str, err: &dyn std::error::Error) -> Self {
        Self::new(
            Self::UNREACHABLE,
            format!("cannot connect to {server}: {}", error_chain(err)),
        )
    }

    /// Writing to stdout failed. A closed pipe ends the program quietly with
    /// success, as `cat | head` does.
    pub(crate) fn output(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            Self::new(0, "")
        } else {
            Self::new(Self::FAILURE, format!("cannot write to stdout: {err}"))
        }
    }

    /// The process exit code to use.
    pub fn exit_code(&self) -> u8 {
        self.code
    }

    /// The message for the user; may span several lines, may be empty.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prints the message (if any) to stderr as `error: ...` and returns the
    /// exit code, for `main` to return.
    pub fn report(&self) -> ExitCode {
        if !self.message.is_empty() {
            eprintln!("error: {}", self.message);
        }
        ExitCode::from(self.code)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

pub(crate) use crate::pb::code_name;

/// A status as one line `CODE: message`, then one indented line per detail
/// the server attached (`google.rpc.BadRequest` field violations first).
pub fn describe_status(status: &Status) -> String {
    let mut message = status.message().to_string();
    if message.is_empty() {
        message = status.code().description().to_string();
    }
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    let mut out = format!("{}: {message}", code_name(status.code()));
    let Ok(details) = status.check_error_details() else {
        return out;
    };
    let mut line = |text: String| {
        out.push_str("\n  ");
        out.push_str(&text);
    };
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            let field = if v.field.is_empty() {
                "(request)"
            } else {
                &v.field
            };
            line(format!("{field}: {}", v.description));
        }
    }
    if let Some(pre) = details.precondition_failure() {
        for v in &pre.violations {
            let subject = [v.r#type.as_str(), v.subject.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            line(format!("{subject}: {}", v.description));
        }
    }
    if let Some(quota) = details.quota_failure() {
        for v in &quota.violations {
            line(format!("{}: {}", v.subject, v.description));
        }
    }
    if let Some(resource) = details.resource_info() {
        line(format!(
            "resource: {} {}{}",
            resource.resource_type,
            resource.resource_name,
            if resource.description.is_empty() {
                String::new()
            } else {
                format!(" ({})", resource.description)
            }
        ));
    }
    if let Some(info) = details.error_info() {
        if !info.reason.is_empty() {
            line(format!("reason: {}", info.reason));
        }
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        line(format!("retry after {}", humantime::format_duration(delay)));
    }
    if let Some(debug) = details.debug_info() {
        if !debug.detail.is_empty() {
            line(format!("detail: {}", debug.detail));
        }
    }
    if let Some(help) = details.help() {
        for link in &help.links {
            line(format!("see {} ({})", link.url, link.description));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, FieldViolation};

    #[test]
    fn status_shows_code_message_and_field_violations() {
        let details = ErrorDetails::with_bad_request(vec![
            FieldViolation::new("name", "must not be empty"),
            FieldViolation::new("options.priority", "must be between -1000 and 1000"),
        ]);
        let status = Status::with_error_details(Code::InvalidArgument, "invalid request", details);
        let err = CliError::status(&status);
        assert_eq!(err.exit_code(), CliError::FAILURE);
        assert_eq!(
            err.message(),
            "INVALID_ARGUMENT: invalid request\n  name: must not be empty\n  \
             options.priority: must be between -1000 and 1000"
        );
    }

    #[test]
    fn status_without_message_uses_the_code_description() {
        let err = CliError::status(&Status::new(Code::NotFound, ""));
        assert!(
            err.message().starts_with("NOT_FOUND: "),
            "{}",
            err.message()
        );
        assert!(err.message().len() > "NOT_FOUND: ".len());
    }

    #[test]
    fn unavailable_is_unreachable() {
        let err = CliError::status(&Status::unavailable("draining"));
        assert_eq!(err.exit_code(), CliError::UNREACHABLE);
        assert_eq!(err.message(), "UNAVAILABLE: draining");
    }

    #[test]
    fn broken_pipe_is_quiet_success() {
        let err = CliError::output(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!((err.exit_code(), err.message()), (0, ""));
    }
}
