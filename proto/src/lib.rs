//! Munity's wire contracts, generated from every `proto/munity/**/*.proto`.
//!
//! Every crate that speaks gRPC depends on this one, so the protos are compiled
//! exactly once per build. [`FILE_DESCRIPTOR_SET`] feeds server reflection,
//! which lets grpcurl and other generic clients call Munity without `.proto`
//! files.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod bad_request;
pub mod codec;
pub mod validate;

/// The encoded `google.protobuf.FileDescriptorSet` of every Munity proto and
/// its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/munity_descriptor.bin"));

// One module per `munity.*` package, nested by its name
// (`munity_proto::events::v1`), found by `build.rs`: a new service's proto
// needs no line here.
include!(concat!(env!("OUT_DIR"), "/munity_modules.rs"));
