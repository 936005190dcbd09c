//! Compiles the protos with protox (pure Rust, no system `protoc`) and
//! generates the tonic stubs plus the file descriptor set for reflection.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The protos live at the repository's top, shared by every client.
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "switchyard/v1/task.proto",
        "switchyard/v1/orchestrator.proto",
        "switchyard/v1/worker.proto",
        "switchyard/v1/schedule.proto",
        "switchyard/v1/flow.proto",
        "switchyard/v1/keys.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("switchyard_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Our codec (src/pb/codec.rs) bounds nesting and answers undecodable
    // messages with INVALID_ARGUMENT; it finds each message's descriptor by
    // its type name.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::pb::codec::ProstCodec")
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
