//! Generated protobuf and gRPC code (`switchyard.v1`), the file descriptor
//! set served by reflection, the codec every service and client uses
//! ([`codec`]) and the `google.protobuf.Struct` ⇄ JSON conversions
//! ([`json`]). It knows nothing of tasks beyond the messages: conversions
//! to domain types live in `app::convert`.

pub mod codec;
pub mod json;

#[allow(missing_docs, clippy::all)]
mod generated {
    tonic::include_proto!("switchyard.v1");
}
pub use generated::*;

/// The encoded `FileDescriptorSet` of every Switchyard proto, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("switchyard_descriptor");
