//! The gRPC edge: the `OrchestratorService` and `WorkerService` handlers.
//! They validate and convert requests (`app::convert`), call the core and
//! map its errors (`app::status`). The server is wired in `crate::server`;
//! nothing here opens the store, starts an engine or serves.

pub use crate::app::convert;
pub use crate::app::status as error;
pub mod authz;
pub mod flow;
pub mod keys;
pub mod orchestrator;
pub mod schedules;
pub mod worker;
