//! Switchyard: one gRPC API to schedule, track, cancel and watch background
//! work, routed to the engine that suits it.
//!
//! Layers, from the bottom up (ARCHITECTURE.md; `tests/layers.rs` keeps
//! them): [`reload`] (files read again when they change), [`domain`], [`store`] (durable storage), [`core`] (the scheduler
//! state machine), the engines ([`executor`], [`backend`], [`schedules`],
//! [`flow`]: the flow rules set at run time), [`app`] (what
//! both edges share), the edges ([`api`] for gRPC, [`admin`] for HTTP),
//! [`cluster`] (replicas over PostgreSQL), [`config`] and [`server`] (the
//! wiring). The protos ([`pb`]) and the
//! [`worker`] library come from the `switchyard-client` crate; the [`cli`]
//! talks to a server over gRPC.
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod app;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod core;
pub mod domain;
pub mod executor;
pub mod flow;
pub mod http2;
pub mod keys;
/// The generated protos, their codec and Struct ⇄ JSON (the client crate's).
pub use switchyard_client::pb;
pub mod reload;
pub mod schedules;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
/// The Rust worker library (the client crate's).
pub use switchyard_client::worker;

pub use config::Config;
pub use server::{run, run_with, Listeners};
