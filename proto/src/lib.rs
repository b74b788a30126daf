//! Munity's wire contracts, generated from `proto/munity/<service>/v1/*.proto`.
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

/// `munity.options.v1`: the method policy and service routing options
/// (`public`, `quota`, `upstream`), read from [`FILE_DESCRIPTOR_SET`] by
/// `munity_platform::policy`.
pub mod options {
    pub mod v1 {
        tonic::include_proto!("munity.options.v1");
    }
}

/// `munity.domain.v1`: the envelope of every domain event on the event log.
pub mod domain {
    pub mod v1 {
        tonic::include_proto!("munity.domain.v1");
    }
}

/// `munity.events.v1`: meetings: proposed times, votes, participants.
pub mod events {
    pub mod v1 {
        tonic::include_proto!("munity.events.v1");
    }
}

/// `munity.notify.v1`: live notifications on topics, with resume.
pub mod notify {
    pub mod v1 {
        tonic::include_proto!("munity.notify.v1");
    }
}

/// `munity.users.v1`: accounts, sessions, signing keys, roles, communities.
pub mod users {
    pub mod v1 {
        tonic::include_proto!("munity.users.v1");
    }
}

/// `munity.warehouse.v1`: records by source, time ranges, aggregates, tail.
pub mod warehouse {
    pub mod v1 {
        tonic::include_proto!("munity.warehouse.v1");
    }
}
