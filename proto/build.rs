//! Compiles `munity/**/*.proto` with protox (pure Rust, so no system `protoc`
//! is needed) and hands the descriptors to tonic's code generator. The encoded
//! descriptor set is kept too: server reflection serves it.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &["munity/users/v1/users.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let descriptors = protox::Compiler::new(["."])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("munity_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
