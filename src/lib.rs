//! Switchyard: one gRPC API to schedule, track, cancel and watch background
//! work, routed to the engine that suits it.
//!
//! Layers, from the edge inwards: [`api`] (gRPC handlers and conversions),
//! [`core`] (the scheduler state machine), [`store`] (durable storage). The
//! [`worker`] library and the [`cli`] talk to a server over gRPC.
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod app;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod config;
pub mod core;
pub mod domain;
pub mod executor;
pub mod pb;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod worker;

pub use config::Config;
pub use server::{run, run_with, Listeners};
