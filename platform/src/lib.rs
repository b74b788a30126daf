//! The platform crate: the one front door every Munity service goes through
//! for cross-cutting concerns, so that they behave alike.
//!
//! - [`config`]: layered typed configuration (TOML file, then `MUNITY_*`
//!   environment), with errors that name the bad key.
//! - [`telemetry`]: logs (pretty or JSON), OTLP trace export, W3C trace
//!   context in gRPC metadata.
//! - [`error`]: building `tonic::Status` values, with `google.rpc.BadRequest`
//!   details for bad input.
//! - [`auth`]: access-token (JWT, EdDSA) verification against users-svc's
//!   JWKS, as a tower layer.
//! - [`server`]: serving gRPC with health, reflection, tracing and auth on a
//!   listener the caller bound.
//! - [`cql`]: connecting to ScyllaDB and applying a service's schema.
//! - [`shutdown`]: one cancellation token per process, tripped by SIGTERM or
//!   SIGINT.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod cql;
pub mod error;
pub mod server;
pub mod shutdown;
pub mod telemetry;
