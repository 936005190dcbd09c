//! Generated protobuf and gRPC code (`switchyard.v1`), the file descriptor
//! set served by reflection, the codec every service and client uses
//! ([`codec`]) and the `google.protobuf.Struct` ⇄ JSON conversions
//! ([`json`]), and the one JSON dialect of whole messages that the admin
//! HTTP API and the CLI's `--json` write ([`dialect`]). It knows nothing of tasks beyond the messages: conversions
//! to domain types live in `app::convert`.

pub mod codec;
pub mod dialect;
pub mod json;

#[allow(missing_docs, clippy::all)]
mod generated {
    tonic::include_proto!("switchyard.v1");
}
pub use generated::*;

/// The encoded `FileDescriptorSet` of every Switchyard proto, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("switchyard_descriptor");

/// The canonical upper-case name of a gRPC code, as in the gRPC spec.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
