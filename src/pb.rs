//! Generated protobuf and gRPC code (`switchyard.v1`), and the file descriptor
//! set served by reflection. Conversions to domain types live in
//! `api::convert`; nothing outside `api/`, `cli` and `worker` uses these types.
#![allow(missing_docs)]
#![allow(clippy::all)]

tonic::include_proto!("switchyard.v1");

/// The encoded `FileDescriptorSet` of every Switchyard proto, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("switchyard_descriptor");
