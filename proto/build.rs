//! Compiles `munity/**/*.proto` with protox (pure Rust, so no system `protoc`
//! is needed) and hands the descriptors to tonic's code generator. The encoded
//! descriptor set is kept too: server reflection serves it, and the method
//! policy (`munity.options.v1`) is read from it at run time.

use std::{env, fs, path::PathBuf};

/// Every service's protos. A new service adds its file here and a module in
/// `src/lib.rs`.
const PROTOS: &[&str] = &[
    // `google.api.http` (HTTP/JSON bindings, transcoded by the gateway).
    "google/api/http.proto",
    "google/api/annotations.proto",
    "munity/options/v1/options.proto",
    "munity/domain/v1/domain.proto",
    "munity/users/v1/users.proto",
    "munity/events/v1/events.proto",
    "munity/notify/v1/notify.proto",
    "munity/warehouse/v1/warehouse.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let mut compiler = protox::Compiler::new(["."])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?;

    // Encoded by protox itself: prost_types' FileDescriptorSet drops the
    // custom options (`munity.options.v1.*`) that the policy is read from.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("munity_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let descriptors = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Requests that do not decode are INVALID_ARGUMENT, and every
        // request is checked against its declared field rules.
        .codec_path("crate::codec::MunityCodec")
        // `prost::Name` on every message: domain events carry their
        // payload's full type name.
        .compile_fds_with_config(descriptors, {
            let mut config = tonic_prost_build::Config::new();
            config.enable_type_names();
            config
        })?;
    Ok(())
}
