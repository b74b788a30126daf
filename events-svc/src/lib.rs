//! events-svc: meetings in communities (`munity.events.v1`). Work in
//! progress on this branch: see `docs/events-svc.md` for the design.
//!
//! - `domain.rs`: records as stored, and the rules for valid input.
//! - `store/`: the repository trait and its backends.
//! - `events.rs`: the domain events it publishes; `convert.rs`: records to
//!   protobuf.

#![forbid(unsafe_code)]

pub mod convert;
pub mod domain;
pub mod events;
pub mod store;
