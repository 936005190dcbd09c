//! Backends: external engines that run routed tasks instead of the embedded
//! ones. Each is an in-process local worker for an internal queue key
//! ([`crate::core::Routes`]), so the core does not know which engine runs a
//! task.
//!
//! - [`bullmq`]: SIMPLE tasks of the routed queues as real BullMQ jobs on
//!   Redis (`#bullmq`), processed by Node BullMQ workers.
//! - [`temporal`]: COMPLEX tasks of the routed workflow types as Temporal
//!   workflows (`#temporal`).
//!
//! A backend forwards a task through the core's outbox (ENGINE_UNREACHABLE
//! while the engine is down), mirrors the engine's states with
//! `Report::Mirror`, and must not decide what the core decides (retries of
//! Switchyard's own, leases, cancellation outcomes it did not see).

pub mod bullmq;
pub mod temporal;
