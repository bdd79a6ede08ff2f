//! Compiles `proto/**` with protox (pure Rust, no protoc) and generates the tonic clients and
//! servers. The descriptor set is kept in OUT_DIR for server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/bus/containers/v1/containers.proto",
    "proto/bus/containers/v1/exec.proto",
    "proto/bus/daemon/v1/daemon.proto",
    "proto/bus/images/v1/images.proto",
    "proto/bus/images/v1/builds.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let descriptor_path = out_dir.join("bus_descriptor.bin");
    std::fs::write(&descriptor_path, descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
