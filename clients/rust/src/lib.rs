//! Switchyard's Rust client.
//!
//! - [`pb`]: the generated protos (`switchyard.v1`), their codec and the
//!   `google.protobuf.Struct` ⇄ JSON conversions;
//! - [`Client`]: a typed `OrchestratorService` client (schedule, status,
//!   cancel, watch, disconnect, list, logs, metrics), with an optional bearer
//!   token;
//! - [`worker`]: the worker library (`Worker`, handlers, heartbeats,
//!   cancellation, drain, reconnect).
//!
//! It depends on tonic and prost only (no SQLite, no Temporal client, no
//! HTTP client): a team that only wants a worker compiles this crate, not
//! the server. The server crate re-exports it as `switchyard::pb` and
//! `switchyard_client::worker`.
#![warn(missing_docs)]

mod client;
pub mod failover;
pub mod pb;
pub mod trace;
pub mod worker;

pub use client::{Client, ClientError, Transport};
