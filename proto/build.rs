//! Compiles `protos/` into prost types with canonical protobuf-JSON serde impls (pbjson), and
//! the tonic client and server of `tidemark.v1.IncidentService`.
//!
//! Needs `protoc` (Debian package `protobuf-compiler`), or `PROTOC` pointing at one.

use std::env;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "protos/tidemark/v1/signal.proto",
        "protos/tidemark/v1/incident.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("tidemark_descriptor.bin");

    let mut config = prost_build::Config::new();
    config
        .file_descriptor_set_path(&descriptor_path)
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .compile_with_config(config, &protos, &["protos"])?;

    let descriptor_set = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_set)?
        .build(&[".tidemark"])?;
    Ok(())
}
