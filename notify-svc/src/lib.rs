//! notify-svc: live notifications (`munity.notify.v1`). Clients follow
//! topics on a server stream; every notification is kept in per-topic
//! history, so a client that reconnects with its last (epoch, offset) gets
//! exactly what it missed, then live ones.
//!
//! Layout, one layer per file:
//! - `hub/`: history, offsets and live delivery; embedded (redb and an
//!   in-process broadcast) and Redis (a stream per topic, one Lua script
//!   per publish, pub/sub across replicas), held to one contract by
//!   `tests/hub_contract.rs`.

#![forbid(unsafe_code)]

pub mod hub;
