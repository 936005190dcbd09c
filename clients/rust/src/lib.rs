//! Switchyard's Rust client.
//!
//! - [`pb`]: the generated protos (`switchyard.v1`), their codec and the
//!   `google.protobuf.Struct` ⇄ JSON conversions;
//! - [`Client`]: a typed `OrchestratorService` client (schedule, status,
//!   cancel, watch, disconnect, list, logs, metrics), with an optional bearer
//!   token, over plaintext or TLS ([`TlsFiles`]: a CA file, a client
//!   certificate);
//! - [`worker`]: the worker library (`Worker`, handlers, heartbeats,
//!   cancellation, drain, reconnect);
//! - [`error_chain`]: an error and its sources on one line, as the worker
//!   and the `switchyard` CLI print a transport error.
//!
//! It depends on tonic and prost only (no SQLite, no Temporal client, no
//! HTTP client): a team that only wants a worker compiles this crate, not
//! the server. The server crate re-exports it as `switchyard::pb` and
//! `switchyard_client::worker`.
#![warn(missing_docs)]

mod client;
pub mod failover;
pub mod pb;
pub mod tls;
pub mod trace;
pub mod worker;

pub use client::{Client, ClientError, Transport};
pub use tls::TlsFiles;

/// `err` followed by each of its sources, joined by `: `, skipping a source
/// whose text its parent already contains (tonic's and hyper's errors often
/// repeat their cause).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn sources_join_on_one_line_without_repeats() {
        let root = E("connection refused", None);
        let mid = E("transport error: connection refused", Some(Box::new(root)));
        let top = E("cannot connect", Some(Box::new(mid)));
        assert_eq!(
            error_chain(&top),
            "cannot connect: transport error: connection refused"
        );
    }
}
