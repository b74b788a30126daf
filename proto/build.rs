//! Compiles every `.proto` under `munity/` (and the `google/api` HTTP
//! annotations they use) with protox (pure Rust, so no system `protoc` is
//! needed) and hands the descriptors to tonic's code generator. The encoded
//! descriptor set is kept too: server reflection serves it, and the method
//! policy (`munity.options.v1`) is read from it at run time.
//!
//! Protos are found, not listed: a new service's
//! `munity/<svc>/v1/<svc>.proto` is compiled, and its module
//! (`munity_proto::<svc>::v1`, documented by the comment above the file's
//! `package` line) appears in `src/lib.rs` by itself.

use std::{
    collections::BTreeMap,
    env, fs,
    path::{Path, PathBuf},
};

/// Compiled for their descriptors (the gateway transcodes HTTP/JSON from
/// `google.api.http`); not Munity packages, so no module of their own.
const GOOGLE_API: &[&str] = &["google/api/http.proto", "google/api/annotations.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The directories: a proto added, removed or changed anywhere in them
    // runs this again.
    println!("cargo:rerun-if-changed=munity");
    println!("cargo:rerun-if-changed=google");

    let mut protos: Vec<String> = GOOGLE_API.iter().map(|p| (*p).to_owned()).collect();
    find_protos(Path::new("munity"), &mut protos)?;

    let mut compiler = protox::Compiler::new(["."])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(&protos)?;

    // Encoded by protox itself: prost_types' FileDescriptorSet drops the
    // custom options (`munity.options.v1.*`) that the policy is read from.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("munity_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let descriptors = compiler.file_descriptor_set();
    fs::write(out_dir.join("munity_modules.rs"), module_tree(&descriptors))?;

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

/// Every `.proto` below `dir`, as paths relative to the crate, sorted (the
/// generated code must not depend on the order a directory lists in).
fn find_protos(dir: &Path, into: &mut Vec<String>) -> std::io::Result<()> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                found.push(path.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    found.sort();
    into.extend(found);
    Ok(())
}

/// The module of every `munity.*` package, nested by its dotted name
/// (`munity.events.v1` → `pub mod events { pub mod v1 { ... } }`), each
/// documented by the comment above its file's `package` line.
fn module_tree(descriptors: &prost_types::FileDescriptorSet) -> String {
    #[derive(Default)]
    struct Module {
        doc: String,
        package: Option<String>,
        children: BTreeMap<String, Module>,
    }
    let mut root = Module::default();
    for file in &descriptors.file {
        let Some(package) = file.package.as_deref() else {
            continue;
        };
        let Some(rest) = package.strip_prefix("munity.") else {
            continue;
        };
        let mut module = &mut root;
        for part in rest.split('.') {
            module = module.children.entry(part.to_owned()).or_default();
        }
        module.package = Some(package.to_owned());
        // Path [2] is the `package` statement (FileDescriptorProto field 2).
        let doc = file
            .source_code_info
            .iter()
            .flat_map(|info| &info.location)
            .find(|location| location.path == [2])
            .and_then(|location| location.leading_comments.clone())
            .unwrap_or_default();
        if module.doc.is_empty() {
            module.doc = doc;
        }
    }
    fn write(name: &str, module: &Module, depth: usize, out: &mut String) {
        let indent = "    ".repeat(depth);
        if !name.is_empty() {
            // Trimmed: an indented comment line must not become a doctest.
            for line in module.doc.trim_end().lines() {
                out.push_str(&format!("{indent}/// {}\n", line.trim()).replace("/// \n", "///\n"));
            }
            out.push_str(&format!("{indent}pub mod {name} {{\n"));
        }
        let inner = if name.is_empty() { depth } else { depth + 1 };
        if let Some(package) = &module.package {
            let indent = "    ".repeat(inner);
            out.push_str(&format!("{indent}tonic::include_proto!(\"{package}\");\n"));
        }
        for (child, module) in &module.children {
            write(child, module, inner, out);
        }
        if !name.is_empty() {
            out.push_str(&format!("{indent}}}\n"));
        }
    }
    let mut out = String::from("// Generated by build.rs from the protos' packages.\n");
    write("", &root, 0, &mut out);
    out
}
