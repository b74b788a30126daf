//! events-svc: meetings in communities (`munity.events.v1`). Work in
//! progress on this branch: see `docs/events-svc.md` for the design.
//!
//! - `domain.rs`: records as stored, and the rules for valid input.

#![forbid(unsafe_code)]

pub mod domain;
