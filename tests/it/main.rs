//! Every integration test in one binary: one link instead of one per file,
//! which keeps the debug build small (CI has limited disk). Each module is
//! an area; `common` holds the shared rig (a real server on an ephemeral
//! port, clients, waits with deadlines).
//!
//! Run one area with `cargo test --test it core_flow::`.

mod common;

mod admin;
mod admin_dialect;
mod bulk;
mod bullmq;
mod cluster;
mod core_bad_input;
mod core_cancel;
mod core_crash;
mod core_flow;
mod core_grpcurl;
mod core_leases;
mod core_list_metrics;
mod core_watch;
mod debounce;
mod flow;
mod flow_namespaces;
mod hostile;
mod http2;
mod jwt;
mod key_limits;
mod keys;
mod namespaces;
mod rate_limit;
mod retention;
mod retry;
mod schedule_refusals;
mod schedules;
mod store_backup;
mod store_full_disk;
mod temporal;
mod tls;
mod tracing_otlp;
mod webhook;
mod workflow;
