//! The application layer both edges share (the gRPC services in `api`, the
//! admin HTTP API in `admin`): the conversions between protobuf messages and
//! domain types with the validation of requests ([`convert`]), and the one
//! mapping from core errors to gRPC statuses ([`status`]), which the admin
//! API turns into HTTP answers, one page of `ListTasks` ([`list`]), and the
//! driver of one watch ([`watch`]). Neither edge imports the other; both import
//! this. It must not serve anything itself, nor touch the store.

pub mod cluster;
pub mod convert;
pub mod flow;
pub mod list;
pub mod schedule;
pub mod status;
pub mod watch;
